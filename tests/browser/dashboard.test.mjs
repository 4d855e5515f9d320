// The dashboard in a real Chromium against a real `aiot demo` (broker + gateway + simulated
// nodes on loopback). Run by ci/test; needs Debian's chromium and `npm ci` here.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startDemo, testNode } from './aiot.mjs';
import { expectClean, openPage } from './pages.mjs';

const screenshots = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../docs/img');

let browser;
let demo;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  demo = await startDemo();
});

after(async () => {
  await browser?.close();
  await demo?.stop();
});

const open = (url, viewport) => openPage(browser, url, { viewport });

for (const where of ['broker', 'gateway']) {
  test(`the ${where} dashboard shows the simulated nodes with live values`, async () => {
    const view = await open(demo[where]);
    const { page } = view;
    // The demo's three websocket, three CoAP nodes, one MQTT and one MQTT-SN node.
    await page.locator('.node').nth(7).waitFor({ timeout: 5000 });
    assert.equal(await page.locator('.node').count(), 8);
    await page.locator('#status[data-state="connected"]').waitFor();
    assert.equal((await page.locator('#node-count').textContent()).trim().match(/\d+/)?.[0], '8');
    await page.locator('.node', { hasText: 'MQTT' }).first().waitFor();
    await page.locator('.node', { hasText: 'CoAP' }).nth(2).waitFor();
    const temperature = page.locator('.node [data-endpoint="temperature"]').first();
    await temperature.waitFor();
    assert.match(await temperature.textContent(), /°C/);
    await expectClean(view);
  });
}

test('a value change appears within a second and the LED toggle reaches the node', async () => {
  const view = await open(demo.broker);
  const { page } = view;
  const node = await testNode(demo.nodeUrl, { name: 'browser-test', led: '0', temperature: '21.0°C' });
  const card = page.locator('.node', { hasText: 'browser-test' });
  await card.waitFor({ timeout: 5000 });

  const sentAt = Date.now();
  node.send({ temperature: '23.5°C' });
  await card.locator('[data-endpoint="temperature"]', { hasText: '23.5' }).waitFor({ timeout: 1000 });
  console.log(`value shown ${Date.now() - sentAt} ms after the node sent it`);

  const toggle = card.locator('[data-action="led-toggle"]');
  assert.equal(await toggle.getAttribute('aria-pressed'), 'false');
  await toggle.click();
  await node.next((m) => m.endpoint === 'led' && m.payload === '1');
  node.send({ led: '1' });
  await card.locator('[data-action="led-toggle"][aria-pressed="true"]').waitFor({ timeout: 2000 });

  // Keyboard: the toggle is a real button that Enter activates.
  await toggle.focus();
  await page.keyboard.press('Enter');
  await node.next((m) => m.endpoint === 'led' && m.payload === '0');

  node.close();
  await page.locator('.node.gone', { hasText: 'browser-test' }).waitFor({ timeout: 5000 });
  await expectClean(view);
});

test('charts show history at once on page load', async () => {
  // The demo's nodes have sent readings for a while: a fresh page draws them immediately.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const view = await open(demo.gateway);
  const chart = view.page.locator('canvas[data-chart="temperature"]').first();
  await chart.waitFor({ timeout: 3000 });
  const box = await chart.boundingBox();
  assert.ok(box && box.width > 50 && box.height > 20, 'the chart has a size');
  await view.page.screenshot({ path: path.join(screenshots, 'dashboard-desktop.png') });
  await expectClean(view);
});

test('a phone-sized screen lays out without horizontal scrolling', async () => {
  const view = await open(demo.gateway, { width: 375, height: 740 });
  await view.page.locator('.node').first().waitFor({ timeout: 5000 });
  const overflow = await view.page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the screen`);
  await view.page.screenshot({ path: path.join(screenshots, 'dashboard-phone.png') });
  await expectClean(view);
});

test('the theme toggle is remembered', async () => {
  const view = await open(demo.broker);
  const { page } = view;
  const before = await page.evaluate(() => document.documentElement.dataset.theme);
  await page.locator('#theme-toggle').click();
  const toggled = await page.evaluate(() => document.documentElement.dataset.theme);
  assert.notEqual(toggled, before);
  await page.reload();
  await page.locator('.node').first().waitFor({ timeout: 5000 });
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), toggled);
  await expectClean(view);
});

test('the page recovers by itself after the server restarts', async () => {
  const view = await open(demo.broker);
  const { page } = view;
  await page.locator('.node').nth(7).waitFor({ timeout: 5000 });
  const ports = demo.ports;
  assert.equal(await demo.stop(), 0, 'the demo stops cleanly');
  await page.locator('#status[data-state="reconnecting"]').waitFor({ timeout: 5000 });
  demo = await startDemo({ brokerPort: ports.broker, gatewayPort: ports.nodes, webPort: ports.web });
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: 20000 });
  // The new demo's nodes (new uids) are live; the old ones are marked gone, not silently kept.
  await page.locator('.node:not(.gone)').nth(7).waitFor({ timeout: 10000 });
  view.problems.splice(0, view.problems.length,
    ...view.problems.filter((p) => !p.includes('WebSocket connection')));
  await expectClean(view);
});

mkdirSync(screenshots, { recursive: true });
