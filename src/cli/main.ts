import { parseArgs } from 'node:util';
import { loadConfig } from '../config.js';
import { openDatabase } from '../db/pool.js';
import { provision, redact } from '../db/provision.js';
import { logger } from '../log.js';
import { ApiError } from '../protocol/errors.js';
import { keys, models, oneOf, positiveInt, teams, UsageError } from './admin-commands.js';
import { startTracing } from '../tracing.js';

const HELP = `switchyard: an OpenAI-compatible gateway that runs open models, coordinated through PostgreSQL

Usage: switchyard <command> [options]

  migrate                               create the database if needed, ensure pgvector, apply migrations
  models add NAME --task chat|embedding|rerank|moderation --source HF_ID_OR_PATH [--json]
             [--dtype fp32|fp16|q8|q4|...] [--device cpu|cuda] [--revision REV]
             [--alias A,B] [--chat-template-file F] [--context-length N] [--defaults JSON] [--max-queue N]
             chat models: [--tool-call-format hermes|JSON] (how the model writes tool calls)
                          [--reasoning-format think|think-open|JSON] (how it marks reasoning)
             embedding models: [--pooling mean|cls|none] [--no-normalize] [--dimensions N] [--truncate]
             moderation models: [--moderation-map JSON|FILE] (labels → OpenAI categories, thresholds)
  models list [--json]
  models remove NAME
  models defaults NAME JSON             the default request parameters, e.g. '{"temperature":0.7}'
  keys create --name N [--models A,B] [--admin] [--team T] [LIMITS]
                                        prints the new key once (--admin: may use /admin)
  keys list [--json]
  keys update ID [--name N] [--models A,B|all] [--team T|none] [LIMITS]
  keys revoke ID
  keys rotate ID                        a new secret for the same key, printed once
  teams create NAME [LIMITS]  |  teams list [--json]  |  teams update NAME|ID [--name N] [LIMITS]
  teams delete NAME|ID                  (refused while active keys belong to it)
      LIMITS: [--budget TOKENS|none] [--budget-period day|month|total] [--rpm N|none] [--tpm N|none]
  serve [--no-auth]                     the HTTP gateway (HOST, PORT)
  worker [--models A,B] [--device cpu|cuda] [--concurrency N] [--embed-concurrency N (vectorizer jobs)]
  up [--no-auth] [--dtype D]            migrate, register default models if none (int8 on CPU where shipped), run serve + worker
  prune                                 delete what the retention settings expire (ai.settings retention_*)
  roles setup [--prefix P]              as a superuser: non-superuser roles P_migrate (owner), P_serve and
                                        P_worker (default P: switchyard), extensions, migrations, grants;
                                        passwords from SWITCHYARD_{MIGRATE,SERVE,WORKER}_PASSWORD when set

Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/switchyard), HOST (127.0.0.1),
PORT (8080), SWITCHYARD_MODELS_DIR (searched first for model sources), HF_TOKEN (gated hub models).`;

const list = (s: string | undefined) => (s ? s.split(',').map((x) => x.trim()).filter(Boolean) : undefined);

