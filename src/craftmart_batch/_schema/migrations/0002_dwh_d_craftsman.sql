-- grain: one row per craftsman (lower(btrim(email))); refresh: upsert changed attributes, delete orphans.
create table dwh.d_craftsman (
    craftsman_id        bigint generated always as identity not null,
    craftsman_name      varchar null,
    craftsman_address   varchar null,
    craftsman_birthday  date null,
    craftsman_email     varchar not null,
    load_dttm           timestamptz not null,
    constraint d_craftsman_pk primary key (craftsman_id),
    constraint d_craftsman_email_uq unique (craftsman_email)
);
create index d_craftsman_load_dttm_ix on dwh.d_craftsman (load_dttm);
comment on table dwh.d_craftsman is 'Craftsmen seen in valid orders of any source; one row per normalised email.';
comment on column dwh.d_craftsman.craftsman_id is 'Surrogate key, stable across runs.';
comment on column dwh.d_craftsman.craftsman_name is 'Name from the latest valid order (ties: later source, larger order key).';
comment on column dwh.d_craftsman.craftsman_address is 'Address from the latest valid order.';
comment on column dwh.d_craftsman.craftsman_birthday is 'Birthday from the latest valid order.';
comment on column dwh.d_craftsman.craftsman_email is 'Identity: lower(btrim(email)).';
comment on column dwh.d_craftsman.load_dttm is 'When this row last changed.';
