"""An independent SQL oracle: SPEC §5's marts written as plain PostgreSQL over ``dwh``, and
SPEC §3's validity over the four default sources.

The pipeline computes the marts with Polars (``craftmart_batch.transform.marts``); the
tests compare its rows with these queries, which share no code with it. Numeric values
travel as text (ADBC returns ``numeric`` as an opaque type) and become ``pl.Decimal``
of the mart column's precision and scale here.

Choices the SQL makes explicit:

- averages divide a ``numeric(40, 20)`` so that ``round()`` sees the exact quotient
  (PostgreSQL's default division scale could round a x.xx4999... up before ``round``);
- ``age()`` gets ``timestamp`` arguments: on two dates PostgreSQL would pick
  ``age(timestamptz, timestamptz)``, whose result depends on the session time zone;
- product types that are null are not counted: ``top_product_category`` is null only
  when every order of the group has a null type.
"""

from __future__ import annotations

from typing import Any

import polars as pl

_NUMERIC_COLUMNS = {
    "customer_money": pl.Decimal(15, 2),
    "craftsman_money": pl.Decimal(15, 2),
    "platform_money": pl.Decimal(15, 2),
    "avg_price_order": pl.Decimal(10, 2),
    "avg_age_customer": pl.Decimal(5, 1),
    "median_time_order_completed": pl.Decimal(10, 1),
}

CUSTOMER_MART_SQL = """
with
f_order as (
    select * from dwh.f_order
),

d_product as (
    select * from dwh.d_product
),

d_customer as (
    select * from dwh.d_customer
),

d_craftsman as (
    select * from dwh.d_craftsman
),

orders_in_periods as (
    select
        f_order.customer_id,
        f_order.craftsman_id,
        f_order.order_status,
        f_order.product_price,
        f_order.order_completion_date - f_order.order_created_date as days_to_complete,
        d_product.product_type,
        to_char(f_order.order_created_date, 'YYYY-MM') as report_period
    from f_order
    inner join d_product on d_product.product_id = f_order.product_id
),

metrics_per_customer_month as (
    select
        customer_id,
        report_period,
        sum(product_price) as price_sum,
        count(*) as count_order,
        percentile_cont(0.5) within group (order by days_to_complete) as median_days,
        count(*) filter (where order_status = 'created') as count_order_created,
        count(*) filter (where order_status = 'in progress') as count_order_in_progress,
        count(*) filter (where order_status = 'delivery') as count_order_delivery,
        count(*) filter (where order_status = 'done') as count_order_done
    from orders_in_periods
    group by customer_id, report_period
),

product_types_ranked as (
    select
        customer_id,
        report_period,
        product_type,
        row_number() over (
            partition by customer_id, report_period
            order by count(*) desc, product_type collate "C"
        ) as type_rank
    from orders_in_periods
    where product_type is not null
    group by customer_id, report_period, product_type
),

craftsmen_ranked as (
    select
        orders_in_periods.customer_id,
        orders_in_periods.report_period,
        orders_in_periods.craftsman_id,
        row_number() over (
            partition by orders_in_periods.customer_id, orders_in_periods.report_period
            order by
                count(*) desc,
                d_craftsman.craftsman_email collate "C",
                orders_in_periods.craftsman_id
        ) as craftsman_rank
    from orders_in_periods
    inner join d_craftsman on d_craftsman.craftsman_id = orders_in_periods.craftsman_id
    group by
        orders_in_periods.customer_id,
        orders_in_periods.report_period,
        orders_in_periods.craftsman_id,
        d_craftsman.craftsman_email
)

select
    d_customer.customer_id,
    d_customer.customer_name,
    d_customer.customer_address,
    d_customer.customer_birthday,
    d_customer.customer_email,
    m.price_sum::numeric(15, 2)::text as customer_money,
    round(0.10 * m.price_sum, 2)::numeric(15, 2)::text as platform_money,
    m.count_order,
    round(m.price_sum::numeric(40, 20) / m.count_order, 2)::numeric(10, 2)::text
        as avg_price_order,
    round(m.median_days::numeric, 1)::numeric(10, 1)::text as median_time_order_completed,
    product_types_ranked.product_type as top_product_category,
    craftsmen_ranked.craftsman_id as top_craftsman_id,
    m.count_order_created,
    m.count_order_in_progress,
    m.count_order_delivery,
    m.count_order_done,
    m.count_order - m.count_order_done as count_order_not_done,
    m.report_period
from metrics_per_customer_month as m
inner join d_customer on d_customer.customer_id = m.customer_id
left join product_types_ranked
    on product_types_ranked.customer_id = m.customer_id
    and product_types_ranked.report_period = m.report_period
    and product_types_ranked.type_rank = 1
left join craftsmen_ranked
    on craftsmen_ranked.customer_id = m.customer_id
    and craftsmen_ranked.report_period = m.report_period
    and craftsmen_ranked.craftsman_rank = 1
order by m.customer_id, m.report_period collate "C"
"""

