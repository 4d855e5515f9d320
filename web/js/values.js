// What resources are and how their values read: kinds, labels, display order, and
// parsing of pyaiot's value formats ("23°C", "1015.03hPa", IMU JSON, positions).

/** Node details shown in the card header, not as resource rows. */
export const META = ['name', 'os', 'board', 'mcu', 'vendor', 'ip', 'protocol'];
const META_SET = new Set(META);

export const META_LABELS = {
  os: 'OS', board: 'Board', mcu: 'MCU', vendor: 'Vendor', ip: 'IP', protocol: 'Protocol',
};

/** Numeric readings pyaiot charts, with their label and line colour. */
const READINGS = {
  temperature: { label: 'Temperature', color: '#f0652f' },
  pressure: { label: 'Pressure', color: '#8b5cf6' },
  humidity: { label: 'Humidity', color: '#0ea5c6' },
  illuminance: { label: 'Illuminance', color: '#d4a106' },
  uvindex: { label: 'UV index', color: '#db2777' },
  eco2: { label: 'eCO₂', color: '#e08a0b' },
  tvoc: { label: 'TVOC', color: '#16a34a' },
  tsp: { label: 'Small particles (1–2 µm)', color: '#a855f7' },
  tlp: { label: 'Large particles (3–10 µm)', color: '#c026d3' },
};
const GENERIC_COLOR = '#3b82f6';
export const AXIS_COLORS = ['#ef4444', '#22a755', '#3b82f6'];

/** Endpoints that look numeric but are not readings worth a chart. */
const NOT_READINGS = new Set(['led', 'version', 'suit_state', 'dwnld', 'robot', 'text', 'js',
  'position', 'imu', 'ribot', 'webcam', 'uid']);

const OTHER_LABELS = {
  led: 'LED', text: 'Message', robot: 'Robot', position: 'Position', version: 'Firmware',
  suit_state: 'Update', dwnld: 'Download', js: 'JavaScript', imu: 'Motion (IMU)',
  webcam: 'Camera',
};

const ORDER = ['temperature', 'humidity', 'pressure', 'illuminance', 'uvindex', 'eco2', 'tvoc',
  'tsp', 'tlp', 'pm', 'reading', 'imu', 'led', 'robot', 'text', 'position', 'version',
  'suit_state', 'dwnld', 'webcam', 'js', 'value'];

export const isMeta = (endpoint) => META_SET.has(endpoint);

function readingInfo(endpoint) {
  const key = endpoint.toLowerCase();
  if (READINGS[key]) return { key, ...READINGS[key] };
  const pm = /^pm[_.]?(\d+(?:[_.]\d+)?)$/.exec(key);
  if (pm) return { key: 'pm', label: 'PM' + pm[1].replace('_', '.'), color: '#b45309' };
  return null;
}

/** How a resource is shown: 'reading' (value + chart), 'imu', 'led', 'text', 'robot',
 *  'position', 'version', 'suit_state', 'dwnld', 'js', 'webcam' or 'value' (name/value row).
 *  An unknown endpoint whose value reads as a number with a short unit is a reading too. */
export function kindOf(endpoint, value) {
  const key = endpoint.toLowerCase();
  if (readingInfo(endpoint)) return 'reading';
  if (key in OTHER_LABELS) return key;
  if (!NOT_READINGS.has(key) && strictReading(value)) return 'reading';
  return 'value';
}

