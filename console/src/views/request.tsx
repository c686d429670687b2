import { fmtInt, fmtMs, fmtTime, json } from '../format.js';
import { useJson } from '../hooks.js';
import type { RequestDetail } from '../types.js';
import { ErrorNote } from './parts.js';

/** One request: who, what, how long each stage took, tokens, and the stream as it was stored. */
export function RequestPage({ id }: { id: string }) {
  const { data: r, error, loading } = useJson<RequestDetail>(`/admin/requests/${encodeURIComponent(id)}`, {}, [id]);
  return (
    <>
      <p>
        <a href="#/requests">← Back to requests</a>
      </p>
      <h1>
        Request <code class="wrap">{id}</code>
      </h1>
      {loading && <p role="status">Loading…</p>}
      <ErrorNote error={error} />
      {r && (
        <>
          <div class="grid">
            <section aria-labelledby="h-summary" class="card">
              <h2 id="h-summary">Summary</h2>
              <dl>
                <dt>Status</dt>
                <dd>
                  <span class={`badge ${r.status}`}>{r.status}</span>
                </dd>
                <dt>Endpoint</dt>
                <dd>{r.endpoint}</dd>
                <dt>Model</dt>
                <dd>
                  {r.model}
                  {r.requested_model !== r.model && ` (asked for ${r.requested_model})`}
                </dd>
                <dt>Key</dt>
                <dd>{r.key_name ?? r.key_id ?? '—'}</dd>
                <dt>Worker</dt>
                <dd>{r.worker ?? '—'}</dd>
                <dt>Attempts</dt>
                <dd>{r.attempts}</dd>
                <dt>Streamed</dt>
                <dd>{r.stream ? 'yes' : 'no'}</dd>
              </dl>
            </section>
            <section aria-labelledby="h-timings" class="card">
              <h2 id="h-timings">Timings</h2>
              <dl>
                <dt>Queued</dt>
                <dd>{fmtTime(r.queued_at)}</dd>
                <dt>Started</dt>
                <dd>{fmtTime(r.started_at)}</dd>
                <dt>First token</dt>
                <dd>{fmtTime(r.first_token_at)}</dd>
                <dt>Finished</dt>
                <dd>{fmtTime(r.finished_at)}</dd>
                <dt>Waited in queue</dt>
                <dd>{fmtMs(r.timings.queue_ms)}</dd>
                <dt>Time to first token</dt>
                <dd>{fmtMs(r.timings.time_to_first_token_ms)}</dd>
                <dt>Ran for</dt>
                <dd>{fmtMs(r.timings.run_ms)}</dd>
                <dt>Total</dt>
                <dd>{fmtMs(r.timings.total_ms)}</dd>
              </dl>
            </section>
            <section aria-labelledby="h-tokens" class="card">
              <h2 id="h-tokens">Tokens</h2>
              <dl>
                <dt>Prompt</dt>
                <dd>{fmtInt(r.usage?.prompt_tokens)}</dd>
                <dt>Completion</dt>
                <dd>{fmtInt(r.usage?.completion_tokens)}</dd>
                <dt>Total</dt>
                <dd>{fmtInt(r.usage?.total_tokens)}</dd>
              </dl>
            </section>
          </div>
          {r.error && (
            <section aria-labelledby="h-error">
              <h2 id="h-error">Error</h2>
              <pre class="error-box" tabIndex={0}>{json(r.error)}</pre>
            </section>
          )}
          <section aria-labelledby="h-input">
            <h2 id="h-input">Input</h2>
            <pre tabIndex={0}>{json(r.input)}</pre>
            <h3>Parameters</h3>
            <pre tabIndex={0}>{json(r.params)}</pre>
          </section>
          <section aria-labelledby="h-output">
            <h2 id="h-output">Output</h2>
            <pre tabIndex={0}>{r.output === null ? 'No output stored.' : json(r.output)}</pre>
          </section>
          <section aria-labelledby="h-events">
            <h2 id="h-events">Stream events ({r.events.length})</h2>
            {r.events.length === 0 ? (
              <p>No stream events are stored for this request (not streamed, or pruned).</p>
            ) : (
              <div class="table-wrap" role="region" aria-label="Stream events" tabIndex={0}>
                <table class="events">
                  <thead>
                    <tr>
                      <th scope="col" class="num">Seq</th>
                      <th scope="col">Time</th>
                      <th scope="col">Data</th>
                    </tr>
                  </thead>
                  <tbody>
                    {r.events.map((e) => (
                      <tr key={e.seq}>
                        <td class="num">{e.seq}</td>
                        <td>{fmtTime(e.created_at)}</td>
                        <td>
                          <code class="wrap">{JSON.stringify(e.data)}</code>
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </section>
        </>
      )}
    </>
  );
}
