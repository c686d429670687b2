-- Least privilege (SECURITY.md): who asked for a request, who owns a vectorizer, and the rows
-- each application role may see. Functions and grants are in sql/040_vectorizers.sql and
-- sql/099_security.sql.

-- The database role that asked, for requests made in SQL (ai.embed, ai.chat_complete): they
-- are written by the owner's side connection, so the row names the caller. Null for HTTP
-- requests (key_id says who).
alter table ai.requests add column db_role name;
create index requests_db_role_idx on ai.requests (db_role, queued_at) where db_role is not null;

-- The role that created a vectorizer (it owns the source and the destination), and the schema
-- of the vectorizer's own functions (its trigger and the steps a worker calls), which run as
-- that role. Null: a vectorizer from before this migration, still on the shared trigger until
-- sql/040_vectorizers.sql moves it.
alter table ai.vectorizers add column owner name not null default current_user;
alter table ai.vectorizers add column fn_schema name;

-- Configuration only the schema's owner may read or write, for SECURITY DEFINER functions.
-- (A custom GUC would not do: any session may SET one, and the functions run as the owner.)
create table ai.settings (
  name   text primary key,
  value  text not null
);

-- The roles `switchyard roles setup` made for serve and worker processes, and the application
-- roles given ai.grant_usage: grants are re-applied to them by every migrate (a function that
-- was replaced by a new signature loses its grants).
create table ai.service_roles (
  role  name primary key,
  kind  text not null check (kind in ('serve', 'worker'))
);
create table ai.usage_roles (
  role   name primary key,
  admin  boolean not null default false
);

-- Application roles see their own vectorizers and queue items; the owner (and roles with
-- BYPASSRLS: serve and worker) see all. Queue and failed rows follow their vectorizer's
-- visibility (the subquery is itself filtered by the vectorizers policy).
alter table ai.vectorizers enable row level security;
alter table ai.vectorizer_queue enable row level security;
alter table ai.vectorizer_failed enable row level security;
create policy vectorizers_owner on ai.vectorizers
  using (exists (select from pg_catalog.pg_roles r where r.rolname = owner and pg_catalog.pg_has_role(current_user, r.oid, 'USAGE')))
  with check (owner = current_user);
create policy vectorizer_queue_owner on ai.vectorizer_queue
  using (exists (select from ai.vectorizers v where v.id = vectorizer_id));
create policy vectorizer_failed_owner on ai.vectorizer_failed
  using (exists (select from ai.vectorizers v where v.id = vectorizer_id));
