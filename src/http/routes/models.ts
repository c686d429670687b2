import type { FastifyInstance } from 'fastify';
import type { ModelsServing } from '../../serving/models.js';

export function modelRoutes(app: FastifyInstance, models: ModelsServing): void {
  app.get('/models', async (request) => models.list(request.ctx));
  // Model ids may contain slashes (org/name), so the id is the rest of the path (which the
  // router has already percent-decoded once: decoding again would misread '%25').
  app.get('/models/*', async (request) => models.retrieve((request.params as { '*': string })['*'], request.ctx));
}
