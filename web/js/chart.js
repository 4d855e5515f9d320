// Time-series charts drawn by hand on <canvas>. A chart is redrawn only when its data, size or
// the theme changed, and only while it is on screen: 1000 cards stay cheap.

const MAX_POINTS = 2000;

let palette = null;
function colors() {
  if (!palette) {
    const css = getComputedStyle(document.documentElement);
    const v = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    palette = {
      grid: v('--chart-grid', 'rgba(128,128,128,.2)'),
      text: v('--chart-text', '#888'),
      bg: v('--surface', '#fff'),
      font: '10px ' + (v('--font-ui', 'system-ui, sans-serif')),
    };
  }
  return palette;
}

/** Appends a point to a sorted series, keeping it sorted and bounded. */
export function addPoint(series, t, v) {
  const n = series.length;
  if (n && t < series[n - 1][0]) {
    let i = n - 1;
    while (i > 0 && series[i - 1][0] > t) i--;
    series.splice(i, 0, [t, v]);
  } else {
    series.push([t, v]);
  }
  if (series.length > MAX_POINTS) series.splice(0, series.length - MAX_POINTS);
}

/** History (authoritative for its time span) followed by the live points that are newer. */
export function mergeHistory(series, history) {
  const clean = [];
  for (const p of history) {
    if (Array.isArray(p) && Number.isFinite(p[0]) && Number.isFinite(p[1])) clean.push([p[0], p[1]]);
  }
  if (!clean.length) return series;
  clean.sort((a, b) => a[0] - b[0]);
  const last = clean[clean.length - 1][0];
  const merged = clean.concat(series.filter((p) => p[0] > last));
  return merged.length > MAX_POINTS ? merged.slice(merged.length - MAX_POINTS) : merged;
}

function timeLabel(t, span) {
  const d = new Date(t);
  const opts = span < 120e3
    ? { hour: '2-digit', minute: '2-digit', second: '2-digit' }
    : { hour: '2-digit', minute: '2-digit' };
  if (span > 36 * 3600e3) return d.toLocaleDateString([], { month: 'short', day: 'numeric' });
  return d.toLocaleTimeString([], opts);
}

function shortNumber(n, step) {
  const digits = step >= 10 ? 0 : step >= 1 ? 1 : step >= 0.1 ? 2 : 3;
  return Number(n.toFixed(digits)).toString();
}

/** Per-pixel min/max buckets when there are far more points than pixels. */
function decimate(points, x0, pxPerMs, width) {
  if (points.length <= width * 2) return points;
  const out = [];
  let bucket = -1, lo = null, hi = null;
  const flush = () => {
    if (!lo) return;
    if (lo[0] <= hi[0]) out.push(lo, hi); else out.push(hi, lo);
  };
  for (const p of points) {
    const b = Math.floor((p[0] - x0) * pxPerMs);
    if (b !== bucket) { flush(); bucket = b; lo = hi = p; continue; }
    if (p[1] < lo[1]) lo = p;
    if (p[1] > hi[1]) hi = p;
  }
  flush();
  return out;
}

/** Draws `lines` ([{points:[[t,v]..], color}]) on a canvas of CSS size w×h; `hover` is the
 *  pointer's x in CSS pixels, or null. */
