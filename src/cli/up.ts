import type { Config } from '../config.js';
import { countActiveKeys, createKey } from '../db/keys-repo.js';
import { addModel, countModels } from '../db/models-repo.js';
import { openDatabase } from '../db/pool.js';
import { provision } from '../db/provision.js';
import { startServer } from '../http/server.js';
import { logger } from '../log.js';
import { startWorker } from '../worker/run.js';
import { discoverModels, HUB_DEFAULTS } from './defaults.js';

/**
 * The one-command local stack: provision the database, register default models when none
 * are registered, create a first key, then run the gateway and a worker in this process
 * (the worker's models run in their own thread).
 */
export async function up(config: Config, opts: { auth: boolean; dtype?: string }): Promise<{ stop(): Promise<void> }> {
  const log = logger('up');
  await provision(config.databaseUrl, log.info);
  const database = openDatabase(config.databaseUrl, { max: 2, applicationName: 'switchyard-up' });
  let firstKey: string | null = null;
  try {
    if ((await countModels(database.db)) === 0) {
      const defaults = config.modelsDir ? discoverModels(config.modelsDir) : HUB_DEFAULTS;
      if (defaults.length === 0) throw new Error(`no model folders (with config.json) found in SWITCHYARD_MODELS_DIR=${config.modelsDir}`);
      for (const found of defaults) {
        const m = opts.dtype ? { ...found, dtype: opts.dtype } : found;
        await addModel(database.db, m);
        log.info(`registered model ${m.name} (${m.task}) from ${m.source}, dtype ${m.dtype}`);
      }
    }
    if (opts.auth && (await countActiveKeys(database.db)) === 0) firstKey = (await createKey(database.db, 'default', null)).key;
  } finally {
    await database.close();
  }
  const worker = await startWorker({ databaseUrl: config.databaseUrl, modelsDir: config.modelsDir });
  let server;
  try {
    server = await startServer({ databaseUrl: config.databaseUrl, host: config.host, port: config.port, auth: opts.auth });
  } catch (err) {
    await worker.stop();
    throw err;
  }
  console.log(`Switchyard is up: ${server.url}/v1 (models: ${worker.models.join(', ')})`);
  if (firstKey) console.log(`API key (shown once, keep it): ${firstKey}`);
  else if (opts.auth) console.log('Use an existing API key, or create one: switchyard keys create --name NAME');
  return {
    async stop() {
      await server.stop();
      await worker.stop();
    },
  };
}
