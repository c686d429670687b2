import type { FastifyInstance } from 'fastify';
import type { Engine } from '../../engine/types.js';
import { errors } from '../../protocol/errors.js';
import type { ResponsesServing } from '../../serving/responses.js';
import { cancelOnClose } from '../cancel-on-close.js';
import { sendSse } from '../sse.js';

type Query = Record<string, string | string[] | undefined>;

function one(q: Query, name: string): string | undefined {
  const v = q[name];
  if (Array.isArray(v)) throw errors.invalid(`'${name}' may be given once.`, name);
  return v;
}

function integer(q: Query, name: string, min: number, max: number): number | undefined {
  const v = one(q, name);
  if (v === undefined) return undefined;
  const n = /^\d{1,15}$/.test(v) ? Number(v) : NaN;
  if (!(n >= min && n <= max)) throw errors.invalid(`Invalid value for '${name}': expected an integer from ${min} to ${max}.`, name);
  return n;
}

function flag(q: Query, name: string): boolean {
  const v = one(q, name);
  if (v === undefined || v === 'false') return false;
  if (v === 'true') return true;
  throw errors.invalid(`Invalid value for '${name}': expected true or false.`, name);
}

/** The Responses API; thin: serving decides, the route picks JSON or SSE. */
export function responseRoutes(app: FastifyInstance, responses: ResponsesServing, engine: Engine): void {
  app.post('/responses', async (request, reply) => {
    const lifecycle = cancelOnClose(request, reply, engine);
    const result = await responses.create(request.body, request.ctx, lifecycle.queued);
    reply.header('x-request-id', result.requestId);
    // A background response runs on whether or not its client stays.
    if (result.kind === 'json' || result.background) lifecycle.finished();
    if (result.kind === 'json') return reply.send(result.body);
    await sendSse(reply, result.events, { named: true });
    lifecycle.finished();
  });

  app.get('/responses/:id', async (request, reply) => {
    const { id } = request.params as { id: string };
    const q = request.query as Query;
    // HEAD gets the headers of the JSON answer: a stream would run on with nobody to read it.
    if (!flag(q, 'stream') || request.method === 'HEAD') return responses.retrieve(id, request.ctx);
    const startingAfter = integer(q, 'starting_after', 0, Number.MAX_SAFE_INTEGER) ?? null;
    const left = new AbortController();
    reply.raw.on('close', () => left.abort());
    await sendSse(reply, await responses.stream(id, request.ctx, startingAfter, left.signal), { named: true });
  });

  app.delete('/responses/:id', async (request) => responses.delete((request.params as { id: string }).id, request.ctx));

  app.post('/responses/:id/cancel', async (request) => responses.cancel((request.params as { id: string }).id, request.ctx));

  app.get('/responses/:id/input_items', async (request) => {
    const q = request.query as Query;
    const order = one(q, 'order');
    if (order !== undefined && order !== 'asc' && order !== 'desc') throw errors.invalid("Invalid value for 'order': must be one of \"asc\", \"desc\".", 'order');
    const after = one(q, 'after');
    const limit = integer(q, 'limit', 1, 100);
    return responses.inputItems((request.params as { id: string }).id, request.ctx, { ...(after !== undefined ? { after } : {}), ...(limit !== undefined ? { limit } : {}), ...(order ? { order } : {}) });
  });
}
