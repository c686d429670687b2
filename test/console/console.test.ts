import OpenAI from 'openai';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { cli, query, startServe, startWorker, until, type Proc } from '../helpers/stack.js';
import { ARTIFACTS, axe, ensureChromium, launch, shot, type Browser } from './browser.js';

/**
 * The web console in a real browser (Debian's chromium via playwright-core) against a real serve
 * and worker with the tiny fixture model: sign in, filter the log and open a request, the usage
 * charts, the workers, a streamed playground chat; every page checked by axe at desktop and at
 * phone width, and no console error anywhere. Screenshots go to test-artifacts/console/.
 */
let db: TestDatabase;
let serve: Proc & { url: string };
let worker: Proc & { workerId: string };
let browser: Browser;
let page: Page;
let adminKey: string;
let appKey: string;
let streamedId: string;

const keyId = async (name: string) => (await query<{ id: string }>(db.url, 'select id from ai.api_keys where name = $1', [name]))[0]!.id;

beforeAll(async () => {
  ensureChromium();
  db = await createTestDatabase();
  const env = { DATABASE_URL: db.url };
  const created = await cli(['models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], env);
  expect(created.code, created.stderr).toBe(0);
  const keys: string[] = [];
  for (const args of [['--name', 'ops', '--admin'], ['--name', 'app'], ['--name', 'other']]) {
    const r = await cli(['keys', 'create', ...args], env);
    expect(r.code, r.stderr).toBe(0);
    keys.push(r.stdout.trim());
  }
  [adminKey, appKey] = keys as [string, string];
  [serve, worker] = await Promise.all([startServe(db.url), startWorker(db.url)]);
  // Traffic to look at: completed requests by two keys, one streamed, one cancelled mid-stream.
  const app = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: appKey, maxRetries: 0 });
  const other = new OpenAI({ baseURL: `${serve.url}/v1`, apiKey: keys[2]!, maxRetries: 0 });
  const messages = [{ role: 'user' as const, content: 'Name three colours.' }];
  await app.chat.completions.create({ model: 'tiny', messages, max_tokens: 8 });
  await other.chat.completions.create({ model: 'tiny', messages, max_tokens: 8 });
  const { data: stream, response } = await app.chat.completions.create({ model: 'tiny', messages, max_tokens: 24, stream: true }).withResponse();
  for await (const _ of stream);
  streamedId = response.headers.get('x-request-id')!;
  const abort = new AbortController();
  const long = await app.chat.completions.create({ model: 'tiny', messages, max_tokens: 1500, stream: true }, { signal: abort.signal });
  for await (const _ of long) break;
  abort.abort();
  await until('the abandoned stream to be cancelled', async () => (await query(db.url, `select 1 from ai.requests where status = 'cancelled'`)).length > 0);
  browser = await launch();
  page = browser.context.pages()[0] ?? (await browser.context.newPage());
}, 600_000);

afterAll(async () => {
  await browser?.close();
  await Promise.all([serve?.stop(), worker?.stop()]);
  await db?.drop();
});

