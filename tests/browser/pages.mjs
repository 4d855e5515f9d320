// Pages that fail a test on console errors, page errors and requests off this machine.
import assert from 'node:assert/strict';

const LOCAL = new Set(['127.0.0.1', 'localhost', '[::1]']);

/** Opens `url` in a new context of `browser`; `expectedConsole` matches console errors a test
 *  provokes on purpose (a refused login's 401, say). */
export async function openPage(browser, url, { viewport = { width: 1280, height: 800 }, expectedConsole = null } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && !expectedConsole?.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('request', (r) => {
    const host = new URL(r.url()).hostname;
    if (!LOCAL.has(host) && !r.url().startsWith('data:')) problems.push(`left localhost: ${r.url()}`);
  });
  await page.goto(url);
  return { page, context, problems };
}

/** Closes the page's context and fails on anything it recorded. */
export async function expectClean({ problems, context }) {
  await context.close();
  assert.deepEqual(problems, [], 'no console errors and no request off this machine');
}
