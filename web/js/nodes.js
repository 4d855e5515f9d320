// The node table as the page knows it, and its cards. Messages only change the model and
// mark what changed; one requestAnimationFrame flush per frame touches the DOM, and only the
// rows that changed, so a thousand nodes updating stay smooth.

import { h, setText, setAttr } from './dom.js';
import { icon } from './icons.js';
import * as V from './values.js';
import { addPoint, mergeHistory } from './chart.js';

const SWEEP_AFTER_MS = 2500;
const PENDING_MS = 4000;
const MAX_TEXT = 600;
const DISCOVERY_MS = 8000;
const FRAME_BUDGET_MS = 12;

class Node {
  constructor(uid) {
    this.uid = uid;
    this.res = new Map(); // endpoint -> Res
    this.meta = {}; // name, os, board, ... -> value
    this.gateway = null; // the gateway it came from, when the broker says (aiot brokers do)
    this.metaGen = {};
    this.gone = false;
    this.goneAt = 0;
    this.gen = 0;
    this.el = null;
    this.dirty = new Set(); // endpoints whose rows need rendering
    this.headDirty = true;
    this.since = Date.now(); // created or reset: resources are on their way
  }

  get name() {
    const n = this.meta.name;
    return n === undefined || n === null || n === '' ? this.uid : V.displayText(n);
  }
}

class Res {
  constructor(endpoint, kind) {
    this.endpoint = endpoint;
    this.kind = kind;
    this.value = undefined;
    this.t = 0;
    this.gen = 0;
    this.el = null;
    this.parts = {};
    this.series = []; // readings: [[t, v], ...]
    this.axes = null; // imu: {acc: [[..],[..],[..]], gyro: [...]}
  }
}

function same(a, b) {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || !a || !b) return false;
  try { return JSON.stringify(a) === JSON.stringify(b); } catch { return false; }
}

/** A replay of the cache for this client (pyaiot's `dst` = our client id), not news. */
const isReplay = (msg) => typeof msg.dst === 'string' && msg.dst !== 'all';

/** A server timestamp on the message if there is one (aiot may add one), in ms. */
function stampOf(msg) {
  for (const k of ['t', 'ts', 'timestamp', 'time']) {
    const v = msg[k];
    if (typeof v === 'number' && Number.isFinite(v)) {
      if (v > 1e12) return v;
      if (v > 1e9) return v * 1000;
    }
  }
  return null;
}

/** Gateway names never start with `(`: such a label is the broker's own, for a gateway
 *  without a name (one with pyaiot's shared key). */
function gatewayTitle(gateway) {
  if (!gateway) return '';
  return gateway.startsWith('(') ? `From a gateway with no name of its own: ${gateway}` : `Gateway: ${gateway}`;
}

const fmtTime = (t) => new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });

/** What writes to a node: disabled while the page is read-only. */
const CONTROLS = '[data-action="led-toggle"], [data-action="robot"], form[data-action] input, '
  + 'form[data-action] textarea, form[data-action] button[type="submit"]';

export class Dashboard {
  /** opts: grid (element), charts (Charts), send(msg) -> bool, notify(text), hiddenNodes,
   *  hiddenRes (StoredSets), onCounts({live, gone, total}), onCatalog() when the set of nodes,
   *  names or endpoints changed (for the filter lists). */
  constructor(opts) {
    Object.assign(this, opts);
    this.nodes = new Map();
    this.endpoints = new Set();
    this.history = {};
    this.clockOffset = 0;
    this.gen = 0;
    this.seq = 0;
    this.dirty = new Set();
    this.scheduled = false;
    this.countsDirty = true;
    this.catalogDirty = false;
    this.sweepTimer = null;
    this.writable = true;
    this.flush = this.flush.bind(this);
    this.charts.onNeedFlush = () => this.schedule();
    this.grid.addEventListener('click', (e) => this.onClick(e));
    this.grid.addEventListener('submit', (e) => this.onSubmit(e));
    this.grid.addEventListener('input', (e) => this.onInput(e));
    this.grid.addEventListener('focusout', (e) => this.onFocusOut(e));
  }

