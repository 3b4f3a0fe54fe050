// Usage: the three quota classes (api, ingest, dashboard) this hour, ingest
// per service, and the last 24 hours by class.  Every figure comes from
// GET /usage; nothing is computed that the API does not say.
import { get } from '../api.js';
import { h, fill, listOf, pick, num, failure, viewHead, poll } from './common.js';
import { stackedBarChart } from './charts.js';

export const CLASSES = [
  { id: 'api', title: 'API', blurb: 'Scripts and integrations calling the API with a key or a bearer token.' },
  { id: 'ingest', title: 'Plugin ingest', blurb: 'What the plugins send. Each service has its own budget, so one noisy service never slows the others.' },
  { id: 'dashboard', title: 'Dashboard', blurb: 'This dashboard, in every tab you have open.' },
];

const n = (v) => (v == null || v === '' || Number.isNaN(Number(v)) ? null : Number(v));

// "resets in 3 min" from a number of seconds.
export function resetsIn(seconds) {
  const s = n(seconds);
  if (s == null) return '—';
  if (s <= 0) return 'resets now';
  if (s < 60) return `resets in ${Math.ceil(s)} s`;
  if (s < 5400) return `resets in ${Math.ceil(s / 60)} min`;
  return `resets in ${Math.round(s / 3600)} h`;
}

// The classes of an answer; a server without them (before quota classes)
// reported the api class alone, at the top level.
function classesOf(u) {
  if (u.classes && typeof u.classes === 'object') return u.classes;
  const th = u.this_hour || u.thisHour || {};
  return { api: { unit: 'account', limit: u.limit, period_seconds: u.period_seconds, used: th.requests,
    remaining: u.remaining, reset_seconds: pick(u, 'reset_seconds', 'resetSeconds'), refused_this_hour: th.refused } };
}

// used of limit; `out` (nothing remains right now) shows it full-red whatever the share.
function meter(used, limit, label, out = false) {
  const share = limit > 0 ? Math.min(1, used / limit) : 0;
  const bar = h('span');
  bar.style.width = `${(share * 100).toFixed(1)}%`;   // CSSOM, allowed by the CSP
  return h('div.meter', { class: out || share >= 1 ? 'full' : share > 0.8 ? 'high' : '', role: 'meter',
    'aria-valuemin': 0, 'aria-valuemax': limit, 'aria-valuenow': Math.min(used, limit), 'aria-label': label }, bar);
}

// One <dt>/<dd> pair; data-field and data-value carry the raw figure.
function figure(field, label, value, text, bad) {
  return [h('dt', label), h('dd', { 'data-field': field, 'data-value': value == null ? '' : String(value), class: bad ? 'bad' : '' },
    text ?? num(value))];
}

function perHour(limit, period) {
  const p = n(period) ?? 3600;
  return p === 3600 ? `${num(limit)} / hour` : `${num(limit)} / ${num(p)} s`;
}

