-- Bounded work per request.

-- What a worker learned about a model's tokenizer when it loaded it (src/protocol/limits.ts,
-- InputBound): the gateway refuses a text that certainly cannot fit before queueing it,
-- without a tokenizer. Null until a worker has loaded the model, or when no cheap rule is
-- sound for its tokenizer.
alter table ai.models add column input_bound jsonb;

-- Embedding cache keys now separate texts from token ids unambiguously and include the model's
-- configuration (sql/020_embeddings.sql). Rows under the old keys could never be found again,
-- and one computed under another configuration must not be.
delete from ai.embedding_cache;
drop function if exists ai.embedding_input_hash(jsonb);