  // ---- model ----------------------------------------------------------------------------

  handle(msg) {
    if (!msg || typeof msg !== 'object') return;
    if (typeof msg.uid !== 'string' && typeof msg.uid !== 'number') return;
    const uid = String(msg.uid);
    switch (msg.type) {
      case 'new': {
        const node = this.touch(uid);
        if (node.gone) {
          node.gone = false;
          node.headDirty = true;
          this.countsDirty = true;
          this.mark(node);
        }
        // An aiot broker names the node's gateway on `new`; a gateway's own server does not
        // (then the card shows none), and a `new` without it keeps what an earlier one said.
        if (typeof msg.gateway === 'string' && msg.gateway && msg.gateway !== node.gateway) {
          node.gateway = msg.gateway;
          node.headDirty = true;
          this.mark(node);
        }
        break;
      }
      case 'update': {
        if (uid === 'alive' || typeof msg.endpoint !== 'string') return;
        const endpoint = msg.endpoint.replace(/^\/+/, '');
        if (!endpoint) return;
        const t = stampOf(msg) ?? Date.now() + this.clockOffset;
        this.update(this.touch(uid), endpoint, msg.data, isReplay(msg), t);
        break;
      }
      case 'out': {
        const node = this.nodes.get(uid);
        if (node && !node.gone) {
          node.gone = true;
          node.goneAt = Date.now();
          node.headDirty = true;
          this.countsDirty = true;
          this.mark(node);
        }
        break;
      }
      case 'reset': {
        const node = this.touch(uid);
        for (const res of node.res.values()) this.dropRow(res);
        node.res.clear();
        node.meta = {};
        node.since = Date.now();
        node.headDirty = true;
        this.catalogDirty = true;
        this.mark(node);
        break;
      }
      default:
    }
  }

  touch(uid) {
    let node = this.nodes.get(uid);
    if (!node) {
      node = new Node(uid);
      this.nodes.set(uid, node);
      this.countsDirty = true;
      this.catalogDirty = true;
      this.mark(node);
    }
    node.gen = this.gen;
    return node;
  }

  update(node, endpoint, data, replay, t) {
    if (V.isMeta(endpoint)) {
      node.metaGen[endpoint] = this.gen;
      if (!same(node.meta[endpoint], data)) {
        node.meta[endpoint] = data;
        node.headDirty = true;
        if (endpoint === 'name') this.catalogDirty = true;
        this.mark(node);
      }
      return;
    }
    let res = node.res.get(endpoint);
    if (!res) {
      res = new Res(endpoint, V.kindOf(endpoint, data));
      node.res.set(endpoint, res);
      if (res.kind === 'reading') {
        const hist = this.history[node.uid]?.[endpoint];
        if (Array.isArray(hist)) res.series = mergeHistory(res.series, hist);
      }
      if (!this.endpoints.has(endpoint)) {
        this.endpoints.add(endpoint);
        this.catalogDirty = true;
      }
    }
    res.gen = this.gen;
    const changed = !same(res.value, data) || res.t === 0;
    res.value = data;
    res.t = t;
    let grew = false;
    // A replay repeats what we may already have: it adds a point only to an empty chart.
    if (res.kind === 'reading') {
      const r = V.parseReading(data);
      if (r) {
        res.unit = r.unit;
        if (!(replay && res.series.length)) { addPoint(res.series, t, r.num); grew = true; }
      }
    } else if (res.kind === 'imu') {
      const imu = V.parseImu(data);
      if (imu) {
        res.imu = imu;
        res.axes ??= { acc: [[], [], []], gyro: [[], [], []] };
        for (const key of ['acc', 'gyro']) {
          if (!imu[key] || (replay && res.axes[key][0].length)) continue;
          imu[key].forEach((v, i) => addPoint(res.axes[key][i], t, v));
          grew = true;
        }
      }
    } else if (res.kind === 'led') {
      res.pending = null;
    }
    if (changed || grew) {
      node.dirty.add(endpoint);
      if (res.kind === 'suit_state' && node.res.has('dwnld')) node.dirty.add('dwnld');
      this.mark(node);
    }
  }

