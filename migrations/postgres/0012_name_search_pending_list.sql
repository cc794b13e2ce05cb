-- The trigram index of names takes new entries into a pending list that every search reads
-- whole until a vacuum (or an overflow) merges it. Its default bound (4 MB, about 17,000
-- names) made each search on a busy store without autovacuum read hundreds of pages; 128 kB
-- (about 500 names) keeps that read short and still merges new names in batches.
alter index if exists block_document_name_trigrams set (gin_pending_list_limit = 128);
