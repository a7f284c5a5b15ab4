-- grain: the natural-key indexes of the three dimensions; refresh: applied once.
-- A btree entry holds at most about 2.7 kB, so a unique constraint on the email, or on a
-- product's name and description, refused valid rows with long values ("index row size
-- exceeds maximum") and stopped the run. The keys stay unique, on the md5 of each text:
-- fixed size whatever the value. Two texts with the same md5 (only a crafted collision
-- has one) cannot both load: the run fails on them rather than merge two entities.
alter table dwh.d_craftsman drop constraint d_craftsman_email_uq;
create unique index d_craftsman_email_uq on dwh.d_craftsman (md5(craftsman_email));
comment on index dwh.d_craftsman_email_uq is 'One craftsman per normalised email (on its md5: emails of any length).';

alter table dwh.d_customer drop constraint d_customer_email_uq;
create unique index d_customer_email_uq on dwh.d_customer (md5(customer_email));
comment on index dwh.d_customer_email_uq is 'One customer per normalised email (on its md5: emails of any length).';

alter table dwh.d_product drop constraint d_product_natural_uq;
create unique index d_product_natural_uq on dwh.d_product (craftsman_id, md5(product_name), md5(product_description)) nulls not distinct;
comment on index dwh.d_product_natural_uq is 'One product per craftsman, name and description (on their md5: texts of any length).';
