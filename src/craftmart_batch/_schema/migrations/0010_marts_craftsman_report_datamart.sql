-- grain: one row per craftsman and month with valid orders; refresh: recompute touched craftsmen, write only rows that differ.
create table marts.craftsman_report_datamart (
    id                           bigint generated always as identity not null,
    craftsman_id                 bigint not null,
    craftsman_name               varchar null,
    craftsman_address            varchar null,
    craftsman_birthday           date null,
    craftsman_email              varchar not null,
    craftsman_money              numeric(15, 2) not null,
    platform_money               numeric(15, 2) not null,
    count_order                  bigint not null,
    avg_price_order              numeric(10, 2) not null,
    avg_age_customer             numeric(4, 1) null,
    median_time_order_completed  numeric(10, 1) null,
    top_product_category         varchar null,
    count_order_created          bigint not null,
    count_order_in_progress      bigint not null,
    count_order_delivery         bigint not null,
    count_order_done             bigint not null,
    count_order_not_done         bigint not null,
    report_period                varchar not null,
    constraint craftsman_report_datamart_pk primary key (id),
    constraint craftsman_report_datamart_uq unique (craftsman_id, report_period),
    constraint craftsman_report_datamart_count_ck check (count_order > 0)
);
comment on table marts.craftsman_report_datamart is 'Per craftsman and month (report_period): money, order counts, customer age and favourites over valid orders created in the month.';
comment on column marts.craftsman_report_datamart.id is 'Row id.';
comment on column marts.craftsman_report_datamart.craftsman_id is 'dwh.d_craftsman.craftsman_id.';
comment on column marts.craftsman_report_datamart.craftsman_name is 'Current name (dwh.d_craftsman).';
comment on column marts.craftsman_report_datamart.craftsman_address is 'Current address (dwh.d_craftsman).';
comment on column marts.craftsman_report_datamart.craftsman_birthday is 'Current birthday (dwh.d_craftsman).';
comment on column marts.craftsman_report_datamart.craftsman_email is 'Normalised email (dwh.d_craftsman).';
comment on column marts.craftsman_report_datamart.craftsman_money is 'Sum of the order prices minus platform_money: what the craftsman earned.';
comment on column marts.craftsman_report_datamart.platform_money is 'round(0.10 * sum of order prices, 2): the platform''s fee.';
comment on column marts.craftsman_report_datamart.count_order is 'Number of orders.';
comment on column marts.craftsman_report_datamart.avg_price_order is 'round(sum of order prices / count_order, 2).';
comment on column marts.craftsman_report_datamart.avg_age_customer is 'Mean customer age in whole years on the order date, over orders whose customer has a birthday, rounded to 1 place.';
comment on column marts.craftsman_report_datamart.median_time_order_completed is 'Median days from creation to completion over completed orders, rounded to 1 place; null when none.';
comment on column marts.craftsman_report_datamart.top_product_category is 'Most frequent product type (ties: smallest under collate "C").';
comment on column marts.craftsman_report_datamart.count_order_created is 'Orders in status created.';
comment on column marts.craftsman_report_datamart.count_order_in_progress is 'Orders in status in progress.';
comment on column marts.craftsman_report_datamart.count_order_delivery is 'Orders in status delivery.';
comment on column marts.craftsman_report_datamart.count_order_done is 'Orders in status done.';
comment on column marts.craftsman_report_datamart.count_order_not_done is 'count_order - count_order_done.';
comment on column marts.craftsman_report_datamart.report_period is 'Month of order creation, YYYY-MM.';
