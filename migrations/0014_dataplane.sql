-- The lean data plane (sql/010_events.sql): events go to the gateway that holds the client, and
-- an event row costs one insert, nothing more.

-- The LISTEN channel of the serve (or SDK) process waiting on this request, written at enqueue;
-- null for requests nobody listens for (ai.embed, ai.chat_complete poll the row). Checked here
-- because it is used as a channel name: an invalid one would make every notify of the request fail.
alter table ai.requests add column listener text
  check (listener ~ '^ai_events_[a-z0-9_]{1,53}$');

-- No foreign key from events to their request: it took a lock on the request row for every
-- event inserted. Events are written only by functions that checked the request row in the same
-- transaction (sql/010_events.sql), and ai.prune removes them by age and with their request.
alter table ai.request_events drop constraint if exists request_events_request_id_fkey;
