-- Idempotent: re-applied by every `switchyard migrate`.

-- What a cached vector was computed under: SHA-256 over the model's source, revision, dtype,
-- pooling, normalize, truncate and context_length, each written as its UTF-8 length, ':' and
-- itself (so no two configurations read alike). Null for an unknown model. `dimensions` is left
-- out: the cache holds full vectors, and the column is filled in by the first worker to load
-- the model. The worker computes the same digest (src/worker/embedding/cache-key.ts).
create or replace function ai.embedding_model_fingerprint(p_model text)
returns bytea language sql stable strict as $$
  select digest(convert_to(string_agg(octet_length(f)::text || ':' || f, '' order by i), 'UTF8'), 'sha256')
    from ai.models m,
         unnest(array[m.source, m.revision, m.dtype, m.pooling, m.normalize::text, m.truncate::text,
                      coalesce(m.context_length::text, '-')]) with ordinality u(f, i)
   where m.name = p_model
$$;

-- The cache key of one embedding input under a model's fingerprint: SHA-256 of the fingerprint,
-- a kind byte (1: a text, 2: token ids) and the input (a text as UTF-8; ids as Postgres prints
-- the jsonb list, "[1, 2, 3]"). The kind byte keeps the text '[1, 2]' apart from the ids [1, 2].
-- STABLE and not STRICT, so that the planner inlines it (issue 14): it inlines an SQL function
-- only when nothing in its body is more volatile than declared (convert_to is stable), and a
-- STRICT one only when its body is strict too, which a CASE is not. Declared IMMUTABLE STRICT,
-- every call ran as a separate SQL function, parsed and planned again in each statement (the
-- cache probes of ai.embed and of the worker's claim). A null argument still gives null (digest
-- of null).
create or replace function ai.embedding_cache_key(p_fingerprint bytea, p_input jsonb)
returns bytea language sql stable as $$
  select digest(p_fingerprint || case jsonb_typeof(p_input)
    when 'string' then '\x01'::bytea || convert_to(p_input #>> '{}', 'UTF8')
    else '\x02'::bytea || convert_to(p_input::text, 'UTF8')
  end, 'sha256')
$$;

-- The cache key of a text, as ai.embedding_cache_key keys it (kind 1), for callers that hold a
-- text rather than jsonb (ai.embed). ai.embedding_cache_key reads its argument three times, so
-- the planner does not inline a call whose argument is an expression (to_jsonb(input)); this
-- one reads its text once and is inlined (ai.embed's cache probe, once per row of an update).
-- Tests hold the two to the same keys.
create or replace function ai._embedding_text_key(p_fingerprint bytea, p_text text)
returns bytea language sql stable strict as $$
  select digest(p_fingerprint || '\x01'::bytea || convert_to(p_text, 'UTF8'), 'sha256')
$$;

-- The cache key of an input for a registered model (by its name).
create or replace function ai.embedding_input_hash(p_model text, p_input jsonb)
returns bytea language sql stable strict as $$
  select ai.embedding_cache_key(ai.embedding_model_fingerprint(p_model), p_input)
$$;

-- Records an embedding request and wakes the workers that serve its model, in the caller's
-- transaction: the HTTP gateway calls it directly, ai.embed() through a side connection so the
-- request is committed (and visible to workers) while the calling statement waits for it.
-- Embedding requests are not graphile-worker jobs: workers claim them in batches with
-- ai.claim_embeddings (one statement for up to hundreds of requests), because per-request job
-- bookkeeping cost more than the model itself for short inputs.
-- (p_max_attempts: how many claims a request gets before it is failed; p_listener: the LISTEN
-- channel of the process waiting on it, see sql/010_events.sql.)
drop function if exists ai.enqueue_embedding(uuid, text, text, jsonb, jsonb, uuid, integer);
-- p_priority: 0 interactive (HTTP, SDK, ai.embed), 1 batch work (ai.submit_embed; Batch API
-- lines are written by src/db/batches-repo.ts with 1 too). The eight-argument signature came
-- first: dropped so that calls with eight arguments are not ambiguous.
drop function if exists ai.enqueue_embedding(uuid, text, text, jsonb, jsonb, uuid, integer, text);
create or replace function ai.enqueue_embedding(
  p_id uuid, p_model text, p_requested_model text, p_inputs jsonb, p_params jsonb default '{}',
  p_key uuid default null, p_max_attempts integer default 5, p_listener text default null,
  p_priority smallint default 0
) returns void language plpgsql as $$
begin
  -- team_id: the key's team, as for chat (ai.enqueue_request), so a team's role sees it (0042_tenant_rls.sql).
  insert into ai.requests (id, endpoint, model, requested_model, input, params, key_id, db_role, listener, priority, team_id)
  values (p_id, 'embeddings', p_model, p_requested_model, jsonb_build_object('input', p_inputs),
          p_params || jsonb_build_object('max_attempts', p_max_attempts), p_key, p_params->>'db_role', p_listener, p_priority,
          (select k.team_id from ai.api_keys k where k.id = p_key));
  perform pg_notify('ai_embed', p_model);
end $$;

-- Many embedding requests at once, as serve coalesces the ones that arrive together (issue 14):
-- one statement, one transaction and one notification for the group, still one row per API
-- request (its own id, key, usage and timings in the log). The queue bound is checked here, in
-- the statement that inserts: of the group, only as many rows as the model's queue has room for
-- (fewer than p_bound queued) are written, in order. Then each request of a key with a budget
-- or a rate limit (or whose team has one) is admitted on its own (ai._admit, sql/074_admission.sql,
-- charging p_tokens[i], what its inputs may use at most): a refusal fails that request alone.
-- Returns a row per request written or refused: (id, refusal, limits); a request neither
-- written nor refused found the queue full. p_inputs is a jsonb array of input lists, p_params
-- an array of objects, both in the order of p_ids.
drop function if exists ai.enqueue_embeddings(uuid[], text, text[], jsonb, jsonb[], uuid[], integer, text, integer);
create or replace function ai.enqueue_embeddings(
  p_ids uuid[], p_model text, p_requested_models text[], p_inputs jsonb, p_params jsonb[],
  p_keys uuid[], p_max_attempts integer, p_listener text, p_bound integer,
  p_tokens bigint[] default null, p_window interval default '1 minute'
) returns table (id uuid, refusal jsonb, limits jsonb) language plpgsql as $$
#variable_conflict use_column
declare
  room integer := p_bound - (select count(*) from (select 1 from ai.requests r
                                where r.model = p_model and r.status = 'queued' and r.priority = 0 limit p_bound) q);
  at_ timestamptz := clock_timestamp();
  limited uuid[];
  adm jsonb;
  written integer := 0;
  i integer;
begin
  if room <= 0 then
    return;
  end if;
  -- The keys that need admission: most have no limits, and their requests go in one insert.
  select array_agg(k.id) into limited
    from ai.api_keys k left join ai.teams t on t.id = k.team_id
   where k.id = any(p_keys)
     and (k.budget_tokens is not null or k.rpm_limit is not null or k.tpm_limit is not null
          or t.budget_tokens is not null or t.rpm_limit is not null or t.tpm_limit is not null);
  if limited is null then
    -- None: the whole group (as much as there is room for) in one insert.
    return query
    with w as (
      insert into ai.requests (id, endpoint, model, requested_model, input, params, key_id, listener, team_id)
      select t.id, 'embeddings', p_model, t.requested, jsonb_build_object('input', p_inputs->(t.ord::int - 1)),
             t.params || jsonb_build_object('max_attempts', p_max_attempts), t.key, p_listener,
             (select k.team_id from ai.api_keys k where k.id = t.key)
        from unnest(p_ids, p_requested_models, p_params, p_keys) with ordinality t(id, requested, params, key, ord)
       where t.ord <= room
      returning ai.requests.id)
    select w.id, null::jsonb, null::jsonb from w;
    if found then
      perform pg_notify('ai_embed', p_model);
    end if;
    return;
  end if;
  for i in 1 .. least(coalesce(array_length(p_ids, 1), 0), room) loop
    adm := null;
    refusal := null;
    if limited is not null and p_keys[i] = any(limited) then
      begin
        adm := ai._admit(p_keys[i], coalesce(p_tokens[i], 0), p_window, at_);
      exception when sqlstate 'SY429' then
        -- The block's subtransaction is rolled back: nothing of this request was charged.
        get stacked diagnostics refusal = pg_exception_detail;
      end;
    end if;
    id := p_ids[i];
    limits := adm->'limits';
    if refusal is null then
      -- team_id: the key's team, as for chat, so a team's role sees it (0042_tenant_rls.sql).
      insert into ai.requests (id, endpoint, model, requested_model, input, params, key_id, listener, team_id, reservation)
      values (p_ids[i], 'embeddings', p_model, p_requested_models[i], jsonb_build_object('input', p_inputs->(i - 1)),
              p_params[i] || jsonb_build_object('max_attempts', p_max_attempts), p_keys[i], p_listener,
              coalesce((adm->>'team')::uuid, (select k.team_id from ai.api_keys k where k.id = p_keys[i])),
              nullif(adm->'reservation', 'null'::jsonb));
      written := written + 1;
    end if;
    return next;
  end loop;
  if written > 0 then
    perform pg_notify('ai_embed', p_model);
  end if;
end $$;

-- A float32 vector as ai.requests.vectors holds it (little-endian, p_len bytes from byte
-- p_off, 0-based) as a pgvector value, decoded exactly (every float32 is a float8, and back).
create or replace function ai._float32_vector(p bytea, p_off integer, p_len integer)
returns vector language sql immutable strict as $$
  select (array_agg(case when (x.b >> 31) = 1 then -1::float8 else 1::float8 end *
                    case when ((x.b >> 23) & 255) = 0 then (x.b & 8388607)::float8 * power(2::float8, -149)
                         else ((x.b & 8388607) + 8388608)::float8 * power(2::float8, ((x.b >> 23) & 255)::int - 150) end
                    order by i))::real[]::vector
    from generate_series(0, p_len / 4 - 1) i,
         lateral (select get_byte(p, p_off + 4 * i)::bigint | (get_byte(p, p_off + 4 * i + 1)::bigint << 8)
                         | (get_byte(p, p_off + 4 * i + 2)::bigint << 16) | (get_byte(p, p_off + 4 * i + 3)::bigint << 24) as b) x
$$;

-- Finishes a batch of claimed embedding requests in one statement (one transaction, one
-- notification per listening process): each row still 'running' under this worker gets its
-- outcome and its vectors (float32 bytes, cut from p_vectors: p_offsets[i] bytes in, p_lengths[i]
-- long), and its final event. A row cancelled or reclaimed meanwhile is left alone.
-- A request of ai.submit_embed with a target has its vector written into the caller's row here,
-- as the caller (ai._write_target), so exactly once; a write that fails fails the request.
create or replace function ai.finish_embeddings(
  p_worker text, p_ids uuid[], p_statuses text[], p_outputs jsonb[], p_usages jsonb[],
  p_errors jsonb[], p_events jsonb[], p_vectors bytea, p_offsets integer[], p_lengths integer[]
) returns integer language plpgsql as $$
declare
  ids uuid[];
  seqs integer[];
  w record;
  failure jsonb;
  failed uuid[] := '{}';
  failures jsonb[] := '{}';
  finished integer;
begin
  -- Asynchronous commit for this transaction: a commit that waits for its WAL flush costs ~2 ms
  -- here (fdatasync), once per batch and, for ai.embed called per row, once per row. What a
  -- crash could lose is recomputable: the row goes back to 'running', is reclaimed once stale
  -- and embedded again, to the same vectors (a client that already has them loses nothing).
  -- Not when the batch writes into an application's rows (below): that commit is theirs.
  perform set_config('synchronous_commit', 'off', true);
  for w in
    select r.id, r.params->'target' as target, r.db_role, d.off, d.len
      from ai.requests r join unnest(p_ids, p_statuses, p_offsets, p_lengths) as d(id, status, off, len) on d.id = r.id
     where r.status = 'running' and r.worker = p_worker and d.status = 'completed' and r.params ? 'target'
     order by r.id
       for update of r
  loop
    perform set_config('synchronous_commit', 'on', true);
    failure := ai._write_target(w.target, w.db_role, jsonb_build_object('vector', ai._float32_vector(p_vectors, w.off, w.len)::text));
    if failure is not null then
      failed := failed || w.id;
      failures := failures || failure;
    end if;
  end loop;
  with d as (
    select t.*, f.failure
      from unnest(p_ids, p_statuses, p_outputs, p_usages, p_errors, p_events, p_offsets, p_lengths)
        as t(id, status, output, usage, error, event, off, len)
      left join unnest(failed, failures) as f(id, failure) on f.id = t.id),
  u as (
    update ai.requests r
       set status = case when d.failure is null then d.status else 'failed' end, output = d.output, usage = d.usage,
           error = coalesce(d.failure, d.error),
           vectors = case when d.len > 0 then substring(p_vectors from d.off + 1 for d.len) end,
           finished_at = clock_timestamp()
      from d
     where r.id = d.id and r.status = 'running' and r.worker = p_worker
    returning r.id, r.listener, case when d.failure is null then d.event
                         else jsonb_build_object('type', 'error', 'status', 400, 'error', d.failure) end as event),
  e as (
    insert into ai.request_events (request_id, seq, data)
    select u.id, coalesce((select max(x.seq) + 1 from ai.request_events x where x.request_id = u.id), 0), u.event
      from u
    returning request_id, seq)
  select array_agg(e.request_id) filter (where u.listener is not null), array_agg(e.seq) filter (where u.listener is not null),
         count(*)::integer
    into ids, seqs, finished
    from e join u on u.id = e.request_id;
  -- Only requests that someone listens for (serve's); ai.embed's name no listener (it reads its
  -- row). Skipping the call is what counts: ai._notify_events is an SQL function, parsed and
  -- planned again in each transaction, 0.5-0.8 ms of every finish measured under load, spent
  -- between a request's completion and the commit that shows it (issue 14).
  if ids is not null then
    perform ai._notify_events(ids, seqs);
  end if;
  return finished;
end $$;

-- Claims up to p_limit queued embedding requests of a model for a worker, interactive ones
-- (priority 0) first, then batch work (priority 1: ai.submit_embed, Batch API lines), each oldest
-- first, and also reclaims requests left 'running' longer than p_stale (their worker died: a
-- batch takes seconds). A request out of attempts is failed instead, with an error its waiter
-- receives. Batch rows are capped at p_batch_limit per claim: the model runs one call at a time,
-- so an interactive request that arrives during a backlog waits for at most one call of that
-- many batch rows, not for one of p_limit (issue 17: batch work never starves interactive work).
drop function if exists ai.claim_embeddings(text, text, integer, interval);
create or replace function ai.claim_embeddings(p_model text, p_worker text, p_limit integer, p_stale interval default '2 minutes',
                                               p_batch_limit integer default null)
returns table (id uuid, input jsonb) language plpgsql as $$
declare
  gone record;
  interactive uuid[];
  batch uuid[];
begin
  -- Asynchronous commit (see ai.finish_embeddings): a lost claim leaves the rows queued.
  perform set_config('synchronous_commit', 'off', true);
  for gone in
    update ai.requests r
       set status = 'failed', finished_at = clock_timestamp(),
           error = jsonb_build_object('message', 'The request failed on every attempt (its workers stopped while running it).',
                                      'type', 'server_error', 'param', null, 'code', 'attempts_exhausted')
     where r.model = p_model and r.endpoint = 'embeddings' and r.status = 'running'
       and r.started_at < clock_timestamp() - p_stale
       and r.attempts >= coalesce((r.params->>'max_attempts')::int, 5)
    returning r.id, r.error
  loop
    perform ai.publish_final(gone.id, jsonb_build_object('type', 'error', 'status', 500, 'error', gone.error));
  end loop;

  -- Interactive rows first, then batch rows into the room left (at most p_batch_limit); each
  -- locked as it is chosen (FOR UPDATE SKIP LOCKED: workers share the queue).
  interactive := array(
    select q.id from ai.requests q
     where q.model = p_model and q.endpoint = 'embeddings' and q.priority = 0
       and (q.status = 'queued' or (q.status = 'running' and q.started_at < clock_timestamp() - p_stale))
     order by q.queued_at
     limit p_limit
     for update skip locked);
  batch := array(
    select q.id from ai.requests q
     where q.model = p_model and q.endpoint = 'embeddings' and q.priority > 0
       and (q.status = 'queued' or (q.status = 'running' and q.started_at < clock_timestamp() - p_stale))
     order by q.priority, q.queued_at
     limit least(p_limit - cardinality(interactive), coalesce(p_batch_limit, p_limit))
     for update skip locked);
  return query
  update ai.requests r
     set status = 'running', started_at = clock_timestamp(), worker = p_worker, attempts = r.attempts + 1
   where r.id = any(interactive || batch)
  returning r.id, r.input;
end $$;

-- Publishes the last event of a request that has just ended (in the same statement or
-- transaction), after whatever earlier attempts published. Nothing is written for a request
-- still queued or running: its events are for the attempt that owns it (ai.publish_event).
create or replace function ai.publish_final(p_request uuid, p_data jsonb)
returns void language sql as $$
  select ai._emit_event(p_request,
           coalesce((select max(seq) + 1 from ai.request_events where request_id = p_request), 0), p_data)
    from ai.requests
   where id = p_request and status in ('completed', 'failed', 'cancelled')
$$;
