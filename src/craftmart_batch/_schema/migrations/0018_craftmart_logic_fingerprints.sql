-- grain: craftmart.source_rows_state gains the fingerprint of the rules its hashes were processed by (still one row); craftmart.mart_state has one row per mart naming the definition that computed its rows; refresh: source_rows_state replaced by every run that pulls everything, mart_state upserted by every refresh of the mart.
alter table craftmart.source_rows_state add column rules_fingerprint text;
comment on table craftmart.source_rows_state is 'What computed craftmart.source_rows: the package version, the source queries and the validity and identity rules. A run whose fingerprints differ pulls every source in full and starts the hashes afresh.';
comment on column craftmart.source_rows_state.rules_fingerprint is 'sha256 of the code and rules that decide validity and identity (transform/validate.py, identity.py, diff.py; logic.rules_fingerprint) when the hashes were computed. Null (a warehouse from before it was kept) counts as different.';

create table craftmart.mart_state (
    mart_name               varchar not null,
    definition_fingerprint  text not null,
    constraint mart_state_pk primary key (mart_name)
);
comment on table craftmart.mart_state is 'What computed each mart''s rows: a run whose mart definition differs (or finds no row here) rebuilds that mart in full, as run --full does.';
comment on column craftmart.mart_state.mart_name is 'The mart table in schema marts.';
comment on column craftmart.mart_state.definition_fingerprint is 'sha256 of the mart''s definition at its last refresh (transform/marts.py, refresh.py, the mart''s compute function; logic.mart_fingerprint).';
