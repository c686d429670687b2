import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { errors } from '../protocol/errors.js';

/**
 * The web console's static files (built by scripts/build-console.mjs). The page needs no key:
 * it holds no data, and everything it shows comes from /admin and /v1 with the key the user
 * types in. The files are read once into memory (a few hundred KB), so only names that exist
 * in the build can be served: no path from a URL ever reaches the file system.
 */
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.woff2': 'font/woff2',
  '.map': 'application/json; charset=utf-8',
};

/**
 * No inline script or style, nothing from another origin; the page may only talk to this
 * gateway (connect-src 'self') and may not be framed (clickjacking an admin).
 */
export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "font-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

interface File {
  body: Buffer;
  type: string;
}

function load(dir: string): { index: Buffer; etag: string; assets: Map<string, File> } {
  const assets = new Map<string, File>();
  for (const name of readdirSync(join(dir, 'assets'))) {
    const type = TYPES[extname(name)];
    if (type) assets.set(name, { body: readFileSync(join(dir, 'assets', name)), type });
  }
  const index = readFileSync(join(dir, 'index.html'));
  return { index, etag: `"${createHash('sha256').update(index).digest('base64url').slice(0, 22)}"`, assets };
}

function secure(reply: FastifyReply): FastifyReply {
  return reply
    .header('content-security-policy', CONSOLE_CSP)
    .header('x-content-type-options', 'nosniff')
    .header('referrer-policy', 'no-referrer')
    .header('x-frame-options', 'DENY')
    .header('cross-origin-opener-policy', 'same-origin');
}

/**
 * GET /console (redirects to /console/ so relative asset paths resolve), /console/ (the page,
 * never cached: it names the current assets) and /console/assets/NAME (content-hashed names,
 * cached for a year). `dir` null: the console could not be built; the page says so (503).
 */
export function consoleRoutes(app: FastifyInstance, dir: string | null): void {
  const files = dir ? load(dir) : null;
  app.get('/console', async (_request, reply) => secure(reply).redirect('/console/', 308));
  app.get('/console/', async (request, reply) => {
    if (!files) throw errors.unavailable('The web console is not built here: run `node scripts/build-console.mjs` and restart serve.');
    secure(reply).header('cache-control', 'no-cache').header('etag', files.etag);
    if (request.headers['if-none-match'] === files.etag) return reply.status(304).send();
    return reply.type(TYPES['.html']!).send(files.index);
  });
  app.get<{ Params: { name: string } }>('/console/assets/:name', async (request, reply) => {
    const file = files?.assets.get(request.params.name);
    if (!file) throw errors.notFound(`No console asset '${request.params.name}'.`);
    return secure(reply).header('cache-control', 'public, max-age=31536000, immutable').type(file.type).send(file.body);
  });
}
