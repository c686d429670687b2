-- The embedding claim's access path, by priority first (interactive before batch work), as the
-- chat claim's is since 0017.
create index requests_embed_claim_idx on ai.requests (model, priority, queued_at)
  where endpoint = 'embeddings' and status in ('queued', 'running');
drop index if exists ai.requests_embed_queue_idx;
