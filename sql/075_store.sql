-- Idempotent: re-applied by every `switchyard migrate`.
--
-- `store: false` (POST /v1/chat/completions, as OpenAI's): the log keeps no prompt or output
-- text once the request has ended and its client has the answer. The row stays with what
-- accounting needs (model, key, status, usage, timings, finish reasons) and the sampling
-- numbers; params keeps `store: false` and gains `redacted_at`. Two ways in: the serve that
-- answered calls ai.redact_request as soon as it holds the final event, and every serve and
-- worker sweeps with ai.redact_unstored (rows whose serve died or whose client left).

-- Strips the text out of the given rows and deletes their stream events (which carry the text).
create or replace function ai._redact_requests(p_ids uuid[])
returns integer language plpgsql as $$
declare
  -- Kept params: numbers and flags only. A whitelist, so that a field added later (and
  -- maybe carrying text) is dropped rather than kept; stop strings, chat_template, metadata
  -- and constraints (the request's schemas and tools) go.
  keep constant text[] := array['maxTokens', 'temperature', 'topP', 'n', 'seed', 'frequencyPenalty',
    'presencePenalty', 'logprobs', 'echo', 'user', 'store', 'db_role'];
  n integer;
begin
  if coalesce(cardinality(p_ids), 0) = 0 then
    return 0;
  end if;
  delete from ai.request_events where request_id = any(p_ids);
  update ai.requests r
     set input = '{}',
         output = case when jsonb_typeof(r.output->'choices') = 'array' then jsonb_build_object('choices',
                    (select coalesce(jsonb_agg(jsonb_build_object('index', c->'index', 'finish_reason', c->'finish_reason')), '[]')
                       from jsonb_array_elements(r.output->'choices') c)) end,
         -- An error message may quote the input (a template error, an invalid schema): keep its kind only.
         error = case when r.error is not null then jsonb_build_object(
                   'message', 'Not stored (store: false).', 'type', r.error->'type', 'param', r.error->'param', 'code', r.error->'code') end,
         params = (select coalesce(jsonb_object_agg(e.key, e.value), '{}') from jsonb_each(r.params) e where e.key = any(keep))
                  || jsonb_build_object('store', false, 'redacted_at', clock_timestamp())
   where r.id = any(p_ids);
  get diagnostics n = row_count;
  return n;
end $$;

-- Redacts one `store: false` request that has completed or failed; false when there is
-- nothing to do (stored, not finished, already redacted). A cancelled request is left to the
-- sweep: its worker may still be publishing the tokens it made before it heard of the cancel.
create or replace function ai.redact_request(p_request uuid)
returns boolean language plpgsql as $$
declare
  ids uuid[];
begin
  select array_agg(id) into ids from (
    select id from ai.requests
     where id = p_request and params @> '{"store": false}' and not (params ? 'redacted_at')
       and status in ('completed', 'failed')
       for update skip locked) s;
  return ai._redact_requests(ids) > 0;
end $$;

-- Redacts every `store: false` request that ended more than p_grace ago (up to p_limit rows per
-- call; returns how many). The grace lets the serve still streaming the last events read them,
-- and a worker that is stopping after a cancel publish its last ones first. Served by
-- ai.requests_unstored_idx (migrations/0013_store.sql). Concurrent sweeps skip each other's rows.
create or replace function ai.redact_unstored(p_grace interval default interval '30 seconds', p_limit integer default 1000)
returns integer language plpgsql as $$
declare
  ids uuid[];
begin
  select array_agg(id) into ids from (
    select id from ai.requests
     where params @> '{"store": false}' and not (params ? 'redacted_at')
       and status in ('completed', 'failed', 'cancelled')
       and coalesce(finished_at, queued_at) < clock_timestamp() - p_grace
     limit p_limit
       for update skip locked) s;
  return ai._redact_requests(ids);
end $$;
