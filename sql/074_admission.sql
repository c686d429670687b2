-- Idempotent: re-applied by every `switchyard migrate`.
--
-- Admission: budgets and rate limits, checked and charged in the statement that queues the
-- request (ai.enqueue_request), settled when the request ends (trigger requests_settle). Tables
-- in migrations/0041_teams_budgets.sql; the contract in README "Budgets and rate limits".
--
-- Exact under concurrency by construction: the check and the charge are one conditional update
-- of the subject's ai.spend row, under its row lock, in the transaction that inserts the request.
-- Two admissions against one budget therefore serialise on that row, but only for the few
-- microseconds of the admission statement (autocommit, one round trip, never held while a model
-- runs), and only keys and teams that have a budget or a limit have a row at all. Nothing reads
-- a cached or a separately-written spend figure, so there is no window in which a check is stale
-- (the flaw of gateways that check a cached spend and write it back asynchronously). Sharded
-- counters would spread the lock but make the edge inexact (a request refused while another
-- shard has room), and the lock is not the bottleneck: the model is.
--
-- Lock order, everywhere: a request's key row, then its team row. Settlement runs in the
-- transaction that ends the request (it holds the request row, then takes the same two spend
-- rows in that order); admission never waits on a request row. So no cycle, no deadlock.

create or replace function ai._period_start(p_period text, p_at timestamptz)
returns timestamptz language sql immutable as $$
  select case p_period when 'day' then date_trunc('day', p_at, 'UTC')
                       when 'month' then date_trunc('month', p_at, 'UTC')
                       else '-infinity'::timestamptz end
$$;

-- Charges one subject (a key or a team) `p_tokens` against its budget and its rate window, or
-- raises SQLSTATE SY429 with the refusal as JSON in DETAIL (the whole admission is rolled back
-- with it). Returns the limits' state after the charge, for the x-ratelimit-* headers.
create or replace function ai._charge(
  p_subject uuid, p_kind text, p_budget bigint, p_period text, p_rpm integer, p_tpm bigint,
  p_tokens bigint, p_window interval, p_now timestamptz
) returns jsonb language plpgsql as $$
declare
  ps timestamptz := ai._period_start(p_period, p_now);
  s ai.spend;
  reset_s double precision;
  refusal jsonb;
begin
  insert into ai.spend as x (subject, period_start) values (p_subject, ps)
  on conflict (subject) do update set subject = x.subject
  returning * into s;
  -- A new period: what the old one reserved is settled against the old one (that is, not here).
  if s.period_start is distinct from ps then
    s.period_start := ps; s.reserved := 0; s.spent := 0;
  end if;
  if s.window_start + p_window <= p_now then
    s.window_start := p_now; s.window_requests := 0; s.window_tokens := 0;
  end if;
  reset_s := extract(epoch from s.window_start + p_window - p_now);
  if p_budget is not null and s.spent + s.reserved + p_tokens > p_budget then
    refusal := jsonb_build_object('code', 'budget_exceeded', 'kind', p_kind, 'limit', p_budget, 'period', p_period,
                                  'used', s.spent + s.reserved, 'asked', p_tokens,
                                  'reset_s', case when p_period = 'total' then null
                                                  else extract(epoch from ps + case p_period when 'day' then interval '1 day' else interval '1 month' end - p_now) end);
  elsif p_rpm is not null and s.window_requests + 1 > p_rpm then
    refusal := jsonb_build_object('code', 'rate_limit_exceeded', 'kind', p_kind, 'which', 'requests', 'limit', p_rpm, 'reset_s', reset_s);
  elsif p_tpm is not null and s.window_tokens + p_tokens > p_tpm then
    refusal := jsonb_build_object('code', 'rate_limit_exceeded', 'kind', p_kind, 'which', 'tokens', 'limit', p_tpm,
                                  'used', s.window_tokens, 'asked', p_tokens, 'reset_s', reset_s);
  end if;
  if refusal is not null then
    raise exception 'admission refused' using errcode = 'SY429', detail = refusal::text;
  end if;
  update ai.spend
     set period_start = s.period_start,
         reserved = s.reserved + case when p_budget is not null then p_tokens else 0 end,
         spent = s.spent,
         window_start = s.window_start,
         window_requests = s.window_requests + 1,
         window_tokens = s.window_tokens + p_tokens
   where subject = p_subject;
  return jsonb_strip_nulls(jsonb_build_object(
    'period', case when p_budget is not null then ps end,
    'requests', case when p_rpm is not null then jsonb_build_object('limit', p_rpm, 'remaining', p_rpm - s.window_requests - 1, 'reset_s', reset_s) end,
    'tokens', case when p_tpm is not null then jsonb_build_object('limit', p_tpm, 'remaining', p_tpm - s.window_tokens - p_tokens, 'reset_s', reset_s) end));
