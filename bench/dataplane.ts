/**
 * The data plane's cost to PostgreSQL: commits and WAL per generated token (16 concurrent streams
 * × 128 tokens on the tiny fixture model, where the model costs almost nothing) and per 1-token
 * non-streaming request, through the real serve + worker.
 *
 * Each window runs from one reading to the next, after the load and a settle (see meter.ts). The
 * gateway's idle activity (job polling, heartbeats, the reaper) is measured in windows without
 * load before and after the rounds; it is subtracted from the commits over the settle only (under
 * load the job runner stops polling from busy slots, so subtracting it there would flatter), and
 * from the WAL throughout (timers: heartbeats). Tokens are counted from the responses' usage.
 */
import { TINY, chatOnce, chatStream } from './gateway.js';
import { chatBody, errorsNote, failed, num, shortPrompt, type Ctx, type Row, type SectionResult } from './kit.js';
import { progress, stat } from './lib.js';
import { Meter, SETTLE_MS, type Reading, type Window } from './meter.js';

const STREAMS = 16;
const TOKENS = 128;

interface Net {
  /** Commits less the idle rate over the settle only (the load's own part of the window keeps all its commits). */
  commits: number;
  /** Commits less the idle rate over the whole window (as if the background went on unchanged under load). */
  commitsLow: number;
  /** Attributed WAL bytes less idle; null without pg_walinspect. */
  wal: number | null;
  serverWal: number;
  units: number;
  window: Window;
}

