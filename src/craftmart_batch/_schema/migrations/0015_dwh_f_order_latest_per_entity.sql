-- grain: f_order's per-entity indexes; refresh: applied once.
-- A run that pulls only changed rows looks up, for every craftsman, customer and product
-- they touch, the entity's most recent unchanged order (its attributes may now win).
-- Ordered by creation date, the index finds it in a few rows instead of all of them;
-- it still serves every lookup by entity id the single-column index served.
drop index dwh.f_order_customer_ix;
drop index dwh.f_order_craftsman_ix;
drop index dwh.f_order_product_ix;
create index f_order_customer_ix on dwh.f_order (customer_id, order_created_date);
create index f_order_craftsman_ix on dwh.f_order (craftsman_id, order_created_date);
create index f_order_product_ix on dwh.f_order (product_id, order_created_date);