export function draw(canvas, w, h, dpr, lines, unit, hover = null) {
  const ctx = canvas.getContext('2d');
  const c = colors();
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  let t0 = Infinity, t1 = -Infinity, v0 = Infinity, v1 = -Infinity;
  for (const line of lines) {
    for (const [t, v] of line.points) {
      if (t < t0) t0 = t;
      if (t > t1) t1 = t;
      if (v < v0) v0 = v;
      if (v > v1) v1 = v;
    }
  }
  ctx.font = c.font;
  ctx.textBaseline = 'middle';
  if (t0 === Infinity) {
    ctx.fillStyle = c.text;
    ctx.textAlign = 'center';
    ctx.fillText('Waiting for data…', w / 2, h / 2);
    return;
  }
  const top = 8, bottom = h - 16, left = 0, right = w - 4;
  if (v1 - v0 < 1e-9) { const pad = Math.abs(v0) * 0.05 || 1; v0 -= pad; v1 += pad; }
  const spanV = v1 - v0;
  v0 -= spanV * 0.12; v1 += spanV * 0.12;
  const single = t1 === t0;
  if (single) t0 = t1 - 60e3;
  const spanT = t1 - t0;
  const x = (t) => left + (t - t0) / spanT * (right - left);
  const y = (v) => bottom - (v - v0) / (v1 - v0) * (bottom - top);

  // Grid: three faint lines, labelled at the left.
  ctx.strokeStyle = c.grid;
  ctx.lineWidth = 1;
  ctx.setLineDash([2, 3]);
  const step = (v1 - v0) / 2;
  for (let i = 0; i <= 2; i++) {
    const gy = Math.round(bottom - (bottom - top) * i / 2) + 0.5;
    ctx.beginPath(); ctx.moveTo(left, gy); ctx.lineTo(right, gy); ctx.stroke();
  }
  ctx.setLineDash([]);

  if (single) {
    // One reading so far: a dot at "now" and a faint level line, no scale to speak of.
    for (const line of lines) {
      if (!line.points.length) continue;
      const ly = Math.round((top + bottom) / 2) + 0.5;
      ctx.strokeStyle = line.color + '66';
      ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(left, ly); ctx.lineTo(right, ly); ctx.stroke();
      ctx.fillStyle = line.color;
      ctx.beginPath(); ctx.arc(right - 3, ly, 3, 0, Math.PI * 2); ctx.fill();
    }
    ctx.fillStyle = c.text;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'alphabetic';
    ctx.fillText(timeLabel(t1, 0), right, h - 3);
    return;
  }

  for (const line of lines) {
    const pts = decimate(line.points, t0, (right - left) / spanT, right - left);
    if (!pts.length) continue;
    ctx.beginPath();
    pts.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    if (lines.length === 1) {
      ctx.save();
      ctx.lineTo(x(pts[pts.length - 1][0]), bottom);
      ctx.lineTo(x(pts[0][0]), bottom);
      ctx.closePath();
      const g = ctx.createLinearGradient(0, top, 0, bottom);
      g.addColorStop(0, line.color + '40');
      g.addColorStop(1, line.color + '00');
      ctx.fillStyle = g;
      ctx.fill();
      ctx.restore();
      ctx.beginPath();
      pts.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    }
    ctx.strokeStyle = line.color;
    ctx.lineWidth = 1.6;
    ctx.lineJoin = 'round';
    ctx.stroke();
    const [lt, lv] = pts[pts.length - 1];
    ctx.fillStyle = line.color;
    ctx.beginPath(); ctx.arc(x(lt), y(lv), 2.6, 0, Math.PI * 2); ctx.fill();
  }

  // Labels: value range at the left, time span under the plot.
  ctx.fillStyle = c.text;
  ctx.textAlign = 'left';
  const u = unit ? ' ' + unit : '';
  const label = (text, ly) => {
    const tw = ctx.measureText(text).width;
    ctx.save();
    ctx.fillStyle = c.bg;
    ctx.globalAlpha = 0.75;
    ctx.fillRect(left, ly - 6, tw + 4, 12);
    ctx.restore();
    ctx.fillText(text, left + 2, ly);
  };
  label(shortNumber(v1, step) + u, top + 1);
  label(shortNumber(v0, step) + u, bottom - 1);
  ctx.textBaseline = 'alphabetic';
  ctx.fillText(timeLabel(t0, spanT), left, h - 3);
  ctx.textAlign = 'right';
  ctx.fillText(timeLabel(t1, spanT), right, h - 3);
  if (hover !== null) drawHover(ctx, c, lines, hover, x, y, top, bottom, right, unit);
}

