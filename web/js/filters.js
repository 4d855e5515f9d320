// The filter panel: which nodes and which resources are shown. Choices are remembered in
// localStorage (by node uid and by endpoint name); new nodes and resources are shown.

import { h, setText } from './dom.js';
import * as V from './values.js';

const MAX_LISTED = 500;

export class Filters {
  constructor({ panel, toggle, badge, dashboard }) {
    this.panel = panel;
    this.toggle = toggle;
    this.badge = badge;
    this.dash = dashboard;
    this.nodeList = panel.querySelector('#node-filter-list');
    this.resList = panel.querySelector('#res-filter-list');
    this.search = panel.querySelector('#node-search');
    this.more = panel.querySelector('#node-filter-more');

    toggle.addEventListener('click', () => (this.isOpen ? this.close() : this.open()));
    panel.querySelector('#filters-close').addEventListener('click', () => this.close(true));
    this.search.addEventListener('input', () => this.renderNodes());
    panel.addEventListener('change', (e) => this.onChange(e));
    panel.addEventListener('click', (e) => this.onBulk(e));
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && this.isOpen) this.close(true);
    });
    document.addEventListener('pointerdown', (e) => {
      if (this.isOpen && !panel.contains(e.target) && !toggle.contains(e.target)) this.close();
    });
    this.updateBadge();
  }

  get isOpen() {
    return !this.panel.hidden;
  }

  open() {
    this.panel.hidden = false;
    this.toggle.setAttribute('aria-expanded', 'true');
    this.refresh();
    this.search.focus();
  }

  close(returnFocus) {
    this.panel.hidden = true;
    this.toggle.setAttribute('aria-expanded', 'false');
    if (returnFocus) this.toggle.focus();
  }

  /** The dashboard's nodes, names or endpoints changed. */
  refresh() {
    this.updateBadge();
    if (!this.isOpen) return;
    this.renderNodes();
    this.renderResources();
  }

  renderNodes() {
    const q = this.search.value.trim().toLowerCase();
    const nodes = [...this.dash.nodes.values()]
      .filter((n) => !q || n.name.toLowerCase().includes(q) || n.uid.toLowerCase().includes(q))
      .sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
    const hidden = this.dash.hiddenNodes;
    const items = nodes.slice(0, MAX_LISTED).map((n) => h('li', null,
      h('label', { class: 'check' },
        h('input', { type: 'checkbox', dataset: { nodeFilter: n.uid }, checked: !hidden.has(n.uid) }),
        h('span', { class: 'check-text' },
          h('span', { class: 'check-name' }, n.name),
          n.name !== n.uid ? h('span', { class: 'check-sub' }, n.uid) : null,
          n.gone ? h('span', { class: 'check-sub' }, 'went away') : null))));
    if (!items.length) items.push(h('li', { class: 'muted' }, q ? 'No node matches.' : 'No nodes yet.'));
    this.nodeList.replaceChildren(...items);
    this.more.hidden = nodes.length <= MAX_LISTED;
    setText(this.more, `${nodes.length - MAX_LISTED} more: narrow the search to see them.`);
  }

  renderResources() {
    const hidden = this.dash.hiddenRes;
    const endpoints = [...this.dash.endpoints].sort((a, b) => V.labelOf(a).localeCompare(V.labelOf(b)));
    const items = endpoints.map((ep) => h('li', null,
      h('label', { class: 'check' },
        h('input', { type: 'checkbox', dataset: { resFilter: ep }, checked: !hidden.has(ep) }),
        h('span', { class: 'check-text' },
          h('span', { class: 'check-name' }, V.labelOf(ep)),
          V.labelOf(ep) !== ep ? h('span', { class: 'check-sub' }, ep) : null))));
    if (!items.length) items.push(h('li', { class: 'muted' }, 'No resources yet.'));
    this.resList.replaceChildren(...items);
  }

  onChange(e) {
    const input = e.target;
    if (input.dataset.nodeFilter !== undefined) {
      this.dash.hiddenNodes.toggle(input.dataset.nodeFilter, !input.checked);
      this.dash.applyNodeFilter();
    } else if (input.dataset.resFilter !== undefined) {
      this.dash.hiddenRes.toggle(input.dataset.resFilter, !input.checked);
      this.dash.applyResFilter();
    }
    this.updateBadge();
  }

  onBulk(e) {
    const btn = e.target.closest('[data-bulk]');
    if (!btn) return;
    const [what, show] = btn.dataset.bulk.split(':');
    if (what === 'nodes') {
      const listed = [...this.nodeList.querySelectorAll('input[data-node-filter]')].map((i) => i.dataset.nodeFilter);
      const set = new Set(this.dash.hiddenNodes.set);
      for (const uid of listed) if (show === 'show') set.delete(uid); else set.add(uid);
      this.dash.hiddenNodes.replace([...set]);
      this.dash.applyNodeFilter();
      this.renderNodes();
    } else {
      this.dash.hiddenRes.replace(show === 'show' ? [] : [...this.dash.endpoints]);
      this.dash.applyResFilter();
      this.renderResources();
    }
    this.updateBadge();
  }

  updateBadge() {
    let nodes = 0;
    for (const uid of this.dash.nodes.keys()) if (this.dash.hiddenNodes.has(uid)) nodes++;
    let res = 0;
    for (const ep of this.dash.endpoints) if (this.dash.hiddenRes.has(ep)) res++;
    const n = nodes + res;
    this.badge.hidden = n === 0;
    setText(this.badge, String(n));
    this.badge.title = `${nodes} node${nodes === 1 ? '' : 's'} and ${res} resource${res === 1 ? '' : 's'} hidden`;
  }
}