describe('the console', () => {
  it('refuses a model key and signs in with an admin key kept in session storage only', async () => {
    await page.goto(`${serve.url}/console`);
    await page.getByLabel('Admin API key').fill(appKey);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect.poll(() => page.getByRole('alert').textContent()).toMatch(/not an admin key/);
    // The browser reports the refused check (a 403) as a console error: the one expected here.
    expect(browser.problems.every((p) => /status of 403/.test(p))).toBe(true);
    browser.problems.length = 0;
    await page.getByLabel('Admin API key').fill(adminKey);
    await page.getByLabel('Admin API key').press('Enter');
    await page.getByRole('heading', { name: 'Requests', level: 1 }).waitFor();
    expect(await page.evaluate(`sessionStorage.getItem('switchyard.adminKey')`)).toBe(adminKey);
    expect(await page.evaluate('document.cookie')).toBe('');
    expect(page.url()).not.toContain(adminKey);
  });

  it('filters the log by key and status, and opens a streamed request with its timings, tokens and events', async () => {
    const rows = page.locator('tbody tr');
    await expect.poll(() => rows.count()).toBe(4);
    await page.getByLabel('Key').selectOption({ label: 'app' });
    await page.getByLabel('Status').selectOption('completed');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    const appId = await keyId('app');
    await expect.poll(() => page.url()).toContain(`key_id=${appId}`);
    const want = await query<{ id: string }>(db.url, `select id from ai.requests where key_id = $1 and status = 'completed' order by queued_at desc`, [appId]);
    expect(want).toHaveLength(2);
    await expect.poll(() => rows.count()).toBe(2);
    const hrefs = await page.locator('tbody tr td:first-child a').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
    expect(hrefs).toEqual(want.map((r) => `#/requests/${r.id}`));
    await shot(page, 'log-filtered');

    await page.locator(`a[href="#/requests/${streamedId}"]`).click();
    await page.getByRole('heading', { name: 'Timings' }).waitFor();
    const [row] = await query<{ usage: { prompt_tokens: number; completion_tokens: number }; events: number }>(
      db.url,
      'select usage, (select count(*)::int from ai.request_events where request_id = r.id) as events from ai.requests r where id = $1',
      [streamedId],
    );
    expect(row!.events).toBeGreaterThan(0);
    await page.getByRole('heading', { name: `Stream events (${row!.events})` }).waitFor();
    expect(await page.locator('table.events tbody tr').count()).toBe(row!.events);
    const tokens = page.getByRole('region', { name: 'Tokens' }).or(page.locator('section[aria-labelledby="h-tokens"]'));
    await expect.poll(() => tokens.textContent()).toContain(`Prompt${row!.usage.prompt_tokens}Completion${row!.usage.completion_tokens}`);
    const ttft = await page.locator('dt:text-is("Time to first token") + dd').textContent();
    expect(ttft).toMatch(/\d+(\.\d+)? m?s/);
    await shot(page, 'request-detail');
  });

  it('draws the usage charts from non-empty data that matches the log', async () => {
    await page.getByRole('link', { name: 'Usage' }).click();
    for (const id of ['chart-day', 'chart-model', 'chart-key']) {
      await expect.poll(() => page.locator(`#${id}`).getAttribute('data-points'), { timeout: 15_000 }).not.toBe('0');
    }
    // The bars are really drawn: the prompt-token colour is on the per-key canvas.
    const painted = await page.evaluate(`(() => {
      const c = document.getElementById('chart-key');
      const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 0; i < px.length; i += 4) if (px[i] === 0x1d && px[i + 1] === 0x4e && px[i + 2] === 0xd8) n++;
      return n;
    })()`);
    expect(painted).toBeGreaterThan(50);
    const keySection = page.locator('section', { has: page.getByRole('heading', { name: 'Tokens per key' }) });
    await keySection.getByText('Show the numbers').click();
    const [sum] = await query<{ total: number }>(
      db.url,
      `select (coalesce(sum((usage->>'prompt_tokens')::int), 0) + coalesce(sum((usage->>'completion_tokens')::int), 0))::int as total from ai.requests r join ai.api_keys k on k.id = r.key_id where k.name = 'app'`,
    );
    const appRow = keySection.locator('tbody tr', { has: page.locator('th', { hasText: /^app$/ }) });
    expect((await appRow.locator('td').last().textContent())!.replace(/\D/g, '')).toBe(String(sum!.total));
    await shot(page, 'usage');
  });

  it('lists the model with its live worker and queue depth', async () => {
    await page.getByRole('link', { name: 'Models' }).click();
    const row = page.locator('tbody tr', { has: page.locator('th', { hasText: /^tiny$/ }) });
    await expect.poll(() => row.textContent()).toContain(worker.workerId);
    expect(await row.locator('td').nth(1).textContent()).toBe('1');
    await shot(page, 'models');
  });

  it('streams a playground chat, tokens appearing as they arrive', async () => {
    await page.getByRole('link', { name: 'Playground' }).click();
    await page.getByLabel('Message').fill('Tell me a story about a train yard.');
    await page.getByLabel('Max tokens').fill('64');
    // Every change of the output's text while it streams, as the user would see it.
    await page.evaluate(`(() => {
      const el = document.getElementById('p-output');
      const seen = (window.__seen = []);
      new MutationObserver(() => seen.push(el.textContent.length)).observe(el, { childList: true, characterData: true, subtree: true });
    })()`);
    await page.getByRole('button', { name: 'Send' }).click();
    await expect.poll(() => page.locator('#p-status').textContent(), { timeout: 60_000 }).toMatch(/^Done: \d+ chunks.*completion tokens/);
    const seen = await page.evaluate<number[]>('window.__seen');
    const text = (await page.locator('#p-output').textContent())!;
    expect(text.length).toBeGreaterThan(0);
    // More than one distinct partial text: the tokens came in over time, not in one piece at the end.
    expect(new Set(seen.filter((n) => n > 0 && n < text.length)).size).toBeGreaterThan(0);
    const [last] = await query<{ id: string; output: unknown; stream: boolean }>(db.url, `select r.id, r.output, r.stream from ai.requests r join ai.api_keys k on k.id = r.key_id where k.name = 'ops' order by queued_at desc limit 1`);
    expect(last!.stream).toBe(true);
    expect(JSON.stringify(last!.output)).toContain(JSON.stringify(text).slice(1, -1));
    await shot(page, 'playground');
  });

  it('is keyboard usable: the skip link, then the navigation, in order', async () => {
    // A fresh load (a hash change alone would move focus to the page's content, as a route change should).
    await page.goto(`${serve.url}/console/#/requests`);
    await page.reload();
    await page.getByRole('heading', { name: 'Requests', level: 1 }).waitFor();
    await page.keyboard.press('Tab');
    expect(await page.evaluate('document.activeElement?.textContent')).toBe('Skip to content');
    await page.keyboard.press('Tab');
    expect(await page.evaluate('document.activeElement?.textContent')).toBe('Requests');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Enter');
    await expect.poll(() => page.url()).toMatch(/#\/usage$/);
    await expect.poll(() => page.evaluate('document.activeElement?.id')).toBe('main');
  });

  for (const [label, width, height] of [['desktop', 1280, 860], ['phone', 375, 740]] as const) {
    it(`has no serious accessibility violations and fits the screen at ${label} width`, async () => {
      await page.setViewportSize({ width, height });
      const pages: [string, string][] = [
        ['requests', '#/requests'],
        ['request', `#/requests/${streamedId}`],
        ['usage', '#/usage'],
        ['models', '#/models'],
        ['playground', '#/playground'],
      ];
      for (const [name, hash] of pages) {
        await page.goto(`${serve.url}/console/${hash}`);
        await page.locator('main h1').waitFor();
        await page.waitForLoadState('networkidle');
        const violations = await axe(page);
        expect(violations, `${name} at ${label}: ${JSON.stringify(violations, null, 1)}`).toEqual([]);
        const overflow = await page.evaluate<number>('document.documentElement.scrollWidth - window.innerWidth');
        expect(overflow, `${name} at ${label} scrolls sideways`).toBeLessThanOrEqual(0);
        await shot(page, `${label}-${name}`);
      }
      // The signed-out page too.
      await page.evaluate('sessionStorage.clear()');
      await page.goto(`${serve.url}/console/`);
      await page.getByLabel('Admin API key').waitFor();
      expect(await axe(page)).toEqual([]);
      await shot(page, `${label}-login`);
      await page.getByLabel('Admin API key').fill(adminKey);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('heading', { name: 'Requests', level: 1 }).waitFor();
      await page.setViewportSize({ width: 1280, height: 860 });
    });
  }

  it('logged no console errors, page errors or failed requests', () => {
    expect(browser.problems).toEqual([]);
    expect(ARTIFACTS).toMatch(/test-artifacts\/console\/$/);
  });
});
