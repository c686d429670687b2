-- Embedding models and the embedding cache.

-- How an embedding model turns token states into one vector. `dimensions` is filled in by the
-- first worker that loads the model when it was not given at registration.
alter table ai.models
  add column pooling text not null default 'mean' check (pooling in ('mean', 'cls', 'none')),
  add column normalize boolean not null default true,
  add column dimensions integer check (dimensions > 0),
  -- Inputs longer than the context: 400 (false) or cut to fit (true).
  add column truncate boolean not null default false;

-- One row per (model, input): a repeated input is served from here instead of the model.
-- `input_hash` is SHA-256 of the input text (UTF-8), or of 'ids:' || the JSON token-id list.
-- The vector is the model's full output; `dimensions` truncation happens on the way out.
create table ai.embedding_cache (
  model       text not null,
  input_hash  bytea not null,
  embedding   vector not null,
  tokens      integer not null,
  created_at  timestamptz not null default now(),
  primary key (model, input_hash)
);
