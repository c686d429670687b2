-- Idempotent: re-applied by every `switchyard migrate`.
--
-- ai.embed(model, text) → vector and ai.embed(model, text[]) → vector[]: embeddings inside any
-- SQL statement, computed by the workers.
--
--   select id from docs order by embedding <=> ai.embed('minilm', 'query') limit 5;
--   select u.i, u.v from unnest(ai.embed('minilm', array['a', 'b'])) with ordinality u(v, i);
--
-- How it works
-- 1. Fast path: every input found in ai.embedding_cache (keyed like the workers key it) is
--    returned at once, with no queueing and no side connection (about a millisecond).
-- 2. Otherwise the request must reach a worker while this statement is still running. A row
--    and a job written in the caller's own transaction stay invisible to the workers until it
--    commits, which it cannot do while waiting for them. So the request is enqueued through a
--    loopback dblink connection: ai._enqueue_sql_embedding runs there in autocommit mode, i.e. in a
--    side transaction that commits at once (the same request row the HTTP gateway writes).
--    Alternatives considered: pg_background (not in Debian's contrib), autonomous transactions
--    (PostgreSQL has none), NOTIFY (delivered only at commit), non-transactional tricks such as
--    sequences or advisory locks (carry no payload). dblink is the standard way.
--    Under REPEATABLE READ and SERIALIZABLE, the cache is read once more before enqueueing,
--    through the side connection: its fresh snapshot sees vectors committed after the caller's
--    snapshot was taken (by an earlier call in the same transaction, or by another session).
--    The enqueue notifies the workers with the request's id ('model id' on channel ai_embed),
--    so that a worker claims it through the primary key (see ai._enqueue_sql_embedding).
-- 3. It then waits for the worker (see ai._embed_remote): under READ COMMITTED on the request's
--    wait lock while a worker runs it (ai._embed_wait_key), reading the request row about once a
--    millisecond otherwise, then its vectors from the cache, in binary form; otherwise
--    for a notification on the side connection, which LISTENs on a channel of its own that the
--    request row names, and reads the outcome through it (its fresh snapshot sees the worker's
--    commit whatever the caller's isolation level).
-- 4. Failure: the worker's error becomes an SQL error with its message (SQLSTATE 22023 for
--    input errors such as context_length_exceeded or empty_input). Timeout: after
--    ai.embed_timeout (default 30s; seconds or an interval, e.g. set ai.embed_timeout = '5s'),
--    the request is cancelled (a worker that has not started it skips it) and a 57014 error
--    says whether any worker picked it up.
--
-- The side connection
-- * ai.embed and ai.chat_complete are SECURITY DEFINER: they run as this schema's owner, which
--   opens the side connection as itself (an application role needs no rights on ai.requests or
--   the job queue, and no dblink: EXECUTE on dblink's functions is revoked from PUBLIC, so
--   nobody can run statements of their own on it). The request row names the calling role
--   (ai.requests.db_role; the role a session SET ROLE to, else its login).
-- * The connection is named by the calling role and its connection string: a role that a
--   session SET ROLE to after a more privileged role used ai.embed gets a connection of its own,
--   never the other's.
-- * Connection string: the row 'dblink_connstr' of ai.settings when present (a libpq string,
--   or the name of a dblink_fdw foreign server with a user mapping for the owner), otherwise
--   ai.embed_connstr(): this database, as the owner, to the address and port this session
--   reached (inet_server_addr/port), or to the first unix_socket_directories entry for a
--   unix-socket session. Not a GUC: any session may SET one, and the owner would connect there.
--   A superuser owner connects without a password where the server allows it (trust, peer).
--   dblink refuses a password-less connection for a non-superuser, so for a non-superuser owner
--   (`switchyard roles setup` makes one) either store its password (the row 'dblink_password',
--   added to the default string; `roles setup` stores SWITCHYARD_MIGRATE_PASSWORD there) or a
--   whole connection string ('dblink_connstr'), or, on a server that asks no password (trust),
--   grant the owner dblink_connect_u, which `switchyard roles setup` does.
--   On a read replica, point it at the primary: the request is written there.
-- * The connection is opened on first use and kept for the session, so it costs one extra
--   server connection per session (and role) that ever missed the cache. A connection that went
--   away (idle_session_timeout, a restart) is reopened once.
--
-- Volatility: VOLATILE; see the note above ai.embed(text, text[]) below for embedding a constant
-- once per query.

-- Quotes one value for a libpq connection string.
create or replace function ai._connstr_quote(p text)
returns text language sql immutable strict as $$
  select '''' || replace(replace(p, '\', '\\'), '''', '\''') || ''''
$$;

-- The role a SQL request is made for: the role this session SET ROLE to, else its login. Inside
-- a SECURITY DEFINER function current_user is the function's owner; the session's role is not.
create or replace function ai._caller()
returns name language sql stable as $$
  select case when current_setting('role') = 'none' then session_user else current_setting('role')::name end
$$;

-- The loopback connection string used when ai.settings has no 'dblink_connstr': this database,
-- as the current user (the schema's owner, in the SECURITY DEFINER functions that use it).
create or replace function ai.embed_connstr()
returns text language sql stable as $$
  select format('dbname=%s user=%s host=%s port=%s application_name=%s connect_timeout=10',
           ai._connstr_quote(current_database()),
           ai._connstr_quote(current_user),
           ai._connstr_quote(coalesce(
             host(inet_server_addr()),
             nullif(trim(split_part(current_setting('unix_socket_directories'), ',', 1)), ''),
             'localhost')),
           coalesce(inet_server_port(), current_setting('port')::integer),
           ai._connstr_quote('switchyard ai.embed'))
$$;

-- A timeout setting (ai.embed_timeout, ai.chat_timeout): seconds ('30') or an interval ('500ms', '2 min').
create or replace function ai._interval_setting(p_name text, p_default interval)
returns interval language plpgsql stable as $$
declare
  v text := nullif(trim(current_setting(p_name, true)), '');
begin
  if v is null then
    return p_default;
  elsif v ~ '^[0-9]+(\.[0-9]+)?$' then
    return make_interval(secs => v::double precision);
  end if;
  return v::interval;
exception when invalid_datetime_format or datetime_field_overflow or interval_field_overflow then
  raise exception 'invalid % "%"', p_name, v
    using errcode = 'invalid_parameter_value', hint = 'Give seconds (30) or an interval (''500ms'', ''2 min'').';
end $$;

-- Resolves a model name or alias to the registered name of an embedding model.
create or replace function ai._embedding_model(p_model text, p_caller text default 'ai.embed')
returns text language plpgsql stable as $$
declare
  m record;
begin
  select name, task into m from ai.models
   where name = p_model or p_model = any(aliases)
   order by name = p_model desc
   limit 1;
  if not found then
    raise exception '%: unknown model "%"', p_caller, p_model
      using errcode = 'undefined_object',
            hint = 'Registered models are in ai.models; add one with: switchyard models add NAME --task embedding --source HF_ID_OR_PATH';
  elsif m.task <> 'embedding' then
    raise exception '%: model "%" is a % model, not an embedding model', p_caller, p_model, m.task
      using errcode = 'wrong_object_type';
  end if;
  return m.name;
end $$;

-- The name of this session's side connection for the calling role, opened if needed. Runs
-- inside the SECURITY DEFINER callers (no EXECUTE for PUBLIC).
create or replace function ai._embed_connection(p_reconnect boolean default false)
returns text language plpgsql as $$
declare
  connstr text := coalesce((select s.value from ai.settings s where s.name = 'dblink_connstr'),
                           ai.embed_connstr() || coalesce(' password=' || ai._connstr_quote((select s.value from ai.settings s where s.name = 'dblink_password')), ''));
  conn text := 'switchyard_' || left(md5(ai._caller() || ' ' || connstr), 16);
  is_open boolean := conn = any(coalesce(dblink_get_connections(), '{}'));
  unchecked boolean;
begin
  if is_open and p_reconnect then
    perform dblink_disconnect(conn);
    is_open := false;
  end if;
  if not is_open then
    -- A non-superuser owner on a server that asks no password: dblink_connect_u, when granted.
    unchecked := not (select r.rolsuper from pg_roles r where r.rolname = current_user)
                 and has_function_privilege('dblink_connect_u(text, text)', 'execute');
    begin
      if unchecked then
        perform dblink_connect_u(conn, connstr);
      else
        perform dblink_connect(conn, connstr);
      end if;
    exception when others then
      -- The message, not the connection string: it may hold a password.
      raise exception 'ai.embed: cannot open its side connection to the database: %',
                      regexp_replace(sqlerrm, 'password\s*=\s*(''([^''\\]|\\.)*''|\S+)', 'password=***', 'gi')
        using errcode = 'sqlclient_unable_to_establish_sqlconnection',
              hint = 'ai.embed enqueues through a loopback connection as the owner of schema ai. Set one that can connect '
                  || '(insert into ai.settings values (''dblink_connstr'', ''...'')); see sql/030_embed.sql.';
    end;
  end if;
  return conn;
end $$;

-- Waits for a request enqueued on the side connection `p_conn`, polling its row through that
-- connection (1 ms apart, backing off to `p_max_pause` seconds). Returns null when it completed
-- and its error when it failed; raises when it was cancelled, or when `p_timeout` passes (the
-- request is then cancelled). Shared by ai.embed and ai.chat_complete: `p_caller` and `p_noun`
-- word the errors, `p_timeout_hint` is the setting to raise, e.g. 'ai.embed_timeout = ''2 min'''.
create or replace function ai._await_request(
  p_conn text, p_request uuid, p_caller text, p_noun text, p_requested text, p_model text,
  p_timeout interval, p_timeout_hint text, p_max_pause double precision
) returns jsonb language plpgsql as $$
declare
  poll text := format('select status, error::text from ai.requests where id = %L', p_request);
  deadline timestamptz := clock_timestamp() + p_timeout;
  pause double precision := 0.001;
  st text;
  err jsonb;
begin
  loop
    select t.status, t.error::jsonb into st, err
      from dblink(p_conn, poll) as t(status text, error text);
    exit when st in ('completed', 'failed', 'cancelled');
    if clock_timestamp() >= deadline then
      perform from dblink(p_conn, format('select ai.cancel_request(%L::uuid)', p_request)) as t(cancelled boolean);
      raise exception '%: no % from model "%" after %', p_caller, p_noun, p_requested, p_timeout
        using errcode = 'query_canceled',
              detail = format('Request %s was %s.', p_request,
                              case when st = 'running' then 'taken by a worker but not finished'
                                   else 'not taken by any worker' end),
              hint = case when st = 'running' then format('Raise the limit: set %s.', p_timeout_hint)
                          else format('Start a worker that serves it: switchyard worker --models %s', p_model) end;
    end if;
    perform pg_sleep(least(pause, extract(epoch from deadline - clock_timestamp())::double precision));
    pause := least(pause * 2, p_max_pause);
  end loop;
  if st = 'cancelled' then
    raise exception '%: request % was cancelled', p_caller, p_request using errcode = 'query_canceled';
  end if;
  return case when st = 'failed' then coalesce(err, '{}') end;
end $$;

-- The LISTEN channel of this session's side connection `p_conn`: the request row names it
-- (ai.requests.listener), so the worker that finishes the request notifies that connection, and
-- nobody else's. Per calling session (backend pid) and connection name.
create or replace function ai._embed_channel(p_conn text)
returns text language sql stable as $$
  select 'ai_events_sql_' || substr(p_conn, 12) || '_' || pg_backend_pid()
$$;

-- The advisory lock key on which ai.embed's caller waits for its request (issue 14): a worker
-- that claims a request by id takes it (pg_try_advisory_lock, session level) in the claiming
-- statement, and the statement that finishes the request hands it to its own transaction
-- (ai._embed_hand_over), whose commit releases it (src/worker/embedding/claimer.ts), so the
-- waiting backend wakes as the lock is released instead of on its next look at the row. A hint like the notifications: whoever else holds the key can
-- only send a caller back to looking at its row every millisecond (see ai._embed_remote).
create or replace function ai._embed_wait_key(p_request uuid)
returns bigint language sql immutable strict as $$ select hashtextextended(p_request::text, 7014) $$;

-- Hands the wait locks a claim took (at session level, on the worker's connection) over to the
-- transaction this is called in, the one that finishes those requests: each key is taken again
-- at transaction level (at once: this session holds it already) and its session-level hold
-- released, so it stays held until that transaction ends, and its commit releases it. The
-- caller then wakes as the finish commits, instead of after a further unlock round trip. (An
-- unlock is not undone by a rollback: a finish that fails releases the locks too, and its
-- callers look at their rows, as they do when no lock was held.)
create or replace function ai._embed_hand_over(p_requests uuid[])
returns integer language plpgsql as $$
declare
  r uuid;
  k bigint;
  n integer := 0;
begin
  foreach r in array p_requests loop
    k := ai._embed_wait_key(r);
    perform pg_advisory_xact_lock(k);
    if pg_advisory_unlock(k) then
      n := n + 1;
    end if;
  end loop;
  return n;
end $$;

-- Records ai.embed's request, as ai.enqueue_embedding records one with no key (sql/020_embeddings.sql:
-- interactive priority, five attempts), and wakes the workers with a notification that names it:
-- 'model request-id' instead of the model alone. A worker then claims it by id, through the
-- primary key, instead of walking the queue's index from its oldest entry, which during an
-- update that calls ai.embed per row holds an entry for every request finished since the update
-- began (its snapshot keeps them from being removed): n rows cost n² (issue 14). Run on the side
-- connection, as the owner.
create or replace function ai._enqueue_sql_embedding(p_id uuid, p_model text, p_requested_model text, p_inputs jsonb,
                                                     p_params jsonb, p_listener text)
returns void language plpgsql as $$
begin
  insert into ai.requests (id, endpoint, model, requested_model, input, params, db_role, listener, priority)
  values (p_id, 'embeddings', p_model, p_requested_model, jsonb_build_object('input', p_inputs),
          p_params || jsonb_build_object('max_attempts', 5), p_params->>'db_role', p_listener, 0);
  perform pg_notify('ai_embed', p_model || ' ' || p_id);
end $$;

-- The cached vectors of inputs (a jsonb list) in input order, null where not cached, and how
-- many were found. One probe of the cache's primary key per input: the LATERAL ... LIMIT 1 keeps
-- the planner from flattening it into a join, which in a cached (generic) plan it ran as a hash
-- join over every cached vector of the model (2 ms with 500 vectors, and growing with the cache:
-- an update that embeds row after row grew the cache it read in full for each row).
create or replace function ai._embed_cached(p_model text, p_fingerprint bytea, p_inputs jsonb)
returns table (result vector[], hits integer) language sql stable as $$
  select array_agg(c.embedding order by u.i), count(c.embedding)::integer
    from jsonb_array_elements(p_inputs) with ordinality u(x, i)
    left join lateral (select c.embedding from ai.embedding_cache c
                        where c.model = p_model and c.input_hash = ai.embedding_cache_key(p_fingerprint, u.x) limit 1) c on true
$$;

-- Enqueues one embedding request on the side connection (committed at once) and waits for it.
-- Returns the vectors in input order. p_fingerprint: the model's (ai.embedding_model_fingerprint),
-- which the caller has already read for its own look in the cache.
--
-- The wait (issue 14). A function cannot block on a socket or on another backend's commit, so
-- this backend looks about once a millisecond (pg_sleep's granularity) at whatever can tell it first:
-- * Under READ COMMITTED (the default): the request row itself, and while a worker runs the
--   request, the advisory lock that worker holds until its finish has committed
--   (ai._embed_wait_key): the backend sleeps in the lock wait and wakes as it is released, instead
--   of looking at the row every millisecond (a look after a sleep cost about 70 us of CPU, on
--   cores the model needs, and saw the commit 0.5 ms late on average). This function is VOLATILE, so
--   each statement sees what committed before it, and the worker's finishing commit (which
--   also fills the cache) is visible as soon as it happens, before its WAL flush (it commits
--   asynchronously; a crash that loses it leaves the request to be claimed again, and a caller
--   whose own commit is synchronous flushes the WAL past it, vectors included). One look is
--   a primary-key read of the status (~10 µs; a look that joined the cache as well cost 0.7 ms,
--   on every tick); once completed, the vectors are read from the cache (ai._embed_cached), in
--   binary form (no text through dblink). No LISTEN and no
--   notification: a notification reaches this backend only through its side connection's
--   backend, which must itself be woken and scheduled to forward it, a hop that the row does
--   without. The request names no listener, so the worker's finish sends none.
-- * Under REPEATABLE READ and SERIALIZABLE the caller's snapshot cannot see the worker's commit:
--   the side connection LISTENs on its channel (ai._embed_channel) in the round trip that
--   enqueues, the worker's finishing statement notifies it, and this backend reads that
--   connection's socket with dblink_get_notify (no query, no round trip). A notification is
--   only a hint (any role may NOTIFY any channel): the request row, read through the side
--   connection (whose fresh snapshot sees the commit), decides; it is read anyway every 250 ms
--   without one (a lost notification, or a connection opened before an upgrade).
-- Its three-argument form (before the caller passed the fingerprint) would make calls ambiguous.
drop function if exists ai._embed_remote(text, text, jsonb);
create or replace function ai._embed_remote(p_model text, p_requested text, p_inputs jsonb, p_fingerprint bytea)
returns vector[] language plpgsql volatile as $$
declare
  request uuid := gen_random_uuid();
  fresh boolean := current_setting('transaction_isolation') = 'read committed';
  -- Read first: a malformed setting must fail before anything is enqueued.
  timeout interval := ai._interval_setting('ai.embed_timeout', interval '30 seconds');
  deadline timestamptz;
  conn text := ai._embed_connection();
  params jsonb := jsonb_build_object('source', 'sql', 'db_role', ai._caller());
  -- What the side connection runs to read the cache (not under READ COMMITTED): one probe of
  -- its primary key per input (see ai._embed_cached).
  lookup text := format(
    'select u.i, c.embedding::text from jsonb_array_elements(%1$L::jsonb) with ordinality u(x, i)
       left join lateral (select c.embedding from ai.embedding_cache c
                           where c.model = %2$L and c.input_hash = ai.embedding_cache_key(%3$L::bytea, u.x) limit 1) c on true',
    p_inputs, p_model, p_fingerprint);
  channel text;
  enqueue text;
  st text;
  err jsonb;
  result vector[];
  hits integer;
  heard boolean;
  next_check timestamptz;
  -- Whether to wait on the request's wait lock while it runs (ai._embed_wait_key), and whether
  -- the last wait ended with the lock taken (released, or never held).
  wait_lock boolean := fresh;
  took_lock boolean := false;
  lock_timeout_was text := current_setting('lock_timeout');
begin
  if not fresh then
    -- The cache again, through the side connection's fresh snapshot: another call in this
    -- statement (or another session) may have computed these after the caller's snapshot.
    -- (Under READ COMMITTED the caller's own read, just before, was as fresh.)
    begin
      select array_agg(t.v::vector order by t.i), count(t.v) into result, hits
        from dblink(conn, lookup) as t(i bigint, v text);
    exception when connection_exception then
      conn := ai._embed_connection(true);
      select array_agg(t.v::vector order by t.i), count(t.v) into result, hits
        from dblink(conn, lookup) as t(i bigint, v text);
    end;
    if hits = jsonb_array_length(p_inputs) then
      return result;
    end if;
    channel := ai._embed_channel(conn);
  end if;
  -- The enqueue (and, when this backend waits for a notification, the LISTEN) in one round
  -- trip (one implicit transaction on the side connection), committed asynchronously (no wait
  -- for the WAL flush, ~2 ms here): a crash that could lose it also ends this session, whose
  -- statement is the only one waiting for the request.
  for attempt in 1 .. 2 loop
    enqueue := format('%s select ai._enqueue_sql_embedding(%L::uuid, %L, %L, %L::jsonb, %L::jsonb, %L)::text'
                      ' from (select set_config(''synchronous_commit'', ''off'', true)) s',
                      case when channel is null then '' else format('listen %I;', channel) end, request, p_model, p_requested, p_inputs, params, channel);
    begin
      perform from dblink(conn, enqueue) as t(done text);
      exit;
    exception when connection_exception then
      -- The kept connection was closed under us (idle_session_timeout, a terminated backend):
      -- reopen it once (a new connection, so a new channel).
      if attempt = 2 then
        raise;
      end if;
      conn := ai._embed_connection(true);
      if not fresh then
        channel := ai._embed_channel(conn);
      end if;
    end;
  end loop;
  deadline := clock_timestamp() + timeout;
  next_check := clock_timestamp() + interval '250 ms';
  loop
    if fresh then
      -- A look at the row alone (a few microseconds), many times per request.
      select r.status, r.error into st, err from ai.requests r where r.id = request;
      if st = 'completed' then
        -- The vectors, cached in the transaction that completed it.
        select c.result, c.hits into result, hits from ai._embed_cached(p_model, p_fingerprint, p_inputs) c;
        exit;
      end if;
      exit when st in ('failed', 'cancelled');
      -- Still running after a wait on its lock ended with the lock taken: the lock is not held
      -- by the worker running it (a claim of the whole queue takes none; its worker may have
      -- died, or someone else held the key): look at the row instead.
      if st = 'running' and took_lock then
        wait_lock := false;
      end if;
      took_lock := false;
    else
      select count(*) > 0 into heard from dblink_get_notify(conn) n
       where n.notify_name = channel and position(request::text in n.extra) > 0;
      if heard or clock_timestamp() >= next_check then
        select t.status, t.error::jsonb into st, err
          from dblink(conn, format('select status, error::text from ai.requests where id = %L', request)) as t(status text, error text);
        exit when st in ('completed', 'failed', 'cancelled');
        next_check := clock_timestamp() + interval '250 ms';
      end if;
    end if;
    if clock_timestamp() >= deadline then
      perform from dblink(conn, format('select ai.cancel_request(%L::uuid)', request)) as t(cancelled boolean);
      raise exception 'ai.embed: no embedding from model "%" after %', p_requested, timeout
        using errcode = 'query_canceled',
              detail = format('Request %s was %s.', request,
                              case when st = 'running' then 'taken by a worker but not finished'
                                   else 'not taken by any worker' end),
              hint = case when st = 'running' then 'Raise the limit: set ai.embed_timeout = ''2 min''.'
                          else format('Start a worker that serves it: switchyard worker --models %s', p_model) end;
    end if;
    if fresh and st = 'running' and wait_lock then
      -- Taken by a worker: wait for its finish's commit on the lock it holds until then, in
      -- slices of at most 100 ms (each a subtransaction; a slice that times out only rolls its
      -- lock_timeout back), taking and releasing it at once. No CPU is spent meanwhile, and the
      -- wait ends when the lock is released instead of at the next look (0.5 ms later on
      -- average, and about 70 us of CPU per look on two cores shared with the model).
      begin
        perform set_config('lock_timeout', greatest(1, least(100, ceil(extract(epoch from deadline - clock_timestamp()) * 1000)))::integer || 'ms', true);
        perform pg_advisory_lock_shared(ai._embed_wait_key(request));
        perform pg_advisory_unlock_shared(ai._embed_wait_key(request));
        perform set_config('lock_timeout', lock_timeout_was, true);
        took_lock := true;
      exception
        when lock_not_available then
          null;
        -- The worker waits for this transaction (it writes a cache row this transaction has
        -- locked, say): look at the row instead, as before the lock wait, until the timeout.
        when deadlock_detected then
          wait_lock := false;
      end;
      continue;
    end if;
    -- Half a millisecond asked, a millisecond slept: pg_sleep waits in whole milliseconds
    -- (ceil) and loops until its end time, and its first 1 ms wait ends a hair short of an end
    -- time 1 ms away, so pg_sleep(0.001) took a second wait: 2.1 ms measured (p10 2.12, p90
    -- 2.17), against 1.11 ms for pg_sleep(0.0005). A look every 2.1 ms cost an ai.embed about
    -- 1 ms on average between the worker's commit and the look that sees it (issue 14).
    perform pg_sleep(0.0005);
  end loop;
  if st = 'cancelled' then
    raise exception 'ai.embed: request % was cancelled', request using errcode = 'query_canceled';
  elsif st = 'failed' then
    err := coalesce(err, '{}');
    raise exception 'ai.embed: %', coalesce(err->>'message', 'the embedding failed')
      using errcode = case when err->>'type' = 'invalid_request_error' then 'invalid_parameter_value' else 'external_routine_exception' end,
            detail = format('model %s, request %s, code %s', p_model, request, coalesce(err->>'code', 'none'));
  end if;
  -- The worker wrote the vectors into the cache in the transaction that completed the request
  -- (read above under READ COMMITTED; here through the side connection otherwise, or if the
  -- cache lost them meanwhile).
  if not fresh or coalesce(hits, 0) < jsonb_array_length(p_inputs) then
    select array_agg(t.v::vector order by t.i), count(t.v) into result, hits
      from dblink(conn, lookup) as t(i bigint, v text);
  end if;
  if hits <> jsonb_array_length(p_inputs) then
    raise exception 'ai.embed: request % returned % embeddings for % inputs', request,
      hits, jsonb_array_length(p_inputs) using errcode = 'data_exception';
  end if;
  return result;
end $$;

-- Volatility: VOLATILE, which is what it is: it writes a request (through its side connection)
-- and waits for a worker. (It was IMMUTABLE until issue 14, as pgai declares its embedding
-- functions, so that the planner folded `ai.embed('minilm', 'constant')` once per statement;
-- but that also let the planner call it while planning, in EXPLAIN, and fold it into cached
-- plans.) To embed a constant once per query, write it as a scalar subquery, which PostgreSQL
-- runs once (an InitPlan) and which an index scan can use:
--   select id from docs order by embedding <=> (select ai.embed('minilm', 'query')) limit 5;
-- Called per row (`update docs set e = ai.embed('minilm', body)`), it does what it says: a
-- request per row whose text is not cached. PARALLEL UNSAFE: it uses a session's connection.
-- Inside a transaction that is later rolled back, the request row and the cached vectors stay
-- (they were committed on the side).

-- Many inputs: one vector per input, in order; a null input gives a null vector. One request
-- (model calls batched by the worker) for all inputs not in the cache.
create or replace function ai.embed(model text, inputs text[])
returns vector[] language plpgsql volatile strict parallel unsafe
security definer set search_path = pg_catalog, public, pg_temp as $$
declare
  m text := ai._embedding_model(model);
  fingerprint bytea := ai.embedding_model_fingerprint(m);
  cached vector[];
  misses integer;
  computed vector[];
  wanted text[];
begin
  if cardinality(inputs) = 0 then
    return '{}';
  end if;
  -- One probe of the cache's primary key per input (see ai._embed_cached).
  select array_agg(c.embedding order by u.ord),
         count(*) filter (where u.x is not null and c.embedding is null)
    into cached, misses
    from unnest(inputs) with ordinality u(x, ord)
    left join lateral (select c.embedding from ai.embedding_cache c
                        where c.model = m and c.input_hash = ai._embedding_text_key(fingerprint, u.x) limit 1) c on true;
  if misses = 0 then
    return cached;
  end if;
  -- Send every non-null input (the worker reads its cache too): the output is then in input order.
  wanted := array(select x from unnest(inputs) x where x is not null);
  computed := ai._embed_remote(m, model, to_jsonb(wanted), fingerprint);
  return array(
    select case when u.x is null then null else computed[(count(u.x) over (order by u.ord))::integer] end
      from unnest(inputs) with ordinality u(x, ord)
     order by u.ord);
end $$;

-- One input.
create or replace function ai.embed(model text, input text)
returns vector language plpgsql volatile strict parallel unsafe
security definer set search_path = pg_catalog, public, pg_temp as $$
declare
  m text := ai._embedding_model(model);
  fingerprint bytea := ai.embedding_model_fingerprint(m);
  v vector;
begin
  select c.embedding into v from ai.embedding_cache c
   where c.model = m and c.input_hash = ai._embedding_text_key(fingerprint, input);
  if found then
    return v;
  end if;
  return (ai._embed_remote(m, model, jsonb_build_array(input), fingerprint))[1];
end $$;
