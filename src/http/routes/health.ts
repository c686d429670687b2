import type { FastifyInstance } from 'fastify';
import type pg from 'pg';

export interface HealthDeps {
  pool: pg.Pool;
  listening(): boolean;
}

/** Liveness plus what an operator needs to see first; no secrets, no auth. */
export function healthRoutes(app: FastifyInstance, deps: HealthDeps): void {
  app.get('/health', async (_request, reply) => {
    let database = 'ok';
    try {
      await deps.pool.query('select 1');
    } catch {
      database = 'unavailable';
    }
    const events = deps.listening() ? 'ok' : 'reconnecting';
    const ok = database === 'ok' && events === 'ok';
    return reply.status(ok ? 200 : 503).send({ status: ok ? 'ok' : 'degraded', database, events });
  });
}
