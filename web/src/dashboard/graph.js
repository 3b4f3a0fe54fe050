// The network graph: Cytoscape.js with layered (dagre) and force (fcose)
// layouts; nodes by status and type, edges weighted by calls and coloured by
// error rate; environment filter, search-to-highlight, detail panel, impact
// mode (blast radius with distances), cycles, a focal view with depth control
// for large graphs, live updates (Server-Sent Events, live.js), and a red
// ring on services with an open alert incident (one GET, refreshed slowly).
// Nodes by kind: services (circles), external callers (diamonds), databases
// (barrels) and messaging queues (tags); only services have a page.
import cytoscape from 'cytoscape';
import dagre from 'cytoscape-dagre';
import fcose from 'cytoscape-fcose';
import { get } from '../api.js';
import { h, fill, listOf, pick, num, pct, ago, failure, viewHead, serviceHref, statusBadge, isMissingRoute, poll, nodeKind, isExternalKind } from './common.js';
import { onGraphChange } from './live.js';
import { openIncidents, incidentServiceIds, ruleName } from './incidents.js';

cytoscape.use(dagre);
cytoscape.use(fcose);

// Cytoscape inserts a <style> element (blocked by our CSP) unless an element
// with this id exists; the rule it would add is in dashboard.css.
function preventInlineStylesheet() {
  const id = '__________cytoscape_stylesheet';
  if (!document.getElementById(id)) document.head.append(Object.assign(document.createElement('meta'), { id, name: 'cytoscape-stylesheet' }));
}

// Above this many nodes the page opens on a focal view instead of everything.
export const FULL_GRAPH_LIMIT = 300;

const sid = (x) => String(x);
export function normalise(d) {
  const nodes = listOf(d, 'nodes', 'services').map((n) => {
    const kind = nodeKind(n);
    return {
      id: sid(n.id ?? n.service_id ?? n.name),
      name: n.name ?? n.label ?? String(n.id),
      environment: n.environment ?? null,
      status: String(n.status ?? 'active').toLowerCase(),
      kind,
      external: isExternalKind(kind),
      raw: n,
    };
  });
  const edges = listOf(d, 'edges', 'connections', 'links').map((e) => {
    const calls = Number(pick(e, 'calls', 'count', 'callCount', 'call_count', 'requests') ?? 0);
    const errors = Number(pick(e, 'errors', 'errorCount', 'error_count') ?? 0);
    // /graph gives error_rate as a fraction; percentages elsewhere are errorRate
    const frac = pick(e, 'error_rate');
    const rate = frac != null ? 100 * Number(frac) : pick(e, 'errorRate');
    return {
      source: sid(pick(e, 'source', 'from', 'sourceId', 'source_id', 'caller', 'caller_id')),
      target: sid(pick(e, 'target', 'to', 'targetId', 'target_id', 'callee', 'callee_id')),
      calls, errors,
      errorRate: rate != null ? Number(rate) : (calls ? (100 * errors) / calls : 0),
      p95: pick(e, 'p95', 'p95Ms', 'p95_ms', 'latencyP95'),
      lastSeen: pick(e, 'lastSeen', 'last_seen'),
      kind: pick(e, 'kind', 'type') || 'observed',
    };
  });
  const ids = new Set(nodes.map((n) => n.id));
  // a caller we only know from edges is an external node
  for (const e of edges) for (const end of [e.source, e.target]) {
    if (!ids.has(end)) { ids.add(end); nodes.push({ id: end, name: end, environment: null, status: 'external', kind: 'external', external: true, raw: {} }); }
  }
  return { nodes, edges, version: pick(d, 'version', 'graph_version', 'graphVersion') };
}

function errColour(rate) {
  if (rate >= 5) return '#ef4444';
  if (rate >= 1) return '#f59e0b';
  return '#64748b';
}

// breadth-first distances from `start` along `adj` (Map id -> [ids]) to maxDepth
export function bfs(adj, start, maxDepth = Infinity) {
  const dist = new Map([[start, 0]]);
  let frontier = [start];
  for (let d = 1; frontier.length && d <= maxDepth; d++) {
    const next = [];
    for (const u of frontier) for (const v of adj.get(u) || []) if (!dist.has(v)) { dist.set(v, d); next.push(v); }
    frontier = next;
  }
  return dist;
}

