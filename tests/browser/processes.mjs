// aiot processes for browser tests (`aiot demo`, a broker, gateways), each with its log kept
// and waited on; and running `aiot` commands to completion.

import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const AIOT_BIN =
  process.env.AIOT_BIN ?? path.join(repo, 'target/x86_64-unknown-linux-gnu/debug/aiot');

/** A gateway's flags for ephemeral ports on loopback (as tests/common's GATEWAY_ON_LOOPBACK). */
export const GATEWAY_ON_LOOPBACK = [
  '--bind', '127.0.0.1', '--gateway-port', '0', '--web-port', '0',
  '--coap-bind', '127.0.0.1', '--coap-port', '0', '--mqtt-bind', '127.0.0.1', '--mqtt-port', '0',
  '--mqttsn-bind', '127.0.0.1', '--mqttsn-port', '0',
];

/** Runs `aiot ARGS` to completion; throws with its stderr when it fails. */
export function aiotSync(args, input) {
  const done = spawnSync(AIOT_BIN, args, { input, env: { ...process.env, AIOT_ALLOW_ROOT: '1' } });
  if (done.status !== 0) throw new Error(`aiot ${args.join(' ')}: ${done.stderr}`);
  return String(done.stdout);
}

/** Starts `aiot ARGS` (a server role) with its log collected. */
export function startAiot(args, env = {}) {
  const child = spawn(AIOT_BIN, args, {
    env: { ...process.env, RUST_LOG: 'aiot=info', AIOT_ALLOW_ROOT: '1', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const log = [];
  const waiters = new Set();
  let buffer = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    buffer += chunk;
    const lines = buffer.split('\n');
    buffer = lines.pop();
    log.push(...lines);
    for (const waiter of waiters) waiter();
  });
  child.once('exit', () => { for (const waiter of waiters) waiter(); });

  /** The first log line containing every one of `needles`. */
  const waitForLog = (needles, timeoutMs = 10000) => new Promise((resolve, reject) => {
    const check = () => {
      const line = log.find((l) => needles.every((n) => l.includes(n)));
      if (line !== undefined) {
        done();
        resolve(line);
      } else if (child.exitCode !== null) {
        done();
        reject(new Error(`aiot ${args[0]} exited ${child.exitCode} before ${JSON.stringify(needles)}:\n${log.join('\n')}`));
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no ${JSON.stringify(needles)} in the log of aiot ${args[0]} within ${timeoutMs} ms:\n${log.join('\n')}`));
    }, timeoutMs);
    const done = () => { clearTimeout(timer); waiters.delete(check); };
    waiters.add(check);
    check();
  });

  return {
    child,
    log,
    waitForLog,
    /** host:port of the listener whose "listening" line contains `needle`. */
    async listening(needle) {
      const line = await waitForLog(['listening', needle]);
      return /addr=(\S+)/.exec(line)[1];
    },
    stop: () => new Promise((resolve) => {
      if (child.exitCode !== null) return resolve(child.exitCode);
      child.once('exit', (code) => resolve(code));
      child.kill('SIGTERM');
    }),
  };
}
