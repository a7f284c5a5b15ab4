-- grain: one row per valid source order (source_name, source_order_id); refresh: insert new, update changed, delete gone.
-- product_id, craftsman_id and customer_id are not declared foreign keys: the load resolves
-- them from the dimensions it has just written in the same transaction, and row-by-row
-- reference checks tripled the time of a million-order load. tests check there are no orphans.
create table dwh.f_order (
    order_id              bigint generated always as identity not null,
    source_name           varchar not null,
    source_order_id       bigint not null,
    product_id            bigint not null,
    craftsman_id          bigint not null,
    customer_id           bigint not null,
    order_created_date    date not null,
    order_completion_date date null,
    order_status          varchar not null,
    product_price         bigint not null,
    load_dttm             timestamptz not null,
    constraint f_order_pk primary key (order_id),
    constraint f_order_source_uq unique (source_name, source_order_id),
    constraint f_order_status_ck check (order_status in ('created', 'in progress', 'delivery', 'done')),
    constraint f_order_price_ck check (product_price > 0),
    constraint f_order_completion_ck check (order_completion_date is null or order_completion_date >= order_created_date)
);
create index f_order_customer_ix on dwh.f_order (customer_id);
create index f_order_craftsman_ix on dwh.f_order (craftsman_id);
create index f_order_product_ix on dwh.f_order (product_id);
create index f_order_load_dttm_ix on dwh.f_order (load_dttm);
comment on table dwh.f_order is 'Valid orders of every source; one row per (source_name, source_order_id).';
comment on column dwh.f_order.order_id is 'Surrogate key, stable across runs.';
comment on column dwh.f_order.source_name is 'The source the order was read from (source1, source2, source3, external_source, ...).';
comment on column dwh.f_order.source_order_id is 'The order key in its source; ids are per source.';
comment on column dwh.f_order.product_id is 'dwh.d_product.product_id.';
comment on column dwh.f_order.craftsman_id is 'dwh.d_craftsman.craftsman_id.';
comment on column dwh.f_order.customer_id is 'dwh.d_customer.customer_id.';
comment on column dwh.f_order.order_created_date is 'When the order was created.';
comment on column dwh.f_order.order_completion_date is 'When the order was completed; null while not completed.';
comment on column dwh.f_order.order_status is 'Normalised status: created, in progress, delivery or done.';
comment on column dwh.f_order.product_price is 'The price on this order''s source row: what the customer paid.';
comment on column dwh.f_order.load_dttm is 'When this row last changed.';
