import { useEffect, useState } from 'preact/hooks';
import { fmtTime } from '../format.js';
import { useJson } from '../hooks.js';
import type { ModelWorkers } from '../types.js';
import { ErrorNote } from './parts.js';

/** Models with their live workers and queue depth, refreshed every 5 s while the page is open. */
export function ModelsPage() {
  const [tick, setTick] = useState(0);
  useEffect(() => {
    const t = setInterval(() => setTick((n) => n + 1), 5000);
    return () => clearInterval(t);
  }, []);
  const { data, error } = useJson<{ data: ModelWorkers[]; worker_timeout_s: number }>('/admin/workers', {}, [tick]);
  return (
    <>
      <h1>Models and workers</h1>
      <p>
        A worker is live while its heartbeat is younger than {data?.worker_timeout_s ?? '…'} s. Queue depth counts every gateway's requests. Refreshes every 5 seconds.
      </p>
      <ErrorNote error={error} />
      <div class="table-wrap" role="region" aria-label="Models" tabIndex={0}>
        <table>
          <thead>
            <tr>
              <th scope="col">Model</th>
              <th scope="col">Task</th>
              <th scope="col" class="num">Live workers</th>
              <th scope="col" class="num">Queued</th>
              <th scope="col" class="num">Running</th>
              <th scope="col">Oldest queued</th>
              <th scope="col">Workers</th>
            </tr>
          </thead>
          <tbody>
            {data?.data.map((m) => (
              <tr key={m.model}>
                <th scope="row">{m.model}</th>
                <td>{m.task}</td>
                <td class="num">
                  <span class={`badge ${m.workers.length ? 'completed' : 'failed'}`}>{m.workers.length}</span>
                </td>
                <td class="num">{m.queued}</td>
                <td class="num">{m.running}</td>
                <td>{fmtTime(m.oldest_queued_at)}</td>
                <td>
                  {m.workers.length === 0
                    ? 'none'
                    : m.workers.map((w) => (
                        <span class="sub" key={w.id}>
                          <code>{w.id}</code> on {w.hostname} (pid {w.pid}), heartbeat {fmtTime(w.heartbeat_at)}
                        </span>
                      ))}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </>
  );
}