  /** History from /api/history: {uid: {endpoint: [[t_ms, number], ...]}}. */
  applyHistory(history) {
    this.history = history && typeof history === 'object' ? history : {};
    for (const [uid, byEndpoint] of Object.entries(this.history)) {
      const node = this.nodes.get(uid);
      if (!node || !byEndpoint || typeof byEndpoint !== 'object') continue;
      for (const [endpoint, points] of Object.entries(byEndpoint)) {
        const res = node.res.get(endpoint);
        if (!res || res.kind !== 'reading' || !Array.isArray(points)) continue;
        res.series = mergeHistory(res.series, points);
        node.dirty.add(endpoint);
        this.mark(node);
      }
    }
  }

  /** After a reconnect the server replays everything: what it does not replay within a
   *  moment is gone (nodes, resources), so remove it then. Until then nothing flickers. */
  beginResync() {
    this.gen++;
    clearTimeout(this.sweepTimer);
    this.sweepTimer = setTimeout(() => this.sweep(), SWEEP_AFTER_MS);
  }

  sweep() {
    for (const node of [...this.nodes.values()]) {
      if (node.gen < this.gen) { this.removeNode(node); continue; }
      for (const res of [...node.res.values()]) {
        if (res.gen < this.gen) { this.dropRow(res); node.res.delete(res.endpoint); this.mark(node); }
      }
      for (const key of Object.keys(node.meta)) {
        if ((node.metaGen[key] ?? -1) < this.gen) { delete node.meta[key]; node.headDirty = true; this.mark(node); }
      }
    }
  }

  removeNode(node) {
    for (const res of node.res.values()) this.dropRow(res);
    node.el?.remove();
    node.removed = true;
    this.nodes.delete(node.uid);
    this.dirty.delete(node);
    this.countsDirty = true;
    this.catalogDirty = true;
    this.schedule();
  }

  dropRow(res) {
    if (!res.el) return;
    for (const canvas of res.el.querySelectorAll('canvas')) this.charts.remove(canvas);
    res.el.remove();
    res.el = null;
  }

  counts() {
    let gone = 0;
    for (const node of this.nodes.values()) if (node.gone) gone++;
    return { total: this.nodes.size, gone, live: this.nodes.size - gone };
  }

  // ---- rendering --------------------------------------------------------------------------

  mark(node) {
    this.dirty.add(node);
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(this.flush);
  }

  flush() {
    this.scheduled = false;
    // A frame's budget: a burst (a thousand nodes at once) is spread over several frames so
    // the page keeps answering; what is left stays dirty for the next frame.
    const until = performance.now() + FRAME_BUDGET_MS;
    const fresh = document.createDocumentFragment();
    for (const node of this.dirty) {
      this.dirty.delete(node);
      if (node.removed) continue;
      if (!node.el) { this.build(node); fresh.append(node.el); }
      this.render(node);
      if (performance.now() > until) break;
    }
    if (this.dirty.size) this.schedule();
    if (fresh.childNodes.length) this.grid.append(fresh);
    this.charts.flush();
    if (this.countsDirty) {
      this.countsDirty = false;
      this.onCounts(this.counts());
    }
    if (this.catalogDirty) {
      this.catalogDirty = false;
      this.onCatalog();
    }
  }

