-- grain: one row per source read by logical change capture, naming the replication slot and the position its changes were processed up to; refresh: rewritten by every run, in its transaction.
create table craftmart.capture_state (
    source_name  varchar primary key,
    slot_name    text not null,
    server       text not null,
    lsn          pg_lsn not null
);
comment on table craftmart.capture_state is 'Where logical change capture of each source stands: the warehouse holds every change its slot decoded before lsn. The slot itself is advanced to lsn after the run commits; a slot found behind it is read again (harmless), one found ahead of it, missing or invalidated makes the next run compare that source''s hashes once and start capture afresh.';
comment on column craftmart.capture_state.source_name is 'The source, as in dwh.f_order.';
comment on column craftmart.capture_state.slot_name is 'Its replication slot on the source server.';
comment on column craftmart.capture_state.server is 'The source server''s system identifier and database: a slot of the same name elsewhere is not this one.';
comment on column craftmart.capture_state.lsn is 'Every change committed before this position is in the warehouse.';
