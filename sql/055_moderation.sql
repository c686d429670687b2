-- Idempotent: re-applied by every `switchyard migrate`.
--
-- The moderation queue (issue 22) and ai.moderate(model, input) → jsonb, one OpenAI moderation
-- result ({flagged, categories, category_scores, category_applied_input_types}) computed by a
-- worker's classifier:
--
--   select ai.moderate('guard', body)->'flagged' from comments where id = 7;
--
-- Moderation requests are queued and claimed like embedding requests (rows of ai.requests
-- claimed in batches, FOR UPDATE SKIP LOCKED; no graphile-worker job each), and they share the
-- embedding claimers' wake-up channel 'ai_embed' (its payload names the model; a worker wakes the
-- claimer of that model, whatever its task). A worker finishes each request with
-- ai.finish_request, writing {"results": [...]} into output and the results into its final event.

-- Records a moderation request, unless the model already has p_bound requests queued (then
-- false, and the caller answers 429). p_inputs: a jsonb array of texts. A key's request is
-- admitted like any other (sql/074_admission.sql: its and its team's budgets and rate limits,
-- `p_tokens` reserved; SQLSTATE SY429 on a refusal), so /v1/moderations is no way around them.
drop function if exists ai.enqueue_moderation(uuid, text, text, jsonb, jsonb, uuid, text, integer);
create or replace function ai.enqueue_moderation(
  p_id uuid, p_model text, p_requested_model text, p_inputs jsonb, p_params jsonb default '{}',
  p_key uuid default null, p_listener text default null, p_bound integer default 1000,
  p_tokens bigint default 0, p_window interval default '1 minute'
) returns boolean language plpgsql as $$
declare
  adm jsonb := '{}';
begin
  if (select count(*) from (select 1 from ai.requests where model = p_model and status = 'queued' and priority = 0 limit p_bound) q) >= p_bound then
    return false;
  end if;
  if p_key is not null then
    adm := ai._admit(p_key, p_tokens, p_window, clock_timestamp());
  end if;
  insert into ai.requests (id, endpoint, model, requested_model, input, params, key_id, db_role, listener, max_attempts, team_id, reservation)
  values (p_id, 'moderations', p_model, p_requested_model, jsonb_build_object('input', p_inputs), p_params, p_key,
          p_params->>'db_role', p_listener, 3, (adm->>'team')::uuid, nullif(adm->'reservation', 'null'::jsonb));
  perform pg_notify('ai_embed', p_model);
  return true;
end $$;

-- Claims up to p_limit queued moderation requests of a model for a worker, oldest first, and
-- reclaims those left 'running' longer than p_stale (their worker died: a batch takes
-- milliseconds). A request out of attempts is failed instead, with an error its waiter receives.
create or replace function ai.claim_moderations(p_model text, p_worker text, p_limit integer, p_stale interval default '2 minutes')
returns table (id uuid, input jsonb, attempt integer) language plpgsql as $$
declare
  gone record;
begin
  -- Asynchronous commit, as ai.claim_embeddings: a lost claim leaves the rows queued.
  perform set_config('synchronous_commit', 'off', true);
  for gone in
    update ai.requests r
       set status = 'failed', finished_at = clock_timestamp(),
           error = jsonb_build_object('message', 'The request failed on every attempt (its workers stopped while running it).',
                                      'type', 'server_error', 'param', null, 'code', 'attempts_exhausted')
     where r.model = p_model and r.endpoint = 'moderations' and r.status = 'running'
       and r.started_at < clock_timestamp() - p_stale
       and r.attempts >= coalesce(r.max_attempts, 3)
    returning r.id, r.error
  loop
    perform ai.publish_final(gone.id, jsonb_build_object('type', 'error', 'status', 500, 'error', gone.error));
  end loop;

  return query
  update ai.requests r
     set status = 'running', started_at = clock_timestamp(), worker = p_worker, attempts = r.attempts + 1
   where r.id in (
     select q.id from ai.requests q
      where q.model = p_model and q.endpoint = 'moderations'
        and (q.status = 'queued' or (q.status = 'running' and q.started_at < clock_timestamp() - p_stale))
      order by q.queued_at
      limit p_limit
      for update skip locked)
  returning r.id, r.input, r.attempts;
end $$;

-- Resolves a model name or alias to the registered name of a moderation model.
create or replace function ai._moderation_model(p_model text)
returns text language plpgsql stable as $$
declare
  m record;
begin
  select name, task into m from ai.models
   where name = p_model or p_model = any(aliases)
   order by name = p_model desc
   limit 1;
  if not found then
    raise exception 'ai.moderate: unknown model "%"', p_model
      using errcode = 'undefined_object',
            hint = 'Register a text classifier for moderation: switchyard models add NAME --task moderation --source HF_ID_OR_PATH';
  elsif m.task <> 'moderation' then
    raise exception 'ai.moderate: model "%" is a % model, not a moderation model', p_model, m.task
      using errcode = 'wrong_object_type';
  end if;
  return m.name;
end $$;

-- One input, one result. The request is enqueued through the loopback side connection (committed
-- at once, so a worker can take it while this statement waits; see sql/030_embed.sql) and
-- awaited by polling its row there (ai._await_request). After ai.moderate_timeout (default 30 s)
-- it is cancelled (57014). A failed request raises the worker's message (22023 for bad input).
-- VOLATILE and PARALLEL UNSAFE for the same reasons as ai.embed.
create or replace function ai.moderate(model text, input text)
returns jsonb language plpgsql volatile strict parallel unsafe
security definer set search_path = pg_catalog, public, pg_temp as $$
declare
  registered text := ai._moderation_model(model);
  request uuid := gen_random_uuid();
  -- Read first: a malformed setting must fail before anything is enqueued.
  timeout interval := ai._interval_setting('ai.moderate_timeout', interval '30 seconds');
  conn text;
  enqueue text;
  queued text;
  err jsonb;
  result jsonb;
begin
  enqueue := format('select ai.enqueue_moderation(%L::uuid, %L, %L, %L::jsonb, %L::jsonb)::text',
                    request, registered, model, jsonb_build_array(input),
                    jsonb_build_object('source', 'sql', 'db_role', ai._caller()));
  conn := ai._embed_connection();
  begin
    select t.done into queued from dblink(conn, enqueue) as t(done text);
  exception when connection_exception then
    conn := ai._embed_connection(true);
    select t.done into queued from dblink(conn, enqueue) as t(done text);
  end;
  if queued <> 'true' then
    raise exception 'ai.moderate: the queue for model "%" is full', model using errcode = 'insufficient_resources';
  end if;
  err := ai._await_request(conn, request, 'ai.moderate', 'moderation', model, registered, timeout, 'ai.moderate_timeout = ''2 min''', 0.02);
  if err is not null then
    raise exception 'ai.moderate: %', coalesce(err->>'message', 'the moderation failed')
      using errcode = case when err->>'type' = 'invalid_request_error' then 'invalid_parameter_value' else 'external_routine_exception' end,
            detail = format('param %s, code %s, model %s, request %s', coalesce(err->>'param', 'none'), coalesce(err->>'code', 'none'), registered, request);
  end if;
  select t.result::jsonb into result
    from dblink(conn, format('select (output->''results''->0)::text from ai.requests where id = %L', request)) as t(result text);
  return result;
end $$;
