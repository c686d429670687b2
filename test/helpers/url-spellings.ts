/**
 * Ways to spell a request target that a router may still take to the route it names (or that
 * come close): percent-encoded characters and slashes, dot segments, doubled and trailing
 * slashes, case, parameters, query strings, absolute-form. Each rewrites the target at its
 * `n`-th position (modulo the positions it has), so a test can enumerate them and a fuzzer can
 * draw them. Whatever spelling reaches a /v1 handler must meet the key check.
 */

const hex = (c: string, lower: boolean) => {
  const h = c.charCodeAt(0).toString(16).padStart(2, '0');
  return `%${lower ? h : h.toUpperCase()}`;
};
const split = (target: string) => {
  const q = target.search(/[?#]/);
  return q < 0 ? { path: target, rest: '' } : { path: target.slice(0, q), rest: target.slice(q) };
};
/** Indices in `path` where `test` holds. */
const where = (path: string, test: (c: string, i: number) => boolean) => [...path].flatMap((c, i) => (test(c, i) ? [i] : []));
const pick = <T>(xs: T[], n: number): T | undefined => (xs.length ? xs[n % xs.length] : undefined);

/** Rewrites the path part at the n-th index where `test` holds (`round`: how often n went round them). */
const atChar = (test: (c: string, i: number) => boolean, edit: (path: string, i: number, round: number) => string) => (target: string, n: number) => {
  const { path, rest } = split(target);
  const at = where(path, test);
  const i = pick(at, n);
  return i === undefined ? target : edit(path, i, Math.floor(n / at.length)) + rest;
};
const isSlash = (c: string) => c === '/';

export const SPELLINGS: Record<string, (target: string, n: number) => string> = {
  'percent-encoded character': atChar((c) => /[A-Za-z0-9-]/.test(c), (p, i, round) => p.slice(0, i) + hex(p[i]!, round % 2 === 1) + p.slice(i + 1)),
  'every character percent-encoded': (t, n) => {
    const { path, rest } = split(t);
    return path.replace(/[A-Za-z0-9-]/g, (c) => hex(c, n % 2 === 1)) + rest;
  },
  // (Not the leading one: a target must start with '/' or a scheme.)
  'percent-encoded slash': atChar((c, i) => c === '/' && i > 0, (p, i, round) => p.slice(0, i) + (round % 2 ? '%2f' : '%2F') + p.slice(i + 1)),
  'dot segment': atChar(isSlash, (p, i) => `${p.slice(0, i)}/.${p.slice(i)}`),
  'dot-dot segment': atChar(isSlash, (p, i) => `${p.slice(0, i)}/x/..${p.slice(i)}`),
  'percent-encoded dot segments': atChar(isSlash, (p, i, round) => `${p.slice(0, i)}${round % 2 ? '/%2e' : '/x/%2E%2E'}${p.slice(i)}`),
  'double slash': atChar(isSlash, (p, i) => `${p.slice(0, i)}/${p.slice(i)}`),
  'trailing slash': (t, n) => {
    const { path, rest } = split(t);
    return `${path}${['/', '//', '/.'][n % 3]}${rest}`;
  },
  'upper case': (t, n) => {
    const { path, rest } = split(t);
    const segs = path.split('/');
    const i = 1 + (n % Math.max(1, segs.length - 1));
    segs[i] = segs[i]!.toUpperCase();
    return segs.join('/') + rest;
  },
  'path parameter': atChar(isSlash, (p, i) => (i === 0 ? `${p};x` : `${p.slice(0, i)};x${p.slice(i)}`)),
  'query string': (t, n) => `${t}${t.includes('?') ? '&' : '?'}${['', 'x=1', 'a=/v2/../v1', 'model=%00', 'key=sk-abc'][n % 5]}`,
  fragment: (t) => `${t}#frag`,
  'absolute-form': (t, n) => `${['http://host', 'HTTP://HOST:80', 'https://gw.example:8443', 'http://[::1]'][n % 4]}${t}`,
};

/** The rewrites that keep an origin-form target (absolute-form prefixes it, so it goes last). */
export const ORIGIN_FORM = Object.keys(SPELLINGS).filter((k) => k !== 'absolute-form');

/** Every single rewrite of `target` at every position, each also in absolute-form. */
export function spellings(target: string): string[] {
  const out = new Set<string>([target]);
  for (const name of ORIGIN_FORM) for (let n = 0; n < target.length; n++) out.add(SPELLINGS[name]!(target, n));
  for (const t of [...out]) out.add(SPELLINGS['absolute-form']!(t, t.length));
  return [...out];
}

/** Every keyed route (`route`: as registered), with a request its handler would serve. */
/** A well-formed response id (no such response exists: the store is asked, and answers 404). */
const RESPONSE_ID = 'resp_0123456789abcdef0123456789abcdef';

export const V1_ROUTES: { method: string; route: string; path: string; body?: unknown }[] = [
  { method: 'GET', route: '/v1/models', path: '/v1/models' },
  { method: 'HEAD', route: '/v1/models', path: '/v1/models' },
  { method: 'GET', route: '/v1/models/*', path: '/v1/models/tiny-chat' },
  { method: 'HEAD', route: '/v1/models/*', path: '/v1/models/tiny-chat' },
  { method: 'POST', route: '/v1/chat/completions', path: '/v1/chat/completions', body: { model: 'tiny-chat', messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 } },
  { method: 'POST', route: '/v1/completions', path: '/v1/completions', body: { model: 'tiny-chat', prompt: ['a', 'b'], max_tokens: 1 } },
  { method: 'POST', route: '/v1/embeddings', path: '/v1/embeddings', body: { model: 'tiny-embed', input: 'x' } },
  { method: 'POST', route: '/v1/responses', path: '/v1/responses', body: { model: 'tiny-chat', input: 'hi', max_output_tokens: 1 } },
  { method: 'GET', route: '/v1/responses/:id', path: `/v1/responses/${RESPONSE_ID}` },
  { method: 'HEAD', route: '/v1/responses/:id', path: `/v1/responses/${RESPONSE_ID}` },
  { method: 'DELETE', route: '/v1/responses/:id', path: `/v1/responses/${RESPONSE_ID}` },
  { method: 'POST', route: '/v1/responses/:id/cancel', path: `/v1/responses/${RESPONSE_ID}/cancel` },
  { method: 'GET', route: '/v1/responses/:id/input_items', path: `/v1/responses/${RESPONSE_ID}/input_items` },
  { method: 'HEAD', route: '/v1/responses/:id/input_items', path: `/v1/responses/${RESPONSE_ID}/input_items` },
  { method: 'POST', route: '/v1/files', path: '/v1/files', body: { purpose: 'batch' } },
  { method: 'GET', route: '/v1/files', path: '/v1/files' },
  { method: 'HEAD', route: '/v1/files', path: '/v1/files' },
  { method: 'GET', route: '/v1/files/:id', path: '/v1/files/file-0123' },
  { method: 'HEAD', route: '/v1/files/:id', path: '/v1/files/file-0123' },
  { method: 'DELETE', route: '/v1/files/:id', path: '/v1/files/file-0123' },
  { method: 'GET', route: '/v1/files/:id/content', path: '/v1/files/file-0123/content' },
  { method: 'HEAD', route: '/v1/files/:id/content', path: '/v1/files/file-0123/content' },
  { method: 'POST', route: '/v1/batches', path: '/v1/batches', body: { input_file_id: 'file-0123', endpoint: '/v1/chat/completions', completion_window: '24h' } },
  { method: 'GET', route: '/v1/batches', path: '/v1/batches' },
  { method: 'HEAD', route: '/v1/batches', path: '/v1/batches' },
  { method: 'GET', route: '/v1/batches/:id', path: '/v1/batches/batch_0123' },
  { method: 'HEAD', route: '/v1/batches/:id', path: '/v1/batches/batch_0123' },
  { method: 'POST', route: '/v1/batches/:id/cancel', path: '/v1/batches/batch_0123/cancel' },
  { method: 'POST', route: '/v1/messages', path: '/v1/messages', body: { model: 'tiny-chat', max_tokens: 1, messages: [{ role: 'user', content: 'hi' }] } },
  { method: 'POST', route: '/v1/messages/count_tokens', path: '/v1/messages/count_tokens', body: { model: 'tiny-chat', messages: [{ role: 'user', content: 'hi' }] } },
  // Issue 22: moderations, and the retired endpoints old applications still call.
  { method: 'POST', route: '/v1/moderations', path: '/v1/moderations', body: { input: 'x' } },
  { method: 'POST', route: '/v1/edits', path: '/v1/edits', body: { model: 'tiny-chat', instruction: 'x', input: 'y' } },
  { method: 'GET', route: '/v1/engines', path: '/v1/engines' },
  { method: 'HEAD', route: '/v1/engines', path: '/v1/engines' },
  { method: 'GET', route: '/v1/engines/*', path: '/v1/engines/tiny-chat' },
  { method: 'HEAD', route: '/v1/engines/*', path: '/v1/engines/tiny-chat' },
  { method: 'POST', route: '/v1/engines/*', path: '/v1/engines/tiny-chat/completions', body: { prompt: 'x', max_tokens: 1 } },
  { method: 'POST', route: '/v1/engines/*', path: '/v1/engines/tiny-embed/embeddings', body: { input: 'x' } },
  // vLLM's token endpoints live at the root, behind the same key hook.
  { method: 'POST', route: '/tokenize', path: '/tokenize', body: { model: 'tiny-chat', prompt: 'hi' } },
  { method: 'POST', route: '/detokenize', path: '/detokenize', body: { model: 'tiny-chat', tokens: [1, 2] } },
];

/** Routes outside /v1 that need a key all the same. */
export const KEYED_ROOT_ROUTES = ['/tokenize', '/detokenize'];
