import { afterAll, describe, expect, it } from 'vitest';
import { TemplateSandbox } from '../../../src/worker/generation/template-sandbox.js';
import type { ThreadError } from '../../../src/worker/generation/thread-error.js';

/** A request's own chat_template is a program: a hostile one is a 400, never a stalled or dead worker. */
const sandbox = new TemplateSandbox();
afterAll(() => sandbox.close());

const ok = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}";
const context = { messages: [{ role: 'user', content: 'hi' }], add_generation_prompt: true };

async function refusal(template: string): Promise<{ status: number; code: string | null; param: string | null; message: string }> {
  try {
    await sandbox.render(template, context);
  } catch (err) {
    const e = err as ThreadError;
    return { status: e.status, ...e.body };
  }
  throw new Error('rendered');
}

describe('the chat-template sandbox', () => {
  it('renders a template', async () => {
    expect(await sandbox.render(ok, context)).toBe('<user>hi');
  });

  it.each([
    // range(10**9) is a list: the time limit or the heap limit stops it, whichever comes first.
    ['an endless loop', '{% for i in range(1000000000) %}{% endfor %}done', /longer than|more memory/],
    // (@huggingface/jinja has no string * int: a string doubled 40 times is its huge string.)
    ['a string doubled in a loop', "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}", /memory|characters|string length/i],
    ['a list grown in a loop', '{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}', /longer than|memory/],
    ['a 128 MB string', "{% set ns = namespace(s='x') %}{% for i in range(27) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | upper | length }}", /more memory than a template may/],
    ['output over the limit', "{% set ns = namespace(s='yyyyyyyy') %}{% for i in range(20) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}", /characters; the limit/],
  ])('%s is a 400 naming chat_template', async (_, template, message) => {
    const started = Date.now();
    const e = await refusal(template);
    expect(e).toMatchObject({ status: 400, code: 'invalid_chat_template', param: 'chat_template' });
    expect(e.message).toMatch(message);
    expect(Date.now() - started).toBeLessThan(5000);
    // And the sandbox goes on.
    expect(await sandbox.render(ok, context)).toBe('<user>hi');
  }, 15_000);

  it('a render queued behind a hostile one is not blamed for it', async () => {
    const [bad, good] = await Promise.allSettled([
      sandbox.render('{% for i in range(1000000000) %}{% endfor %}', context),
      sandbox.render(ok, context),
    ]);
    expect(bad.status).toBe('rejected');
    expect(good).toEqual({ status: 'fulfilled', value: '<user>hi' });
  }, 15_000);
});
