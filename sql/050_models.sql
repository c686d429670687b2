-- Idempotent: re-applied by every `switchyard migrate`.

-- Workers that serve every model start serving a model registered while they run.
create or replace function ai.models_notify() returns trigger language plpgsql as $$
begin
  perform pg_notify('ai_models', coalesce(new.name, old.name));
  return null;
end $$;
drop trigger if exists models_notify on ai.models;
create trigger models_notify after insert or update on ai.models
  for each row execute function ai.models_notify();
