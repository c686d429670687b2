import type { FastifyInstance } from 'fastify';
import { errors } from '../../protocol/errors.js';
import { MAX_FILE_BYTES, listLimit, type BatchServing } from '../../serving/batches.js';
import { boundaryOf, parseMultipart } from '../multipart.js';

type Params = { id: string };
type Query = Record<string, string | string[] | undefined>;

/** The Files and Batch APIs; thin: serving decides. */
export function batchRoutes(app: FastifyInstance, batches: BatchServing): void {
  // Uploads: the raw body, bounded, parsed here (see multipart.ts). Registered in this scope only.
  app.addContentTypeParser('multipart/form-data', { parseAs: 'buffer', bodyLimit: MAX_FILE_BYTES + 64 * 1024 }, (request, body, done) => {
    try {
      done(null, parseMultipart(body as Buffer, boundaryOf(request.headers['content-type'])));
    } catch (err) {
      done(err as Error);
    }
  });
  app.post('/files', async (request) => {
    const form = request.body as { fields?: Record<string, string>; files?: Record<string, { filename: string; data: Buffer }> } | null;
    if (!form?.files) throw errors.invalid('Upload a file as multipart/form-data with fields file and purpose.', 'file');
    const file = form.files.file;
    if (!file) throw errors.invalid("Missing required parameter: 'file'.", 'file', 'missing_required_parameter');
    return batches.createFile({ purpose: form.fields?.purpose, filename: file.filename || 'upload.jsonl', content: file.data }, request.ctx);
  });
  app.get('/files', async (request) => {
    const purpose = (request.query as Query).purpose;
    return batches.listFiles(request.ctx, typeof purpose === 'string' ? purpose : undefined);
  });
  app.get<{ Params: Params }>('/files/:id', async (request) => batches.getFile(request.params.id, request.ctx));
  app.get<{ Params: Params }>('/files/:id/content', async (request, reply) => {
    const content = await batches.fileContent(request.params.id, request.ctx);
    return reply.type('application/octet-stream').send(content);
  });
  app.delete<{ Params: Params }>('/files/:id', async (request) => batches.deleteFile(request.params.id, request.ctx));
  app.post('/batches', async (request) => batches.createBatch(request.body, request.ctx));
  app.get('/batches', async (request) => {
    const q = request.query as Query;
    if (Array.isArray(q.after)) throw errors.invalid("'after' may be given once.", 'after');
    return batches.listBatches(request.ctx, q.after, listLimit(q.limit));
  });
  app.get<{ Params: Params }>('/batches/:id', async (request) => batches.getBatch(request.params.id, request.ctx));
  app.post<{ Params: Params }>('/batches/:id/cancel', async (request) => batches.cancelBatch(request.params.id, request.ctx));
}
