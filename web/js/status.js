// The status bar: connection state (with the reconnect countdown), node counts, and on a
// gateway the uplink state from /healthz.

import { setText } from './dom.js';

export class Status {
  constructor(root) {
    this.root = root;
    this.text = root.querySelector('#status-text');
    this.detail = root.querySelector('#status-detail');
    this.retry = root.querySelector('#retry-now');
    this.count = root.querySelector('#node-count');
    this.countLabel = root.querySelector('#node-count-label');
    this.gone = root.querySelector('#gone-count');
    this.uplink = root.querySelector('#uplink');
    this.uplinkState = root.querySelector('#uplink-state');
    this.server = root.querySelector('#server-info');
    this.tick = null;
    this.state = '';
  }

  setConnection(state, info, url) {
    this.root.dataset.state = state;
    clearInterval(this.tick);
    this.tick = null;
    const phrase = { connected: 'Connected', connecting: 'Connecting…', reconnecting: 'Reconnecting' }[state];
    // The live region hears about state changes only, not the countdown.
    if (state !== this.state) setText(this.text, phrase);
    this.state = state;
    this.root.title = state === 'connected' ? `Connected to ${url}` : (info.reason || '');
    this.retry.hidden = !(state === 'reconnecting' && info.retryAt);
    if (state === 'reconnecting' && info.retryAt) {
      const show = () => {
        const s = Math.max(0, Math.ceil((info.retryAt - Date.now()) / 1000));
        setText(this.detail, `in ${s} s${info.reason ? ' · ' + info.reason : ''}`);
      };
      show();
      this.tick = setInterval(show, 500);
    } else if (state === 'reconnecting') {
      setText(this.detail, info.reason ? `· ${info.reason}` : '');
    } else {
      setText(this.detail, '');
    }
  }

  setCounts({ live, gone }) {
    setText(this.count, String(live));
    setText(this.countLabel, live === 1 ? 'node' : 'nodes');
    this.gone.hidden = gone === 0;
    setText(this.gone, `${gone} went away`);
  }

  /** `uplink` from /healthz: "connected" | "connecting" | "retrying: why" | "disabled" | null. */
  setUplink(uplink) {
    if (typeof uplink !== 'string' || !uplink) {
      this.uplink.hidden = true;
      return;
    }
    this.uplink.hidden = false;
    let tone = 'warn';
    let text = uplink;
    if (uplink === 'connected') tone = 'ok';
    else if (uplink === 'disabled') { tone = 'off'; text = 'disabled (standalone)'; }
    else if (uplink === 'stopped') tone = 'off';
    else if (uplink.startsWith('retrying')) tone = 'bad';
    this.uplink.dataset.tone = tone;
    setText(this.uplinkState, text);
    this.uplink.title = `Uplink to the central broker: ${uplink}`;
  }

  setServer(health) {
    if (!health || typeof health !== 'object') return;
    const bits = [];
    if (health.role) bits.push(String(health.role));
    if (health.version) bits.push('v' + health.version);
    setText(this.server, bits.join(' '));
  }
}
