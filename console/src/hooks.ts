import { useEffect, useState } from 'preact/hooks';
import { getJson } from './api.js';
import type { ModelWorkers, UsageRow } from './types.js';

/** A GET that reloads when `deps` change; errors are shown by the caller. */
export function useJson<T>(path: string, params: Record<string, string | undefined>, deps: unknown[]) {
  const [state, setState] = useState<{ data: T | null; error: Error | null; loading: boolean }>({ data: null, error: null, loading: true });
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    getJson<T>(path, params).then(
      (data) => live && setState({ data, error: null, loading: false }),
      (error: Error) => live && setState({ data: null, error, loading: false }),
    );
    return () => {
      live = false;
    };
  }, deps);
  return state;
}

/** Registered models (for filters and the playground). */
export const useModels = () => useJson<{ data: ModelWorkers[] }>('/admin/workers', {}, []);

/** Keys seen in the last 30 days' usage (the read API's view of keys; names come with them). */
export const useKeys = () => useJson<{ data: UsageRow[] }>('/admin/usage', { group_by: 'key' }, []);
