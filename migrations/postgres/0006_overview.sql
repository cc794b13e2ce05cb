-- The dashboard's latest changes read documents by last write, and its list of documents
-- on an older schema finds them by schema, both from an index.
create index block_document_by_updated on block_document (updated, id);
create index block_document_by_schema on block_document (block_schema_id);