export async function dataplane(c: Ctx): Promise<SectionResult> {
  const rounds = c.quick ? 1 : 3;
  const requests = c.quick ? 16 : 32;
  const meter = await Meter.open(c.stack.db.url, c.stack.db.name);
  try {
    // Warm up both paths (first requests load caches, open connections, prepare statements).
    await chatStream(c.stack, chatBody(0, 4, { model: TINY }));
    await chatOnce(c.stack, chatBody(0, 1, { model: TINY }, shortPrompt(0)));
    // The gateway's own background (job polling, heartbeats, the reaper) is measured in a window
    // without load before the rounds and another after them, and subtracted at their mean rate.
    progress(`dataplane: settle, then an idle window (${(2 * SETTLE_MS) / 1000} s)`);
    const i0 = await meter.settleAndRead();
    let last = await meter.settleAndRead();
    const idle = [await meter.between(i0, last)];
    const rate = { commits: 0, wal: null as number | null };
    const setRate = () => {
      const s = idle.reduce((n, w) => n + w.seconds, 0);
      rate.commits = idle.reduce((n, w) => n + w.commits, 0) / s;
      rate.wal = idle.some((w) => w.wal.bytes === null) ? null : idle.reduce((n, w) => n + w.wal.bytes!, 0) / s;
    };
    // Commits: the background is not the same under load (graphile-worker polls only from idle
    // job slots; 16 streams hold 16 of them), so the figure subtracts it only over the settle after
    // the load and never flatters; the note gives the other bound (subtracted throughout).
    const net = (w: Window, units: number, loadS: number): Net => ({
      commits: w.commits - rate.commits * (w.seconds - loadS),
      commitsLow: w.commits - rate.commits * w.seconds,
      wal: w.wal.bytes === null || rate.wal === null ? null : w.wal.bytes - rate.wal * w.seconds,
      serverWal: w.wal.serverBytes,
      units,
      window: w,
    });
    const window = async <T>(work: () => Promise<T>): Promise<{ result: T; w: Window; loadS: number }> => {
      const a: Reading = last;
      const t0 = performance.now();
      const result = await work();
      const loadS = (performance.now() - t0) / 1000;
      last = await meter.settleAndRead();
      return { result, w: await meter.between(a, last), loadS };
    };
    const streamWindows: { w: Window; units: number; loadS: number }[] = [];
    const oneTokenWindows: { w: Window; units: number; loadS: number }[] = [];
    const errors: string[] = [];
    let streamsTotal = 0;
    let requestsTotal = 0;
    for (let r = 0; r < rounds; r++) {
      progress(`dataplane round ${r + 1}/${rounds}: ${STREAMS} streams × ${TOKENS} tokens`);
      const s = await window(() => Promise.all(Array.from({ length: STREAMS }, (_, i) => chatStream(c.stack, chatBody(10 + r * STREAMS + i, TOKENS, { model: TINY })))));
      const bad = failed(s.result);
      errors.push(...bad.map((x) => x.error!));
      streamsTotal += s.result.length;
      streamWindows.push({ w: s.w, units: s.result.reduce((n, x) => n + x.completionTokens, 0), loadS: s.loadS });
      progress(`dataplane round ${r + 1}/${rounds}: ${requests} 1-token requests, one after another`);
      const o = await window(async () => {
        const out = [];
        for (let i = 0; i < requests; i++) out.push(await chatOnce(c.stack, chatBody(100 + r * requests + i, 1, { model: TINY }, shortPrompt(100 + i))));
        return out;
      });
      errors.push(...o.result.filter((x) => x.error).map((x) => x.error!));
      requestsTotal += o.result.length;
      oneTokenWindows.push({ w: o.w, units: o.result.filter((x) => !x.error).length, loadS: o.loadS });
    }
    progress(`dataplane: closing idle window (${SETTLE_MS / 1000} s)`);
    const end = await meter.settleAndRead();
    idle.push(await meter.between(last, end));
    setRate();
    const streams = streamWindows.map((x) => net(x.w, x.units, x.loadS));
    const oneToken = oneTokenWindows.map((x) => net(x.w, x.units, x.loadS));
    const per = (xs: Net[], f: (n: Net) => number | null) => {
      const v = xs.map(f).filter((x): x is number => x !== null && Number.isFinite(x));
      return v.length ? stat(v) : null;
    };
    const cpt = per(streams, (n) => n.commits / n.units);
    const cptLow = per(streams, (n) => n.commitsLow / n.units);
    const cprLow = per(oneToken, (n) => n.commitsLow / n.units);
    const loadS = streamWindows.map((x) => num(x.loadS)).join(', ');
    const wpt = per(streams, (n) => (n.wal === null ? null : n.wal / n.units));
    const cpr = per(oneToken, (n) => n.commits / n.units);
    const wpr = per(oneToken, (n) => (n.wal === null ? null : n.wal / n.units));
    const ok = errors.length === 0;
    const errs = errorsNote(errors.length, streamsTotal + requestsTotal, errors);
    const lastS = streams[streams.length - 1]!;
    const lastO = oneToken[oneToken.length - 1]!;
    const top = (w: Window) => w.wal.byRelation.slice(0, 3).map((x) => `${x.relation} ${num(x.bytes / 1024)} KiB`).join(', ');
    const idleRates = idle.map((w) => num(w.commits / w.seconds)).join(' and ');
    const idleNote = `the gateway's idle activity (${num(rate.commits)} commits/s: ${idleRates} in the windows before and after) subtracted over the settle after the load, not during it (${loadS} s); subtracted throughout: ${num(cptLow?.median ?? NaN)}`;
    const noFpi = per(streams, (n) => (n.wal === null ? null : (n.wal - n.window.wal.fpiBytes!) / n.units));
    const walIdle = rate.wal === null ? '' : `; idle WAL (${num(rate.wal)} B/s) subtracted throughout`;
    const walHow = meter.walUnattributed
      ? `not attributable (${meter.walUnattributed}); server-wide, all databases: ${num(lastS.serverWal / lastS.units)} B/token`
      : `records of the bench database (pg_walinspect), last round: ${num(lastS.window.wal.bytes!)} B of ${num(lastS.window.wal.serverBytes)} B server-wide, of which full-page images ${num(lastS.window.wal.fpiBytes!)} B (without them: ${num(noFpi?.median ?? NaN)} B/token; this server checkpoints often); top: ${top(lastS.window)}${walIdle}`;
    const rows: Row[] = [
      { id: 'dataplane.commits_per_token', figure: `commits per generated token (${STREAMS} concurrent streams × ${TOKENS} tokens, tiny model)`, unit: 'commits', gateway: cpt, inproc: null, compare: null, target: '≤ 0.1', met: cpt === null ? false : ok && cpt.median <= 0.1, note: `pg_stat_database.xact_commit of the bench database; ${streams.map((n) => n.units).join(', ')} tokens per round (usage); ${idleNote}${errs}` },
      { id: 'dataplane.wal_per_token', figure: `WAL bytes per generated token (same streams)`, unit: 'B', gateway: wpt, inproc: null, compare: null, target: '≤ 100 B', met: wpt === null ? false : ok && wpt.median <= 100, note: walHow, ...(wpt === null ? { unsupported: 'n/a: WAL not attributable to the bench database' } : {}) },
      { id: 'dataplane.commits_per_request', figure: `commits per 1-token non-streaming request (tiny model, ${requests} one after another)`, unit: 'commits', gateway: cpr, inproc: null, compare: null, target: null, met: null, note: `idle activity subtracted as above; subtracted throughout: ${num(cprLow?.median ?? NaN)}` },
      { id: 'dataplane.wal_per_request', figure: 'WAL bytes per 1-token non-streaming request', unit: 'B', gateway: wpr, inproc: null, compare: null, target: null, met: null, note: wpr === null ? undefined : `last round: ${num(lastO.window.wal.bytes!)} B, of which full-page images ${num(lastO.window.wal.fpiBytes!)} B; top: ${top(lastO.window)}` },
    ];
    const rawNet = (xs: Net[]) => xs.map((n) => ({ units: n.units, net_commits: n.commits, net_commits_idle_subtracted_throughout: n.commitsLow, net_wal_bytes: n.wal, server_wal_bytes: n.serverWal, window: n.window }));
    return {
      rows,
      raw: {
        rounds, streams: STREAMS, max_tokens: TOKENS, requests_per_round: requests, settle_ms: SETTLE_MS,
        wal_unattributed: meter.walUnattributed, idle: { windows: idle, rate }, streaming: rawNet(streams), one_token: rawNet(oneToken), errors,
      },
    };
  } finally {
    await meter.close();
  }
}
