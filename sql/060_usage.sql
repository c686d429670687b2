-- Idempotent: re-applied by every `switchyard migrate`.

-- Usage per API key, model and day, read from the request log (no counters are updated per
-- request: a hot row per key is what makes such gateways deadlock under load).
create or replace view ai.usage_daily as
select date_trunc('day', r.queued_at) as day,
       r.key_id,
       k.name as key_name,
       r.model,
       r.endpoint,
       count(*) as requests,
       count(*) filter (where r.status = 'completed') as completed,
       count(*) filter (where r.status = 'failed') as failed,
       count(*) filter (where r.status = 'cancelled') as cancelled,
       coalesce(sum((r.usage->>'prompt_tokens')::bigint), 0) as prompt_tokens,
       coalesce(sum((r.usage->>'completion_tokens')::bigint), 0) as completion_tokens
  from ai.requests r
  left join ai.api_keys k on k.id = r.key_id
 group by 1, 2, 3, 4, 5;
