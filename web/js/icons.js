// Inline SVG icons (stroke or fill with currentColor), built as DOM nodes.
import { h } from './dom.js';

const PATHS = {
  close: { d: 'M6 6l12 12M18 6L6 18', stroke: true },
  send: { d: 'M21 3L10 14M21 3l-7 18-4-7-7-4z', stroke: true },
  undo: { d: 'M9 14L4 9l5-5M4 9h10a6 6 0 010 12h-3', stroke: true },
  up: { d: 'M12 4l8 14H4z' },
  down: { d: 'M12 20L4 6h16z' },
  left: { d: 'M4 12l14-8v16z' },
  right: { d: 'M20 12L6 4v16z' },
  stop: { d: 'M6 6h12v12H6z' },
  pin: { d: 'M12 21s-6-5.5-6-11a6 6 0 0112 0c0 5.5-6 11-6 11zM12 12.5a2.5 2.5 0 100-5 2.5 2.5 0 000 5z', stroke: true },
  gateway: { d: 'M4 14h16v6H4zM8 17h.01M12 14V9M8.5 8.5a5 5 0 017 0M6 6a8.5 8.5 0 0112 0', stroke: true },
  chip: { d: 'M7 7h10v10H7zM9 3v4M15 3v4M9 17v4M15 17v4M3 9h4M3 15h4M17 9h4M17 15h4', stroke: true },
};

export function icon(name, cls = 'icon') {
  const p = PATHS[name];
  const path = h('svg:path', p.stroke
    ? { d: p.d, fill: 'none', stroke: 'currentColor', 'stroke-width': '2', 'stroke-linecap': 'round', 'stroke-linejoin': 'round' }
    : { d: p.d, fill: 'currentColor' });
  return h('svg:svg', { class: cls, viewBox: '0 0 24 24', 'aria-hidden': 'true', focusable: 'false' }, path);
}
