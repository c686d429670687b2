import { useState } from 'preact/hooks';
import { BarChart } from '../chart.js';
import { fmtInt, shortId } from '../format.js';
import { useJson } from '../hooks.js';
import type { UsageRow } from '../types.js';
import { ErrorNote } from './parts.js';

const WINDOWS = [
  { days: 1, label: 'Last 24 hours' },
  { days: 7, label: 'Last 7 days' },
  { days: 30, label: 'Last 30 days' },
  { days: 90, label: 'Last 90 days' },
];
// Colours with at least 3:1 contrast on white (WCAG's non-text contrast).
const PROMPT = '#1d4ed8';
const COMPLETION = '#b45309';

type Dim = 'day' | 'model' | 'key';
const labelOf = (dim: Dim, r: UsageRow) => (dim === 'day' ? r.day! : dim === 'model' ? r.model! : (r.key_name ?? (r.key_id ? shortId(r.key_id) : 'no key')));

function UsageChart({ dim, title, since }: { dim: Dim; title: string; since: string }) {
  const { data, error, loading } = useJson<{ data: UsageRow[] }>('/admin/usage', { group_by: dim, since }, [dim, since]);
  const rows = data?.data ?? [];
  const labels = rows.map((r) => labelOf(dim, r));
  const total = rows.reduce((s, r) => s + r.total_tokens, 0);
  const id = `chart-${dim}`;
  return (
    <section aria-labelledby={`${id}-title`} class="card chart-card">
      <h2 id={`${id}-title`}>{title}</h2>
      <ErrorNote error={error} />
      {loading && !data && <p role="status">Loading…</p>}
      {data && rows.length === 0 && <p>No requests in this window.</p>}
      <BarChart
        id={id}
        labels={labels}
        series={[
          { label: 'Prompt tokens', values: rows.map((r) => r.prompt_tokens), color: PROMPT },
          { label: 'Completion tokens', values: rows.map((r) => r.completion_tokens), color: COMPLETION },
        ]}
        summary={`${title}: ${rows.length} bar${rows.length === 1 ? '' : 's'}, ${total.toLocaleString()} tokens in all. The table below has the numbers.`}
      />
      <details>
        <summary>Show the numbers</summary>
        <div class="table-wrap" role="region" aria-label={`${title} (table)`} tabIndex={0}>
          <table>
            <thead>
              <tr>
                <th scope="col">{dim === 'day' ? 'Day (UTC)' : dim === 'model' ? 'Model' : 'Key'}</th>
                <th scope="col" class="num">Requests</th>
                <th scope="col" class="num">Failed</th>
                <th scope="col" class="num">Prompt</th>
                <th scope="col" class="num">Completion</th>
                <th scope="col" class="num">Total</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((r, i) => (
                <tr key={i}>
                  <th scope="row">{labels[i]}</th>
                  <td class="num">{fmtInt(r.requests)}</td>
                  <td class="num">{fmtInt(r.failed)}</td>
                  <td class="num">{fmtInt(r.prompt_tokens)}</td>
                  <td class="num">{fmtInt(r.completion_tokens)}</td>
                  <td class="num">{fmtInt(r.total_tokens)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </details>
    </section>
  );
}

export function UsagePage() {
  const [days, setDays] = useState(7);
  // Whole minutes, so re-renders within a minute ask for the same window.
  const since = new Date(Math.floor((Date.now() - days * 86_400_000) / 60_000) * 60_000).toISOString();
  return (
    <>
      <h1>Usage</h1>
      <div class="filters">
        <div>
          <label for="u-window">Window</label>
          <select id="u-window" value={String(days)} onChange={(e) => setDays(Number(e.currentTarget.value))}>
            {WINDOWS.map((w) => (
              <option value={String(w.days)} key={w.days}>
                {w.label}
              </option>
            ))}
          </select>
        </div>
      </div>
      <div class="charts">
        <UsageChart dim="day" title="Tokens per day" since={since} />
        <UsageChart dim="model" title="Tokens per model" since={since} />
        <UsageChart dim="key" title="Tokens per key" since={since} />
      </div>
    </>
  );
}
