-- Teams, token budgets and rate limits (README "Budgets and rate limits"; the admission and
-- settlement functions are sql/074_admission.sql).
--
-- A key belongs to at most one team. Keys and teams each have an optional token budget for a
-- period (a UTC day, a UTC month, or all time) and optional per-minute request and token limits;
-- null means unlimited.
create table ai.teams (
  id             uuid primary key default gen_random_uuid(),
  name           text unique not null,
  created_at     timestamptz not null default now(),
  budget_tokens  bigint check (budget_tokens >= 0),
  budget_period  text not null default 'month' check (budget_period in ('day', 'month', 'total')),
  rpm_limit      integer check (rpm_limit > 0),
  tpm_limit      bigint check (tpm_limit > 0)
);

alter table ai.api_keys
  add column team_id        uuid references ai.teams (id) on delete set null,
  add column budget_tokens  bigint check (budget_tokens >= 0),
  add column budget_period  text not null default 'month' check (budget_period in ('day', 'month', 'total')),
  add column rpm_limit      integer check (rpm_limit > 0),
  add column tpm_limit      bigint check (tpm_limit > 0);
create index api_keys_team_idx on ai.api_keys (team_id) where team_id is not null;

-- One row per key or team that has a budget or a limit: what its current budget period has
-- reserved (admitted, not yet ended) and spent (ended, settled to actual usage), and its current
-- rate window's counts. Updated in place (a new period or window resets it), so it never grows.
-- Only admission and settlement touch it, each under the row's lock for one short statement.
create table ai.spend (
  subject        uuid primary key,          -- an api_keys.id or a teams.id
  period_start   timestamptz not null,      -- '-infinity' for a 'total' budget
  reserved       bigint not null default 0 check (reserved >= 0),
  spent          bigint not null default 0 check (spent >= 0),
  window_start   timestamptz not null default '-infinity',
  window_requests integer not null default 0,
  window_tokens  bigint not null default 0
);

-- What admission charged a request, for settlement: the team of its key at the time (usage is
-- grouped by it, and row-level security reads it), and {"tokens": n, "periods": {subject:
-- period_start}} for the budgets it reserved in. Null: nothing reserved (no budgets, or SQL).
alter table ai.requests
  add column team_id      uuid references ai.teams (id) on delete set null,
  add column reservation  jsonb;
create index requests_team_idx on ai.requests (team_id, queued_at) where team_id is not null;
