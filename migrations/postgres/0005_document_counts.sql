-- Counting documents per type (the console's list and filters) reads this index alone,
-- never the table.
create index block_document_by_type_and_anonymity on block_document (block_type_id, is_anonymous);