const STYLE = [
  { selector: 'node', style: {
    label: 'data(name)', 'font-size': 11, color: '#e2e8f0', 'text-valign': 'bottom', 'text-margin-y': 4,
    'background-color': '#6366f1', width: 'data(size)', height: 'data(size)', 'border-width': 2, 'border-color': '#a5b4fc',
    'text-outline-color': '#0b1020', 'text-outline-width': 2, 'min-zoomed-font-size': 7 } },
  { selector: 'node[status = "inactive"]', style: { 'background-color': '#475569', 'border-color': '#64748b', color: '#94a3b8' } },
  { selector: 'node[?external]', style: { shape: 'round-diamond', 'background-color': '#0ea5e9', 'border-color': '#7dd3fc' } },
  // a database stands taller than wide, so the barrel reads as a cylinder
  { selector: 'node[kind = "database"]', style: { shape: 'barrel', height: (n) => Math.round(1.3 * n.data('size')), 'background-color': '#14b8a6', 'border-color': '#5eead4' } },
  { selector: 'node[kind = "queue"]', style: { shape: 'tag', 'background-color': '#d946ef', 'border-color': '#f0abfc' } },
  { selector: 'edge', style: {
    width: 'data(w)', 'line-color': 'data(colour)', 'target-arrow-color': 'data(colour)', 'target-arrow-shape': 'triangle',
    'curve-style': 'bezier', 'arrow-scale': 0.8, opacity: 0.85 } },
  { selector: '.faded', style: { opacity: 0.12 } },
  { selector: 'node.match', style: { 'border-color': '#fde047', 'border-width': 4, color: '#fde047' } },
  { selector: 'node:selected', style: { 'border-color': '#ffffff', 'border-width': 4 } },
  { selector: 'node.focus', style: { 'border-color': '#ffffff', 'border-width': 4 } },
  { selector: 'node.impact-root', style: { 'background-color': '#ef4444', 'border-color': '#fecaca', 'border-width': 4 } },
  { selector: 'node.impacted', style: { 'background-color': '#f59e0b', 'border-color': '#fde68a', label: 'data(impactLabel)', color: '#fde68a' } },
  { selector: 'edge.impacted', style: { 'line-color': '#f59e0b', 'target-arrow-color': '#f59e0b', opacity: 1 } },
  { selector: 'edge.cycle', style: { 'line-color': '#ef4444', 'target-arrow-color': '#ef4444', 'line-style': 'dashed', opacity: 1 } },
  { selector: 'node.cycle', style: { 'border-color': '#ef4444', 'border-width': 3 } },
  // an open alert incident: a ring outside the border, whatever else marks the node
  { selector: 'node.incident', style: { 'outline-width': 4, 'outline-color': '#ef4444', 'outline-offset': 3, 'outline-opacity': 1 } },
];

// the detail panel's badge, and a line on what such a node is
const KIND_LABEL = { external: 'external caller', database: 'database', queue: 'queue' };
const KIND_NOTE = {
  database: 'A database your services call, seen in their traces. It has no page of its own.',
  queue: 'A messaging destination your services publish to or consume from, seen in their traces.',
};

