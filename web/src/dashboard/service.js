// One service: its open alert incidents (a strip, only when there are some),
// summary, routes with traffic, packages, upstream/downstream, recent changes
// and errors.
import { get } from '../api.js';
import { h, fill, listOf, pick, num, ms, pct, ago, date, timeEl, empty, failure, statusBadge, methodTag, serviceHref, viewHead, nodeKind } from './common.js';
import { changeItem } from './changes.js';
import { openIncidents, incidentStrip } from './incidents.js';

const optional = (p) => p.catch((err) => { if (err.status === 401) throw err; return { __error: err }; });

export async function render(root, ctx) {
  const id = ctx.params.get('id');
  if (!id) {
    fill(root, empty('No service chosen', 'Pick a service from the list.', h('a.btn', { href: '/dashboard/services' }, 'All services')));
    return null;
  }
  const enc = encodeURIComponent(id);
  let svc;
  try {
    svc = await get(`/services/${enc}`);
  } catch (err) {
    if (err.status === 401) throw err;
    fill(root, viewHead('Service'), err.status === 404
      ? empty('Service not found', 'It may have been removed, or it belongs to another account.', h('a.btn', { href: '/dashboard/services' }, 'All services'))
      : failure(err, () => render(root, ctx)));
    return null;
  }
  // GET /services/{id}: {service, routes, dependencies, connections: {incoming, outgoing}, recentChanges}
  const detail = svc;
  svc = detail.service || detail;
  const conn = detail.connections;
  const [up, down, changes, errors, incidents] = await Promise.all([
    conn ? { services: listOf(conn.incoming) } : optional(get(`/graph/dependents/${enc}?depth=1`)),
    conn ? { services: listOf(conn.outgoing) } : optional(get(`/graph/dependencies/${enc}?depth=1`)),
    detail.recentChanges || detail.changes ? { changes: listOf(detail.recentChanges || detail.changes) } : optional(get(`/services/${enc}/changes?limit=20`)),
    optional(get(`/errors?service_id=${enc}&limit=10`)),
    openIncidents(id),
  ]);

  const routes = listOf(detail.routes || svc.routes);
  const deps = listOf(detail.dependencies || svc.dependencies);
  const summary = h('dl.kv',
    h('dt', 'Status'), h('dd', statusBadge(svc.status)),
    h('dt', 'Environment'), h('dd', svc.environment || '—'),
    h('dt', 'Version'), h('dd', svc.version || '—'),
    h('dt', 'Framework'), h('dd', [svc.framework, svc.language].filter(Boolean).join(' · ') || '—'),
    h('dt', 'Runtime'), h('dd', svc.runtime || '—'),
    h('dt', 'First seen'), h('dd', date(pick(svc, 'firstSeen', 'first_seen', 'createdAt'))),
    h('dt', 'Last seen'), h('dd', timeEl(pick(svc, 'lastSeen', 'last_seen'))));

  const routeTable = routes.length === 0 ? empty('No routes reported', 'Routes appear when the plugin analyses the app.') :
    h('div.table-wrap', h('table.data', { 'aria-label': 'Routes' },
      h('thead', h('tr', h('th', 'Route'), h('th.num', 'Requests'), h('th.num', 'p50'), h('th.num', 'p95'), h('th.num', 'p99'), h('th.num', 'Errors'))),
      h('tbody', routes.map((r) => {
        const st = r.stats || r.traffic || r;
        return h('tr', { class: pick(r, 'removedAt', 'removed_at') ? 'revoked' : '' },
          h('td', methodTag(r.method), ' ', h('code', r.path)),
          h('td.num', num(pick(st, 'requestCount', 'requests', 'count', 'callFrequency', 'calls') ?? 0)),
          h('td.num', ms(pick(st, 'p50', 'p50Ms', 'p50_ms', 'avgResponseTimeMs'))),
          h('td.num', ms(pick(st, 'p95', 'p95Ms', 'p95_ms'))),
          h('td.num', ms(pick(st, 'p99', 'p99Ms', 'p99_ms'))),
          h('td.num', pct(pick(st, 'errorRate', 'error_rate'))));
      }))));

  const depTable = deps.length === 0 ? empty('No packages reported') :
    h('div.table-wrap', h('table.data', { 'aria-label': 'Package dependencies' },
      h('thead', h('tr', h('th', 'Package'), h('th', 'Version'), h('th', 'Type'))),
      h('tbody', deps.map((d) => h('tr', h('td', h('code', pick(d, 'packageName', 'package_name', 'name'))),
        h('td', d.version || '—'), h('td', pick(d, 'dependencyType', 'dependency_type', 'type') || '—'))))));

  const neighbours = (res, label) => {
    if (res && res.__error) return h('p.muted', `${label} unavailable: ${res.__error.message}`);
    const nid = (n) => n.serviceId ?? n.id ?? n.service_id;
    const list = listOf(res, 'services', 'nodes', 'dependents', 'dependencies').filter((n) => nid(n) !== id);
    if (list.length === 0) return h('p.muted', `No ${label.toLowerCase()} services seen.`);
    return h('ul.list-plain', list.map((n) => h('li',
      nodeKind(n) !== 'service' ? h('span', n.name, ' ', h('span.badge', { class: `badge-${nodeKind(n)}` }, nodeKind(n))) : h('a', { href: serviceHref(nid(n)) }, n.name ?? nid(n)),
      n.environment ? h('span.muted', ` · ${n.environment}`) : null,
      n.requestCount != null ? h('span.muted', ` · ${num(n.requestCount)} calls · p95 ${ms(n.p95Ms)} · ${pct(n.errorRate)} errors`) : null)));
  };

  const changeList = changes && changes.__error ? h('p.muted', `Changes unavailable: ${changes.__error.message}`)
    : listOf(changes, 'changes').length === 0 ? h('p.muted', 'Nothing has changed since the service first reported.')
      : h('ul.timeline', listOf(changes, 'changes').slice(0, 20).map(changeItem));

  const errList = errors && errors.__error ? h('p.muted', `Errors unavailable: ${errors.__error.message}`)
    : listOf(errors, 'errors', 'groups').length === 0 ? h('p.muted', 'No errors reported.')
      : h('ul.list-plain', listOf(errors, 'errors', 'groups').map((e) => h('li',
        h('strong', pick(e, 'errorType', 'error_type', 'type') || 'Error'), ': ', e.message || '',
        h('span.muted', ` · ${num(pick(e, 'occurrenceCount', 'count', 'occurrences') ?? 1)}× · last ${ago(pick(e, 'lastSeen', 'last_seen', 'timestamp'))}`))));

  fill(root, 
    h('p.crumbs', h('a', { href: '/dashboard/services' }, 'Services'), ' / ', svc.name),
    viewHead(svc.name, h('a.btn', { href: `/dashboard/graph?focus=${enc}` }, 'Show in graph'),
      h('a.btn', { href: `/dashboard/graph?impact=${enc}` }, 'Impact')),
    incidentStrip(incidents),
    h('div.panel-grid',
      h('section.panel', h('h2', 'Summary'), summary),
      h('section.panel', h('h2', 'Called by (upstream)'), neighbours(up, 'Upstream'),
        h('h2', 'Calls (downstream)'), neighbours(down, 'Downstream'))),
    h('section.panel', h('h2', 'Routes ', h('span.badge', num(routes.length))), routeTable),
    h('div.panel-grid',
      h('section.panel', h('h2', 'Packages ', h('span.badge', num(deps.length))), depTable),
      h('section.panel', h('h2', 'Recent changes'), changeList)),
    h('section.panel', h('h2', 'Errors'), errList));
  return null;
}
