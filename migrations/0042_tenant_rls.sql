-- Tenant isolation in Postgres (SECURITY.md, README "Team database roles"): a team's database
-- role, given ai.grant_team (sql/099_security.sql), reads the request log, usage and stored
-- responses of its own team's keys and nothing else, enforced by row-level security.

-- Which database roles speak for which team (ai.grant_team gives each its policies, below; they
-- are re-applied from here by every migrate). A member of such a role sees what it sees.
create table ai.team_roles (
  role     name primary key,
  team_id  uuid not null references ai.teams (id) on delete cascade
);

-- Row-level security. The owner of schema ai bypasses it (it owns the tables), so do the
-- SECURITY DEFINER functions and the views without security_invoker (ai.my_requests,
-- ai.my_responses: they filter by role themselves). The serve and worker roles and admin usage
-- roles get policies that show them every row (ai.grant_service, ai.grant_usage); a team role
-- gets policies of its own (ai.grant_team), which show its team's rows. A role with no policy
-- sees no row at all.
alter table ai.requests enable row level security;
alter table ai.responses enable row level security;
alter table ai.api_keys enable row level security;
