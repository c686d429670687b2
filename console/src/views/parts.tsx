import { ApiError } from '../api.js';

/** An error from the API, announced to screen readers. */
export function ErrorNote({ error }: { error: Error | null }) {
  if (!error) return null;
  const param = error instanceof ApiError && error.param ? ` (${error.param})` : '';
  return (
    <p role="alert" class="error">
      {error.message}
      {param}
    </p>
  );
}
