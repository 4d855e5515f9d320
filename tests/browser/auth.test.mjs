// Write authorization in a real Chromium against a real `aiot demo` started with a password
// file: read-only controls before the login, the login form (keyboard only), the LED toggle
// reaching a real websocket node after it, and the logout returning the page to read-only.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { AIOT_BIN, startDemo, testNode } from './aiot.mjs';
import { expectClean, openPage } from './pages.mjs';

const PASSWORD = 'browser test password';
const screenshots = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../docs/img');

let browser;
let demo;
let scratch;

before(async () => {
  scratch = mkdtempSync(path.join(os.tmpdir(), 'aiot-auth-'));
  const file = path.join(scratch, 'web-password');
  const made = spawnSync(AIOT_BIN, ['password', 'hash', '--file', file], { input: `${PASSWORD}\n` });
  assert.equal(made.status, 0, String(made.stderr));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  demo = await startDemo({ nodes: 1, coapNodes: 0, extraArgs: ['--web-password-file', file] });
});

after(async () => {
  await browser?.close();
  await demo?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** A refused login is an expected 401, which Chromium reports on the console. */
const open = (url) => openPage(browser, url, { expectedConsole: /status of 401/ });

for (const where of ['broker', 'gateway']) {
  test(`the ${where} dashboard is read-only until a login`, async () => {
    const node = await testNode(demo.nodeUrl, { name: `readonly-${where}`, led: '0', text: 'hello' });
    const view = await open(demo[where]);
    const { page } = view;
    const card = page.locator('.node', { hasText: `readonly-${where}` });
    await card.waitFor({ timeout: 5000 });
    await page.locator('#read-only').waitFor();
    assert.equal((await page.locator('#login-toggle').textContent()).trim(), 'Log in');
    const toggle = card.locator('[data-action="led-toggle"]');
    assert.equal(await toggle.isDisabled(), true, 'the LED toggle is disabled');
    assert.equal(await card.locator('form[data-action="text-send"] input').isDisabled(), true);
    assert.equal(await card.locator('form[data-action="text-send"] button[type="submit"]').isDisabled(), true);
    // Clicking it anyway sends nothing.
    await toggle.click({ force: true });
    await new Promise((resolve) => setTimeout(resolve, 700));
    assert.deepEqual(node.received.filter((m) => m.endpoint), [], 'the node got no write');
    node.close();
    await expectClean(view);
  });
}

test('logging in with the keyboard enables the controls; logging out disables them again', async () => {
  const node = await testNode(demo.nodeUrl, { name: 'login-test', led: '0' });
  const view = await open(demo.broker);
  const { page, context } = view;
  const card = page.locator('.node', { hasText: 'login-test' });
  await card.waitFor({ timeout: 5000 });
  const toggle = card.locator('[data-action="led-toggle"]');
  assert.equal(await toggle.isDisabled(), true);
  await page.screenshot({ path: path.join(screenshots, 'dashboard-read-only.png') });

  // Open the form from the keyboard: focus lands in the password field.
  const loginButton = page.locator('#login-toggle');
  await loginButton.focus();
  await page.keyboard.press('Enter');
  await page.locator('#login').waitFor();
  assert.equal(await loginButton.getAttribute('aria-expanded'), 'true');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'login-password');

  // A wrong password says so and keeps the page read-only.
  await page.keyboard.type('not the password');
  await page.keyboard.press('Enter');
  await page.locator('#login-error', { hasText: 'Wrong password' }).waitFor();
  assert.equal(await toggle.isDisabled(), true);

  // Escape closes the form and gives the focus back to the button.
  await page.keyboard.press('Escape');
  await page.locator('#login').waitFor({ state: 'hidden' });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'login-toggle');

  await page.keyboard.press('Enter');
  await page.keyboard.type(PASSWORD);
  await page.keyboard.press('Enter');
  await page.locator('#login').waitFor({ state: 'hidden' });
  await page.locator('#login-toggle', { hasText: 'Log out' }).waitFor();
  await page.locator('#read-only').waitFor({ state: 'hidden' });
  await card.locator('[data-action="led-toggle"]:not([disabled])').waitFor({ timeout: 5000 });

  const [cookie] = await context.cookies();
  assert.match(cookie.name, /^aiot_session_\d+$/);
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.equal(cookie.secure, false, 'plain HTTP here');
  assert.equal(await page.evaluate(() => document.cookie), '', 'the page script cannot read it');

  // The page reconnected with its session: the LED switch reaches the node.
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: 5000 });
  await toggle.click();
  await node.next((m) => m.endpoint === 'led' && m.payload === '1');
  node.send({ led: '1' });
  await card.locator('[data-action="led-toggle"][aria-pressed="true"]').waitFor({ timeout: 2000 });

  // Log out: read-only again, and the server agrees.
  await loginButton.click();
  await page.locator('#login-toggle', { hasText: 'Log in' }).waitFor();
  await page.locator('#read-only').waitFor();
  assert.equal(await toggle.isDisabled(), true);
  const session = await page.evaluate(async () => (await fetch('api/session')).json());
  assert.equal(session.authenticated, false);
  assert.equal(session.can_write, false);

  node.close();
  await expectClean(view);
});

test('the login form works in the dark theme and on a phone', async () => {
  const context = await browser.newContext({ viewport: { width: 375, height: 740 }, colorScheme: 'dark' });
  const page = await context.newPage();
  await page.goto(demo.gateway);
  await page.locator('#login-toggle').click();
  await page.locator('#login-password').waitFor();
  const overflow = await page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the screen`);
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
  // The form is drawn in the theme's colours, not a light box on a dark page.
  const background = await page.locator('#login').evaluate((el) => getComputedStyle(el).backgroundColor);
  const [r, g, b] = background.match(/\d+/g).map(Number);
  assert.ok(r + g + b < 200, `dark form background, got ${background}`);
  await page.screenshot({ path: path.join(screenshots, 'dashboard-login-phone.png') });
  await context.close();
});

mkdirSync(screenshots, { recursive: true });