function classCard(def, c) {
  const headId = `uc-${def.id}`;
  const head = h('h2', { id: headId }, def.title, h('span.badge', c && c.unit === 'service' ? 'per service' : 'per account'));
  if (!c) {
    return h('section.panel.usage-class', { 'data-class': def.id, 'aria-labelledby': headId }, head,
      h('p.muted.blurb', def.blurb), h('p.muted', 'This server does not report this class.'));
  }
  const limit = n(c.limit);
  const used = n(c.used) ?? 0;
  const refusedHour = n(c.refused_this_hour) ?? 0;
  const refused24 = n(c.refused_24h);
  const body = [];
  if (def.id === 'ingest') {
    const services = listOf(c, 'services');
    const busiest = services.reduce((a, s) => (a && n(a.used) >= n(s.used) ? a : s), null);
    if (busiest) {
      body.push(meter(n(busiest.used) ?? 0, limit, `Busiest service this hour: ${busiest.service}`, n(busiest.remaining) === 0),
        h('p.muted.meter-note', `Busiest service: ${busiest.service}, ${num(busiest.used)} of ${num(limit)} this hour.`));
    } else {
      body.push(meter(0, limit || 1, 'Busiest service this hour'), h('p.muted.meter-note', 'No plugin has sent anything this hour.'));
    }
    body.push(h('dl.kv', { 'aria-label': `${def.title} figures` },
      figure('limit', 'Limit', limit, `${perHour(limit, c.period_seconds)} per service`),
      c.burst != null ? figure('burst', 'Burst', n(c.burst), `${num(c.burst)} per service`) : null,
      c.account_limit != null ? figure('account_limit', 'Account ceiling', n(c.account_limit), perHour(c.account_limit, c.period_seconds)) : null,
      figure('used', 'Used this hour', used, `${num(used)} from ${services.length} service${services.length === 1 ? '' : 's'}`),
      c.account_remaining != null ? figure('account_remaining', 'Account remaining', n(c.account_remaining), null, n(c.account_remaining) === 0)
        : c.remaining != null ? figure('remaining', 'Remaining now', n(c.remaining), null, n(c.remaining) === 0) : null,
      c.reset_seconds != null ? figure('reset', 'Resets', n(c.reset_seconds), resetsIn(c.reset_seconds)) : null,
      figure('refused_this_hour', 'Refused this hour', refusedHour, null, refusedHour > 0),
      figure('refused_24h', 'Refused in 24 h', refused24, null, refused24 > 0)));
  } else {
    const remaining = n(c.remaining);
    body.push(meter(used, limit || 1, `${def.title} requests used this hour`, remaining === 0),
      h('p.muted.meter-note', `${num(used)} of ${num(limit)} used this hour · ${resetsIn(c.reset_seconds)}.`),
      h('dl.kv', { 'aria-label': `${def.title} figures` },
        figure('limit', 'Limit', limit, perHour(limit, c.period_seconds)),
        c.burst != null ? figure('burst', 'Burst', n(c.burst)) : null,
        figure('used', 'Used this hour', used),
        figure('remaining', 'Remaining now', remaining, null, remaining === 0),
        figure('reset', 'Resets', n(c.reset_seconds), resetsIn(c.reset_seconds)),
        figure('refused_this_hour', 'Refused this hour', refusedHour, null, refusedHour > 0),
        figure('refused_24h', 'Refused in 24 h', refused24, null, refused24 > 0)));
  }
  return h('section.panel.usage-class', { 'data-class': def.id, 'aria-labelledby': headId }, head, h('p.muted.blurb', def.blurb), ...body);
}

// Refused first (this hour, then 24 h), then the busiest, then by name.
export function sortServices(list) {
  return list.slice().sort((a, b) => (n(b.refused_this_hour) ?? 0) - (n(a.refused_this_hour) ?? 0)
    || (n(b.refused_24h) ?? 0) - (n(a.refused_24h) ?? 0)
    || (n(b.used) ?? 0) - (n(a.used) ?? 0)
    || String(a.service).localeCompare(String(b.service)));
}

function servicesTable(c) {
  const services = sortServices(listOf(c, 'services'));
  const limit = n(c.limit);
  if (services.length === 0) return h('p.muted', 'No plugin has sent anything this hour. Each service appears here with its first request.');
  const cell = (field, value, text, bad) => h('td.num', { 'data-field': field, 'data-value': value == null ? '' : String(value), class: bad ? 'bad' : '' }, text ?? num(value));
  return h('div.table-wrap', h('table.data', { 'aria-label': 'Ingest by service' },
    h('thead', h('tr', h('th', { scope: 'col' }, 'Service'), h('th.num', { scope: 'col' }, 'Used this hour'),
      h('th', { scope: 'col' }, h('span.visually-hidden', 'Share of the budget')), h('th.num', { scope: 'col' }, 'Remaining'),
      h('th.num', { scope: 'col' }, 'Resets'), h('th.num', { scope: 'col' }, 'Refused this hour'), h('th.num', { scope: 'col' }, 'Refused in 24 h'))),
    h('tbody', services.map((s) => {
      const refused = (n(s.refused_this_hour) ?? 0) > 0;
      return h('tr', { 'data-service': s.service, class: refused ? 'refused' : '' },
        h('th', { scope: 'row' }, h('span.svc-name', s.service), refused ? [' ', h('span.badge.badge-bad', 'slowed')] : null),
        cell('used', n(s.used)),
        h('td', meter(n(s.used) ?? 0, limit || 1, `${s.service}: share of its hourly budget`, n(s.remaining) === 0)),
        cell('remaining', n(s.remaining), null, n(s.remaining) === 0),
        cell('reset', n(s.reset_seconds), resetsIn(s.reset_seconds).replace(/^resets /, '')),
        cell('refused_this_hour', n(s.refused_this_hour), null, refused),
        cell('refused_24h', n(s.refused_24h), null, n(s.refused_24h) > 0));
    }))));
}

