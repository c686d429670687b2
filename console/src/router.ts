import { useEffect, useState } from 'preact/hooks';

/**
 * Hash routes (#/requests?model=tiny, #/requests/<id>, ...): the server serves one page, and a
 * filter is a link that can be shared or bookmarked. The admin key is never part of a route.
 */
export type Route =
  | { name: 'requests'; query: URLSearchParams }
  | { name: 'request'; id: string }
  | { name: 'usage' }
  | { name: 'models' }
  | { name: 'playground' };

export function parseRoute(hash: string): Route {
  const [path = '', qs = ''] = hash.replace(/^#\/?/, '').split('?');
  const parts = path.split('/').filter(Boolean);
  if (parts[0] === 'requests' && parts[1]) return { name: 'request', id: decodeURIComponent(parts[1]) };
  if (parts[0] === 'usage' || parts[0] === 'models' || parts[0] === 'playground') return { name: parts[0] };
  return { name: 'requests', query: new URLSearchParams(qs) };
}

export function useRoute(): Route {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return parseRoute(hash);
}

export const navigate = (hash: string) => {
  location.hash = hash;
};
