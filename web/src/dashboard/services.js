// Services overview: stat tiles, filters and search, a card per service.
// Refreshes itself so a new service appears without a reload.  Registered
// services only: GET /services leaves external nodes out, and with them
// databases and queues (external too); one sent anyway is not listed.
import { h, fill, allServices, pick, num, ago, timeEl, poll, empty, failure, statusBadge, serviceHref, viewHead, nodeKind } from './common.js';

const routesOf = (s) => pick(s, 'routeCount', 'routesCount', 'route_count', 'routes_count') ?? (Array.isArray(s.routes) ? s.routes.length : null);
const depsOf = (s) => pick(s, 'dependencyCount', 'dependenciesCount', 'dependency_count', 'dependencies_count') ?? (Array.isArray(s.dependencies) ? s.dependencies.length : null);
const lastSeen = (s) => pick(s, 'lastSeen', 'last_seen', 'updatedAt');

export async function render(root, ctx) {
  const state = { q: ctx.params.get('q') || '', env: ctx.params.get('environment') || '', status: '', framework: '' };
  let services = [];

  const search = h('input', { id: 'svc-search', type: 'search', placeholder: 'Name, framework, version…', value: state.q });
  const envSel = h('select', { id: 'svc-env' });
  const statusSel = h('select', { id: 'svc-status' }, h('option', { value: '' }, 'Any status'),
    h('option', { value: 'active' }, 'Active'), h('option', { value: 'inactive' }, 'Inactive'));
  const fwSel = h('select', { id: 'svc-fw' });
  const tiles = h('div.tiles', { 'aria-label': 'Summary' });
  const grid = h('div');
  const count = h('p.muted', { role: 'status' });

  const toolbar = h('form.toolbar', { role: 'search', onsubmit: (e) => e.preventDefault() },
    h('div.field.grow', h('label', { for: 'svc-search' }, 'Search'), search),
    h('div.field', h('label', { for: 'svc-env' }, 'Environment'), envSel),
    h('div.field', h('label', { for: 'svc-status' }, 'Status'), statusSel),
    h('div.field', h('label', { for: 'svc-fw' }, 'Framework'), fwSel));

  function options(sel, label, values, current) {
    const keep = sel.value || current;
    fill(sel, h('option', { value: '' }, label), ...values.map((v) => h('option', { value: v }, v)));
    sel.value = values.includes(keep) ? keep : '';
  }

  function tile(label, value, cls) {
    return h('div.tile', h('div.label', label), h('div.value', { class: cls || '' }, value));
  }

  function draw() {
    const envs = [...new Set(services.map((s) => s.environment).filter(Boolean))].sort();
    const fws = [...new Set(services.map((s) => s.framework).filter(Boolean))].sort();
    options(envSel, 'All environments', envs, state.env);
    options(fwSel, 'All frameworks', fws, state.framework);
    const active = services.filter((s) => String(s.status).toLowerCase() === 'active').length;
    const routes = services.reduce((a, s) => a + (Number(routesOf(s)) || 0), 0);
    const deps = services.reduce((a, s) => a + (Number(depsOf(s)) || 0), 0);
    fill(tiles, tile('Services', num(services.length)), tile('Active', num(active), 'ok'),
      tile('Inactive', num(services.length - active)), tile('Routes', num(routes)), tile('Dependencies', num(deps)),
      tile('Environments', num(envs.length)));

    const q = search.value.trim().toLowerCase();
    const shown = services.filter((s) =>
      (!envSel.value || s.environment === envSel.value) &&
      (!statusSel.value || String(s.status).toLowerCase() === statusSel.value) &&
      (!fwSel.value || s.framework === fwSel.value) &&
      (!q || [s.name, s.framework, s.language, s.version, s.environment].some((v) => v && String(v).toLowerCase().includes(q))));

    if (services.length === 0) {
      fill(grid, empty('No services yet', 'Connect your first service with an API key and the plugin; it appears here on its own.',
        h('a.btn.btn-primary', { href: '/dashboard/onboarding' }, 'Get started')));
      count.textContent = '';
      return;
    }
    count.textContent = `${shown.length} of ${services.length} services`;
    if (shown.length === 0) {
      fill(grid, empty('No service matches', 'Change the search or the filters.'));
      return;
    }
    fill(grid, h('div.svc-grid', shown.map(card)));
  }

  function card(s) {
    return h('a.svc-card', { href: serviceHref(s.id), 'data-service': s.name },
      h('div.top', h('h2', s.name), statusBadge(s.status)),
      h('div.meta', s.environment ? h('span.badge.badge-brand', s.environment) : null,
        s.version ? h('span.badge', `v${s.version}`) : null,
        s.framework ? h('span.badge', s.framework) : null, s.language ? h('span.badge', s.language) : null),
      h('div.nums', h('span', h('strong', num(routesOf(s))), ' routes'), h('span', h('strong', num(depsOf(s))), ' dependencies')),
      h('div.seen', 'Last seen ', timeEl(lastSeen(s), ago(lastSeen(s)))));
  }

  async function load() {
    services = (await allServices()).filter((s) => nodeKind(s) === 'service').sort((a, b) => String(a.name).localeCompare(String(b.name)));
    draw();
  }

  for (const el of [envSel, statusSel, fwSel]) el.addEventListener('change', draw);
  search.addEventListener('input', draw);

  fill(root, viewHead('Services', h('a.btn', { href: '/dashboard/graph' }, 'Open graph')), tiles, toolbar, count, grid);
  try {
    await load();
  } catch (err) {
    if (err.status === 401) throw err;
    fill(root, viewHead('Services'), failure(err, () => ctx.navigate(location.pathname + location.search, { replace: true })));
    return null;
  }
  return poll(load, 5000);
}
