-- grain: one row per (customer, craftsman) whose mart rows a run changed without a newer load_dttm on their orders: orders deleted or moved away, a product type or customer birthday changed; refresh: appended by each run.
create table craftmart.order_change_log (
    change_id     bigint generated always as identity not null,
    changed_at    timestamptz not null,
    customer_id   bigint not null,
    craftsman_id  bigint not null,
    constraint order_change_log_pk primary key (change_id)
);
create index order_change_log_changed_at_ix on craftmart.order_change_log (changed_at);
comment on table craftmart.order_change_log is 'Customers and craftsmen a mart refresh must revisit although their orders show no newer load_dttm: orders deleted or moved away, product type or customer birthday changed.';
