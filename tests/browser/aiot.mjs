// Starting a real `aiot demo` for browser tests, and a websocket node the test drives itself.

import WebSocket from 'ws';
import { startAiot } from './processes.mjs';

export { AIOT_BIN } from './processes.mjs';

/** Runs `aiot demo` and resolves once the uplink is up, with the dashboards' URLs. */
export async function startDemo({ brokerPort = 0, gatewayPort = 0, webPort = 0, nodes = 3, coapNodes = 3, extraArgs = [] } = {}) {
  const demo = startAiot([
    'demo', '--broker-port', String(brokerPort), '--gateway-port', String(gatewayPort),
    '--web-port', String(webPort), '--nodes', String(nodes), '--coap-nodes', String(coapNodes),
    '--coap-port', '0', '--mqtt-port', '0', '--mqttsn-port', '0', '--interval', '0.5', ...extraArgs,
  ]);
  const broker = await demo.listening('role="broker"');
  const web = await demo.listening('listening for web clients');
  const nodeAddr = await demo.listening('listening for websocket nodes');
  await demo.waitForLog(['connected to broker']);
  const port = (addr) => Number(addr.split(':').pop());
  return {
    child: demo.child,
    log: demo.log,
    broker: `http://${broker}/`,
    gateway: `http://${web}/`,
    nodeUrl: `ws://${nodeAddr}/node`,
    ports: { broker: port(broker), nodes: port(nodeAddr), web: port(web) },
    stop: demo.stop,
  };
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
