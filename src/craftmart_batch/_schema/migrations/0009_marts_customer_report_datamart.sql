-- grain: one row per customer and month with valid orders; refresh: recompute touched customers, write only rows that differ.
create table marts.customer_report_datamart (
    id                           bigint generated always as identity not null,
    customer_id                  bigint not null,
    customer_name                varchar null,
    customer_address             varchar null,
    customer_birthday            date null,
    customer_email               varchar not null,
    customer_money               numeric(15, 2) not null,
    platform_money               numeric(15, 2) not null,
    count_order                  bigint not null,
    avg_price_order              numeric(10, 2) not null,
    median_time_order_completed  numeric(10, 1) null,
    top_product_category         varchar null,
    top_craftsman_id             bigint not null,
    count_order_created          bigint not null,
    count_order_in_progress      bigint not null,
    count_order_delivery         bigint not null,
    count_order_done             bigint not null,
    count_order_not_done         bigint not null,
    report_period                varchar not null,
    constraint customer_report_datamart_pk primary key (id),
    constraint customer_report_datamart_uq unique (customer_id, report_period),
    constraint customer_report_datamart_count_ck check (count_order > 0)
);
comment on table marts.customer_report_datamart is 'Per customer and month (report_period): money, order counts and favourites over valid orders created in the month.';
comment on column marts.customer_report_datamart.id is 'Row id.';
comment on column marts.customer_report_datamart.customer_id is 'dwh.d_customer.customer_id.';
comment on column marts.customer_report_datamart.customer_name is 'Current name (dwh.d_customer).';
comment on column marts.customer_report_datamart.customer_address is 'Current address (dwh.d_customer).';
comment on column marts.customer_report_datamart.customer_birthday is 'Current birthday (dwh.d_customer).';
comment on column marts.customer_report_datamart.customer_email is 'Normalised email (dwh.d_customer).';
comment on column marts.customer_report_datamart.customer_money is 'Sum of the order prices: what the customer paid in the month.';
comment on column marts.customer_report_datamart.platform_money is 'round(0.10 * customer_money, 2): the platform''s fee.';
comment on column marts.customer_report_datamart.count_order is 'Number of orders.';
comment on column marts.customer_report_datamart.avg_price_order is 'round(customer_money / count_order, 2).';
comment on column marts.customer_report_datamart.median_time_order_completed is 'Median days from creation to completion over completed orders, rounded to 1 place; null when none.';
comment on column marts.customer_report_datamart.top_product_category is 'Most frequent product type (ties: smallest under collate "C").';
comment on column marts.customer_report_datamart.top_craftsman_id is 'Craftsman with most orders (ties: smallest email under collate "C").';
comment on column marts.customer_report_datamart.count_order_created is 'Orders in status created.';
comment on column marts.customer_report_datamart.count_order_in_progress is 'Orders in status in progress.';
comment on column marts.customer_report_datamart.count_order_delivery is 'Orders in status delivery.';
comment on column marts.customer_report_datamart.count_order_done is 'Orders in status done.';
comment on column marts.customer_report_datamart.count_order_not_done is 'count_order - count_order_done.';
comment on column marts.customer_report_datamart.report_period is 'Month of order creation, YYYY-MM.';
