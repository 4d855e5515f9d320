// Which gateway each node came from, on the cards of the broker's dashboard in a real
// Chromium: a real broker admitting two gateways by their own keys (`aiot keys generate
// --gateway`), two real gateways, and a websocket node on each. A gateway's own dashboard
// has no gateway to show.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { testNode } from './aiot.mjs';
import { expectClean, openPage } from './pages.mjs';
import { GATEWAY_ON_LOOPBACK, aiotSync, startAiot } from './processes.mjs';


let browser;
let scratch;
let broker;
let brokerUrl;
const gateways = {};

before(async () => {
  scratch = mkdtempSync(path.join(os.tmpdir(), 'aiot-gateways-'));
  const file = path.join(scratch, 'gateways.toml');
  // HOME without a key file: only the gateways file admits gateways.
  const env = { HOME: scratch };
  for (const name of ['kitchen', 'garage']) {
    const key = path.join(scratch, `${name}.keys`);
    aiotSync(['keys', 'generate', '--gateway', name, '--gateways-file', file, '--key-file', key]);
  }
  broker = startAiot(['broker', '--bind', '127.0.0.1', '--broker-port', '0', '--gateways-file', file], env);
  const brokerAddr = await broker.listening('role="broker"');
  brokerUrl = `http://${brokerAddr}/`;
  for (const name of ['kitchen', 'garage']) {
    const key = path.join(scratch, `${name}.keys`);
    const gateway = startAiot(['gateway', ...GATEWAY_ON_LOOPBACK,
      '--broker-url', `ws://${brokerAddr}/gw`, '--key-file', key], env);
    gateways[name] = {
      process: gateway,
      nodeUrl: `ws://${await gateway.listening('websocket nodes')}/node`,
      web: `http://${await gateway.listening('web clients')}/`,
    };
    await gateway.waitForLog(['connected to broker']);
  }
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
});

after(async () => {
  await browser?.close();
  for (const gateway of Object.values(gateways)) await gateway.process.stop();
  await broker?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

const open = (url) => openPage(browser, url);

test("the broker's dashboard shows each node's gateway on its card", async () => {
  const stove = await testNode(gateways.kitchen.nodeUrl, { name: 'stove', temperature: '40°C' });
  const door = await testNode(gateways.garage.nodeUrl, { name: 'door', temperature: '5°C' });
  const view = await open(brokerUrl);
  const { page } = view;
  for (const [node, gateway] of [['stove', 'kitchen'], ['door', 'garage']]) {
    const card = page.locator('.node', { hasText: node });
    await card.waitFor({ timeout: 5000 });
    const label = card.locator('.node-gateway');
    await label.waitFor({ state: 'visible', timeout: 5000 });
    assert.equal((await label.textContent()).trim(), gateway);
    assert.equal(await label.getAttribute('title'), `Gateway: ${gateway}`);
    await card.locator('.node-details summary').click();
    assert.equal((await card.locator('.meta-gateway dd').textContent()).trim(), gateway);
  }

  // A node that appears while the page is open gets its label from the live `new`.
  const oven = await testNode(gateways.kitchen.nodeUrl, { name: 'oven', temperature: '180°C' });
  const card = page.locator('.node', { hasText: 'oven' });
  await card.locator('.node-gateway', { hasText: 'kitchen' }).waitFor({ state: 'visible', timeout: 5000 });

  for (const node of [stove, door, oven]) node.close();
  await expectClean(view);
});

test("a gateway's own dashboard shows no gateway on its cards", async () => {
  const kettle = await testNode(gateways.kitchen.nodeUrl, { name: 'kettle', temperature: '90°C' });
  const view = await open(gateways.kitchen.web);
  const { page } = view;
  const card = page.locator('.node', { hasText: 'kettle' });
  await card.locator('.reading-value', { hasText: '90' }).waitFor({ timeout: 5000 });
  assert.equal(await card.locator('.node-gateway').isHidden(), true);
  assert.equal(await card.locator('.meta-gateway').count(), 0);
  kettle.close();
  await expectClean(view);
});
