import { openDatabase } from '../db/pool.js';
import { EventHub } from '../engine/event-hub.js';
import { PgEngine } from '../engine/pg-engine.js';
import { logger } from '../log.js';
import { Reaper } from '../engine/reaper.js';
import { PgBatchStore } from '../db/batches-repo.js';
import { sweepBatches } from '../serving/batches.js';
import { buildApp } from './app.js';
import { ServeTokenizers } from '../engine/tokenizers.js';

export interface ServeOptions {
  databaseUrl: string;
  host: string;
  port: number;
  auth: boolean;
}

export interface RunningServer {
  url: string;
  stop(): Promise<void>;
}

/**
 * The web console's build folder, built first when missing or stale (a checkout's sources
 * changed). A failed build (esbuild absent from a trimmed install) costs the console only.
 */
async function buildConsole(log: ReturnType<typeof logger>): Promise<string | null> {
  try {
    const { ensureConsole } = await import('../../scripts/build-console.mjs');
    return await ensureConsole({ log: (m) => log.info(m) });
  } catch (err) {
    log.warn(`the web console could not be built, /console is off: ${(err as Error).message}`);
    return null;
  }
}

/** Starts the HTTP gateway: one pool, one LISTEN connection, one Fastify app. */
export async function startServer(opts: ServeOptions): Promise<RunningServer> {
  const log = logger('serve');
  const database = openDatabase(opts.databaseUrl, { max: 20, applicationName: 'switchyard-serve' });
  const hub = new EventHub(database.pool, opts.databaseUrl, log);
  await hub.start();
  const consoleDir = await buildConsole(log);
  const app = buildApp({ engine: new PgEngine(database, hub), database, auth: opts.auth, listening: () => hub.listening, tokenizers: new ServeTokenizers(database.db), consoleDir });
  let address: string;
  try {
    address = await app.listen({ host: opts.host, port: opts.port });
  } catch (err) {
    await hub.stop();
    await database.close();
    throw err;
  }
  const reaper = new Reaper(database.pool, log);
  reaper.addSweep('batches finalized or expired', () => sweepBatches(new PgBatchStore(database.pool)));
  reaper.start();
  const url = address.replace('[::1]', 'localhost');
  log.info(`listening on ${url} (auth ${opts.auth ? 'on' : 'OFF'})`);
  return {
    url,
    async stop() {
      await reaper.stop();
      await app.close();
      await hub.stop();
      await database.close();
    },
  };
}