/** The reading nearest to the pointer: a guide line, dots and a label with value and time. */
function drawHover(ctx, c, lines, hx, x, y, top, bottom, right, unit) {
  let best = null;
  for (const line of lines) {
    for (const p of line.points) {
      const d = Math.abs(x(p[0]) - hx);
      if (!best || d < best.d) best = { d, t: p[0] };
    }
  }
  if (!best) return;
  const gx = Math.round(x(best.t)) + 0.5;
  ctx.save();
  ctx.strokeStyle = c.text;
  ctx.globalAlpha = 0.6;
  ctx.beginPath(); ctx.moveTo(gx, top - 4); ctx.lineTo(gx, bottom); ctx.stroke();
  ctx.restore();
  const values = [];
  for (const line of lines) {
    const p = line.points.find((q) => q[0] === best.t);
    if (!p) continue;
    values.push(Number(p[1].toFixed(3)).toString());
    ctx.fillStyle = line.color;
    ctx.beginPath(); ctx.arc(gx, y(p[1]), 3.5, 0, Math.PI * 2); ctx.fill();
    ctx.strokeStyle = c.bg; ctx.lineWidth = 1.5; ctx.stroke();
  }
  const when = new Date(best.t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  const text = `${values.join(' / ')}${unit ? ' ' + unit : ''} · ${when}`;
  ctx.font = 'bold ' + c.font;
  const tw = ctx.measureText(text).width + 10;
  const bx = Math.min(Math.max(gx - tw / 2, 0), right - tw);
  ctx.fillStyle = c.text;
  ctx.globalAlpha = 0.92;
  ctx.beginPath();
  ctx.roundRect ? ctx.roundRect(bx, 0, tw, 15, 4) : ctx.rect(bx, 0, tw, 15);
  ctx.fill();
  ctx.globalAlpha = 1;
  ctx.fillStyle = c.bg;
  ctx.textAlign = 'left';
  ctx.textBaseline = 'middle';
  ctx.fillText(text, bx + 5, 8);
  ctx.font = c.font;
}

/** Keeps every chart's size, visibility and dirtiness; `flush()` redraws what needs it. */
export class Charts {
  constructor() {
    this.items = new Map(); // canvas -> {w, h, visible, dirty, lines: () => [], unit: () => ''}
    this.dirty = new Set();
    this.resize = new ResizeObserver((entries) => {
      for (const e of entries) {
        const item = this.items.get(e.target);
        if (!item) continue;
        const box = e.contentBoxSize && e.contentBoxSize[0];
        item.w = Math.round(box ? box.inlineSize : e.contentRect.width);
        item.h = Math.round(box ? box.blockSize : e.contentRect.height);
        item.sized = false;
        this.mark(e.target);
      }
      this.onNeedFlush?.();
    });
    this.seen = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const item = this.items.get(e.target);
        if (!item) continue;
        item.visible = e.isIntersecting;
        if (item.visible && item.stale) this.mark(e.target);
      }
      this.onNeedFlush?.();
    }, { rootMargin: '200px' });
    this.onNeedFlush = null;
  }

  add(canvas, source) {
    this.items.set(canvas, { w: 0, h: 0, visible: false, stale: true, sized: false, hover: null, ...source });
    this.resize.observe(canvas);
    this.seen.observe(canvas);
    const hover = (x) => {
      const item = this.items.get(canvas);
      if (!item || item.hover === x) return;
      item.hover = x;
      this.mark(canvas);
      this.onNeedFlush?.();
    };
    canvas.addEventListener('pointermove', (e) => hover(e.offsetX));
    canvas.addEventListener('pointerdown', (e) => hover(e.offsetX));
    canvas.addEventListener('pointerleave', () => hover(null));
    canvas.addEventListener('pointercancel', () => hover(null));
  }

  remove(canvas) {
    this.items.delete(canvas);
    this.dirty.delete(canvas);
    this.resize.unobserve(canvas);
    this.seen.unobserve(canvas);
  }

  mark(canvas) {
    const item = this.items.get(canvas);
    if (!item) return;
    item.stale = true;
    this.dirty.add(canvas);
  }

  /** The theme changed: every chart needs new colours. */
  repaintAll() {
    palette = null;
    for (const canvas of this.items.keys()) this.mark(canvas);
    this.onNeedFlush?.();
  }

  flush() {
    const dpr = window.devicePixelRatio || 1;
    for (const canvas of this.dirty) {
      const item = this.items.get(canvas);
      if (!item || !item.visible || item.w < 10 || item.h < 10) continue;
      if (!item.sized || item.dpr !== dpr) {
        canvas.width = Math.round(item.w * dpr);
        canvas.height = Math.round(item.h * dpr);
        item.sized = true;
        item.dpr = dpr;
      }
      draw(canvas, item.w, item.h, dpr, item.lines(), item.unit(), item.hover);
      item.stale = false;
      this.dirty.delete(canvas);
    }
  }
}
