import pg from 'pg';
import { setupRoles } from '/work/main/src/db/roles.ts';
const admin = new pg.Client({ connectionString: 'postgres://postgres@127.0.0.1:5432/postgres' });
await admin.connect();
await admin.query('drop database if exists sy_repro'); await admin.query('create database sy_repro template switchyard_test_template');
await setupRoles('postgres://postgres@127.0.0.1:5432/sy_repro', { prefix: 'syrepro' }, () => {});
const c = new pg.Client({ connectionString: 'postgres://syrepro_serve@127.0.0.1:5432/sy_repro' });
await c.connect();
for (const q of [
 `select (graphile_worker.add_job('chat:x', json_build_object('request_id', gen_random_uuid()), max_attempts => 3)).id`,
 `select ai.cancel_request(gen_random_uuid())`,
 `select ai.publish_event(gen_random_uuid(), 0, '{}')`,
]) { try { console.log((await c.query(q)).rows); } catch (e) { console.log('ERR', q.slice(0,60), e.message); } }
await c.end();
await admin.end();
