-- A bound on each model's queue: past it the gateway answers 429 with Retry-After instead of
-- accepting work it cannot do soon (null: SWITCHYARD_MAX_QUEUE, default 1000).
alter table ai.models add column max_queue integer check (max_queue > 0);

-- Counting a model's queued requests reads at most max_queue index entries.
create index requests_queued_by_model_idx on ai.requests (model) where status = 'queued';
