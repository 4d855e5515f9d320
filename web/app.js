// aiot dashboard: boots the page. Reads /api/config (optional: a pyaiot-era server has none),
// connects to the broker's /ws, loads /api/history for charts, and on a gateway polls
// /healthz for the uplink state, and /api/session to know whether this page may write (else
// its controls are read-only until a login). Everything degrades gracefully when an endpoint is
// missing.

import { $ } from './js/dom.js';
import { load, save, StoredSet } from './js/prefs.js';
import { Charts } from './js/chart.js';
import { Connection } from './js/connection.js';
import { Dashboard } from './js/nodes.js';
import { Filters } from './js/filters.js';
import { Status } from './js/status.js';
import { Access } from './js/access.js';
import { masonry } from './js/masonry.js';

const HEALTH_EVERY_MS = 5000;

async function getJson(url, timeoutMs = 5000) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    const response = await fetch(url, { signal: ctl.signal, cache: 'no-store', headers: { Accept: 'application/json' } });
    if (!response.ok) return null;
    return { data: await response.json(), date: response.headers.get('Date') };
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
  }
}

/** The broker's /ws: from the config, else the page's own server. */
function wsUrl(configured) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  if (typeof configured === 'string' && configured.trim()) {
    const url = new URL(configured.trim(), location.href);
    if (url.protocol === 'http:') url.protocol = 'ws:';
    if (url.protocol === 'https:') url.protocol = 'wss:';
    if (url.protocol !== 'ws:' && url.protocol !== 'wss:') url.protocol = scheme;
    return url.href;
  }
  const dir = location.pathname.replace(/[^/]*$/, '');
  return `${scheme}//${location.host}${dir}ws`;
}

function applyConfig(config) {
  const title = typeof config.title === 'string' && config.title.trim() ? config.title.trim() : 'aiot';
  document.title = title;
  $('#title').textContent = title;
  const logo = $('#logo');
  if ('logo' in config) {
    if (typeof config.logo === 'string' && config.logo) logo.src = config.logo;
    else logo.hidden = true;
  }
  logo.addEventListener('error', () => { logo.hidden = true; });
  if (typeof config.favicon === 'string' && config.favicon) {
    const link = $('#favicon');
    link.removeAttribute('type');
    link.href = config.favicon;
  }
  if (typeof config.camera_url === 'string' && config.camera_url) {
    const card = $('#camera');
    const img = $('#camera-img');
    const failed = $('#camera-failed');
    img.addEventListener('error', () => { img.hidden = true; failed.hidden = false; });
    img.addEventListener('load', () => { img.hidden = false; failed.hidden = true; });
    img.src = config.camera_url;
    $('#camera-link').href = config.camera_url;
    card.hidden = false;
  }
}

// ---- theme -----------------------------------------------------------------------------------

function setupTheme(charts) {
  const button = $('#theme-toggle');
  const media = window.matchMedia('(prefers-color-scheme: dark)');
  const current = () => document.documentElement.dataset.theme === 'dark' ? 'dark' : 'light';
  const show = (theme) => {
    document.documentElement.dataset.theme = theme;
    const next = theme === 'dark' ? 'light' : 'dark';
    button.setAttribute('aria-label', `Switch to ${next} theme`);
    button.title = `Switch to ${next} theme`;
    const meta = $('meta[name="theme-color"]');
    if (meta) meta.content = theme === 'dark' ? '#0f141a' : '#ffffff';
    charts.repaintAll();
  };
  const stored = load('theme', null);
  show(stored === 'dark' || stored === 'light' ? stored : media.matches ? 'dark' : 'light');
  button.addEventListener('click', () => {
    const theme = current() === 'dark' ? 'light' : 'dark';
    save('theme', theme);
    show(theme);
  });
  media.addEventListener('change', () => {
    const s = load('theme', null);
    if (s !== 'dark' && s !== 'light') show(media.matches ? 'dark' : 'light');
  });
}

// ---- toast -------------------------------------------------------------------------------------

let toastTimer = null;
function notify(text) {
  const toast = $('#toast');
  toast.textContent = text;
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { toast.hidden = true; }, 4000);
}

