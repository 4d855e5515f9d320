// Masonry layout on a CSS grid with 4 px rows: each card spans as many rows as its height
// needs, so short cards do not leave holes under them. Heights come from a ResizeObserver
// (no forced layout); the DOM order, and so the keyboard order, stays the node order.

const ROW = 4;

export function masonry(grid) {
  let gap = 16;
  const resize = new ResizeObserver((entries) => {
    gap = parseFloat(getComputedStyle(grid).columnGap) || 0;
    for (const e of entries) {
      const el = e.target;
      const box = e.borderBoxSize && e.borderBoxSize[0];
      const height = box ? box.blockSize : el.getBoundingClientRect().height;
      const span = Math.max(1, Math.ceil((height + gap) / ROW));
      if (el.masonrySpan !== span) {
        el.masonrySpan = span;
        el.style.gridRowEnd = `span ${span}`;
      }
    }
  });
  for (const el of grid.children) resize.observe(el);
  new MutationObserver((records) => {
    for (const r of records) {
      r.addedNodes.forEach((n) => n.nodeType === 1 && resize.observe(n));
      r.removedNodes.forEach((n) => n.nodeType === 1 && resize.unobserve(n));
    }
  }).observe(grid, { childList: true });
}
