-- The Responses API (POST /v1/responses): one row per stored response. Its generation is an
-- ordinary chat request in ai.requests with the same id, so the queue, the workers, stream
-- events, cancellation, crash recovery and retention are those of chat completions; this row
-- holds what the Responses API adds: the turn's input items, the request's own fields, the
-- link to the previous response, who may see it, and (once it has ended) its output items.
-- `store: false` responses get no row at all.
create table ai.responses (
  -- = ai.requests.id of its generation; the wire id is 'resp_' followed by its 32 hex digits.
  -- Pruning the request (retention_requests) or deleting it removes the response with it.
  id            uuid primary key references ai.requests (id) on delete cascade,
  -- Who may see it: responses are visible to the key that made them (null: auth off, the SDK).
  -- No foreign key: a deleted key must not turn its responses into everyone's.
  key_id        uuid,
  -- The database role that made it, for responses made through the SDK (ai.my_responses).
  db_role       name,
  -- previous_response_id; no foreign key (deleting a response leaves its successors readable).
  previous_id   uuid,
  model         text not null,
  background    boolean not null default false,
  -- The response object's request fields (instructions, tools, text, metadata, temperature, ...).
  request       jsonb not null,
  -- This turn's input items, with their ids (GET /v1/responses/{id}/input_items).
  input_items   jsonb not null,
  created_at    timestamptz not null default now(),
  -- Written once the response has ended (by whichever process sees it end first); until
  -- then the response is rendered from its request's row and stream events.
  status        text check (status in ('completed', 'incomplete', 'failed', 'cancelled')),
  output        jsonb,
  usage         jsonb,
  error         jsonb,
  incomplete_details jsonb,
  completed_at  timestamptz
);
create index responses_key_idx on ai.responses (key_id, created_at);
create index responses_db_role_idx on ai.responses (db_role, created_at) where db_role is not null;
