-- grain: one row per source order key seen by the last run (source_name, source_order_id) with the hash of its canonical row, plus one row naming what those hashes were computed by; refresh: rows of changed keys replaced by each run, all rows by a full pull.
create table craftmart.source_rows (
    source_name      varchar not null,
    source_order_id  bigint not null,
    row_hash         bigint not null,
    constraint source_rows_pk primary key (source_name, source_order_id)
);
comment on table craftmart.source_rows is 'Hash of every source row as the last run read it: a run pulls in full only the rows whose hash changed, and the rows of the people they touch. Keys without a row here (no key, repeated key) are pulled on every run.';
comment on column craftmart.source_rows.source_name is 'The source, as in dwh.f_order.';
comment on column craftmart.source_rows.source_order_id is 'The order key in its source.';
comment on column craftmart.source_rows.row_hash is 'hash_record_extended of the canonical row (every mapped field, the source''s name and rank), computed in the source query.';

create table craftmart.source_rows_state (
    fingerprint  text not null
);
comment on table craftmart.source_rows_state is 'What computed craftmart.source_rows: the package version and the source queries. A run whose fingerprint differs pulls every source in full and starts the hashes afresh.';
comment on column craftmart.source_rows_state.fingerprint is 'sha256 of the package version and of every registered source''s query.';
