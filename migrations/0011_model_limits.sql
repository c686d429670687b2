-- Bounded work per request.

-- Embedding cache keys now separate texts from token ids unambiguously and include the model's
-- configuration (sql/020_embeddings.sql). Rows under the old keys could never be found again,
-- and one computed under another configuration must not be.
delete from ai.embedding_cache;
drop function if exists ai.embedding_input_hash(jsonb);
