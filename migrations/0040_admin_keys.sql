-- Admin keys: a key with `admin` may use the /admin API and the console (keys, teams, usage,
-- models, the request log). Model keys never can: the flag is separate from the model scope so a
-- leaked application key never administers the gateway.
alter table ai.api_keys add column admin boolean not null default false;
