-- Name search by trigram (the console's search box): `lower(name) like '%text%'` over a
-- million documents reads only the documents holding the text's trigrams. pg_trgm ships
-- with PostgreSQL (contrib) and is a trusted extension, so the store's owner can create
-- it; where it cannot be had, the search scans as before.
do $$
begin
    create extension if not exists pg_trgm;
exception when others then
    raise notice 'pg_trgm is not available (%): name search scans the documents', sqlerrm;
end
$$;
do $$
begin
    if exists (select 1 from pg_extension where extname = 'pg_trgm') then
        execute 'create index block_document_name_trigrams on block_document using gin (lower(name) gin_trgm_ops)';
    end if;
end
$$;
