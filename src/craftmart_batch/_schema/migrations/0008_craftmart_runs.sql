-- grain: one row per finished run; refresh: appended.
create table craftmart.runs (
    run_id       bigint generated always as identity not null,
    started_at   timestamptz not null,
    finished_at  timestamptz not null,
    mode         varchar not null,
    outcome      varchar not null,
    stats        jsonb not null,
    constraint runs_pk primary key (run_id)
);
comment on table craftmart.runs is 'History of craftmart-batch runs: timing, outcome and per-stage row counts.';
