import { useState } from 'preact/hooks';
import { ApiError, signIn } from '../api.js';

export function Login({ onSignedIn }: { onSignedIn(): void }) {
  const [key, setKey] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await signIn(key.trim());
      onSignedIn();
    } catch (err) {
      const status = err instanceof ApiError ? err.status : 0;
      setError(status === 401 ? 'That key is not recognised (wrong, or revoked).' : status === 403 ? 'That key is not an admin key: create one with switchyard keys create --admin.' : `Could not sign in: ${(err as Error).message}`);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section aria-labelledby="login-title" class="card">
      <h1 id="login-title">Switchyard console</h1>
      <p>Sign in with an admin API key. It is kept in this browser tab only (session storage) and sent as a Bearer token.</p>
      <form onSubmit={submit}>
        <label for="admin-key">Admin API key</label>
        <input id="admin-key" type="password" autoComplete="off" required value={key} onInput={(e) => setKey(e.currentTarget.value)} aria-describedby={error ? 'login-error' : undefined} />
        <button type="submit" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
        {error && (
          <p id="login-error" role="alert" class="error">
            {error}
          </p>
        )}
      </form>
    </section>
  );
}
