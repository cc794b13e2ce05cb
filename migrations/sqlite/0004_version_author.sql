-- Who wrote each version: the id of the token that made the write (none for versions
-- written before this column existed, and for the server's own writes).
alter table block_document_version add column token_id text;
