-- Name search by trigram (the console's search box): `name contains "text"` over a
-- million documents reads only the documents holding the text's trigrams.
--
-- Each document gets a stable integer key (an INTEGER PRIMARY KEY keeps its value through
-- VACUUM, which an implicit rowid does not), and a contentless FTS5 trigram index holds
-- each name under its document's key. Triggers keep both in step with block_document.
create table block_document_key (
    key integer primary key,
    id text not null unique
);
create virtual table block_document_name using fts5 (
    name,
    content = '',
    tokenize = 'trigram'
);
insert into block_document_key (id) select id from block_document;
insert into block_document_name (rowid, name)
    select k.key, d.name from block_document d join block_document_key k on k.id = d.id;
create trigger block_document_name_insert after insert on block_document begin
    insert into block_document_key (id) values (new.id);
    insert into block_document_name (rowid, name) values (last_insert_rowid(), new.name);
end;
create trigger block_document_name_delete after delete on block_document begin
    insert into block_document_name (block_document_name, rowid, name)
        select 'delete', key, old.name from block_document_key where id = old.id;
    delete from block_document_key where id = old.id;
end;
create trigger block_document_name_rename after update of name on block_document
when new.name is not old.name begin
    insert into block_document_name (block_document_name, rowid, name)
        select 'delete', key, old.name from block_document_key where id = old.id;
    insert into block_document_name (rowid, name)
        select key, new.name from block_document_key where id = old.id;
end;
