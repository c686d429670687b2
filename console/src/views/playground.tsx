import { useRef, useState } from 'preact/hooks';
import { request, sse } from '../api.js';
import { useModels } from '../hooks.js';
import type { Usage } from '../types.js';
import { ErrorNote } from './parts.js';

/**
 * A chat streamed through /v1/chat/completions with the admin key, as any client would: the
 * deltas are appended as they arrive, so what is seen is the gateway's real stream.
 */
export function Playground() {
  const models = useModels();
  const chatModels = models.data?.data.filter((m) => m.task === 'chat') ?? [];
  const [model, setModel] = useState('');
  const [prompt, setPrompt] = useState('Say hello.');
  const [maxTokens, setMaxTokens] = useState(32);
  const [output, setOutput] = useState('');
  const [chunks, setChunks] = useState(0);
  const [usage, setUsage] = useState<Usage | null>(null);
  const [requestId, setRequestId] = useState<string | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const [running, setRunning] = useState(false);
  const abort = useRef<AbortController | null>(null);

  const send = async (e: Event) => {
    e.preventDefault();
    const chosen = model || chatModels[0]?.model;
    if (!chosen) return setError(new Error('No chat model is registered.'));
    setOutput('');
    setChunks(0);
    setUsage(null);
    setError(null);
    setRequestId(null);
    setRunning(true);
    abort.current = new AbortController();
    try {
      const res = await request('/v1/chat/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
        body: JSON.stringify({ model: chosen, messages: [{ role: 'user', content: prompt }], max_tokens: maxTokens, stream: true, stream_options: { include_usage: true } }),
        signal: abort.current.signal,
      });
      setRequestId(res.headers.get('x-request-id'));
      for await (const data of sse(res)) {
        if (data === '[DONE]') break;
        const chunk = JSON.parse(data) as { error?: { message: string }; choices?: { delta?: { content?: string } }[]; usage?: Usage | null };
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) {
          setOutput((o) => o + delta);
          setChunks((n) => n + 1);
        }
        if (chunk.usage) setUsage(chunk.usage);
      }
    } catch (err) {
      if ((err as Error).name !== 'AbortError') setError(err as Error);
    } finally {
      setRunning(false);
      abort.current = null;
    }
  };

  return (
    <>
      <h1>Playground</h1>
      <p>Streams a chat completion through the gateway's /v1 API with your admin key. Fixture and small models write gibberish: this shows the plumbing.</p>
      <form class="playground" onSubmit={send}>
        <div class="row">
          <div>
            <label for="p-model">Model</label>
            <select id="p-model" value={model || chatModels[0]?.model || ''} onChange={(e) => setModel(e.currentTarget.value)}>
              {chatModels.map((m) => (
                <option value={m.model} key={m.model}>
                  {m.model}
                </option>
              ))}
            </select>
          </div>
          <div>
            <label for="p-max">Max tokens</label>
            <input id="p-max" type="number" min={1} max={4096} value={maxTokens} onInput={(e) => setMaxTokens(Number(e.currentTarget.value) || 1)} />
          </div>
        </div>
        <label for="p-prompt">Message</label>
        <textarea id="p-prompt" rows={4} value={prompt} onInput={(e) => setPrompt(e.currentTarget.value)} required />
        <div class="actions">
          <button type="submit" disabled={running}>
            {running ? 'Streaming…' : 'Send'}
          </button>
          <button type="button" class="secondary" disabled={!running} onClick={() => abort.current?.abort()}>
            Stop
          </button>
        </div>
      </form>
      <ErrorNote error={error} />
      <section aria-labelledby="p-out-title" class="card">
        <h2 id="p-out-title">Response</h2>
        <p class="status-line" role="status" id="p-status">
          {running ? `Streaming: ${chunks} chunks so far` : chunks ? `Done: ${chunks} chunks` : 'Nothing sent yet.'}
          {usage && ` · ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`}
          {requestId && !running && (
            <>
              {' · '}
              <a href={`#/requests/${requestId}`}>see it in the log</a>
            </>
          )}
        </p>
        <pre id="p-output" class="output" aria-live="off" tabIndex={0}>
          {output}
        </pre>
      </section>
    </>
  );
}
