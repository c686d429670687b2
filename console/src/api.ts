/**
 * The console's only way to the gateway: same-origin fetches with the admin key as a Bearer
 * token. The key lives in sessionStorage (this tab only, gone when it closes), never in a URL
 * or a cookie, so it is not sent by the browser on its own and cannot leak through a link.
 */
const STORAGE = 'switchyard.adminKey';

export const session = {
  get: (): string | null => sessionStorage.getItem(STORAGE),
  set: (key: string) => sessionStorage.setItem(STORAGE, key),
  clear: () => sessionStorage.removeItem(STORAGE),
};

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null,
    readonly param: string | null,
  ) {
    super(message);
  }
}

/** Signed-out listeners: a 401 anywhere means the key went bad (revoked, rotated). */
const onSignedOut = new Set<() => void>();
export const whenSignedOut = (fn: () => void) => {
  onSignedOut.add(fn);
  return () => onSignedOut.delete(fn);
};

async function errorOf(res: Response): Promise<ApiError> {
  let body: { error?: { message?: string; code?: string | null; param?: string | null } } = {};
  try {
    body = await res.json();
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(res.status, body.error?.message ?? `${res.status} ${res.statusText}`, body.error?.code ?? null, body.error?.param ?? null);
}

export async function request(path: string, init: RequestInit = {}, key = session.get()): Promise<Response> {
  const headers = new Headers(init.headers);
  if (key) headers.set('authorization', `Bearer ${key}`);
  const res = await fetch(path, { ...init, headers, credentials: 'omit', cache: 'no-store' });
  if (!res.ok) {
    const err = await errorOf(res);
    if (res.status === 401 && key === session.get()) {
      session.clear();
      for (const fn of onSignedOut) fn();
    }
    throw err;
  }
  return res;
}

export async function getJson<T>(path: string, params: Record<string, string | undefined> = {}): Promise<T> {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) qs.set(k, v);
  const q = qs.toString();
  return (await request(q ? `${path}?${q}` : path)).json() as Promise<T>;
}

/** Checks a key before keeping it: it must be known (else 401) and an admin key (else 403). */
export async function signIn(key: string): Promise<void> {
  await request('/admin/workers', {}, key);
  session.set(key);
}

/** The events of an SSE response body, one `data:` payload at a time. */
export async function* sse(res: Response): AsyncGenerator<string> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end: number;
    while ((end = buf.search(/\r?\n\r?\n/)) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end).replace(/^\r?\n\r?\n/, '');
      const data = block
        .split(/\r?\n/)
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, ''))
        .join('\n');
      if (data) yield data;
    }
  }
}
