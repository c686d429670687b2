-- Idempotent: re-applied by every `switchyard migrate`.
--
-- Rerank (issue 19): a request scores one query against a list of documents with a
-- cross-encoder. Its row in ai.requests has endpoint 'rerank' and input {query, documents};
-- workers claim such rows in batches (ai.claim_rerank) and run the pairs of many requests in one
-- model call, then finish them with ai.finish_embeddings (the same one-statement finish: status,
-- output, usage, final event, notifications), whose event carries the scores.

-- Queues one rerank request (the gateway's call): false when the model's queue is full. Wakes the
-- worker's claimer of this model on the channel embedding claimers listen on (ai_embed), whose
-- payload is a model name.
-- A key's request is admitted like any other (sql/074_admission.sql: budgets and rate limits,
-- `p_tokens` reserved, SQLSTATE SY429 on a refusal).
drop function if exists ai.enqueue_rerank(uuid, text, text, text, jsonb, jsonb, uuid, integer, text, integer);
create or replace function ai.enqueue_rerank(
  p_id uuid, p_model text, p_requested_model text, p_query text, p_documents jsonb, p_params jsonb,
  p_key uuid, p_max_attempts integer, p_listener text, p_bound integer,
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
  -- max_attempts in its column too: the reaper reads it there (it gave rerank rows 3, the claim 5).
  insert into ai.requests (id, endpoint, model, requested_model, input, params, key_id, db_role, listener, team_id, reservation, max_attempts)
  values (p_id, 'rerank', p_model, p_requested_model, jsonb_build_object('query', p_query, 'documents', p_documents),
          p_params || jsonb_build_object('max_attempts', p_max_attempts), p_key, p_params->>'db_role', p_listener,
          (adm->>'team')::uuid, nullif(adm->'reservation', 'null'::jsonb), p_max_attempts);
  perform pg_notify('ai_embed', p_model);
  return true;
end $$;

-- Claims up to p_limit queued rerank requests of a model, oldest first, and reclaims those left
-- 'running' past p_stale (their worker died); one out of attempts is failed with an error its
-- waiter receives. The same rules as ai.claim_embeddings, for the other endpoint.
create or replace function ai.claim_rerank(p_model text, p_worker text, p_limit integer, p_stale interval default '2 minutes')
returns table (id uuid, input jsonb) language plpgsql as $$
declare
  gone record;
begin
  perform set_config('synchronous_commit', 'off', true);
  for gone in
    update ai.requests r
       set status = 'failed', finished_at = clock_timestamp(),
           error = jsonb_build_object('message', 'The request failed on every attempt (its workers stopped while running it).',
                                      'type', 'server_error', 'param', null, 'code', 'attempts_exhausted')
     where r.model = p_model and r.endpoint = 'rerank' and r.status = 'running'
       and r.started_at < clock_timestamp() - p_stale
       and r.attempts >= coalesce((r.params->>'max_attempts')::int, 5)
    returning r.id, r.error
  loop
    perform ai.publish_final(gone.id, jsonb_build_object('type', 'error', 'status', 500, 'error', gone.error));
  end loop;

  return query
  update ai.requests r
     set status = 'running', started_at = clock_timestamp(), worker = p_worker, attempts = r.attempts + 1
   where r.id in (
     select q.id from ai.requests q
      where q.model = p_model and q.endpoint = 'rerank'
        and (q.status = 'queued' or (q.status = 'running' and q.started_at < clock_timestamp() - p_stale))
      order by q.queued_at
      limit p_limit
      for update skip locked)
  returning r.id, r.input;
end $$;

-- Resolves a rerank model's name or alias, or raises as the gateway answers.
create or replace function ai._rerank_model(p_model text)
returns text language plpgsql stable as $$
declare
  m record;
begin
  select name, task into m from ai.models
   where name = p_model or p_model = any(aliases) order by name = p_model desc limit 1;
  if not found then
    raise exception 'ai.rerank: unknown model "%"', p_model using errcode = 'undefined_object',
      detail = 'param model, code model_not_found',
      hint = 'Registered models are in ai.models; add one with: switchyard models add NAME --task rerank --source HF_ID_OR_PATH';
  elsif m.task <> 'rerank' then
    raise exception 'ai.rerank: model "%" is a % model, not a rerank model', p_model, m.task using errcode = 'wrong_object_type',
      detail = 'param model, code model_not_supported';
  end if;
  return m.name;
end $$;

-- ai.rerank(model, query, documents) → (index, score): the second stage of retrieval, in SQL,
-- over the bodies a pgvector KNN found, joined back by position (README, "Rerank").
--
-- One row per document: `index` is its 0-based position in `documents` (as the HTTP API's
-- results), `score` its relevance (0..1), highest first. Like ai.chat_complete, the request is
-- queued on the side connection (committed at once, so a worker sees it while this statement
-- waits) and the outcome read through it. The worker validates the request as it does the
-- gateway's: a document too long for the model is an error naming it (SQLSTATE 22023).
-- Timeout: ai.rerank_timeout (default 60 s).
create or replace function ai.rerank(model text, query text, documents text[])
returns table (index integer, score double precision) language plpgsql volatile strict parallel unsafe
security definer set search_path = pg_catalog, public, pg_temp as $$
declare
  registered text := ai._rerank_model(model);
  request uuid := gen_random_uuid();
  timeout interval := ai._interval_setting('ai.rerank_timeout', interval '60 seconds');
  conn text;
  enqueue text;
  err jsonb;
  scores text;
begin
  if cardinality(documents) = 0 then
    return;
  end if;
  if array_position(documents, null) is not null then
    raise exception 'ai.rerank: documents[%] is null', array_position(documents, null)
      using errcode = 'null_value_not_allowed', detail = 'param documents';
  end if;
  enqueue := format('select ai.enqueue_rerank(%L::uuid, %L, %L, %L, %L::jsonb, %L::jsonb, null, 5, null, 2147483647)::text',
                    request, registered, model, query, to_jsonb(documents),
                    jsonb_build_object('source', 'sql', 'db_role', ai._caller()));
  conn := ai._embed_connection();
  begin
    perform from dblink(conn, enqueue) as t(done text);
  exception when connection_exception then
    conn := ai._embed_connection(true);
    perform from dblink(conn, enqueue) as t(done text);
  end;
  err := ai._await_request(conn, request, 'ai.rerank', 'scores', model, registered, timeout, 'ai.rerank_timeout = ''5 min''', 0.05);
  if err is not null then
    raise exception 'ai.rerank: %', coalesce(err->>'message', 'the rerank failed')
      using errcode = case when err->>'type' = 'invalid_request_error' then 'invalid_parameter_value' else 'external_routine_exception' end,
            detail = format('param %s, code %s, model %s, request %s', coalesce(err->>'param', 'none'), coalesce(err->>'code', 'none'), registered, request);
  end if;
  select t.scores into scores
    from dblink(conn, format('select (output->''scores'')::text from ai.requests where id = %L', request)) as t(scores text);
  return query
    select (s.ord - 1)::integer, s.v::double precision
      from jsonb_array_elements_text(scores::jsonb) with ordinality s(v, ord)
     order by s.v::double precision desc, s.ord;
end $$;
