-- grain: one row per order that left a customer or craftsman (deleted or moved); refresh: appended by each run, pruned below both mart watermarks.
create table craftmart.order_change_log (
    change_id     bigint generated always as identity not null,
    changed_at    timestamptz not null,
    customer_id   bigint not null,
    craftsman_id  bigint not null,
    constraint order_change_log_pk primary key (change_id)
);
create index order_change_log_changed_at_ix on craftmart.order_change_log (changed_at);
comment on table craftmart.order_change_log is 'Former customer and craftsman of orders deleted or moved: a mart refresh must revisit them.';
