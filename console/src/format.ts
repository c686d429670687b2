/** Display helpers shared by the views. */
export const fmtTime = (iso: string | null) => (iso ? new Date(iso).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' }) : '—');
export const fmtMs = (ms: number | null) => (ms === null ? '—' : ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(2)} s`);
export const fmtInt = (n: number | undefined | null) => (n === undefined || n === null ? '—' : n.toLocaleString());
export const shortId = (id: string) => id.slice(0, 8);
export const json = (v: unknown) => JSON.stringify(v, null, 2);

/** A local datetime-local value (YYYY-MM-DDTHH:mm) as an ISO instant, or undefined. */
export const localToIso = (v: string) => (v ? new Date(v).toISOString() : undefined);
