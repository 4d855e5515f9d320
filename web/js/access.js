// Who may write: asks /api/session, shows the login button and form, logs in and out. The
// session is an HttpOnly cookie this script never sees; /ws reads it when the socket opens,
// so a login is followed by a reconnect. A server without /api/session (pyaiot, or the
// standalone dashboard) lets everyone write, as before.

import { setText } from './dom.js';

async function call(method, url, body) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 10000);
  try {
    const response = await fetch(url, {
      method,
      signal: ctl.signal,
      cache: 'no-store',
      credentials: 'same-origin',
      headers: body === undefined ? { Accept: 'application/json' } : { Accept: 'application/json', 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch { /* not JSON */ }
    return { status: response.status, data };
  } catch {
    return { status: 0, data: null };
  } finally {
    clearTimeout(timer);
  }
}

export class Access {
  /** els: toggle, toggleText, panel, form, input, error, cancel, badge.
   *  onChange(canWrite) after every change; onLogin() after a successful login. */
  constructor(els, { onChange, onLogin, notify }) {
    Object.assign(this, els);
    this.onChange = onChange;
    this.onLogin = onLogin;
    this.notify = notify;
    this.required = false;
    this.authenticated = false;
    this.expiryTimer = null;

    this.toggle.addEventListener('click', () => {
      if (this.authenticated) this.logout();
      else if (this.isOpen) this.close(true);
      else this.open();
    });
    this.cancel.addEventListener('click', () => this.close(true));
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.login(); });
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && this.isOpen) this.close(true);
    });
    document.addEventListener('pointerdown', (e) => {
      if (this.isOpen && !this.panel.contains(e.target) && !this.toggle.contains(e.target)) this.close();
    });
  }

  get canWrite() {
    return !this.required || this.authenticated;
  }

  get isOpen() {
    return !this.panel.hidden;
  }

  /** Asks the server; returns whether this page may write. */
  async refresh() {
    const { status, data } = await call('GET', 'api/session');
    if (status === 200 && data && typeof data === 'object') {
      this.apply(data);
    } else if (status !== 0) {
      // No such endpoint: a server that does not guard writes.
      this.apply({ password_required: false, authenticated: false });
    }
    return this.canWrite;
  }

  apply(data) {
    this.required = data.password_required === true;
    this.authenticated = data.authenticated === true;
    clearTimeout(this.expiryTimer);
    if (this.authenticated && Number.isFinite(data.expires_in)) {
      // Ask again when the session runs out, so the controls follow.
      const ms = Math.min(data.expires_in * 1000 + 500, 2 ** 31 - 1);
      this.expiryTimer = setTimeout(() => this.refresh(), ms);
    }
    this.render();
  }

  render() {
    this.toggle.hidden = !this.required;
    setText(this.toggleText, this.authenticated ? 'Log out' : 'Log in');
    this.toggle.title = this.authenticated ? 'Log out: back to watching only' : 'Log in to control nodes';
    if (this.authenticated) this.toggle.removeAttribute('aria-expanded');
    else this.toggle.setAttribute('aria-expanded', this.isOpen ? 'true' : 'false');
    this.badge.hidden = this.canWrite;
    document.body.classList.toggle('readonly', !this.canWrite);
    this.onChange(this.canWrite);
  }

  open() {
    this.panel.hidden = false;
    this.toggle.setAttribute('aria-expanded', 'true');
    this.error.hidden = true;
    this.input.value = '';
    this.input.focus();
  }

  close(returnFocus) {
    this.panel.hidden = true;
    if (!this.authenticated) this.toggle.setAttribute('aria-expanded', 'false');
    if (returnFocus) this.toggle.focus();
  }

  showError(text) {
    setText(this.error, text);
    this.error.hidden = false;
    this.input.select();
  }

  async login() {
    const password = this.input.value;
    if (!password) {
      this.showError('Enter the password.');
      this.input.focus();
      return;
    }
    const submit = this.form.querySelector('button[type="submit"]');
    submit.disabled = true;
    const { status, data } = await call('POST', 'api/login', { password });
    submit.disabled = false;
    const serverSays = data && typeof data.error === 'string' ? data.error : '';
    if (status === 200) {
      this.input.value = '';
      this.close(false);
      this.apply(data);
      this.toggle.focus();
      this.notify('Logged in: you can control the nodes.');
      this.onLogin();
    } else if (status === 401) {
      this.showError('Wrong password.');
    } else if (status === 429) {
      this.showError(serverSays ? serverSays[0].toUpperCase() + serverSays.slice(1) + '.' : 'Too many attempts: wait a minute.');
    } else if (status === 0) {
      this.showError('The server cannot be reached.');
    } else {
      this.showError(serverSays || `The server refused (${status}).`);
    }
  }

  async logout() {
    const { status, data } = await call('POST', 'api/logout', {});
    if (status === 200 && data) this.apply(data);
    else await this.refresh();
    this.notify('Logged out: watching only.');
  }
}