  build(node) {
    const id = 'node-' + ++this.seq;
    node.nameEl = h('h2', { class: 'node-name', id });
    node.protoEl = h('span', { class: 'chip', hidden: true });
    node.gatewayText = h('span', { class: 'node-gateway-name' });
    node.gatewayEl = h('span', { class: 'node-gateway', hidden: true },
      icon('gateway', 'icon icon-inline'), node.gatewayText);
    node.subEl = h('span', { class: 'node-sub-text' });
    node.goneTime = h('time');
    node.goneEl = h('span', { class: 'gone-label', hidden: true }, 'went away ', node.goneTime);
    node.dismissEl = h('button', {
      type: 'button', class: 'btn-icon dismiss', hidden: true,
      dataset: { action: 'dismiss' }, title: 'Remove from the dashboard',
    }, icon('close'));
    node.metaEl = h('dl', { class: 'meta' });
    node.body = h('div', { class: 'node-body' });
    node.emptyEl = h('p', { class: 'node-empty' }, 'Discovering resources…');
    node.el = h('article', { class: 'node card', dataset: { uid: node.uid }, 'aria-labelledby': id },
      h('header', { class: 'node-head' },
        h('div', { class: 'node-title' }, node.nameEl,
          h('div', { class: 'node-sub' }, node.protoEl, node.gatewayEl, node.subEl)),
        h('div', { class: 'node-state' }, node.goneEl, node.dismissEl)),
      node.body,
      node.emptyEl,
      h('details', { class: 'node-details' }, h('summary', null, 'Details'), node.metaEl));
    node.el.hidden = this.hiddenNodes.has(node.uid);
  }

