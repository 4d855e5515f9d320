// The /ws connection: sends pyaiot's client hello on open (marked as aiot's, so the server
// may tell it why a write was refused), hands every message on, and reconnects after any loss
// with exponential backoff (0.5 s doubling to 15 s, with jitter).

const MIN_DELAY = 500;
const MAX_DELAY = 15000;

export class Connection {
  /** handlers: onOpen(isReconnect), onMessage(msg), onState(state, info) where state is
   *  'connecting' | 'connected' | 'reconnecting' and info has {retryAt, attempt, reason}. */
  constructor(url, handlers) {
    this.url = url;
    this.h = handlers;
    this.ws = null;
    this.failures = 0;
    this.everOpened = false;
    this.timer = null;
    this.retryAt = 0;
    this.lastReason = '';
    window.addEventListener('online', () => this.retryNow());
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.timer) this.retryNow();
    });
  }

  get open() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    this.connect();
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    this.h.onState(this.everOpened || this.failures ? 'reconnecting' : 'connecting',
      { retryAt: 0, attempt: this.failures, reason: this.lastReason });
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this.lastReason = 'invalid address ' + this.url;
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      const again = this.everOpened;
      this.everOpened = true;
      this.failures = 0;
      this.lastReason = '';
      ws.send(JSON.stringify({ type: 'new', data: 'client', aiot: 1 }));
      this.h.onState('connected', {});
      this.h.onOpen(again);
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== 'string') return;
      let msg;
      try { msg = JSON.parse(event.data); } catch { return; }
      if (Array.isArray(msg)) msg.forEach((m) => this.h.onMessage(m));
      else this.h.onMessage(msg);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.lastReason = closeReason(event, opened);
      this.scheduleRetry();
    };
    ws.onerror = () => { /* onclose follows and does the work */ };
  }

  scheduleRetry() {
    const base = Math.min(MAX_DELAY, MIN_DELAY * 2 ** this.failures);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.failures++;
    this.retryAt = Date.now() + Math.min(delay, MAX_DELAY);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), this.retryAt - Date.now());
    this.h.onState('reconnecting', { retryAt: this.retryAt, attempt: this.failures, reason: this.lastReason });
  }

  /** A fresh connection at once, e.g. to carry a new session cookie. */
  reconnect() {
    const old = this.ws;
    this.ws = null;
    if (old) old.close(1000);
    this.connect();
  }

  retryNow() {
    if (this.ws) return; // already connecting or connected
    this.connect();
  }

  /** Sends a message; false when not connected (nothing is queued). */
  send(msg) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }
}

function closeReason(event, opened) {
  if (!opened) return 'cannot reach the server';
  if (event.code === 1000 || event.code === 1001) return 'the server closed the connection';
  if (event.code === 1006) return 'connection lost';
  return `closed (${event.code}${event.reason ? ': ' + event.reason : ''})`;
}
