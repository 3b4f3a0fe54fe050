// Usage: requests this hour against the quota, and the last 24 hours.
import { get } from '../api.js';
import { h, fill, listOf, pick, num, failure, viewHead, poll } from './common.js';
import { barChart } from './charts.js';

export async function render(root, ctx) {
  const box = h('div');
  async function load() {
    const u = await get('/usage');
    const limit = Number(pick(u, 'limit'));
    const th = u.this_hour || u.thisHour || {};
    const used = Number(pick(th, 'requests') ?? (limit - Number(u.remaining)));
    const share = limit > 0 ? Math.min(1, used / limit) : 0;
    const reset = Number(pick(u, 'reset_seconds', 'resetSeconds'));
    const bar = h('span');
    bar.style.width = `${(share * 100).toFixed(1)}%`;   // CSSOM, allowed by the CSP
    const history = listOf(u, 'history').slice().reverse();
    fill(box, 
      h('div.tiles',
        h('div.tile', h('div.label', 'This hour'), h('div.value', { 'data-usage-used': '' }, num(used))),
        h('div.tile', h('div.label', 'Quota'), h('div.value', num(limit))),
        h('div.tile', h('div.label', 'Remaining'), h('div.value', { class: share >= 1 ? 'bad' : 'ok' }, num(pick(u, 'remaining')))),
        h('div.tile', h('div.label', 'Refused this hour'), h('div.value', { class: Number(th.refused) ? 'bad' : '' }, num(th.refused ?? 0)))),
      h('section.panel', h('h2', 'Requests this hour'),
        h('div.meter', { class: share >= 1 ? 'full' : share > 0.8 ? 'high' : '', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': limit, 'aria-valuenow': used, 'aria-label': 'Requests used this hour' }, bar),
        h('p.muted', `${num(used)} of ${num(limit)} requests used (${(share * 100).toFixed(1)}%).${reset ? ` The count resets in ${Math.ceil(reset / 60)} min.` : ''}`)),
      h('section.panel', h('h2', 'Last 24 hours'), history.length === 0 ? h('p.muted', 'No history yet: hours are rolled up as they end.')
        : barChart(history.map((x) => ({ label: new Date(x.hour).toLocaleTimeString('en', { hour: '2-digit', minute: '2-digit' }), value: Number(x.requests), refused: Number(x.refused) })), 'Requests per hour, refused in red')));
  }
  fill(root, viewHead('Usage'), box);
  try {
    await load();
  } catch (err) {
    if (err.status === 401) throw err;
    fill(box, failure(err, () => render(root, ctx)));
    return null;
  }
  return poll(load, 15000);
}
