// Grouped errors with resolve / ignore.
import { get, patch } from '../api.js';
import { h, fill, listOf, pick, num, timeEl, empty, failure, viewHead, toast, serviceHref } from './common.js';

export async function render(root, ctx) {
  const statusSel = h('select', { id: 'err-status' }, ['open', 'resolved', 'ignored', ''].map((s) =>
    h('option', { value: s }, s ? s[0].toUpperCase() + s.slice(1) : 'All')));
  statusSel.value = ctx.params.get('status') || 'open';
  const box = h('div');

  async function load() {
    fill(box, h('div.state-box', { role: 'status' }, h('span.spinner'), ' Loading errors…'));
    let list;
    try {
      list = listOf(await get(`/errors?limit=200${statusSel.value ? `&status=${statusSel.value}` : ''}`), 'errors', 'groups');
    } catch (err) {
      if (err.status === 401) throw err;
      fill(box, failure(err, load));
      return;
    }
    if (list.length === 0) {
      fill(box, empty(statusSel.value === 'open' ? 'No open errors' : 'No errors', 'Errors your services report are grouped here.'));
      return;
    }
    fill(box, h('div.table-wrap', h('table.data', { 'aria-label': 'Errors' },
      h('thead', h('tr', h('th', 'Error'), h('th', 'Service'), h('th.num', 'Count'), h('th', 'Last seen'), h('th', 'Status'), h('th', h('span.visually-hidden', 'Actions')))),
      h('tbody', list.map(row)))));
  }

  function row(e) {
    const act = (status, label) => h('button.btn.btn-small', { type: 'button', onclick: async (ev) => {
      const btn = ev.currentTarget;   // null once the handler has awaited
      btn.disabled = true;
      try { await patch(`/errors/${encodeURIComponent(e.id)}`, { status }); toast(`Marked ${status}`); load(); } catch (err) { toast(err.message, 'error'); btn.disabled = false; }
    } }, label);
    const st = String(e.status || 'open');
    const sid = pick(e, 'serviceId', 'service_id');
    return h('tr', { 'data-error-id': e.id },
      h('td', h('strong', pick(e, 'errorType', 'error_type', 'type') || 'Error'), h('div', e.message || ''),
        pick(e, 'path', 'route') ? h('code.muted', pick(e, 'path', 'route')) : null),
      h('td', sid ? h('a', { href: serviceHref(sid) }, pick(e, 'serviceName', 'service_name') || sid) : pick(e, 'serviceName', 'service_name') || '—'),
      h('td.num', num(pick(e, 'occurrenceCount', 'count', 'occurrences') ?? 1)),
      h('td', timeEl(pick(e, 'lastSeen', 'last_seen', 'timestamp'))),
      h('td', h('span.badge', { class: st === 'resolved' ? 'badge-ok' : st === 'ignored' ? '' : 'badge-bad' }, st)),
      h('td', st === 'open' ? [act('resolved', 'Resolve'), ' ', act('ignored', 'Ignore')] : act('open', 'Reopen')));
  }

  statusSel.addEventListener('change', load);
  fill(root, viewHead('Errors'), h('div.toolbar', h('div.field', h('label', { for: 'err-status' }, 'Status'), statusSel)),
    h('section.panel', box));
  await load();
  return null;
}
