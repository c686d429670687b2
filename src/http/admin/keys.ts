import type { FastifyInstance } from 'fastify';
import { createApiKey, getApiKey, listApiKeys, revokeApiKey, rotateApiKey, updateApiKey } from '../../admin/keys.js';
import type { AdminDeps } from './index.js';

type Id = { Params: { id: string } };

/** /admin/keys: the operations of src/admin/keys.ts (the CLI's `keys` calls the same). */
export function registerKeyRoutes(scope: FastifyInstance, { database: { db } }: AdminDeps): void {
  scope.post('/keys', async (request, reply) => reply.status(201).send(await createApiKey(db, request.body)));
  scope.get('/keys', async () => listApiKeys(db));
  scope.get<Id>('/keys/:id', async (request) => getApiKey(db, request.params.id));
  scope.patch<Id>('/keys/:id', async (request) => updateApiKey(db, request.params.id, request.body));
  scope.post<Id>('/keys/:id/revoke', async (request) => revokeApiKey(db, request.params.id));
  scope.delete<Id>('/keys/:id', async (request) => revokeApiKey(db, request.params.id));
  scope.post<Id>('/keys/:id/rotate', async (request) => rotateApiKey(db, request.params.id));
}
