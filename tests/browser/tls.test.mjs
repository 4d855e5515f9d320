// The dashboard over https:// in a real Chromium that trusts a test CA the way a user's
// browser trusts a private CA: the CA is a trust anchor in an NSS database
// ($HOME/.pki/nssdb, made with certutil) of the Chromium process, with no switch that skips
// certificate checks. A real broker serves https:// and wss:// with a certificate of that CA
// and a web password; a real gateway uplinks to it over wss:// (checked against the same CA)
// and serves its own dashboard over https:// too. The page loads, its websocket is wss://,
// the nodes appear, the session cookie carries `Secure`, and the LED switch reaches the node.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { testNode } from './aiot.mjs';
import { GATEWAY_ON_LOOPBACK, aiotSync, startAiot } from './processes.mjs';

const PASSWORD = 'tls browser test password';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'];

let scratch;
let broker;
let gateway;
let browser;
const urls = {};
let nodeUrl;

const run = (command, args) => execFileSync(command, args, { cwd: scratch, stdio: ['ignore', 'pipe', 'pipe'] });

/** A CA and a server certificate of it for localhost and 127.0.0.1, made with openssl. */
function makeCertificates() {
  run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', 'ca-key.pem', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=aiot browser test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', 'server-key.pem', '-out', 'server.csr', '-subj', '/CN=localhost']);
  writeFileSync(path.join(scratch, 'server.ext'), [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth',
    'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '',
  ].join('\n'));
  run('openssl', ['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca-key.pem',
    '-CAcreateserial', '-days', '2', '-extfile', 'server.ext', '-out', 'server.pem']);
}

/** A home directory whose NSS database trusts the test CA for servers, as Chromium reads it. */
function homeTrustingTheCa() {
  const home = path.join(scratch, 'home');
  const db = path.join(home, '.pki', 'nssdb');
  mkdirSync(db, { recursive: true });
  run('certutil', ['-N', '-d', `sql:${db}`, '--empty-password']);
  run('certutil', ['-A', '-d', `sql:${db}`, '-n', 'aiot browser test CA', '-t', 'C,,', '-i', path.join(scratch, 'ca.pem')]);
  return home;
}

function launch(home) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
    env: { ...process.env, HOME: home },
  });
}

before(async () => {
  scratch = mkdtempSync(path.join(os.tmpdir(), 'aiot-tls-browser-'));
  makeCertificates();
  const keys = path.join(scratch, 'keys');
  aiotSync(['keys', 'generate', '--key-file', keys]);
  const passwordFile = path.join(scratch, 'web-password');
  aiotSync(['password', 'hash', '--file', passwordFile], `${PASSWORD}\n`);
  const tls = ['--tls-cert', path.join(scratch, 'server.pem'), '--tls-key', path.join(scratch, 'server-key.pem')];
  const env = { HOME: scratch };

  broker = startAiot(['broker', '--bind', '127.0.0.1', '--broker-port', '0', '--key-file', keys,
    '--web-password-file', passwordFile, ...tls], env);
  const brokerLine = await broker.waitForLog(['listening', 'role="broker"']);
  assert.match(brokerLine, /scheme=TLS/);
  const brokerPort = /addr=\S+:(\d+)/.exec(brokerLine)[1];
  urls.broker = `https://localhost:${brokerPort}/`;

  gateway = startAiot(['gateway', ...GATEWAY_ON_LOOPBACK,
    '--broker-url', `wss://localhost:${brokerPort}/gw`, '--broker-ca', path.join(scratch, 'ca.pem'),
    '--key-file', keys, '--web-password-file', passwordFile, ...tls], env);
  nodeUrl = `ws://${await gateway.listening('websocket nodes')}/node`;
  const webPort = (await gateway.listening('web clients')).split(':').pop();
  urls.gateway = `https://localhost:${webPort}/`;
  await gateway.waitForLog(['connected to broker', 'wss://localhost']);

  browser = await launch(homeTrustingTheCa());
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
  await broker?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** A page that records console errors, page errors and every websocket it opens. */
async function open(url) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = [];
  const sockets = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 401/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('websocket', (ws) => sockets.push(ws.url()));
  const response = await page.goto(url);
  return { page, context, problems, sockets, response };
}

test('without the CA in its trust store, Chromium refuses the certificate', async () => {
  // The control: the same Chromium with an empty home. If this loaded, the test below would
  // prove nothing about the trust path.
  const empty = path.join(scratch, 'empty-home');
  mkdirSync(empty, { recursive: true });
  const untrusting = await launch(empty);
  try {
    const page = await untrusting.newPage();
    await assert.rejects(page.goto(urls.broker), /ERR_CERT_AUTHORITY_INVALID/);
  } finally {
    await untrusting.close();
  }
});

for (const where of ['broker', 'gateway']) {
  test(`the ${where} dashboard over https:// shows the nodes over wss://`, async () => {
    const node = await testNode(nodeUrl, { name: `tls-${where}`, temperature: '21°C' });
    const view = await open(urls[where]);
    const { page } = view;
    assert.equal(view.response.status(), 200);
    const security = await view.response.securityDetails();
    assert.equal(security.subjectName, 'localhost');
    assert.equal(security.issuer, 'aiot browser test CA');
    assert.match(security.protocol, /^TLS 1\.[23]$/);
    await page.locator('.node', { hasText: `tls-${where}` }).waitFor({ timeout: 5000 });
    await page.locator('#status[data-state="connected"]').waitFor();
    assert.equal(await page.evaluate(() => window.isSecureContext), true);
    assert.ok(view.sockets.length > 0 && view.sockets.every((u) => u.startsWith('wss://localhost:')),
      `websockets: ${view.sockets}`);
    node.close();
    await view.context.close();
    assert.deepEqual(view.problems, []);
  });
}

test('over https:// the session cookie is Secure, and a logged-in page switches an LED', async () => {
  const node = await testNode(nodeUrl, { name: 'tls-led', led: '0' });
  const view = await open(urls.broker);
  const { page, context } = view;
  const card = page.locator('.node', { hasText: 'tls-led' });
  await card.waitFor({ timeout: 5000 });
  const toggle = card.locator('[data-action="led-toggle"]');
  assert.equal(await toggle.isDisabled(), true, 'read-only before the login');

  await page.locator('#login-toggle').click();
  await page.locator('#login-password').fill(PASSWORD);
  await page.locator('#login-password').press('Enter');
  await page.locator('#login-toggle', { hasText: 'Log out' }).waitFor();
  const [cookie] = await context.cookies();
  assert.match(cookie.name, /^aiot_session_\d+$/);
  assert.equal(cookie.secure, true, 'Secure under TLS');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');

  // The page reconnects over wss:// with its cookie; the switch reaches the node.
  await card.locator('[data-action="led-toggle"]:not([disabled])').waitFor({ timeout: 5000 });
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: 5000 });
  await toggle.click();
  await node.next((m) => m.endpoint === 'led' && m.payload === '1');
  node.send({ led: '1' });
  await card.locator('[data-action="led-toggle"][aria-pressed="true"]').waitFor({ timeout: 5000 });
  assert.ok(view.sockets.length >= 2 && view.sockets.every((u) => u.startsWith('wss://localhost:')),
    `websockets: ${view.sockets}`);
  node.close();
  await context.close();
  assert.deepEqual(view.problems, []);
});
