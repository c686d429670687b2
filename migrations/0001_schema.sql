-- Switchyard's schema. Migrations are frozen in time: never edit one that has shipped; add the next.
create extension if not exists vector;
create extension if not exists pgcrypto;
create schema if not exists ai;

-- Registered models. `name` is what clients send as `model`; `aliases` are extra names
-- (e.g. gpt-4o-mini) so applications with hard-coded OpenAI names work unchanged.
create table ai.models (
  name             text primary key check (name ~ '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$'),
  task             text not null check (task in ('chat', 'embedding')),
  source           text not null,
  revision         text not null default 'main',
  dtype            text not null default 'fp32',
  device           text not null default 'cpu' check (device in ('cpu', 'cuda')),
  aliases          text[] not null default '{}',
  chat_template    text,
  context_length   integer check (context_length > 0),
  -- Default request parameters (e.g. {"temperature": 0.7}); a request's own values win.
  defaults         jsonb not null default '{}'::jsonb,
  created_at       timestamptz not null default now()
);
-- Aliases must be unique across all models and must not shadow a name; enforced by trigger below.
create index models_aliases_idx on ai.models using gin (aliases);

create function ai.models_check_names() returns trigger language plpgsql as $$
begin
  -- Serialise registrations so two concurrent inserts cannot both pass the check.
  perform pg_advisory_xact_lock(hashtext('ai.models names'));
  if exists (
    select 1 from ai.models m
    where m.name <> new.name
      and (m.name = any(new.aliases) or new.name = any(m.aliases) or m.aliases && new.aliases)
  ) or new.name = any(new.aliases) then
    raise exception 'model name or alias already in use' using errcode = 'unique_violation';
  end if;
  return new;
end $$;
create trigger models_check_names before insert or update on ai.models
  for each row execute function ai.models_check_names();

-- API keys: only a SHA-256 of the key is stored (keys are 256-bit random, so a fast hash is
-- enough); `prefix` lets a human recognise a key in `keys list`.
create table ai.api_keys (
  id          uuid primary key default gen_random_uuid(),
  name        text not null,
  prefix      text not null,
  key_hash    bytea not null unique,
  models      text[],            -- null: every model
  created_at  timestamptz not null default now(),
  last_used_at timestamptz,
  revoked_at  timestamptz
);

-- The request log: one row per request, written twice by the worker (start, finish) and
-- never updated per token. Token events go to ai.request_events instead.
create table ai.requests (
  id              uuid primary key,
  endpoint        text not null,                  -- 'chat.completions', ...
  model           text not null,                  -- the registered model name
  requested_model text not null,                  -- what the client sent (name or alias)
  input           jsonb not null,                 -- messages / prompt / input
  params          jsonb not null default '{}'::jsonb,
  stream          boolean not null default false,
  status          text not null default 'queued'
                  check (status in ('queued', 'running', 'completed', 'failed', 'cancelled')),
  output          jsonb,
  usage           jsonb,
  error           jsonb,
  key_id          uuid references ai.api_keys (id) on delete set null,
  worker          text,
  queued_at       timestamptz not null default now(),
  started_at      timestamptz,
  first_token_at  timestamptz,
  finished_at     timestamptz
);
create index requests_queued_at_idx on ai.requests using brin (queued_at);
create index requests_unfinished_idx on ai.requests (queued_at) where status in ('queued', 'running');
create index requests_key_idx on ai.requests (key_id, queued_at);

-- Stream events, append-only: the live copy goes out with pg_notify, the row is for replay
-- (a listener that missed a notification, or a client that reconnects).
create table ai.request_events (
  request_id  uuid not null references ai.requests (id) on delete cascade,
  seq         integer not null,
  data        jsonb not null,
  created_at  timestamptz not null default now(),
  primary key (request_id, seq)
);
