-- grain: one row per refresh of each mart; refresh: appended in the run's transaction.
create table marts.load_dates_customer_report_datamart (
    id         bigint generated always as identity not null,
    load_dttm  timestamptz not null,
    constraint load_dates_customer_report_datamart_pk primary key (id)
);
comment on table marts.load_dates_customer_report_datamart is 'One row per refresh of customer_report_datamart: the DWH change time up to which the mart is complete.';
comment on column marts.load_dates_customer_report_datamart.load_dttm is 'Watermark: every DWH change at or before it is in the mart.';

create table marts.load_dates_craftsman_report_datamart (
    id         bigint generated always as identity not null,
    load_dttm  timestamptz not null,
    constraint load_dates_craftsman_report_datamart_pk primary key (id)
);
comment on table marts.load_dates_craftsman_report_datamart is 'One row per refresh of craftsman_report_datamart: the DWH change time up to which the mart is complete.';
comment on column marts.load_dates_craftsman_report_datamart.load_dttm is 'Watermark: every DWH change at or before it is in the mart.';
