-- Counting documents per type (the console's list and filters) reads this index alone,
-- never the table.
create index block_document_by_type_and_anonymity on block_document (block_type_id, is_anonymous);

-- Names in byte order (how lists sort them on both backends), so a page of a list is read
-- from the index instead of sorting every name.
create index block_document_by_name_bytes on block_document (name collate "C");
