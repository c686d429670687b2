import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { session, whenSignedOut } from './api.js';
import { useRoute, type Route } from './router.js';
import { Login } from './views/login.js';
import { RequestLog } from './views/log.js';
import { RequestPage } from './views/request.js';
import { UsagePage } from './views/usage.js';
import { ModelsPage } from './views/models.js';
import { Playground } from './views/playground.js';
import './style.css';

const NAV: { href: string; label: string; match: Route['name'][] }[] = [
  { href: '#/requests', label: 'Requests', match: ['requests', 'request'] },
  { href: '#/usage', label: 'Usage', match: ['usage'] },
  { href: '#/models', label: 'Models', match: ['models'] },
  { href: '#/playground', label: 'Playground', match: ['playground'] },
];

function Page({ route }: { route: Route }) {
  switch (route.name) {
    case 'request':
      return <RequestPage id={route.id} />;
    case 'usage':
      return <UsagePage />;
    case 'models':
      return <ModelsPage />;
    case 'playground':
      return <Playground />;
    default:
      return <RequestLog query={route.query} />;
  }
}

function App() {
  const [signedIn, setSignedIn] = useState(session.get() !== null);
  const route = useRoute();
  const main = useRef<HTMLElement>(null);
  useEffect(() => whenSignedOut(() => setSignedIn(false)), []);
  // A new page moves focus to its content, as a page load would for screen reader users.
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    main.current?.focus();
  }, [route.name, route.name === 'request' ? route.id : '']);

  if (!signedIn) {
    return (
      <main id="main" class="login">
        <Login onSignedIn={() => setSignedIn(true)} />
      </main>
    );
  }
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => (e.preventDefault(), main.current?.focus())}>
        Skip to content
      </a>
      <header class="top">
        <p class="brand">Switchyard</p>
        <nav aria-label="Main">
          <ul>
            {NAV.map((n) => (
              <li key={n.href}>
                <a href={n.href} aria-current={n.match.includes(route.name) ? 'page' : undefined}>
                  {n.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <button type="button" class="secondary" onClick={() => (session.clear(), setSignedIn(false))}>
          Sign out
        </button>
      </header>
      <main id="main" ref={main} tabIndex={-1}>
        <Page route={route} />
      </main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
