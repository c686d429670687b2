import { useEffect, useState } from 'preact/hooks';
import { getJson } from '../api.js';
import { fmtInt, fmtMs, fmtTime, localToIso, shortId } from '../format.js';
import { useKeys, useModels } from '../hooks.js';
import { navigate } from '../router.js';
import type { Page, RequestSummary } from '../types.js';
import { ErrorNote } from './parts.js';

const STATUSES = ['queued', 'running', 'completed', 'failed', 'cancelled'];
const FILTERS = ['model', 'key_id', 'status', 'since', 'until'] as const;

/** ISO instant → the value a datetime-local input shows (local time, minutes). */
const isoToLocal = (iso: string | null) => {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
};

export function RequestLog({ query }: { query: URLSearchParams }) {
  const models = useModels();
  const keys = useKeys();
  const filters = Object.fromEntries(FILTERS.map((f) => [f, query.get(f) ?? undefined]));
  const filterKey = JSON.stringify(filters);
  const [rows, setRows] = useState<RequestSummary[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const [loading, setLoading] = useState(true);

  const load = async (after?: string) => {
    setLoading(true);
    try {
      const page = await getJson<Page<RequestSummary>>('/admin/requests', { ...filters, limit: '50', after });
      setRows((r) => (after ? [...r, ...page.data] : page.data));
      setCursor(page.has_more ? page.next_cursor : null);
      setError(null);
    } catch (err) {
      setError(err as Error);
    } finally {
      setLoading(false);
    }
  };
  useEffect(() => void load(), [filterKey]);

  const apply = (e: Event) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    const qs = new URLSearchParams();
    for (const f of FILTERS) {
      const v = String(form.get(f) ?? '');
      const value = f === 'since' || f === 'until' ? localToIso(v) : v;
      if (value) qs.set(f, value);
    }
    navigate(`#/requests${qs.size ? `?${qs}` : ''}`);
  };

  return (
    <>
      <h1>Requests</h1>
      <form class="filters" onSubmit={apply} aria-label="Filter requests" key={filterKey}>
        <div>
          <label for="f-model">Model</label>
          <select id="f-model" name="model" defaultValue={filters.model ?? ''}>
            <option value="">Any model</option>
            {models.data?.data.map((m) => (
              <option value={m.model} key={m.model}>
                {m.model}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label for="f-key">Key</label>
          <select id="f-key" name="key_id" defaultValue={filters.key_id ?? ''}>
            <option value="">Any key</option>
            {keys.data?.data
              .filter((k) => k.key_id)
              .map((k) => (
                <option value={k.key_id!} key={k.key_id}>
                  {k.key_name ?? shortId(k.key_id!)}
                </option>
              ))}
          </select>
        </div>
        <div>
          <label for="f-status">Status</label>
          <select id="f-status" name="status" defaultValue={filters.status ?? ''}>
            <option value="">Any status</option>
            {STATUSES.map((s) => (
              <option value={s} key={s}>
                {s}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label for="f-since">From</label>
          <input id="f-since" name="since" type="datetime-local" defaultValue={isoToLocal(filters.since ?? null)} />
        </div>
        <div>
          <label for="f-until">Until</label>
          <input id="f-until" name="until" type="datetime-local" defaultValue={isoToLocal(filters.until ?? null)} />
        </div>
        <div class="actions">
          <button type="submit">Apply filters</button>
          <a class="button secondary" href="#/requests">
            Clear
          </a>
        </div>
      </form>
      <ErrorNote error={error} />
      <p class="status-line" role="status">
        {loading ? 'Loading…' : `${rows.length} request${rows.length === 1 ? '' : 's'} shown${cursor ? ' (more available)' : ''}.`}
      </p>
      <div class="table-wrap" role="region" aria-label="Request log" tabIndex={0}>
        <table>
          <thead>
            <tr>
              <th scope="col">Request</th>
              <th scope="col">Queued</th>
              <th scope="col">Model</th>
              <th scope="col">Key</th>
              <th scope="col">Status</th>
              <th scope="col" class="num">Tokens in / out</th>
              <th scope="col" class="num">Total time</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => (
              <tr key={r.id}>
                <td>
                  <a href={`#/requests/${r.id}`} aria-label={`Request ${shortId(r.id)}, ${r.endpoint}`}>
                    <code>{shortId(r.id)}</code>
                  </a>
                  <span class="sub">{r.endpoint}</span>
                </td>
                <td>{fmtTime(r.queued_at)}</td>
                <td>{r.model}</td>
                <td>{r.key_name ?? (r.key_id ? shortId(r.key_id) : '—')}</td>
                <td>
                  <span class={`badge ${r.status}`}>{r.status}</span>
                </td>
                <td class="num">
                  {fmtInt(r.usage?.prompt_tokens)} / {fmtInt(r.usage?.completion_tokens)}
                </td>
                <td class="num">{fmtMs(r.finished_at ? Date.parse(r.finished_at) - Date.parse(r.queued_at) : null)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {cursor && (
        <button type="button" class="secondary" disabled={loading} onClick={() => void load(cursor)}>
          Load more
        </button>
      )}
    </>
  );
}
