-- The admin request log pages newest first by (queued_at, id) (GET /admin/requests): with only
-- the BRIN index on queued_at, every page sorted the whole filtered table. A btree on the pair
-- makes a page cost its rows: at 1,000,000 rows a 50-row page took a median 12 ms with it against
-- 3.4 s without (a deep cursor page 16 ms against 3.4 s; bench/admin-log.ts, 2 shared cores).
-- Neither column is ever updated, so the worker's start and finish updates of a row stay HOT
-- (no index write) as before.
create index requests_log_idx on ai.requests (queued_at desc, id desc);
