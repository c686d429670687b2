-- Embedding results as bytes (issue 14): the vectors of a completed embedding request, as
-- little-endian float32, input after input (n inputs × dimensions × 4 bytes). They were
-- output->'embeddings' as jsonb numerics: about 8 KB of text per 384-dimension vector against
-- 1.5 KB here, printed by the worker, parsed by Postgres, printed again and parsed by serve.
-- output keeps the request's bookkeeping (cached, model_calls, dimensions).
alter table ai.requests add column vectors bytea;
alter table ai.requests alter column vectors set storage external;  -- float32 bytes do not compress: skip pglz's attempt
