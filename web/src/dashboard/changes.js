// The timeline of what changed: routes, versions, packages, edges.
import { get } from '../api.js';
import { h, fill, listOf, allServices, pick, date, timeEl, empty, failure, viewHead, serviceHref } from './common.js';

const kindLabel = (c) => String(pick(c, 'kind', 'type', 'changeType', 'change_type') || 'change').replace(/[_.]/g, ' ');

function describe(c) {
  const text = pick(c, 'summary', 'description', 'message');
  if (text) return text;
  const before = pick(c, 'before', 'old', 'oldValue', 'old_value');
  const after = pick(c, 'after', 'new', 'newValue', 'new_value');
  const what = pick(c, 'subject', 'target', 'path', 'name') || '';
  const fmt = (v) => (v && typeof v === 'object' ? (v.version || v.path || v.name || JSON.stringify(v)) : v);
  if (before != null && after != null) return `${what} ${fmt(before)} → ${fmt(after)}`.trim();
  if (after != null) return `${what} ${fmt(after)}`.trim();
  if (before != null) return `${what} ${fmt(before)} removed`.trim();
  return what;
}

export function changeItem(c) {
  const when = pick(c, 'at', 'createdAt', 'created_at', 'changedAt', 'changed_at', 'timestamp');
  const svcName = pick(c, 'serviceName', 'service_name');
  const svcId = pick(c, 'serviceId', 'service_id');
  return h('li', h('div.when', timeEl(when, date(when))),
    h('div', h('span.badge', kindLabel(c)), ' ', describe(c),
      svcName ? [' · ', svcId ? h('a', { href: serviceHref(svcId) }, svcName) : svcName] : null));
}

async function allChanges() {
  // no account-wide changes route: gather the newest per service
  const services = await allServices(200);
  const lists = await Promise.all(services.slice(0, 50).map((s) =>
    get(`/services/${encodeURIComponent(s.id)}/changes?limit=20`)
      .then((d) => listOf(d, 'changes').map((c) => ({ serviceName: s.name, serviceId: s.id, ...c })))
      .catch(() => [])));
  const when = (c) => new Date(pick(c, 'at', 'createdAt', 'created_at', 'changedAt', 'changed_at', 'timestamp') || 0).getTime();
  return lists.flat().sort((a, b) => when(b) - when(a)).slice(0, 200);
}

export async function render(root) {
  let list;
  try {
    list = await allChanges();
  } catch (err) {
    if (err.status === 401) throw err;
    fill(root, viewHead('Changes'), failure(err, () => render(root)));
    return null;
  }
  const kinds = [...new Set(list.map(kindLabel))].sort();
  const sel = h('select', { id: 'chg-kind' }, h('option', { value: '' }, 'All kinds'), kinds.map((k) => h('option', { value: k }, k)));
  const box = h('div');
  const draw = () => {
    const shown = list.filter((c) => !sel.value || kindLabel(c) === sel.value);
    fill(box, shown.length ? h('ul.timeline', shown.map(changeItem))
      : empty('No changes yet', 'New routes, versions, packages and connections show up here as your services report them.'));
  };
  sel.addEventListener('change', draw);
  fill(root, viewHead('Changes'), h('div.toolbar', h('div.field', h('label', { for: 'chg-kind' }, 'Kind'), sel)),
    h('section.panel', box));
  draw();
  return null;
}