// ---- boot ----------------------------------------------------------------------------------------

async function main() {
  const charts = new Charts();
  setupTheme(charts);
  const status = new Status($('#status'));
  const grid = $('#grid');
  masonry(grid);
  const empty = $('#empty');
  const hiddenNodes = new StoredSet('hiddenNodes');
  const hiddenRes = new StoredSet('hiddenResources');

  let conn = null;
  let dash = null;
  const access = new Access({
    toggle: $('#login-toggle'),
    toggleText: $('#login-toggle-text'),
    panel: $('#login'),
    form: $('#login-form'),
    input: $('#login-password'),
    error: $('#login-error'),
    cancel: $('#login-cancel'),
    badge: $('#read-only'),
  }, {
    onChange: (canWrite) => dash && dash.setWritable(canWrite),
    // The socket learns of the session from the cookie sent when it opens.
    onLogin: () => conn && conn.reconnect(),
    notify,
  });
  const sessionKnown = access.refresh();

  const configResponse = await getJson('api/config', 4000);
  const config = configResponse && configResponse.data && typeof configResponse.data === 'object' ? configResponse.data : {};
  // Without /api/config this is not an aiot server (a plain file server, say): then there is
  // no history or health to ask for either. A standalone dashboard has no history of its own.
  const aiot = configResponse !== null;
  const hasHistory = aiot && config.role !== 'dashboard';
  applyConfig(config);
  const url = wsUrl(config.ws_url);

  let connected = false;
  let filters = null;
  dash = new Dashboard({
    grid,
    charts,
    hiddenNodes,
    hiddenRes,
    send: (msg) => conn.send(msg),
    notify,
    onCounts: (counts) => {
      status.setCounts(counts);
      empty.hidden = counts.total > 0;
    },
    onCatalog: () => filters && filters.refresh(),
  });
  filters = new Filters({ panel: $('#filters'), toggle: $('#filters-toggle'), badge: $('#filter-badge'), dashboard: dash });
  status.setCounts({ live: 0, gone: 0 });
  dash.setWritable(await sessionKnown);

  const showEmpty = () => {
    $('#empty-text').textContent = connected ? 'Waiting for nodes…' : 'Connecting to the server…';
  };

  // History: fetched once on load and again after every reconnect; the server's Date header
  // aligns live points (stamped with this browser's clock) with the server's history.
  async function loadHistory() {
    if (!hasHistory) return;
    const got = await getJson('api/history', 10000);
    if (!got || !got.data || typeof got.data !== 'object') return;
    const serverNow = got.date ? Date.parse(got.date) : NaN;
    if (Number.isFinite(serverNow)) {
      const offset = serverNow - Date.now();
      dash.clockOffset = Math.abs(offset) > 2000 ? offset : 0;
    }
    dash.applyHistory(got.data);
  }

  conn = new Connection(url, {
    onOpen: (again) => {
      if (again) dash.beginResync();
      loadHistory();
    },
    onMessage: (msg) => {
      // aiot's answer to a write it refused (only sent to clients that said they are aiot's).
      if (msg && msg.type === 'denied') {
        notify(typeof msg.message === 'string' && msg.message ? msg.message : 'The server refused the command.');
        if (msg.reason === 'unauthorized') access.refresh();
        return;
      }
      dash.handle(msg);
    },
    onState: (state, info) => {
      connected = state === 'connected';
      document.body.classList.toggle('offline', !connected);
      status.setConnection(state, info, url);
      showEmpty();
    },
  });
  $('#retry-now').addEventListener('click', () => conn.retryNow());
  conn.start();

  // Uplink state, on a gateway only.
  const pollHealth = async () => {
    const got = await getJson('healthz', 4000);
    if (got && got.data && typeof got.data === 'object') {
      status.setServer(got.data);
      status.setUplink(got.data.role === 'gateway' ? got.data.uplink : null);
      return got.data.role;
    }
    return undefined;
  };
  if (!aiot) return;
  const role = config.role ?? (await pollHealth());
  if (config.role) pollHealth();
  if (role === 'gateway') setInterval(pollHealth, HEALTH_EVERY_MS);
}

main();
