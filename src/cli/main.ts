import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadConfig, type Config } from '../config.js';
import { createKey, listKeys, revokeKey } from '../db/keys-repo.js';
import { addModel, listModels, removeModel } from '../db/models-repo.js';
import { openDatabase } from '../db/pool.js';
import { provision, redact } from '../db/provision.js';
import { logger } from '../log.js';
import { startTracing } from '../tracing.js';
import { TOOL_FORMATS, toolFormatProblem } from '../protocol/tools.js';
import { REASONING_FORMATS, reasoningFormatProblem } from '../protocol/reasoning.js';
import { moderationMappingProblem } from '../protocol/moderations.js';
import { defaultDtype } from './dtype.js';

const HELP = `switchyard: an OpenAI-compatible gateway that runs open models, coordinated through PostgreSQL

Usage: switchyard <command> [options]

  migrate                               create the database if needed, ensure pgvector, apply migrations
  models add NAME --task chat|embedding|rerank|moderation --source HF_ID_OR_PATH
             [--dtype fp32|fp16|q8|q4|...] [--device cpu|cuda] [--revision REV]
             [--alias A,B] [--chat-template-file F] [--context-length N] [--defaults JSON] [--max-queue N]
             chat models: [--tool-call-format hermes|JSON] (how the model writes tool calls)
                          [--reasoning-format think|think-open|JSON] (how it marks reasoning)
             embedding models: [--pooling mean|cls|none] [--no-normalize] [--dimensions N] [--truncate]
             moderation models: [--moderation-map JSON|FILE] (labels → OpenAI categories, thresholds)
  models list [--json]
  models remove NAME
  keys create --name N [--models A,B] [--admin]  prints the new key once (--admin: may use /admin)
  keys list
  keys revoke ID
  serve [--no-auth]                     the HTTP gateway (HOST, PORT)
  worker [--models A,B] [--device cpu|cuda] [--concurrency N] [--embed-concurrency N (vectorizer jobs)]
  up [--no-auth] [--dtype D]            migrate, register default models if none (int8 on CPU where shipped), run serve + worker
  prune                                 delete what the retention settings expire (ai.settings retention_*)
  roles setup [--prefix P]              as a superuser: non-superuser roles P_migrate (owner), P_serve and
                                        P_worker (default P: switchyard), extensions, migrations, grants;
                                        passwords from SWITCHYARD_{MIGRATE,SERVE,WORKER}_PASSWORD when set

Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/switchyard), HOST (127.0.0.1),
PORT (8080), SWITCHYARD_MODELS_DIR (searched first for model sources), HF_TOKEN (gated hub models).`;

class UsageError extends Error {}

const list = (s: string | undefined) => (s ? s.split(',').map((x) => x.trim()).filter(Boolean) : undefined);

function oneOf<T extends string>(value: string | undefined, allowed: readonly T[], flag: string): T | undefined {
  if (value === undefined) return undefined;
  if (!allowed.includes(value as T)) throw new UsageError(`${flag} must be one of ${allowed.join(', ')}`);
  return value as T;
}

function positiveInt(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`${flag} must be a positive integer`);
  return n;
}

async function withDb<T>(config: Config, fn: (db: ReturnType<typeof openDatabase>['db']) => Promise<T>): Promise<T> {
  const database = openDatabase(config.databaseUrl, { max: 2, applicationName: 'switchyard-cli' });
  try {
    return await fn(database.db);
  } finally {
    await database.close();
  }
}

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

