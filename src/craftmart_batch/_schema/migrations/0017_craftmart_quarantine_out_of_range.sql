-- grain: unchanged (one row per invalid source row); refresh: unchanged.
alter table craftmart.quarantine
    add column out_of_range text[] not null default '{}';
comment on column craftmart.quarantine.out_of_range is 'The fields whose source values the warehouse cannot hold (rule date_out_of_range or price_out_of_range); their raw text is in raw.';
comment on column craftmart.quarantine.raw is 'The canonical row as read, before any normalisation; a value out of range as the source''s text.';
