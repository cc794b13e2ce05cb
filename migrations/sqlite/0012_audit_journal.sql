-- The audit journals (files of secret reads' records, see store::audit_journal) whose
-- records are already in audit_event: a journal is recorded here in the transaction that
-- moves its records, so one found again after a crash (its file not yet deleted) is
-- deleted rather than moved twice. A row is deleted by the next move.
create table audit_journal_moved (
    id text primary key
) without rowid;
