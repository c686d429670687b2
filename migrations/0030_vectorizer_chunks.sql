-- Chunking vectorizers (issue 21): many vectors per source row. Functions are in
-- sql/040_vectorizers.sql (create_vectorizer, the claim and finish steps) and sql/045_search.sql.

-- chunking: null for a one-vector-per-row vectorizer (the destination has the source's key,
-- embedding, model, updated_at); otherwise how the worker splits the text
-- ({"implementation": "none" | "recursive" | "tokens", "chunk_size", "chunk_overlap", "separators"}),
-- and the destination holds the key, chunk_seq, chunk, embedding, model, updated_at.
-- formatting: a template over $chunk and the source's columns, embedded instead of the chunk.
-- view: the view joining the chunks to their source rows (chunking vectorizers only).
alter table ai.vectorizers add column chunking jsonb;
alter table ai.vectorizers add column formatting text;
alter table ai.vectorizers add column view regclass;

-- create_vectorizer gains chunking and formatting; the old signature goes, so that a call with
-- today's arguments is not ambiguous between the two.
drop function if exists ai.create_vectorizer(regclass, name, text, name, integer, integer, integer, interval);