export function labelOf(endpoint) {
  const info = readingInfo(endpoint);
  if (info) return info.label;
  const key = endpoint.toLowerCase();
  if (OTHER_LABELS[key]) return OTHER_LABELS[key];
  if (META_LABELS[key]) return META_LABELS[key];
  const words = endpoint.replace(/[_-]+/g, ' ').trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export function colorOf(endpoint) {
  const info = readingInfo(endpoint);
  return info ? info.color : GENERIC_COLOR;
}

/** Sort rank of a resource row inside a card. */
export function rankOf(endpoint, kind) {
  const info = readingInfo(endpoint);
  let i = info ? ORDER.indexOf(info.key) : ORDER.indexOf(kind === 'reading' ? 'reading' : endpoint.toLowerCase());
  if (i < 0) i = ORDER.indexOf('value');
  return i;
}

const NUMBER_UNIT = /^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$/;
const SHORT_UNIT = /^[^\d\s]{0,6}$|^[^\d\s]{1,3}\/[^\d\s]{1,3}\d?$/;

/** A reading: `{num, text, unit}` from 23, "23°C", "1015.03 hPa", {"value": 23, "unit": "°C"};
 *  null when there is no leading number. */
export function parseReading(value) {
  if (typeof value === 'number') {
    return Number.isFinite(value) ? { num: value, text: formatNumber(value), unit: '' } : null;
  }
  if (typeof value === 'string') {
    const m = NUMBER_UNIT.exec(value);
    if (!m) return null;
    const num = Number(m[1]);
    if (!Number.isFinite(num)) return null;
    return { num, text: m[1].replace(/^\+/, ''), unit: m[2] };
  }
  if (value && typeof value === 'object' && !Array.isArray(value) && 'value' in value) {
    const inner = parseReading(value.value);
    if (inner && typeof value.unit === 'string') inner.unit = value.unit;
    return inner;
  }
  return null;
}

/** A value that is clearly a measurement: a number, or a number and a short unit. */
function strictReading(value) {
  if (typeof value === 'number') return Number.isFinite(value);
  const r = parseReading(value);
  return !!r && typeof value === 'string' && SHORT_UNIT.test(r.unit) && r.unit !== '.';
}

export function formatNumber(n) {
  if (!Number.isFinite(n)) return String(n);
  const abs = Math.abs(n);
  if (abs !== 0 && (abs >= 1e6 || abs < 1e-3)) return n.toExponential(2);
  return String(Math.round(n * 1000) / 1000);
}

/** pyaiot sends some structured values as JSON text (CoAP payloads are text). */
function maybeJson(value) {
  if (typeof value !== 'string') return value;
  const t = value.trim();
  if (!(t.startsWith('{') || t.startsWith('['))) return value;
  try { return JSON.parse(t); } catch { return value; }
}

function vector(v) {
  if (Array.isArray(v)) return v.slice(0, 3).map(Number);
  if (v && typeof v === 'object') return ['x', 'y', 'z'].map((k) => Number(v[k]));
  return null;
}

const IMU_KEYS = {
  acc: 'acc', accel: 'acc', accelerometer: 'acc',
  gyro: 'gyro', gyr: 'gyro', gyroscope: 'gyro',
  mag: 'mag', magnetometer: 'mag',
};

/** pyaiot's IMU value, `[{"type":"acc","values":[x,y,z]}, {"type":"gyro",...}, ...]` (as JSON
 *  text or already parsed), or `{"acc":[x,y,z], "gyro":{"x":..}}`: `{acc, gyro, mag}` vectors. */
export function parseImu(value) {
  const data = maybeJson(value);
  const out = {};
  const put = (type, values) => {
    const key = IMU_KEYS[String(type).toLowerCase()];
    const vec = vector(values);
    if (key && vec && vec.length === 3 && vec.every(Number.isFinite)) out[key] = vec;
  };
  if (Array.isArray(data)) {
    for (const item of data) if (item && typeof item === 'object') put(item.type, item.values);
  } else if (data && typeof data === 'object') {
    for (const [k, v] of Object.entries(data)) put(k, v);
  }
  return Object.keys(out).length ? out : null;
}

/** `{lat, lng}` from `{"lat":..,"lng":..}` (object or JSON text), `{lat, lon}` or "lat,lng". */
export function parsePosition(value) {
  let data = maybeJson(value);
  if (typeof data === 'string') {
    const m = /^\s*(-?\d+(?:\.\d+)?)\s*[,; ]\s*(-?\d+(?:\.\d+)?)\s*$/.exec(data);
    if (m) data = { lat: m[1], lng: m[2] };
  }
  if (Array.isArray(data) && data.length === 2) data = { lat: data[0], lng: data[1] };
  if (!data || typeof data !== 'object') return null;
  const lat = Number(data.lat ?? data.latitude);
  const lng = Number(data.lng ?? data.lon ?? data.long ?? data.longitude);
  return Number.isFinite(lat) && Number.isFinite(lng) ? { lat, lng } : null;
}

/** LED state: true, false, or null when the value is not a recognisable state. */
export function ledOn(value) {
  if (value === true || value === false) return value;
  const s = String(value).trim().toLowerCase();
  if (['1', 'on', 'true'].includes(s)) return true;
  if (['0', 'off', 'false'].includes(s)) return false;
  return null;
}

/** RIOT SUIT update states as pyaiot names them. */
const SUIT_STATES = {
  0: ['Idle', 'idle'],
  1: ['Update triggered', 'info'],
  2: ['Validating signature', 'info'],
  3: ['Signature validation error', 'error'],
  4: ['Signature valid', 'info'],
  5: ['Sequence number error', 'error'],
  6: ['Downloading', 'info'],
  7: ['Download done', 'info'],
  8: ['Download failed', 'error'],
  9: ['Validating digest', 'info'],
  10: ['Digest validation error', 'error'],
  11: ['Download completed', 'ok'],
};

export function suitState(value) {
  const n = parseInt(String(value).trim(), 10);
  const known = SUIT_STATES[n];
  if (known) return { code: n, text: known[0], tone: known[1] };
  return { code: n, text: String(value), tone: 'info' };
}

export function percent(value) {
  const r = parseReading(value);
  if (!r) return null;
  return Math.max(0, Math.min(100, r.num));
}

/** Text for an arbitrary value: strings as they are, the rest as compact JSON. */
export function displayText(value) {
  if (typeof value === 'string') return value;
  if (value === undefined) return '';
  try { return JSON.stringify(value); } catch { return String(value); }
}

export function isImageUrl(value) {
  return typeof value === 'string' && /^(https?:\/\/|data:image\/)/i.test(value.trim());
}