end $$;

-- Of two limit states, the one with fewer remaining (that is the one a client will meet first).
create or replace function ai._tighter(a jsonb, b jsonb)
returns jsonb language sql immutable as $$
  select case when a is null then b when b is null then a
              when (b->>'remaining')::bigint < (a->>'remaining')::bigint then b else a end
$$;

-- A key's request of at most `p_tokens`: charges the key and then its team (each only if it has
-- a budget or a limit), or raises SY429 (the caller's statement, or its block, is rolled back
-- with what was charged). Returns {"team", "reservation" (null: nothing reserved), "limits":
-- {"requests", "tokens"}} (the tighter of key and team), what the request row records.
create or replace function ai._admit(p_key uuid, p_tokens bigint, p_window interval, p_at timestamptz)
returns jsonb language plpgsql as $$
declare
  k record;
  t record;
  lim jsonb;
  reqs jsonb;
  toks jsonb;
  periods jsonb := '[]';
begin
  select team_id, budget_tokens, budget_period, rpm_limit, tpm_limit into k from ai.api_keys where id = p_key;
  if k.budget_tokens is not null or k.rpm_limit is not null or k.tpm_limit is not null then
    lim := ai._charge(p_key, 'key', k.budget_tokens, k.budget_period, k.rpm_limit, k.tpm_limit, p_tokens, p_window, p_at);
    if lim ? 'period' then periods := periods || jsonb_build_array(jsonb_build_object('s', p_key, 'p', lim->'period')); end if;
    reqs := lim->'requests'; toks := lim->'tokens';
  end if;
  if k.team_id is not null then
    select budget_tokens, budget_period, rpm_limit, tpm_limit into t from ai.teams where id = k.team_id;
    if t.budget_tokens is not null or t.rpm_limit is not null or t.tpm_limit is not null then
      lim := ai._charge(k.team_id, 'team', t.budget_tokens, t.budget_period, t.rpm_limit, t.tpm_limit, p_tokens, p_window, p_at);
      if lim ? 'period' then periods := periods || jsonb_build_array(jsonb_build_object('s', k.team_id, 'p', lim->'period')); end if;
      reqs := ai._tighter(reqs, lim->'requests'); toks := ai._tighter(toks, lim->'tokens');
    end if;
  end if;
  return jsonb_build_object(
    'team', k.team_id,
    'reservation', case when jsonb_array_length(periods) > 0 then jsonb_build_object('tokens', p_tokens, 'periods', periods) end,
    'limits', jsonb_strip_nulls(jsonb_build_object('requests', reqs, 'tokens', toks)));
end $$;

