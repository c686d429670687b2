import type pg from 'pg';

/**
 * Runs `fn` in a transaction on a client of its own: committed when `fn` returns (also early,
 * having only read), rolled back when it throws (the error goes on; a failed rollback does not
 * hide it).
 */
export async function inTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('begin');
    const out = await fn(client);
    await client.query('commit');
    return out;
  } catch (err) {
    await client.query('rollback').catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}
