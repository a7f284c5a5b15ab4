-- grain: one row per customer (lower(btrim(email))); refresh: upsert changed attributes, delete orphans.
create table dwh.d_customer (
    customer_id         bigint generated always as identity not null,
    customer_name       varchar null,
    customer_address    varchar null,
    customer_birthday   date null,
    customer_email      varchar not null,
    load_dttm           timestamptz not null,
    constraint d_customer_pk primary key (customer_id),
    constraint d_customer_email_uq unique (customer_email)
);
create index d_customer_load_dttm_ix on dwh.d_customer (load_dttm);
comment on table dwh.d_customer is 'Customers seen in valid orders of any source; one row per normalised email, however many sources.';
comment on column dwh.d_customer.customer_id is 'Surrogate key, stable across runs.';
comment on column dwh.d_customer.customer_name is 'Name from the latest valid order (ties: later source, larger order key); null when unknown.';
comment on column dwh.d_customer.customer_address is 'Address from the latest valid order.';
comment on column dwh.d_customer.customer_birthday is 'Birthday from the latest valid order; null when unknown.';
comment on column dwh.d_customer.customer_email is 'Identity: lower(btrim(email)).';
comment on column dwh.d_customer.load_dttm is 'When this row last changed.';