/** Runs until SIGINT/SIGTERM, then stops cleanly. */
function untilSignal(stop: () => Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    const onSignal = () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      stop().finally(resolve);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  const config = loadConfig();
  const log = logger('switchyard');
  try {
    switch (command) {
      case 'migrate':
        await provision(config.databaseUrl, log.info);
        console.log(`database ready: ${redact(config.databaseUrl)}`);
        return 0;
      case 'models':
        await models(config, args);
        return 0;
      case 'keys':
        await keys(config, args);
        return 0;
      case 'teams':
        await teams(config, args);
        return 0;
      case 'serve': {
        const { values } = parseArgs({ args, options: { 'no-auth': { type: 'boolean' } } });
        // Heavy modules (Fastify, transformers.js) load only for the commands that run them.
        const { startServer } = await import('../http/server.js');
        const stopTracing = await startTracing('switchyard-serve');
        const server = await startServer({ databaseUrl: config.databaseUrl, host: config.host, port: config.port, auth: !values['no-auth'] });
        await untilSignal(() => server.stop().finally(stopTracing));
        return 0;
      }
      case 'worker': {
        const { values } = parseArgs({
          args,
          options: { models: { type: 'string' }, device: { type: 'string' }, concurrency: { type: 'string' }, 'embed-concurrency': { type: 'string' } },
        });
        const { startWorker } = await import('../worker/run.js');
        const stopTracing = await startTracing('switchyard-worker');
        const worker = await startWorker({
          databaseUrl: config.databaseUrl,
          modelsDir: config.modelsDir,
          models: list(values.models),
          device: oneOf(values.device, ['cpu', 'cuda'] as const, '--device'),
          concurrency: positiveInt(values.concurrency, '--concurrency'),
          embedConcurrency: positiveInt(values['embed-concurrency'], '--embed-concurrency'),
        });
        await untilSignal(() => worker.stop().finally(stopTracing));
        return 0;
      }
      case 'prune': {
        const database = openDatabase(config.databaseUrl, { max: 1, applicationName: 'switchyard-prune' });
        const total = { events: 0, requests: 0, cache: 0 };
        try {
          for (;;) {
            const r = (await database.pool.query<{ events: string; requests: string; cache: string; skipped: boolean }>('select * from ai.prune()')).rows[0]!;
            if (r.skipped) throw new Error('another process is pruning right now; try again in a minute');
            total.events += Number(r.events);
            total.requests += Number(r.requests);
            total.cache += Number(r.cache);
            if (Number(r.events) + Number(r.requests) + Number(r.cache) === 0) break;
          }
        } finally {
          await database.close();
        }
        console.log(`pruned ${total.events} events, ${total.requests} requests, ${total.cache} cache entries`);
        return 0;
      }
      case 'roles': {
        const [sub, ...rest] = args;
        if (sub !== 'setup') throw new UsageError('roles: expected setup');
        const { values } = parseArgs({ args: rest, options: { prefix: { type: 'string' } } });
        const { setupRoles } = await import('../db/roles.js');
        const env = process.env;
        const names = await setupRoles(
          config.databaseUrl,
          {
            ...(values.prefix ? { prefix: values.prefix } : {}),
            passwords: { migrate: env.SWITCHYARD_MIGRATE_PASSWORD, serve: env.SWITCHYARD_SERVE_PASSWORD, worker: env.SWITCHYARD_WORKER_PASSWORD },
          },
          log.info,
        );
        const as = (role: string) => {
          const u = new URL(config.databaseUrl);
          u.username = role;
          u.password = '';
          return redact(u.toString());
        };
        console.log(`roles ready; run each process as its role (add the password where the server asks for one):`);
        console.log(`  migrate, models, keys: DATABASE_URL=${as(names.migrate)}`);
        console.log(`  serve:                 DATABASE_URL=${as(names.serve)}`);
        console.log(`  worker:                DATABASE_URL=${as(names.worker)}`);
        console.log(`  application roles:     select ai.grant_usage('app_role');   -- as ${names.migrate} or a superuser`);
        return 0;
      }
      case 'up': {
        const { values } = parseArgs({ args, options: { 'no-auth': { type: 'boolean' }, dtype: { type: 'string' } } });
        const { up } = await import('./up.js');
        const stopTracing = await startTracing('switchyard');
        const stack = await up(config, { auth: !values['no-auth'], ...(values.dtype ? { dtype: values.dtype } : {}) });
        await untilSignal(() => stack.stop().finally(stopTracing));
        return 0;
      }
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        console.log(HELP);
        return command === undefined ? 1 : 0;
      default:
        throw new UsageError(`unknown command '${command}'`);
    }
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      console.error(`switchyard: ${(err as Error).message}\nRun 'switchyard help' for usage.`);
      return 2;
    }
    // The admin API's answer (src/admin/): bad input and unknown names exit 2, as usage errors do.
    if (err instanceof ApiError) {
      // The body field it names is a flag here (reasoning_format → --reasoning-format).
      const flag = err.param ? `--${err.param.replace(/_/g, '-')}: ` : '';
      console.error(`switchyard: ${flag}${err.message}`);
      return err.status === 400 || err.status === 404 ? 2 : 1;
    }
    const e = err as { code?: string; message: string };
    if (e.code === '23505') console.error(`switchyard: ${e.message} (a model with that name or alias exists)`);
    else if (e.code === '23503' && command === 'models') {
      console.error(`switchyard: ${e.message}. A vectorizer uses this model: drop it first (select ai.drop_vectorizer(ID); see ai.vectorizer_status).`);
    }
    else if (e.code === '42P01' || e.code === '3F000') console.error(`switchyard: the schema is missing; run 'switchyard migrate' first (${e.message})`);
    else console.error(`switchyard: ${e.message}`);
    return 1;
  }
}
