// Starting a real `aiot demo` for browser tests, and a websocket node the test drives itself.

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import WebSocket from 'ws';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const AIOT_BIN =
  process.env.AIOT_BIN ?? path.join(repo, 'target/x86_64-unknown-linux-gnu/debug/aiot');

/** Runs `aiot demo` and resolves once the uplink is up, with the dashboards' URLs. */
export function startDemo({ brokerPort = 0, gatewayPort = 0, webPort = 0, nodes = 3, coapNodes = 3, extraArgs = [] } = {}) {
  const child = spawn(AIOT_BIN, [
    'demo', '--broker-port', String(brokerPort), '--gateway-port', String(gatewayPort),
    '--web-port', String(webPort), '--nodes', String(nodes), '--coap-nodes', String(coapNodes),
    '--coap-port', '0', '--mqtt-port', '0', '--mqttsn-port', '0', '--interval', '0.5', ...extraArgs,
  ], { env: { ...process.env, RUST_LOG: 'aiot=info', AIOT_ALLOW_ROOT: '1' }, stdio: ['ignore', 'ignore', 'pipe'] });
  const log = [];
  return new Promise((resolve, reject) => {
    const addrs = {};
    const timer = setTimeout(() => reject(new Error(`demo did not start:\n${log.join('\n')}`)), 10000);
    let buffer = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      buffer += chunk;
      const lines = buffer.split('\n');
      buffer = lines.pop();
      for (const line of lines) {
        log.push(line);
        const addr = /addr=(\S+)/.exec(line)?.[1];
        if (addr && line.includes('listening')) {
          if (line.includes('role="broker"')) addrs.broker = addr;
          else if (line.includes('websocket nodes')) addrs.nodes = addr;
          else if (line.includes('web clients')) addrs.web = addr;
        }
        if (line.includes('connected to broker') && addrs.broker && addrs.web && addrs.nodes) {
          clearTimeout(timer);
          resolve({
            child,
            log,
            broker: `http://${addrs.broker}/`,
            gateway: `http://${addrs.web}/`,
            nodeUrl: `ws://${addrs.nodes}/node`,
            ports: {
              broker: Number(addrs.broker.split(':').pop()),
              nodes: Number(addrs.nodes.split(':').pop()),
              web: Number(addrs.web.split(':').pop()),
            },
            stop: () => new Promise((done) => {
              if (child.exitCode !== null) return done(child.exitCode);
              child.once('exit', (code) => done(code));
              child.kill('SIGTERM');
            }),
          });
        }
      }
    });
    child.once('exit', (code) => reject(new Error(`demo exited ${code}:\n${log.join('\n')}`)));
  });
}

/** A websocket node driven by the test: it records what the gateway sends it. */
export async function testNode(url, resources) {
  const ws = new WebSocket(url);
  const received = [];
  const waiters = [];
  ws.on('message', (data) => {
    const message = JSON.parse(data.toString());
    received.push(message);
    for (const waiter of waiters.splice(0)) waiter();
  });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  const send = (data) => ws.send(JSON.stringify({ type: 'update', data }));
  send(resources);
  return {
    send,
    received,
    close: () => ws.close(),
    /** Waits for a message matching `predicate` from the gateway. */
    async next(predicate, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = received.find(predicate);
        if (found) return found;
        if (Date.now() > deadline) throw new Error(`node got no matching message: ${JSON.stringify(received)}`);
        await new Promise((resolve) => { waiters.push(resolve); setTimeout(resolve, 100); });
      }
    },
  };
}