export async function render(root, ctx) {
  const params = ctx.params;
  const state = {
    layout: ['force', 'rings'].includes(params.get('layout')) ? params.get('layout') : 'layered',
    layoutChosen: params.has('layout'),
    env: params.get('environment') || '',
    depth: Number(params.get('depth')) || 2,
    focus: params.get('focus') || null,
    impactRoot: params.get('impact') || null,
    showCycles: false,
    all: null, // normalised full graph
  };
  let cy = null;
  let cycles = null;

  const canvas = h('div.graph-canvas', { 'aria-label': 'Dependency graph', role: 'application', tabindex: '0' });
  const overlay = h('div.state-box', { role: 'status' }, h('span.spinner'), ' Loading the graph…');
  const stats = h('div.graph-stats', { 'aria-live': 'polite' });
  const legend = h('div.graph-legend', h('span.lg-active', 'active'), h('span.lg-inactive', 'inactive'), h('span.lg-external', 'external caller'),
    h('span.lg-database', 'database'), h('span.lg-queue', 'queue'),
    h('span.lg-impact', 'impacted'), h('span.lg-cycle', 'cycle'), h('span.lg-incident', 'open incident'));
  const box = h('div.graph-box', canvas, stats, legend, overlay);

  const seg = (value, label) => h('button', { type: 'button', 'aria-pressed': String(state.layout === value), 'data-layout': value,
    onclick: () => { state.layout = value; for (const b of segBox.children) b.setAttribute('aria-pressed', String(b.dataset.layout === value)); runLayout(); } }, label);
  const segBox = h('div.segmented', { role: 'group', 'aria-label': 'Layout' }, seg('layered', 'Layered'), seg('force', 'Force'), seg('rings', 'Rings'));
  segBox.addEventListener('click', () => { state.layoutChosen = true; });
  const envSel = h('select', { id: 'g-env' });
  const search = h('input', { id: 'g-search', type: 'search', placeholder: 'Highlight services…' });
  const depthSel = h('select', { id: 'g-depth' }, [1, 2, 3, 4, 5].map((d) => h('option', { value: d }, `${d} hop${d > 1 ? 's' : ''}`)), h('option', { value: 0 }, 'Whole graph'));
  depthSel.value = String(state.depth);
  const impactBtn = h('button.btn', { type: 'button', 'aria-pressed': 'false', id: 'impact-toggle' }, 'Impact mode');
  const cyclesBtn = h('button.btn', { type: 'button', 'aria-pressed': 'false', id: 'cycles-toggle' }, 'Show cycles');
  const fitBtn = h('button.btn', { type: 'button', onclick: () => cy && cy.fit(undefined, 30) }, 'Fit');
  const toolbar = h('div.toolbar',
    h('div.field', h('span.visually-hidden', 'Layout'), segBox),
    h('div.field', h('label', { for: 'g-env' }, 'Environment'), envSel),
    h('div.field.grow', h('label', { for: 'g-search' }, 'Search'), search),
    h('div.field', h('label', { for: 'g-depth' }, 'Focus depth'), depthSel),
    impactBtn, cyclesBtn, fitBtn);
  const detail = h('section.panel', { 'aria-live': 'polite', id: 'graph-detail' }, h('h2', 'Details'), h('p.muted', 'Click a service to see it here.'));
  const impactPanel = h('section.panel', { id: 'impact-panel', hidden: true });
  const cyclePanel = h('section.panel', { id: 'cycle-panel', hidden: true });
  fill(root, viewHead('Network graph'), toolbar,
    h('div.graph-layout', box, h('div.side-panel', detail, impactPanel, cyclePanel)));

  // ----- data -> elements ---------------------------------------------------
  function visible() {
    const g = state.all;
    let nodes = g.nodes.filter((n) => !state.env || n.environment === state.env || n.external);
    let ids = new Set(nodes.map((n) => n.id));
    let edges = g.edges.filter((e) => ids.has(e.source) && ids.has(e.target));
    const large = nodes.length > FULL_GRAPH_LIMIT;
    if (state.focus || (large && state.depth !== 0) || (large && !state.focus)) {
      if (!state.focus || !ids.has(state.focus)) {
        // the busiest service is a sensible first focus
        const deg = new Map();
        for (const e of edges) { deg.set(e.source, (deg.get(e.source) || 0) + 1); deg.set(e.target, (deg.get(e.target) || 0) + 1); }
        state.focus = [...deg.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? nodes[0]?.id ?? null;
      }
      if (state.focus && (state.depth !== 0 || large)) {
        const und = new Map();
        for (const e of edges) {
          if (!und.has(e.source)) und.set(e.source, []); if (!und.has(e.target)) und.set(e.target, []);
          und.get(e.source).push(e.target); und.get(e.target).push(e.source);
        }
        const dist = bfs(und, state.focus, state.depth || (large ? 2 : Infinity));
        state.rings = dist;
        nodes = nodes.filter((n) => dist.has(n.id)).slice(0, 2000);
        ids = new Set(nodes.map((n) => n.id));
        edges = edges.filter((e) => ids.has(e.source) && ids.has(e.target));
      }
    }
    return { nodes, edges, large };
  }

  function elements(v) {
    const deg = new Map();
    for (const e of v.edges) { deg.set(e.source, (deg.get(e.source) || 0) + 1); deg.set(e.target, (deg.get(e.target) || 0) + 1); }
    const maxCalls = Math.max(1, ...v.edges.map((e) => e.calls));
    return [
      ...v.nodes.map((n) => ({ group: 'nodes', data: { id: n.id, name: n.name, status: n.status, external: n.external, kind: n.kind,
        environment: n.environment, size: 18 + Math.min(22, 3 * Math.sqrt(deg.get(n.id) || 0)) } })),
      ...v.edges.map((e) => ({ group: 'edges', data: { id: `${e.source}->${e.target}`, source: e.source, target: e.target,
        calls: e.calls, errorRate: e.errorRate, w: 1 + 5 * Math.log1p(e.calls) / Math.log1p(maxCalls), colour: errColour(e.errorRate) } })),
    ];
  }

  function layoutOptions(n) {
    // a focal view of a large graph: rings by distance from the focus (instant)
    if (state.layout === 'rings' && state.rings) {
      const far = Math.max(...state.rings.values());
      return { name: 'concentric', concentric: (node) => far - (state.rings.get(node.id()) ?? far), levelWidth: () => 1,
        minNodeSpacing: 12, animate: false, fit: true, padding: 30 };
    }
    if (state.layout === 'force') {
      return { name: 'fcose', quality: n > 400 ? 'draft' : 'default', animate: false, randomize: true, nodeRepulsion: 6000,
        idealEdgeLength: 90, numIter: n > 400 ? 1000 : 2500, fit: true, padding: 30 };
    }
    return { name: 'dagre', rankDir: 'LR', nodeSep: 18, rankSep: 90, edgeSep: 6, animate: false, fit: true, padding: 30 };
  }

  function runLayout() {
    if (!cy || cy.nodes().length === 0) return;
    cy.layout(layoutOptions(cy.nodes().length)).run();
  }

  function draw() {
    state.rings = null;
    const v = visible();
    // large graphs open on rings around the focus unless a layout was chosen
    if (!state.layoutChosen && v.large && state.layout !== 'rings') {
      state.layout = 'rings';
      for (const b of segBox.children) b.setAttribute('aria-pressed', String(b.dataset.layout === 'rings'));
    }
    const els = elements(v);
    if (!cy) {
      preventInlineStylesheet();
      cy = cytoscape({ container: canvas, elements: els, style: STYLE, wheelSensitivity: 0.3, minZoom: 0.05, maxZoom: 3,
        textureOnViewport: v.nodes.length > 200, hideEdgesOnViewport: v.edges.length > 1500, pixelRatio: 1, boxSelectionEnabled: false });
      cy.on('tap', 'node', (ev) => select(ev.target.id()));
      cy.on('tap', (ev) => { if (ev.target === cy) clearSelection(); });
    } else {
      // live update: keep what did not change so the view does not jump
      const want = new Map(els.map((e) => [e.data.id, e]));
      cy.batch(() => {
        cy.elements().forEach((el) => { if (!want.has(el.id())) el.remove(); });
        const added = [];
        for (const [id, e] of want) { const ex = cy.getElementById(id); if (ex.nonempty()) ex.data(e.data); else added.push(e); }
        if (added.length) cy.add(added);
        state.needLayout = added.length > 0;
      });
    }
    if (!cy.__laidOut || state.needLayout) { runLayout(); cy.__laidOut = true; state.needLayout = false; }
    cy.nodes().removeClass('focus');
    if (state.focus && (v.large || state.depth !== 0 || params.get('focus'))) cy.getElementById(state.focus).addClass('focus');
    overlay.hidden = true;
    box.dataset.nodes = String(cy.nodes().length);
    box.dataset.edges = String(cy.edges().length);
    if (v.nodes.length === 0) {
      overlay.hidden = false;
      fill(overlay, h('div', h('h2', 'Nothing to draw yet'), h('p', state.all.nodes.length ? 'No service in this environment.' : 'Services and the calls between them appear here as your plugins report them.'),
        state.all.nodes.length ? null : h('a.btn.btn-primary', { href: '/dashboard/onboarding' }, 'Connect a service')));
    }
    stats.textContent = `${num(v.nodes.length)} of ${num(state.all.nodes.length)} services · ${num(v.edges.length)} connections${v.large ? ' · focal view' : ''}`;
    applySearch();
    if (state.showCycles) markCycles();
    if (state.impactRoot) applyImpact(state.impactRootData);
    markIncidents();
  }

  // ----- open incidents -------------------------------------------------------
  let incidents = [];
  let incidentIds = new Set();
  function markIncidents() {
    if (!cy) return;
    cy.batch(() => {
      cy.nodes('.incident').removeClass('incident');
      for (const id of incidentIds) cy.getElementById(id).addClass('incident');
    });
    box.dataset.incidents = cy.nodes('.incident').map((n) => n.id()).sort().join(' ');
  }
  async function loadIncidents() {
    incidents = await openIncidents();
    incidentIds = incidentServiceIds(incidents);
    markIncidents();
  }
  const incidentsOf = (id) => incidents.filter((i) => i.subject && (String(i.subject.service_id) === id || String(i.subject.target_id) === id));

  // ----- detail panel ---------------------------------------------------------
  function select(id) {
    const n = state.all.nodes.find((x) => x.id === id);
    if (!n) return;
    if (impactBtn.getAttribute('aria-pressed') === 'true') { showImpact(id); return; }
    const out = state.all.edges.filter((e) => e.source === id);
    const inc = state.all.edges.filter((e) => e.target === id);
    const name = (x) => state.all.nodes.find((m) => m.id === x)?.name ?? x;
    const edgeRow = (e, other) => h('li', h('a', { href: '#', onclick: (ev) => { ev.preventDefault(); select(other); cy.getElementById(other).select(); } }, name(other)),
      h('span.muted', ` · ${num(e.calls)} calls · ${pct(e.errorRate)} errors`));
    fill(detail, h('h2', n.name), n.external ? h('p', h('span.badge', { class: `badge-${n.kind}`, 'data-kind': n.kind }, KIND_LABEL[n.kind])) : h('p', statusBadge(n.status), ' ', n.environment ? h('span.badge.badge-brand', n.environment) : null),
      KIND_NOTE[n.kind] ? h('p.muted', KIND_NOTE[n.kind]) : null,
      n.raw && (n.raw.lastSeen || n.raw.last_seen) ? h('p.muted', `Last seen ${ago(n.raw.lastSeen || n.raw.last_seen)}`) : null,
      incidentsOf(id).length ? h('div.alert.alert-error.graph-incidents', { 'data-incidents': String(incidentsOf(id).length) },
        h('strong', 'Open incidents: '), h('ul.list-plain', incidentsOf(id).map((i) => h('li', `${ruleName(i.rule)}: ${i.summary || ''}`))),
        h('a', { href: '/dashboard/alerts' }, 'See in Alerts')) : null,
      h('h3', `Calls (${inc.length ? out.length : out.length})`), out.length ? h('ul.list-plain', out.map((e) => edgeRow(e, e.target))) : h('p.muted', 'None.'),
      h('h3', `Called by (${inc.length})`), inc.length ? h('ul.list-plain', inc.map((e) => edgeRow(e, e.source))) : h('p.muted', 'None.'),
      h('div.toolbar', n.external ? null : h('a.btn.btn-small', { href: serviceHref(id) }, 'Open service'),
        h('button.btn.btn-small', { type: 'button', onclick: () => showImpact(id) }, 'Show impact'),
        h('button.btn.btn-small', { type: 'button', onclick: () => { state.focus = id; if (depthSel.value === '0') depthSel.value = '2'; state.depth = Number(depthSel.value); draw(); } }, 'Focus here')));
  }

  function clearSelection() {
    if (state.impactRoot) { state.impactRoot = null; state.impactRootData = null; cy.elements().removeClass('impacted impact-root faded'); impactPanel.hidden = true; }
  }

  // ----- search ---------------------------------------------------------------
  function applySearch() {
    if (!cy) return;
    const q = search.value.trim().toLowerCase();
    cy.batch(() => {
      cy.nodes().removeClass('match');
      if (!state.impactRoot) cy.elements().removeClass('faded');
      if (!q) return;
      const hits = cy.nodes().filter((n) => String(n.data('name')).toLowerCase().includes(q));
      hits.addClass('match');
      if (!state.impactRoot) cy.elements().not(hits).not(hits.connectedEdges()).addClass('faded');
    });
  }

  // ----- impact -----------------------------------------------------------------
  async function showImpact(id) {
    state.impactRoot = id;
    impactPanel.hidden = false;
    fill(impactPanel, h('h2', 'Impact'), h('p', h('span.spinner'), ' Computing the blast radius…'));
    let list; let source = 'api';
    try {
      const d = await get(`/services/${encodeURIComponent(id)}/impact`);
      list = listOf(d, 'impacted', 'services', 'dependents', 'nodes').map((x) => ({ id: sid(x.id ?? x.service_id), name: x.name, distance: Number(pick(x, 'distance', 'depth', 'hops') ?? 1) }))
        .filter((x) => x.id !== id);
    } catch (err) {
      if (err.status === 401) throw err;
      if (!isMissingRoute(err)) { fill(impactPanel, h('h2', 'Impact'), failure(err, () => showImpact(id))); return; }
      // route not on this server: walk the same graph here (callers of callers)
      const rev = new Map();
      for (const e of state.all.edges) { if (!rev.has(e.target)) rev.set(e.target, []); rev.get(e.target).push(e.source); }
      list = [...bfs(rev, id)].filter(([k]) => k !== id).map(([k, dist]) => ({ id: k, distance: dist }));
      source = 'local';
    }
    if (state.impactRoot !== id) return;
    // the blast radius may reach beyond the focal view: widen it
    const missing = list.some((x) => cy.getElementById(x.id).empty());
    state.impactRootData = { id, list };
    if (missing && state.all.nodes.length <= FULL_GRAPH_LIMIT) { state.focus = null; state.depth = 0; depthSel.value = '0'; draw(); } else applyImpact(state.impactRootData);
    const name = (x) => x.name ?? state.all.nodes.find((m) => m.id === x.id)?.name ?? x.id;
    const root0 = state.all.nodes.find((m) => m.id === id);
    fill(impactPanel, h('h2', `Impact of ${root0 ? root0.name : id}`),
      h('p', { id: 'impact-summary' }, list.length ? `${list.length} service${list.length > 1 ? 's depend' : ' depends'} on it, directly or through others.` : 'Nothing depends on it.'),
      list.length ? h('ul.list-plain.impact-list', list.sort((a, b) => a.distance - b.distance || String(name(a)).localeCompare(name(b)))
        .map((x) => h('li', { 'data-impacted': name(x) }, h('span', name(x)), h('span.badge.badge-warn', `${x.distance} hop${x.distance > 1 ? 's' : ''}`)))) : null,
      source === 'local' ? h('p.muted', 'Computed in the browser from the graph.') : null,
      h('button.btn.btn-small', { type: 'button', onclick: clearSelection }, 'Clear'));
  }

  function applyImpact(data) {
    if (!cy || !data) return;
    const dist = new Map(data.list.map((x) => [x.id, x.distance]));
    cy.batch(() => {
      cy.elements().removeClass('impacted impact-root faded');
      cy.elements().addClass('faded');
      const rootNode = cy.getElementById(data.id).removeClass('faded').addClass('impact-root');
      for (const [k, d] of dist) {
        const n = cy.getElementById(k);
        if (n.empty()) continue;
        n.data('impactLabel', `${n.data('name')} (${d})`);
        n.removeClass('faded').addClass('impacted');
      }
      cy.edges().forEach((e) => {
        const s = e.source().id(); const t = e.target().id();
        if (dist.has(s) && (dist.has(t) || t === data.id)) e.removeClass('faded').addClass('impacted');
      });
      void rootNode;
    });
  }

  // ----- cycles -----------------------------------------------------------------
  async function markCycles() {
    if (!cycles) {
      try {
        const d = await get('/graph/cycles');
        cycles = listOf(d, 'cycles', 'components').map((c) => (Array.isArray(c) ? c : listOf(c, 'services', 'nodes', 'members')).map((x) => sid(typeof x === 'object' ? (x.id ?? x.service_id) : x)));
      } catch (err) {
        if (err.status === 401) throw err;
        cyclePanel.hidden = false;
        fill(cyclePanel, h('h2', 'Cycles'), failure(err, markCycles));
        return;
      }
    }
    const name = (x) => state.all.nodes.find((m) => m.id === x)?.name ?? x;
    cy.batch(() => {
      cy.elements().removeClass('cycle');
      for (const c of cycles) {
        const set = new Set(c);
        cy.edges().forEach((e) => { if (set.has(e.source().id()) && set.has(e.target().id())) e.addClass('cycle'); });
        for (const id of c) cy.getElementById(id).addClass('cycle');
      }
    });
    cyclePanel.hidden = false;
    fill(cyclePanel, h('h2', 'Cycles'), ...(cycles.length === 0 ? [ h('p', { id: 'cycle-summary' }, 'No circular dependencies.')]
      : [h('p', { id: 'cycle-summary' }, `${cycles.length} circular dependenc${cycles.length > 1 ? 'ies' : 'y'}:`),
        h('ul.list-plain', cycles.map((c) => h('li', [...c.map(name), name(c[0])].join(' → '))))]));
  }

  impactBtn.addEventListener('click', () => {
    const on = impactBtn.getAttribute('aria-pressed') !== 'true';
    impactBtn.setAttribute('aria-pressed', String(on));
    impactBtn.classList.toggle('btn-primary', on);
    if (!on) clearSelection();
    else if (!state.impactRoot) { impactPanel.hidden = false; fill(impactPanel, h('h2', 'Impact mode'), h('p', 'Click a service to light up everything that depends on it.')); }
  });
  cyclesBtn.addEventListener('click', () => {
    state.showCycles = !state.showCycles;
    cyclesBtn.setAttribute('aria-pressed', String(state.showCycles));
    cyclesBtn.classList.toggle('btn-primary', state.showCycles);
    if (state.showCycles) markCycles(); else { cy.elements().removeClass('cycle'); cyclePanel.hidden = true; }
  });
  envSel.addEventListener('change', () => { state.env = envSel.value; draw(); });
  depthSel.addEventListener('change', () => { state.depth = Number(depthSel.value); if (state.depth === 0 && state.all.nodes.length <= FULL_GRAPH_LIMIT) state.focus = null; draw(); });
  search.addEventListener('input', applySearch);
  search.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Enter') return;
    ev.preventDefault();
    const q = search.value.trim().toLowerCase();
    const hit = state.all.nodes.find((n) => n.name.toLowerCase().includes(q));
    if (!hit) return;
    if (cy.getElementById(hit.id).empty()) { state.focus = hit.id; draw(); }
    cy.animate({ center: { eles: cy.getElementById(hit.id) }, zoom: 1.2 }, { duration: 250 });
    select(hit.id);
  });

  let signature = '';
  async function load() {
    const d = await get('/graph');  // whole graph; the environment filter is applied here
    const g = normalise(d);
    const sig = g.version != null ? `v${g.version}` : `${g.nodes.length}:${g.edges.length}:${g.edges.reduce((a, e) => a + e.calls, 0)}:${g.nodes.map((n) => n.id + n.status).join(',')}`;
    if (sig === signature) return;
    signature = sig;
    state.all = g;
    cycles = null;
    const envs = [...new Set(g.nodes.map((n) => n.environment).filter(Boolean))].sort();
    const keep = envSel.value || state.env;
    fill(envSel, h('option', { value: '' }, 'All environments'), envs.map((e) => h('option', { value: e }, e)));
    envSel.value = envs.includes(keep) ? keep : '';
    state.env = envSel.value;
    draw();
    box.dataset.ready = 'true';
  }

  try {
    await Promise.all([load(), loadIncidents()]);
  } catch (err) {
    if (err.status === 401) throw err;
    fill(overlay, failure(err, () => render(root, ctx)));
    return () => cy && cy.destroy();
  }
  if (state.impactRoot) { impactBtn.click(); showImpact(state.impactRoot); }
  // redrawn when the graph changes (GET /api/v1/events), one load at a time
  let loading = null;
  let again = false;
  const reload = async () => {
    if (loading) { again = true; return; }
    loading = load().catch(() => { /* the next change or poll tries again */ });
    await loading;
    loading = null;
    if (again) { again = false; reload(); }
  };
  const stop = onGraphChange((change) => {
    if (change.version != null && String(change.version) === String(state.all?.version)) return;
    reload();
  }, { every: 30000 });
  // incidents open and resolve on the alert tick (a minute): a slow refresh is enough
  const stopIncidents = poll(loadIncidents, 60000);
  return () => { stop(); stopIncidents(); if (cy) cy.destroy(); };
}