CRAFTSMAN_MART_SQL = """
with
f_order as (
    select * from dwh.f_order
),

d_product as (
    select * from dwh.d_product
),

d_customer as (
    select * from dwh.d_customer
),

d_craftsman as (
    select * from dwh.d_craftsman
),

orders_in_periods as (
    select
        f_order.craftsman_id,
        f_order.order_status,
        f_order.product_price,
        f_order.order_completion_date - f_order.order_created_date as days_to_complete,
        date_part(
            'year',
            age(f_order.order_created_date::timestamp, d_customer.customer_birthday::timestamp)
        )::bigint as customer_age,
        d_product.product_type,
        to_char(f_order.order_created_date, 'YYYY-MM') as report_period
    from f_order
    inner join d_product on d_product.product_id = f_order.product_id
    inner join d_customer on d_customer.customer_id = f_order.customer_id
),

metrics_per_craftsman_month as (
    select
        craftsman_id,
        report_period,
        sum(product_price) as price_sum,
        count(*) as count_order,
        -- avg() skips the orders whose customer has no birthday (a null age)
        avg(customer_age::numeric(40, 20)) as avg_age,
        percentile_cont(0.5) within group (order by days_to_complete) as median_days,
        count(*) filter (where order_status = 'created') as count_order_created,
        count(*) filter (where order_status = 'in progress') as count_order_in_progress,
        count(*) filter (where order_status = 'delivery') as count_order_delivery,
        count(*) filter (where order_status = 'done') as count_order_done
    from orders_in_periods
    group by craftsman_id, report_period
),

product_types_ranked as (
    select
        craftsman_id,
        report_period,
        product_type,
        row_number() over (
            partition by craftsman_id, report_period
            order by count(*) desc, product_type collate "C"
        ) as type_rank
    from orders_in_periods
    where product_type is not null
    group by craftsman_id, report_period, product_type
)

select
    d_craftsman.craftsman_id,
    d_craftsman.craftsman_name,
    d_craftsman.craftsman_address,
    d_craftsman.craftsman_birthday,
    d_craftsman.craftsman_email,
    (m.price_sum - round(0.10 * m.price_sum, 2))::numeric(15, 2)::text as craftsman_money,
    round(0.10 * m.price_sum, 2)::numeric(15, 2)::text as platform_money,
    m.count_order,
    round(m.price_sum::numeric(40, 20) / m.count_order, 2)::numeric(10, 2)::text
        as avg_price_order,
    round(m.avg_age, 1)::numeric(5, 1)::text as avg_age_customer,
    round(m.median_days::numeric, 1)::numeric(10, 1)::text as median_time_order_completed,
    product_types_ranked.product_type as top_product_category,
    m.count_order_created,
    m.count_order_in_progress,
    m.count_order_delivery,
    m.count_order_done,
    m.count_order - m.count_order_done as count_order_not_done,
    m.report_period
from metrics_per_craftsman_month as m
inner join d_craftsman on d_craftsman.craftsman_id = m.craftsman_id
left join product_types_ranked
    on product_types_ranked.craftsman_id = m.craftsman_id
    and product_types_ranked.report_period = m.report_period
    and product_types_ranked.type_rank = 1
order by m.craftsman_id, m.report_period collate "C"
"""


