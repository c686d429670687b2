-- `store: false` requests still waiting to have their text removed (sql/075_store.sql). The
-- sweep runs every few seconds in every serve and worker: this index holds only the few rows
-- not redacted yet, so the sweep never reads the request log itself.
create index requests_unstored_idx on ai.requests (finished_at)
  where params @> '{"store": false}' and not (params ? 'redacted_at');
