-- grain: comments only, for the bookkeeping and load-date columns a user queries (`craftmart-batch docs`); refresh: applied once.
comment on column craftmart.schema_migrations.version is 'Migration number: the file name''s four-digit prefix.';
comment on column craftmart.schema_migrations.name is 'Migration name: the rest of the file name.';
comment on column craftmart.schema_migrations.applied_at is 'When the migration was applied.';

comment on column craftmart.order_change_log.change_id is 'Row id.';
comment on column craftmart.order_change_log.changed_at is 'Timestamp (run_ts) of the run that made the change.';
comment on column craftmart.order_change_log.customer_id is 'A customer whose customer_report_datamart rows the next refresh recomputes.';
comment on column craftmart.order_change_log.craftsman_id is 'A craftsman whose craftsman_report_datamart rows the next refresh recomputes.';

comment on column craftmart.quarantine.quarantine_id is 'Row id.';

comment on column craftmart.runs.run_id is 'Row id, in the order runs finished.';
comment on column craftmart.runs.started_at is 'When the run started.';
comment on column craftmart.runs.finished_at is 'When the run committed (success) or was rolled back (failed).';
comment on column craftmart.runs.mode is 'incremental, or full (run --full).';
comment on column craftmart.runs.outcome is 'success; or failed: rolled back, nothing of it kept but this row (stats.error says why).';
comment on column craftmart.runs.stats is 'The run report: rows read, loaded and quarantined per source; DWH rows inserted, updated and deleted per table; mart rows written; seconds per stage; error.';

comment on column marts.load_dates_customer_report_datamart.id is 'Row id.';
comment on column marts.load_dates_craftsman_report_datamart.id is 'Row id.';