#: Every order row of the four default sources, written by hand from
#: ``shared/sources.sql`` (not from the pipeline's mapping): its source, its table row
#: (``row_key``), its order key, the values the validity rules read, and whether every
#: row it joins to exists (``joined``). A query over it starts ``with source_rows as
#: (SOURCE_ROWS_SQL)``.
SOURCE_ROWS_SQL = """
    select
        'source1' as source, wide.id as row_key, wide.order_id as order_key,
        wide.order_created_date as created, wide.order_completion_date as completion,
        wide.order_status as status, wide.product_price as price, wide.product_type,
        wide.craftsman_email, wide.customer_email, wide.craftsman_birthday,
        wide.customer_birthday, true as joined
    from source1.craft_market_wide as wide
    union all
    select
        'source2', orders.order_id, orders.order_id, orders.order_created_date,
        orders.order_completion_date, orders.order_status, products.product_price,
        products.product_type, products.craftsman_email, orders.customer_email,
        products.craftsman_birthday, orders.customer_birthday,
        products.craftsman_id is not null
    from source2.craft_market_orders_customers as orders
    left join source2.craft_market_masters_products as products
        on products.craftsman_id = orders.craftsman_id
        and products.product_id = orders.product_id
    union all
    select
        'source3', orders.order_id, orders.order_id, orders.order_created_date,
        orders.order_completion_date, orders.order_status, orders.product_price,
        orders.product_type, craftsmen.craftsman_email, customers.customer_email,
        craftsmen.craftsman_birthday, customers.customer_birthday,
        craftsmen.craftsman_id is not null and customers.customer_id is not null
    from source3.craft_market_orders as orders
    left join source3.craft_market_craftsmans as craftsmen
        on craftsmen.craftsman_id = orders.craftsman_id
    left join source3.craft_market_customers as customers
        on customers.customer_id = orders.customer_id
    union all
    select
        'external_source', orders.id, orders.order_id, orders.order_created_date,
        orders.order_completion_date, orders.order_status, orders.product_price,
        orders.product_type, orders.craftsman_email, customers.customer_email,
        orders.craftsman_birthday, customers.customer_birthday,
        customers.customer_id is not null
    from external_source.craft_products_orders as orders
    left join external_source.customers as customers
        on customers.customer_id = orders.customer_id
"""

#: SPEC §3 over ``SOURCE_ROWS_SQL``: per order key, how many source rows it has and
#: whether one of them is valid. An order key is in ``dwh.f_order`` exactly when it has
#: a valid row; every other row of it is in quarantine.
ORDER_VALIDITY_SQL = f"""
with
source_rows as ({SOURCE_ROWS_SQL}),

rows_checked as (
    select
        source as source_name,
        order_key as source_order_id,
        coalesce(
            created is not null
            and lower(btrim(status)) in ('created', 'in progress', 'delivery', 'done')
            and (completion is null or completion >= created)
            and price > 0
            and price <= 10000000
            and btrim(craftsman_email) ~ '^[^@[:space:]]+@[^@[:space:]]+$'
            and btrim(customer_email) ~ '^[^@[:space:]]+@[^@[:space:]]+$'
            and joined
            and created between date '1900-01-01' and date '2999-12-31'
            and coalesce(completion between date '1900-01-01' and date '2999-12-31', true)
            and coalesce(craftsman_birthday between date '1900-01-01'
                         and date '2999-12-31', true)
            and coalesce(customer_birthday between date '1900-01-01'
                         and date '2999-12-31', true),
            false
        ) as is_valid
    from source_rows
)

select
    source_name,
    source_order_id,
    count(*) as source_rows,
    bool_or(is_valid) as has_valid_row
from rows_checked
group by source_name, source_order_id
"""


def expected_order_validity(conn: Any) -> pl.DataFrame:
    """Per order key of the default sources: ``source_rows`` and ``has_valid_row``."""
    return _query(conn, ORDER_VALIDITY_SQL)


def expected_customer_mart(conn: Any) -> pl.DataFrame:
    """``marts.customer_report_datamart`` without ``id``, as SPEC §5 defines it from ``dwh``."""
    return _query(conn, CUSTOMER_MART_SQL)


def expected_craftsman_mart(conn: Any) -> pl.DataFrame:
    """``marts.craftsman_report_datamart`` without ``id``, as SPEC §5 defines it from ``dwh``."""
    return _query(conn, CRAFTSMAN_MART_SQL)


def _query(conn: Any, sql: str) -> pl.DataFrame:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        table = cur.fetch_arrow_table()
    finally:
        cur.close()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(
        pl.col(name).cast(dtype)
        for name, dtype in _NUMERIC_COLUMNS.items()
        if name in frame.columns
    )
