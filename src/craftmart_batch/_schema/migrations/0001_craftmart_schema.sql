-- grain: craftmart-batch's own bookkeeping schema; refresh: created once.
create schema if not exists craftmart;
comment on schema craftmart is 'craftmart-batch bookkeeping: schema versions, quarantine, change log, run history.';

create schema if not exists dwh;
comment on schema dwh is 'The warehouse layer: conformed dimensions and the order fact, loaded from every source.';

create schema if not exists marts;
comment on schema marts is 'Data marts refreshed incrementally from dwh; always equal to a full rebuild.';

create table if not exists craftmart.schema_migrations (
    version     integer     not null,
    name        text        not null,
    applied_at  timestamptz not null default now(),
    constraint schema_migrations_pk primary key (version)
);
comment on table craftmart.schema_migrations is 'One row per applied schema migration of craftmart-batch.';
