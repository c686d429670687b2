import pg from 'pg';
import type { LogFn } from '../log.js';

export interface ListenerOptions {
  connectionString: string;
  channels: string[];
  onNotification(channel: string, payload: string): void;
  /** Called after every (re)connection: notifications may have been missed meanwhile. */
  onConnected?(): void;
  log: { info: LogFn; warn: LogFn };
}

/**
 * The one LISTEN connection of a process. It reconnects by itself (backoff up to 5 s) so that
 * a database restart does not need a process restart; whoever depends on it catches up from
 * tables in `onConnected`.
 */
export class PgListener {
  private client: pg.Client | null = null;
  private stopped = false;
  private attempt = 0;
  private timer: NodeJS.Timeout | null = null;
  private readyWaiters: (() => void)[] = [];
  connected = false;

  constructor(private readonly opts: ListenerOptions) {}

  /** Resolves once the first LISTEN is in place (later reconnects happen in the background). */
  start(): Promise<void> {
    const ready = new Promise<void>((resolve) => this.readyWaiters.push(resolve));
    void this.connect();
    return ready;
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const client = new pg.Client({ connectionString: this.opts.connectionString, connectionTimeoutMillis: 10_000, application_name: 'switchyard-listen' });
    client.on('notification', (msg) => {
      if (msg.payload !== undefined) this.opts.onNotification(msg.channel, msg.payload);
    });
    const lost = (err?: Error) => {
      if (this.client !== client) return;
      this.client = null;
      this.connected = false;
      client.removeAllListeners('notification');
      client.end().catch(() => {});
      if (!this.stopped) {
        this.opts.log.warn(`listen connection lost${err ? `: ${err.message}` : ''}; reconnecting`);
        this.schedule();
      }
    };
    client.on('error', lost);
    client.on('end', () => lost());
    try {
      await client.connect();
      for (const channel of this.opts.channels) await client.query(`listen ${pg.escapeIdentifier(channel)}`);
    } catch (err) {
      client.end().catch(() => {});
      if (!this.stopped) this.schedule();
      if (this.attempt === 1) this.opts.log.warn(`cannot listen for events: ${(err as Error).message}; retrying`);
      return;
    }
    if (this.stopped) {
      await client.end().catch(() => {});
      return;
    }
    this.client = client;
    this.connected = true;
    if (this.attempt > 0) this.opts.log.info('listen connection re-established');
    this.attempt = 0;
    this.opts.onConnected?.();
    for (const w of this.readyWaiters.splice(0)) w();
  }

  private schedule(): void {
    this.attempt++;
    const delay = Math.min(5000, 100 * 2 ** Math.min(this.attempt, 6));
    this.timer = setTimeout(() => void this.connect(), delay);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    const c = this.client;
    this.client = null;
    this.connected = false;
    for (const w of this.readyWaiters.splice(0)) w();
    await c?.end().catch(() => {});
  }
}
