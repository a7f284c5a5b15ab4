-- grain: an index of the quarantine; refresh: applied once.
-- Keys that repeat in their source, and rows without a key, have no stored hash of their
-- own: every run that pulls the changed rows reads them again, and finds them here (every
-- copy of a repeated key but one is quarantined as duplicate_order_key). Read from this
-- index, that costs a few rows, not a scan of the quarantine.
create index quarantine_read_every_run_ix on craftmart.quarantine (source_name, source_order_id)
    where source_order_id is null or 'duplicate_order_key' = any(reasons);
comment on table craftmart.source_rows is 'Hash of every source row as the last run read it: a run pulls in full only the rows whose hash changed, and the rows of the people they touch. Keys without a row here (no key, repeated key) are pulled on every run; those of the last run are found in craftmart.quarantine, so that one gone from its source leaves the warehouse too.';
