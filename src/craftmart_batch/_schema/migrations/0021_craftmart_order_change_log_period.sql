-- grain: the month of each change-log row; refresh: applied once.
-- A change to an order touches the mart rows of its month, not every month of its
-- customer and craftsman: the log keeps the month an order left (deleted, moved to
-- another customer, craftsman or month) or whose product type or customer birthday
-- changed, so that a refresh recomputes those (entity, month) rows only.
alter table craftmart.order_change_log add column report_period varchar null;
comment on table craftmart.order_change_log is 'Mart rows a refresh must revisit although their orders show no newer load_dttm: orders deleted or moved away (to another customer, craftsman or month), product type or customer birthday changed.';
comment on column craftmart.order_change_log.report_period is 'Month (YYYY-MM of order_created_date) of the logged order: the customer''s and the craftsman''s mart rows of that month are recomputed. Null: every month of theirs (rows logged before months were kept).';