  render(node) {
    if (node.headDirty) {
      node.headDirty = false;
      const name = node.name;
      setText(node.nameEl, name);
      node.nameEl.title = name;
      const proto = node.meta.protocol;
      node.protoEl.hidden = !proto;
      setText(node.protoEl, proto ? V.displayText(proto) : '');
      node.gatewayEl.hidden = !node.gateway;
      setText(node.gatewayText, node.gateway ?? '');
      setAttr(node.gatewayEl, 'title', gatewayTitle(node.gateway));
      const sub = ['os', 'board'].map((k) => node.meta[k]).filter((v) => v !== undefined && v !== '')
        .map(V.displayText).join(' · ');
      setText(node.subEl, sub);
      node.el.classList.toggle('gone', node.gone);
      node.goneEl.hidden = !node.gone;
      node.dismissEl.hidden = !node.gone;
      node.dismissEl.setAttribute('aria-label', `Remove ${name} from the dashboard`);
      if (node.gone) {
        node.goneTime.dateTime = new Date(node.goneAt).toISOString();
        setText(node.goneTime, new Date(node.goneAt).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }));
        node.goneEl.title = `Went away at ${fmtTime(node.goneAt)}`;
      }
      const rows = [];
      for (const key of V.META) {
        if (key === 'name' || node.meta[key] === undefined) continue;
        rows.push(h('div', { dataset: { endpoint: key } },
          h('dt', null, V.META_LABELS[key]), h('dd', null, V.displayText(node.meta[key]))));
      }
      if (node.gateway) {
        rows.push(h('div', { class: 'meta-gateway' }, h('dt', null, 'Gateway'), h('dd', null, node.gateway)));
      }
      rows.push(h('div', { class: 'meta-uid' }, h('dt', null, 'UID'), h('dd', null, node.uid)));
      node.metaEl.replaceChildren(...rows);
    }
    for (const endpoint of node.dirty) {
      const res = node.res.get(endpoint);
      if (!res) continue;
      if (!res.el) this.createRow(node, res);
      KINDS[res.kind].update(res, node, this);
    }
    node.dirty.clear();
    node.emptyEl.hidden = node.res.size > 0;
    if (!node.emptyEl.hidden) {
      const waiting = !node.gone && Date.now() - node.since < DISCOVERY_MS;
      setText(node.emptyEl, waiting ? 'Discovering resources…' : 'No resources.');
      if (waiting) setTimeout(() => this.mark(node), DISCOVERY_MS);
    }
  }

  createRow(node, res) {
    const kind = KINDS[res.kind];
    const el = kind.create(res, node, this);
    this.applyWritable(el);
    el.classList.add('res', 'res-' + res.kind);
    el.dataset.endpoint = res.endpoint;
    el.hidden = this.hiddenRes.has(res.endpoint);
    res.el = el;
    res.rank = V.rankOf(res.endpoint, res.kind);
    let before = null;
    for (const other of node.res.values()) {
      if (other === res || !other.el || !other.el.parentNode) continue;
      if (other.rank > res.rank && (!before || other.rank < before.rank)) before = other;
    }
    node.body.insertBefore(el, before ? before.el : null);
  }

  /** A chart canvas for this row, registered with the chart manager. */
  chart(res, endpoint, lines, unit, label) {
    const canvas = h('canvas', { class: 'chart', dataset: { chart: endpoint }, role: 'img', 'aria-label': label });
    this.charts.add(canvas, { lines, unit });
    return canvas;
  }

  // ---- filters ------------------------------------------------------------------------------

  applyNodeFilter() {
    for (const node of this.nodes.values()) if (node.el) node.el.hidden = this.hiddenNodes.has(node.uid);
  }

  applyResFilter() {
    for (const node of this.nodes.values()) {
      for (const res of node.res.values()) if (res.el) res.el.hidden = this.hiddenRes.has(res.endpoint);
    }
  }

  // ---- user actions --------------------------------------------------------------------------

  /** Read-only until logged in: controls stay visible but disabled. */
  setWritable(writable) {
    if (this.writable === writable) return;
    this.writable = writable;
    this.applyWritable(this.grid);
  }

  applyWritable(root) {
    const off = !this.writable;
    for (const el of root.querySelectorAll(CONTROLS)) {
      if (el.tagName === 'TEXTAREA') el.readOnly = off;
      else el.disabled = off;
      if (off) el.setAttribute('aria-describedby', 'read-only');
      else el.removeAttribute('aria-describedby');
    }
  }

  write(node, endpoint, payload) {
    if (!this.writable) {
      this.notify('Log in to control nodes.');
      return false;
    }
    const ok = this.send({ type: 'update', data: { uid: node.uid, endpoint, payload } });
    if (!ok) this.notify('Not connected: the command was not sent.');
    return ok;
  }

  target(event) {
    const el = event.target.closest('[data-action]');
    const card = el && el.closest('.node');
    const node = card && this.nodes.get(card.dataset.uid);
    const row = el && el.closest('[data-endpoint]');
    const res = node && row ? node.res.get(row.dataset.endpoint) : null;
    return { el, node, res };
  }

  onClick(event) {
    const { el, node, res } = this.target(event);
    if (!node || el.tagName === 'FORM') return;
    switch (el.dataset.action) {
      case 'dismiss':
        this.removeNode(node);
        break;
      case 'led-toggle': {
        if (!res) return;
        const payload = V.ledOn(res.value) ? '0' : '1';
        if (this.write(node, res.endpoint, payload)) {
          res.pending = payload;
          node.dirty.add(res.endpoint);
          this.mark(node);
          clearTimeout(res.pendingTimer);
          res.pendingTimer = setTimeout(() => {
            res.pending = null;
            node.dirty.add(res.endpoint);
            this.mark(node);
          }, PENDING_MS);
        }
        break;
      }
      case 'robot':
        if (res && this.write(node, res.endpoint, el.dataset.command)) {
          res.sent = el.dataset.command;
          node.dirty.add(res.endpoint);
          this.mark(node);
        }
        break;
      case 'js-revert':
        if (res) {
          res.edited = false;
          res.parts.area.value = V.displayText(res.value);
          node.dirty.add(res.endpoint);
          this.mark(node);
        }
        break;
      default:
    }
  }

  onSubmit(event) {
    const { el, node, res } = this.target(event);
    if (!node || !res) return;
    event.preventDefault();
    if (el.dataset.action === 'text-send') {
      const input = res.parts.input;
      if (this.write(node, res.endpoint, input.value)) input.value = '';
    } else if (el.dataset.action === 'js-send') {
      if (this.write(node, res.endpoint, res.parts.area.value)) {
        res.edited = false;
        node.dirty.add(res.endpoint);
        this.mark(node);
      }
    }
  }

  /** A script the user looked at but did not change follows the node again. */
  onFocusOut(event) {
    if (!event.target.matches('textarea[data-role="script"]')) return;
    const { node, res } = this.target({ target: event.target.form });
    if (node && res && !res.edited) event.target.value = V.displayText(res.value);
  }

  onInput(event) {
    if (!event.target.matches('textarea[data-role="script"]')) return;
    const { node, res } = this.target({ target: event.target.form });
    if (!node || !res || res.edited) return;
    res.edited = true;
    node.dirty.add(res.endpoint);
    this.mark(node);
  }
}

