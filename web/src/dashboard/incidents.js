// Alert incidents in words, shared by the Alerts view, the service page's
// incident strip and the graph's marks (docs/alerts.md).  Small on purpose:
// the service and graph views load it without the Alerts view.
import { get } from '../api.js';
import { h, listOf, timeEl, serviceHref } from './common.js';

export const RULES = {
  service_down: 'Service down',
  error_rate: 'Error rate',
  latency: 'Latency',
  topology: 'Topology change',
  ingest_refused: 'Ingest refused',
};
export const ruleName = (r) => RULES[r] || String(r || 'alert').replace(/_/g, ' ');

// The open incidents (optionally of one service); [] when the alerts API is
// not there.  A 401 still ends the session.
export async function openIncidents(serviceId) {
  const q = serviceId ? `&service=${encodeURIComponent(serviceId)}` : '';
  try {
    return listOf(await get(`/alerts/incidents?status=open&limit=100${q}`), 'incidents');
  } catch (err) {
    if (err.status === 401) throw err;
    return [];
  }
}

// The service ids an open incident is about (its service, an edge's ends).
export function incidentServiceIds(incidents) {
  const ids = new Set();
  for (const i of incidents) {
    const s = i.subject || {};
    for (const id of [s.service_id, s.target_id]) if (id) ids.add(String(id));
  }
  return ids;
}

const serviceLink = (id, name) => (id ? h('a', { href: serviceHref(id) }, name || String(id)) : h('span', name || 'an unregistered caller'));

// What an incident is about, as nodes (links to services; text, never markup).
export function subjectNodes(subject) {
  const s = subject || {};
  switch (s.type) {
    case 'service':
      return [serviceLink(s.service_id, s.service), s.environment ? h('span.muted', ` (${s.environment})`) : null];
    case 'route':
      return [h('span.method', String(s.method || 'ALL').toUpperCase()), ' ', h('code', s.path || '/'), ' on ', serviceLink(s.service_id, s.service)];
    case 'edge':
      return [serviceLink(s.source_id, s.source), ' → ', serviceLink(s.target_id, s.target)];
    case 'account':
      return [h('span', 'the account')];
    default: {
      const name = s.service || s.target || s.source;
      return [name ? serviceLink(s.service_id || s.target_id || s.source_id, name) : h('span.muted', '—')];
    }
  }
}

// The state badges of an incident: open/resolved, acknowledged, muted.
export function stateBadges(i, { status = true } = {}) {
  const muted = i.muted_until && new Date(i.muted_until).getTime() > Date.now();
  const when = (t) => new Date(t).toLocaleString('en', { dateStyle: 'medium', timeStyle: 'short' });
  return h('span.badges',
    !status ? null : i.status === 'open' ? h('span.badge.badge-bad', { 'data-state': 'open' }, 'open')
      : h('span.badge.badge-ok', { 'data-state': 'resolved' }, 'resolved'),
    i.acknowledged_at ? h('span.badge', { 'data-state': 'acknowledged', title: `Acknowledged ${when(i.acknowledged_at)}` }, 'acknowledged') : null,
    muted ? h('span.badge.badge-warn', { 'data-state': 'muted' }, 'muted until ', timeEl(i.muted_until, when(i.muted_until))) : null);
}

// The service page's strip: its open incidents; null when there are none.
export function incidentStrip(incidents) {
  if (!incidents.length) return null;
  return h('section.incident-strip', { id: 'service-incidents', role: 'region', 'aria-label': 'Open incidents' },
    h('h2', `${incidents.length} open incident${incidents.length > 1 ? 's' : ''}`),
    h('ul.list-plain', incidents.map((i) => h('li', { 'data-incident-id': String(i.id) },
      h('span.badge.badge-bad', ruleName(i.rule)), ' ', h('strong', i.summary || ''), ' ',
      h('span.muted', 'opened ', timeEl(i.opened_at)), ' ', stateBadges(i, { status: false })))),
    h('p.strip-foot', h('a', { href: '/dashboard/alerts' }, 'Acknowledge or mute in Alerts')));
}
