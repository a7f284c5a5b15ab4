-- grain: one row per product (craftsman + name + description); refresh: upsert changed attributes, delete orphans.
create table dwh.d_product (
    product_id          bigint generated always as identity not null,
    craftsman_id        bigint not null,
    product_name        varchar null,
    product_description varchar null,
    product_type        varchar null,
    product_price       bigint null,
    load_dttm           timestamptz not null,
    constraint d_product_pk primary key (product_id),
    constraint d_product_natural_uq unique nulls not distinct (craftsman_id, product_name, product_description)
);
create index d_product_load_dttm_ix on dwh.d_product (load_dttm);
comment on table dwh.d_product is 'Products seen in valid orders; one row per craftsman, name and description.';
comment on column dwh.d_product.product_id is 'Surrogate key, stable across runs.';
comment on column dwh.d_product.craftsman_id is 'The craftsman who makes it (part of the identity).';
comment on column dwh.d_product.product_name is 'Name (part of the identity).';
comment on column dwh.d_product.product_description is 'Description (part of the identity).';
comment on column dwh.d_product.product_type is 'Category from the latest valid order; counted in top_product_category.';
comment on column dwh.d_product.product_price is 'Current price from the latest valid order; past orders keep their own price in f_order.';
comment on column dwh.d_product.load_dttm is 'When this row last changed.';