// 24 hourly slots ending with the current hour; hours the API does not list are zero.
export function historySlots(history, now = Date.now()) {
  const hour = 3600000;
  const byHour = new Map();
  for (const x of history) {
    const t = Date.parse(x.hour);
    if (!Number.isNaN(t)) byHour.set(Math.floor(t / hour) * hour, x);
  }
  const last = Math.floor(now / hour) * hour;
  const slots = [];
  for (let i = 23; i >= 0; i--) {
    const t = last - i * hour;
    const x = byHour.get(t);
    const per = {};
    for (const def of CLASSES) {
      const c = x && x.classes ? x.classes[def.id] : (def.id === 'api' && x ? { requests: x.requests, refused: x.refused } : null);
      per[def.id] = { requests: n(c && c.requests) ?? 0, refused: n(c && c.refused) ?? 0 };
    }
    // with classes, the totals are theirs (the top level may be the api class alone, for old clients)
    const sum = (f) => CLASSES.reduce((a, d) => a + per[d.id][f], 0);
    slots.push({ t, per, requests: x && x.classes ? sum('requests') : n(x && x.requests) ?? 0,
      refused: x && x.classes ? sum('refused') : n(x && x.refused) ?? 0 });
  }
  return slots;
}

const hourLabel = (t) => new Date(t).toLocaleTimeString('en', { hour: '2-digit', minute: '2-digit' });

function historyChart(slots) {
  const series = [...CLASSES.map((d) => ({ name: d.title, cls: `c-${d.id}`, values: slots.map((s) => s.per[d.id].requests) })),
    { name: 'Refused', cls: 'refused', values: slots.map((s) => s.refused) }];
  return [stackedBarChart(slots.map((s) => hourLabel(s.t)), series, 'Requests per hour by class, refused in red'),
    h('div.chart-legend.boxes', { 'aria-hidden': 'true' }, CLASSES.map((d) => h('span', { class: `cl-${d.id}` }, d.title)), h('span.cl-refused', 'Refused'))];
}

function historyTable(slots) {
  const cell = (v) => h('td.num', num(v));
  return h('div.table-wrap', h('table.data', { 'aria-label': 'Requests per hour by class' },
    h('thead', h('tr', h('th', { scope: 'col' }, 'Hour'), CLASSES.map((d) => h('th.num', { scope: 'col' }, d.title)),
      h('th.num', { scope: 'col' }, 'Refused'))),
    h('tbody', slots.slice().reverse().map((s) => h('tr', { 'data-hour': new Date(s.t).toISOString() },
      h('th', { scope: 'row' }, h('time', { datetime: new Date(s.t).toISOString() }, hourLabel(s.t))),
      CLASSES.map((d) => cell(s.per[d.id].requests)),
      h('td.num', { class: s.refused ? 'bad' : '' }, num(s.refused)))))));
}

export async function render(root, ctx) {
  const cards = h('div.usage-classes');
  const services = h('div');
  const chart = h('div');
  const table = h('div');
  const servicesPanel = h('section.panel', { 'aria-labelledby': 'usage-services' }, h('h2', { id: 'usage-services' }, 'Ingest by service'),
    h('p.muted.blurb', 'Each service\'s plugin has its own hourly budget. Services that were refused come first.'), services);
  const historyPanel = h('section.panel', { 'aria-labelledby': 'usage-history' }, h('h2', { id: 'usage-history' }, 'Last 24 hours'),
    chart, h('details.usage-hours', h('summary', 'Hourly figures'), table));
  const box = h('div', { 'data-usage': '' },
    h('p.muted.usage-intro', 'Requests are counted in three classes, each with its own hourly allowance: running out of one never slows another.'),
    cards, servicesPanel, historyPanel);

  async function load() {
    const u = await get('/usage');
    const classes = classesOf(u);
    fill(cards, CLASSES.map((def) => classCard(def, classes[def.id])));
    if (classes.ingest) {
      servicesPanel.hidden = false;
      fill(services, servicesTable(classes.ingest));
    } else {
      servicesPanel.hidden = true;
    }
    const slots = historySlots(listOf(u, 'history'));
    fill(chart, slots.some((s) => s.requests || s.refused) ? historyChart(slots)
      : h('p.muted', 'No history yet: hours are rolled up as they pass.'));
    fill(table, historyTable(slots));
    box.dataset.loaded = String((Number(box.dataset.loaded) || 0) + 1);
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
