/** Postgres is down or restarting: the client may retry, so 503 rather than 500. */
export function isDatabaseUnavailable(err: unknown): boolean {
  const e = err as { code?: string; message?: string };
  return (
    ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', '57P01', '57P02', '57P03', '53300'].includes(e.code ?? '') ||
    /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error/.test(e.message ?? '')
  );
}

/**
 * Runs `fn`, retrying while the database is unavailable (a restart, a failover), for up to
 * `maxMs`: work a worker has done is not thrown away because Postgres blinked.
 */
export async function retryWhileUnavailable<T>(fn: () => Promise<T>, maxMs = 60_000): Promise<T> {
  const started = Date.now();
  for (let delay = 200; ; delay = Math.min(delay * 2, 2000)) {
    try {
      return await fn();
    } catch (err) {
      if (!isDatabaseUnavailable(err) || Date.now() - started + delay > maxMs) throw err;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}
