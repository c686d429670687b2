import type { FastifyInstance } from 'fastify';
import { addModelFrom, listModelObjects, removeModelNamed, setModelDefaults } from '../../admin/models.js';
import type { AdminDeps } from './index.js';

type Name = { Params: { name: string } };

/** /admin/models: the operations of src/admin/models.ts (the CLI's `models` calls the same). */
export function registerModelRoutes(scope: FastifyInstance, { database: { db } }: AdminDeps): void {
  scope.get('/models', async () => listModelObjects(db));
  scope.post('/models', async (request, reply) => reply.status(201).send(await addModelFrom(db, request.body)));
  scope.delete<Name>('/models/:name', async (request) => removeModelNamed(db, request.params.name));
  scope.put<Name>('/models/:name/defaults', async (request) => setModelDefaults(db, request.params.name, request.body));
}
