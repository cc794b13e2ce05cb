-- Name search by trigram (the console's search box): `lower(name) like '%text%'` over a
-- million documents reads only the documents holding the text's trigrams. pg_trgm ships
-- with PostgreSQL (contrib) and is a trusted extension, so the store's owner can create
-- it; where it cannot be had, the search scans as before (an admin can add the index
-- later: `create extension pg_trgm; create index block_document_name_trigrams on
-- block_document using gin (lower(name) gin_trgm_ops);`).
do $$
begin
    create extension if not exists pg_trgm;
exception when others then
    raise notice 'pg_trgm is not available (%): name search scans the documents', sqlerrm;
end
$$;
do $$
declare
    schema_name text;
begin
    select n.nspname into schema_name
        from pg_extension e join pg_namespace n on n.oid = e.extnamespace
        where e.extname = 'pg_trgm';
    if schema_name is not null then
        execute format(
            'create index block_document_name_trigrams on block_document using gin (lower(name) %I.gin_trgm_ops)',
            schema_name
        );
    end if;
exception when others then
    raise notice 'the trigram index of names could not be made (%): name search scans the documents', sqlerrm;
end
$$;
