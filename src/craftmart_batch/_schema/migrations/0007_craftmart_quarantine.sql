-- grain: one row per invalid source row; refresh: rows that became valid or vanished leave, new ones arrive.
create table craftmart.quarantine (
    quarantine_id    bigint generated always as identity not null,
    source_name      varchar not null,
    source_order_id  bigint null,
    reasons          text[] not null,
    raw              jsonb not null,
    first_seen       timestamptz not null,
    constraint quarantine_pk primary key (quarantine_id)
);
create index quarantine_source_ix on craftmart.quarantine (source_name, source_order_id);
comment on table craftmart.quarantine is 'Source rows that broke a validity rule: kept with every rule broken and the raw values.';
comment on column craftmart.quarantine.source_name is 'The source the row was read from.';
comment on column craftmart.quarantine.source_order_id is 'The order key in its source.';
comment on column craftmart.quarantine.reasons is 'Every validity rule the row broke.';
comment on column craftmart.quarantine.raw is 'The canonical row as read, before any normalisation.';
comment on column craftmart.quarantine.first_seen is 'Start of the run that first quarantined this row as it is.';