-- The HTTP gateway's enqueue: the model's queue bound, then the key's and its team's budgets
-- and rate limits (ai._admit), then the request row, in one statement and one transaction.
-- Returns {"queued": false} when the queue is full (nothing charged), else {"queued": true,
-- "limits": {"requests": {...}, "tokens": {...}}}. Raises SY429 on a refusal.
-- `p_tokens`: what the request may use at most (prompt + max_tokens, as the gateway estimates).
-- p_traceparent: the trace the worker continues (migrations/0065_request_traceparent.sql).
-- p_notify_key: the secret the worker seals the events in its notifications with
-- (migrations/0095_request_notify_key.sql, sql/010_events.sql).
drop function if exists ai.enqueue_request(uuid, text, text, text, jsonb, jsonb, boolean, uuid, integer, text, integer, bigint, interval);
drop function if exists ai.enqueue_request(uuid, text, text, text, jsonb, jsonb, boolean, uuid, integer, text, integer, bigint, interval, text);
create or replace function ai.enqueue_request(
  p_id uuid, p_endpoint text, p_model text, p_requested text, p_input jsonb, p_params jsonb, p_stream boolean,
  p_key uuid, p_max_attempts integer, p_listener text, p_queue_bound integer, p_tokens bigint, p_window interval,
  p_traceparent text default null, p_notify_key bytea default null
) returns jsonb language plpgsql as $$
declare
  adm jsonb := '{}';
begin
  if (select count(*) from (select 1 from ai.requests where model = p_model and status = 'queued' and priority = 0 limit p_queue_bound) q) >= p_queue_bound then
    return jsonb_build_object('queued', false);
  end if;
  if p_key is not null then
    adm := ai._admit(p_key, p_tokens, p_window, clock_timestamp());
  end if;
  insert into ai.requests (id, endpoint, model, requested_model, input, params, stream, key_id, max_attempts, listener, team_id, reservation, traceparent, notify_key)
  values (p_id, p_endpoint, p_model, p_requested, p_input, p_params, p_stream, p_key, p_max_attempts, p_listener,
          (adm->>'team')::uuid, nullif(adm->'reservation', 'null'::jsonb), p_traceparent, p_notify_key);
  -- `<model> <id>`: a worker whose claim already took the request skips a claim of its own.
  perform pg_notify('ai_chat', p_model || ' ' || p_id);
  return jsonb_strip_nulls(jsonb_build_object('queued', true, 'limits', adm->'limits'));
end $$;

-- Settlement: when a request with a reservation ends, its reservation leaves `reserved` and its
-- actual usage (completed requests only: a failure or a cancellation is refunded in full) joins
-- `spent`, in the transaction that ends it, whichever path ends it (ai.finish_request,
-- ai.cancel_request, the reaper). A request never costs more than it reserved: the reservation
-- is the cap its admission was judged on, so spent can never pass the budget. A reservation
-- from a period that has since rolled over is not settled against the new one.
create or replace function ai._settle_reservation()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  held bigint := (new.reservation->>'tokens')::bigint;
  used bigint := 0;
  p jsonb;
begin
  if new.status = 'completed' then
    used := least(held, coalesce((new.usage->>'prompt_tokens')::bigint, 0) + coalesce((new.usage->>'completion_tokens')::bigint, 0));
  end if;
  -- In admission order (key, then team): the lock order of ai.enqueue_request.
  for p in select e from jsonb_array_elements(new.reservation->'periods') as e loop
    update ai.spend s
       set reserved = greatest(s.reserved - held, 0), spent = s.spent + used
     where s.subject = (p->>'s')::uuid and s.period_start = (p->>'p')::timestamptz;
  end loop;
  return null;
end $$;

drop trigger if exists requests_settle on ai.requests;
create trigger requests_settle after update of status on ai.requests for each row
  when (old.status in ('queued', 'running') and new.status in ('completed', 'failed', 'cancelled') and new.reservation is not null)
  execute function ai._settle_reservation();

-- A key's or team's budget and rate state as it stands (zero when a period or window has rolled
-- over since its last request), for the admin API.
create or replace function ai.spend_of(p_subject uuid, p_period text, p_window interval default '1 minute')
returns table (period_start timestamptz, reserved bigint, spent bigint, window_requests integer, window_tokens bigint)
language sql stable as $$
  select ai._period_start(p_period, now()),
         case when s.period_start = ai._period_start(p_period, now()) then s.reserved else 0 end,
         case when s.period_start = ai._period_start(p_period, now()) then s.spent else 0 end,
         case when s.window_start + p_window > now() then s.window_requests else 0 end,
         case when s.window_start + p_window > now() then s.window_tokens else 0 end
    from (select 1) one left join ai.spend s on s.subject = p_subject
$$;
