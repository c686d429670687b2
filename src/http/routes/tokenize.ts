import type { FastifyInstance } from 'fastify';
import type { TokenizeServing } from '../../serving/tokenize.js';

/** vLLM's token endpoints, outside /v1 as vLLM has them (their scope has the same key hook). */
export function tokenizeRoutes(app: FastifyInstance, tokenize: TokenizeServing): void {
  app.post('/tokenize', async (request) => tokenize.tokenize(request.body, request.ctx));
  app.post('/detokenize', async (request) => tokenize.detokenize(request.body, request.ctx));
}