async function models(config: Config, args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      task: { type: 'string' }, source: { type: 'string' }, dtype: { type: 'string' }, device: { type: 'string' },
      revision: { type: 'string' }, alias: { type: 'string' }, 'chat-template-file': { type: 'string' },
      'context-length': { type: 'string' }, defaults: { type: 'string' }, json: { type: 'boolean' },
      pooling: { type: 'string' }, 'no-normalize': { type: 'boolean' }, dimensions: { type: 'string' }, truncate: { type: 'boolean' },
      'max-queue': { type: 'string' }, 'tool-call-format': { type: 'string' }, 'reasoning-format': { type: 'string' },
      'moderation-map': { type: 'string' },
    },
  });
  if (sub === 'add') {
    const name = positionals[0];
    if (!name) throw new UsageError('models add needs a NAME');
    const task = oneOf(values.task, ['chat', 'embedding', 'rerank', 'moderation'] as const, '--task');
    if (!task || !values.source) throw new UsageError('models add needs --task chat|embedding|rerank|moderation and --source HF_ID_OR_PATH');
    let defaults: Record<string, unknown> = {};
    if (values.defaults) {
      try {
        defaults = JSON.parse(values.defaults);
      } catch {
        throw new UsageError('--defaults must be a JSON object, e.g. {"temperature":0.7}');
      }
    }
    let toolCallFormat: string | null = null;
    if (values['tool-call-format']) {
      const v = values['tool-call-format'];
      let format: unknown = TOOL_FORMATS[v];
      if (!format) {
        try {
          format = JSON.parse(v);
        } catch {
          throw new UsageError(`--tool-call-format must be one of ${Object.keys(TOOL_FORMATS).join(', ')} or a JSON object`);
        }
      }
      const problem = toolFormatProblem(format);
      if (problem) throw new UsageError(`--tool-call-format: ${problem} ({"start","end","separator","name_key","arguments_key"})`);
      toolCallFormat = JSON.stringify(format);
    }
    let reasoningFormat: string | null = null;
    if (values['reasoning-format']) {
      const v = values['reasoning-format'];
      let format: unknown = REASONING_FORMATS[v];
      if (!format) {
        try {
          format = JSON.parse(v);
        } catch {
          throw new UsageError(`--reasoning-format must be one of ${Object.keys(REASONING_FORMATS).join(', ')} or a JSON object`);
        }
      }
      const problem = reasoningFormatProblem(format);
      if (problem) throw new UsageError(`--reasoning-format: ${problem} ({"start","end","opened_by_prompt"})`);
      reasoningFormat = JSON.stringify(format);
    }
    const moderation = values['moderation-map'] ? moderationMap(values['moderation-map'], task) : null;
    const device = values.device ? oneOf(values.device, ['cpu', 'cuda'] as const, '--device')! : undefined;
    // Without --dtype: int8 where the model ships it and runs on CPU (see cli/dtype.ts for why).
    const chosen = values.dtype ? null : await defaultDtype(values.source, { ...(values.revision ? { revision: values.revision } : {}), ...(device ? { device } : {}), ...(config.modelsDir ? { modelsDir: config.modelsDir } : {}) });
    const row = await withDb(config, (db) =>
      addModel(db, {
        name,
        task,
        source: values.source!,
        ...(values.revision ? { revision: values.revision } : {}),
        dtype: values.dtype ?? chosen!.dtype,
        ...(device ? { device } : {}),
        aliases: list(values.alias) ?? [],
        chat_template: values['chat-template-file'] ? readFileSync(values['chat-template-file'], 'utf8') : null,
        context_length: positiveInt(values['context-length'], '--context-length') ?? null,
        defaults,
        ...(values.pooling ? { pooling: oneOf(values.pooling, ['mean', 'cls', 'none'] as const, '--pooling')! } : {}),
        ...(values['no-normalize'] ? { normalize: false } : {}),
        dimensions: positiveInt(values.dimensions, '--dimensions') ?? null,
        max_queue: positiveInt(values['max-queue'], '--max-queue') ?? null,
        tool_call_format: toolCallFormat,
        reasoning_format: reasoningFormat,
        moderation,
        ...(values.truncate ? { truncate: true } : {}),
      }),
    );
    console.log(`registered ${row.name} (${row.task}) from ${row.source}${row.aliases.length ? `, aliases ${row.aliases.join(', ')}` : ''}`);
    console.log(`dtype ${chosen ? chosen.why : `${row.dtype} (--dtype)`}`);
    console.log('Workers pick up new models when they start: restart running workers to serve it.');
  } else if (sub === 'list') {
    const rows = await withDb(config, listModels);
    if (values.json) console.log(JSON.stringify(rows, null, 2));
    else if (rows.length === 0) console.log('no models registered');
    else for (const r of rows) console.log(`${r.name}\t${r.task}\t${r.source}\t${r.dtype}\t${r.device}${r.aliases.length ? `\taliases: ${r.aliases.join(',')}` : ''}`);
  } else if (sub === 'remove') {
    const name = positionals[0];
    if (!name) throw new UsageError('models remove needs a NAME');
    if (!(await withDb(config, (db) => removeModel(db, name)))) throw new UsageError(`no model named ${name}`);
    console.log(`removed ${name}`);
  } else throw new UsageError('models: expected add, list or remove');
}

/**
 * --moderation-map: a JSON object, or a file holding one, saying how a classifier's labels map to
 * OpenAI's categories and where each is flagged (protocol/moderations.ts).
 */
function moderationMap(value: string, task: string): string {
  if (task !== 'moderation') throw new UsageError('--moderation-map is for --task moderation');
  let parsed: unknown;
  try {
    parsed = JSON.parse(value.trimStart().startsWith('{') ? value : readFileSync(value, 'utf8'));
  } catch (err) {
    throw new UsageError(`--moderation-map must be a JSON object or a file holding one: ${(err as Error).message}`);
  }
  const problem = moderationMappingProblem(parsed);
  if (problem) throw new UsageError(`--moderation-map: ${problem} ({"labels": {"LABEL": ["harassment"]}, "thresholds": {"harassment": 0.5}, "threshold": 0.5})`);
  return JSON.stringify(parsed);
}

async function keys(config: Config, args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { name: { type: 'string' }, models: { type: 'string' }, admin: { type: 'boolean' } } });
  if (sub === 'create') {
    if (!values.name) throw new UsageError('keys create needs --name N');
    const { key, row } = await withDb(config, (db) => createKey(db, values.name!, list(values.models) ?? null, { admin: values.admin === true }));
    console.error(`created key ${row.id} (${row.name}); it is shown only once:`);
    console.log(key);
  } else if (sub === 'list') {
    const rows = await withDb(config, listKeys);
    if (rows.length === 0) console.log('no keys');
    for (const r of rows) {
      const state = r.revoked_at ? 'revoked' : 'active';
      console.log(`${r.id}\t${r.name}\t${r.prefix}…\t${state}\t${r.models ? r.models.join(',') : 'all models'}${r.admin ? '\tadmin' : ''}`);
    }
  } else if (sub === 'revoke') {
    const id = positionals[0];
    if (!id || !/^[0-9a-f-]{36}$/i.test(id)) throw new UsageError('keys revoke needs a key ID (see keys list)');
    if (!(await withDb(config, (db) => revokeKey(db, id)))) throw new UsageError(`no active key ${id}`);
    console.log(`revoked ${id}`);
  } else throw new UsageError('keys: expected create, list or revoke');
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