// ---- one renderer per kind of resource ---------------------------------------------------------

function label(text) {
  return h('h3', { class: 'res-label' }, text);
}

function valueTitle(res) {
  return 'Updated ' + fmtTime(res.t);
}

const KINDS = {
  reading: {
    create(res, node, dash) {
      const p = res.parts;
      p.value = h('span', { class: 'reading-value' });
      p.unit = h('span', { class: 'reading-unit' });
      p.canvas = dash.chart(res, res.endpoint,
        () => [{ points: res.series, color: V.colorOf(res.endpoint) }],
        () => res.unit || '', `${V.labelOf(res.endpoint)} history`);
      return h('section', null,
        h('div', { class: 'res-line' }, label(V.labelOf(res.endpoint)),
          h('span', { class: 'reading' }, p.value, p.unit)),
        p.canvas);
    },
    update(res, node, dash) {
      const r = V.parseReading(res.value);
      setText(res.parts.value, r ? r.text : V.displayText(res.value));
      setText(res.parts.unit, r ? r.unit : '');
      res.parts.value.parentNode.title = valueTitle(res);
      dash.charts.mark(res.parts.canvas);
    },
  },

  imu: {
    create(res, node, dash) {
      const p = res.parts;
      const block = (key, title) => {
        p[key] = h('span', { class: 'axes' });
        p[key + 'Canvas'] = dash.chart(res, res.endpoint,
          () => res.axes ? res.axes[key].map((points, i) => ({ points, color: V.AXIS_COLORS[i] })) : [],
          () => '', `${title} history, x y z`);
        p[key + 'Canvas'].dataset.series = key;
        return h('div', { class: 'imu-block' },
          h('div', { class: 'res-line' }, h('h4', { class: 'res-sublabel' }, title), p[key]), p[key + 'Canvas']);
      };
      p.mag = h('span', { class: 'axes' });
      p.magRow = h('div', { class: 'res-line imu-mag', hidden: true }, h('h4', { class: 'res-sublabel' }, 'Magnetometer'), p.mag);
      return h('section', null, label(V.labelOf(res.endpoint)),
        block('acc', 'Accelerometer'), block('gyro', 'Gyroscope'), p.magRow);
    },
    update(res, node, dash) {
      const p = res.parts;
      const axes = (el, vec) => el.replaceChildren(...(vec || []).flatMap((v, i) => [
        h('span', { class: 'axis axis-' + 'xyz'[i] }, 'xyz'[i]), ' ', V.formatNumber(v), ' ']));
      const imu = res.imu || {};
      axes(p.acc, imu.acc);
      axes(p.gyro, imu.gyro);
      p.magRow.hidden = !imu.mag;
      if (imu.mag) axes(p.mag, imu.mag);
      dash.charts.mark(p.accCanvas);
      dash.charts.mark(p.gyroCanvas);
    },
  },

  led: {
    create(res, node) {
      const p = res.parts;
      p.dot = h('span', { class: 'led-dot', 'aria-hidden': 'true' });
      p.text = h('span', { class: 'led-text' });
      p.button = h('button', {
        type: 'button', class: 'switch', dataset: { action: 'led-toggle' }, 'aria-pressed': 'false',
      }, h('span', { class: 'switch-thumb', 'aria-hidden': 'true' }));
      return h('section', null,
        h('div', { class: 'res-line' }, label(V.labelOf(res.endpoint)),
          h('span', { class: 'led-state' }, p.dot, p.text, p.button)));
    },
    update(res, node) {
      const p = res.parts;
      const on = V.ledOn(res.value);
      setText(p.text, on === null ? V.displayText(res.value) : on ? 'On' : 'Off');
      p.dot.classList.toggle('on', on === true);
      setAttr(p.button, 'aria-pressed', on ? 'true' : 'false');
      p.button.classList.toggle('pending', !!res.pending);
      p.button.setAttribute('aria-label', `${V.labelOf(res.endpoint)} of ${node.name}`);
      p.button.title = on ? 'Switch off' : 'Switch on';
    },
  },

  text: {
    create(res, node) {
      const p = res.parts;
      p.current = h('p', { class: 'text-current' });
      p.input = h('input', { type: 'text', class: 'input', autocomplete: 'off', placeholder: 'New message' });
      return h('section', null, label(V.labelOf(res.endpoint)), p.current,
        h('form', { class: 'send-form', dataset: { action: 'text-send' } }, p.input,
          h('button', { type: 'submit', class: 'btn btn-primary' }, icon('send'), h('span', null, 'Send'))));
    },
    update(res, node) {
      const text = V.displayText(res.value);
      setText(res.parts.current, text || '—');
      res.parts.current.classList.toggle('muted', !text);
      res.parts.input.setAttribute('aria-label', `New message for ${node.name}`);
    },
  },

  robot: {
    create(res) {
      const p = res.parts;
      const btn = (command, name, cls) => h('button', {
        type: 'button', class: 'pad-btn ' + cls, dataset: { action: 'robot', command }, 'aria-label': name, title: name,
      }, icon(cls === 'pad-stop' ? 'stop' : cls.slice(4)), cls === 'pad-stop' ? h('span', null, 'Stop') : null);
      p.last = h('span', { class: 'res-note' });
      return h('section', null,
        h('div', { class: 'res-line' }, label(V.labelOf(res.endpoint)), p.last),
        h('div', { class: 'pad', role: 'group', 'aria-label': 'Robot controls' },
          btn('u', 'Forward', 'pad-up'), btn('l', 'Left', 'pad-left'),
          btn('s', 'Stop', 'pad-stop'), btn('r', 'Right', 'pad-right')));
    },
    update(res) {
      const names = { u: 'forward', l: 'left', r: 'right', s: 'stopped', d: 'back' };
      const v = String(res.sent ?? V.displayText(res.value)).trim();
      setText(res.parts.last, v ? (names[v] ? names[v] : v) : '');
    },
  },

  position: {
    create(res) {
      const p = res.parts;
      p.text = h('span', { class: 'position' });
      return h('section', null, h('div', { class: 'res-line' }, label(V.labelOf(res.endpoint)), p.text));
    },
    update(res) {
      const pos = V.parsePosition(res.value);
      if (!pos) { setText(res.parts.text, V.displayText(res.value)); return; }
      const f = (n, pos, neg) => `${Math.abs(n).toFixed(5)}° ${n >= 0 ? pos : neg}`;
      res.parts.text.replaceChildren(icon('pin', 'icon icon-inline'),
        h('span', null, f(pos.lat, 'N', 'S') + ', ' + f(pos.lng, 'E', 'W')));
      res.parts.text.title = `lat ${pos.lat}, lng ${pos.lng}`;
    },
  },

  version: {
    create(res) {
      res.parts.text = h('code', { class: 'version' });
      return h('section', null, h('div', { class: 'res-line' }, label(V.labelOf(res.endpoint)), res.parts.text));
    },
    update(res) {
      setText(res.parts.text, V.displayText(res.value));
    },
  },

  suit_state: {
    create(res) {
      res.parts.text = h('span', { class: 'tone' });
      return h('section', null, h('div', { class: 'res-line' }, label(V.labelOf(res.endpoint)), res.parts.text));
    },
    update(res) {
      const s = V.suitState(res.value);
      setText(res.parts.text, s.text);
      res.parts.text.className = 'tone tone-' + s.tone;
      res.el.classList.toggle('idle', s.code === 0);
    },
  },

  dwnld: {
    create(res) {
      const p = res.parts;
      p.bar = h('div', { class: 'progress-bar' });
      p.pct = h('span', { class: 'res-note' });
      p.track = h('div', {
        class: 'progress', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-label': 'Firmware download',
      }, p.bar);
      return h('section', null, h('div', { class: 'res-line' }, label(V.labelOf(res.endpoint)), p.pct), p.track);
    },
    update(res, node) {
      const pct = V.percent(res.value);
      const state = node.res.get('suit_state');
      const active = !state || V.suitState(state.value).code === 6;
      res.el.classList.toggle('idle', !active);
      setText(res.parts.pct, pct === null ? V.displayText(res.value) : `${Math.round(pct)} %`);
      res.parts.bar.style.width = (pct ?? 0) + '%';
      res.parts.track.setAttribute('aria-valuenow', String(pct ?? 0));
    },
  },

  js: {
    create(res, node) {
      const p = res.parts;
      p.area = h('textarea', {
        class: 'input code', rows: '8', spellcheck: 'false', autocapitalize: 'off', autocomplete: 'off',
        dataset: { role: 'script' }, 'aria-label': `JavaScript for ${node.name}`,
      });
      p.revert = h('button', { type: 'button', class: 'btn', dataset: { action: 'js-revert' }, hidden: true },
        icon('undo'), h('span', null, 'Revert'));
      p.note = h('span', { class: 'res-note' });
      return h('section', null,
        h('div', { class: 'res-line' }, label(V.labelOf(res.endpoint)), p.note),
        h('form', { class: 'script-form', dataset: { action: 'js-send' } }, p.area,
          h('div', { class: 'form-actions' }, p.revert,
            h('button', { type: 'submit', class: 'btn btn-primary' }, icon('send'), h('span', null, 'Send')))));
    },
    update(res) {
      const p = res.parts;
      if (!res.edited && document.activeElement !== p.area) p.area.value = V.displayText(res.value);
      p.revert.hidden = !res.edited;
      setText(p.note, res.edited ? 'edited' : '');
    },
  },

  webcam: {
    create(res) {
      res.parts.img = h('img', { class: 'res-image', alt: 'Node camera', loading: 'lazy' });
      res.parts.text = h('span', { class: 'kv-value' });
      return h('section', null, label(V.labelOf(res.endpoint)), res.parts.img, res.parts.text);
    },
    update(res) {
      const url = V.isImageUrl(res.value);
      res.parts.img.hidden = !url;
      res.parts.text.hidden = url;
      if (url) { if (res.parts.img.getAttribute('src') !== res.value.trim()) res.parts.img.src = res.value.trim(); }
      else setText(res.parts.text, V.displayText(res.value));
    },
  },

  value: {
    create(res) {
      res.parts.text = h('span', { class: 'kv-value' });
      return h('section', null, h('div', { class: 'res-line res-kv' }, h('h3', { class: 'res-label res-label-raw' }, res.endpoint), res.parts.text));
    },
    update(res) {
      let text = V.displayText(res.value);
      res.parts.text.title = text.length > MAX_TEXT ? text.slice(0, 4000) : valueTitle(res);
      if (text.length > MAX_TEXT) text = text.slice(0, MAX_TEXT) + '…';
      setText(res.parts.text, text);
      res.parts.text.classList.toggle('json', typeof res.value === 'object' && res.value !== null);
    },
  },
};
