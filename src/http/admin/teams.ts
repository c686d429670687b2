import type { FastifyInstance } from 'fastify';
import { createTeam, deleteTeam, getTeam, listTeams, updateTeam } from '../../admin/teams.js';
import type { AdminDeps } from './index.js';

type Id = { Params: { id: string } };

/** /admin/teams: the operations of src/admin/teams.ts (the CLI's `teams` calls the same). `:id` may be the name. */
export function registerTeamRoutes(scope: FastifyInstance, { database: { db } }: AdminDeps): void {
  scope.post('/teams', async (request, reply) => reply.status(201).send(await createTeam(db, request.body)));
  scope.get('/teams', async () => listTeams(db));
  scope.get<Id>('/teams/:id', async (request) => getTeam(db, request.params.id));
  scope.patch<Id>('/teams/:id', async (request) => updateTeam(db, request.params.id, request.body));
  scope.delete<Id>('/teams/:id', async (request) => deleteTeam(db, request.params.id));
}
