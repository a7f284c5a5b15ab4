-- grain: unchanged (one row per craftsman and month); refresh: unchanged.
-- Rule 7 admits any date from 1900 to 2999, so a valid order's customer can be up to
-- 1,099 years old on its date, or as much younger than it (a birthday after the order):
-- the mean needs four digits before the point. numeric(5, 1) holds every such mean.
alter table marts.craftsman_report_datamart
    alter column avg_age_customer type numeric(5, 1);
comment on column marts.craftsman_report_datamart.avg_age_customer is 'Mean customer age in whole years on the order date, over orders whose customer has a birthday, rounded to 1 place (negative when the birthday is after the order).';
