// Preferences kept in localStorage (theme, hidden nodes and resources). Storage may be
// unavailable (private mode, disabled): then they last for the page's life only.

const PREFIX = 'aiot.';

export function load(key, fallback) {
  try {
    const raw = localStorage.getItem(PREFIX + key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

export function save(key, value) {
  try {
    localStorage.setItem(PREFIX + key, JSON.stringify(value));
  } catch {
    /* storage full or disabled: keep it in memory only */
  }
}

/** A set of strings persisted as a JSON array. */
export class StoredSet {
  constructor(key) {
    this.key = key;
    const list = load(key, []);
    this.set = new Set(Array.isArray(list) ? list.map(String) : []);
  }
  has(v) { return this.set.has(v); }
  get size() { return this.set.size; }
  toggle(v, on) {
    if (on) this.set.add(v); else this.set.delete(v);
    save(this.key, [...this.set]);
  }
  replace(values) {
    this.set = new Set(values);
    save(this.key, [...this.set]);
  }
}
