// Shared pieces of the dashboard views: states (loading, empty, error),
// formatting, toasts, confirmation dialogs and polling.
import { h, fill } from '../ui.js';
import { get, pick } from '../api.js';

export { h, fill, pick };

export function loading(text = 'Loading…') {
  return h('div.state-box', { role: 'status' }, h('span.spinner', { 'aria-hidden': 'true' }), ' ', text);
}

export function empty(title, body, ...actions) {
  return h('div.state-box', h('h2', title), body ? h('p', body) : null, ...actions);
}

// Every service of the account: GET /services pages through at most 200.
export async function allServices(max = 5000) {
  const out = [];
  for (let page = 1; out.length < max; page++) {
    const d = await get(`/services?limit=200&page=${page}`);
    const list = listOf(d, 'services');
    out.push(...list);
    if (list.length < 200 || (d.total != null && out.length >= d.total)) break;
  }
  return out;
}

// 404 because this server has no such route (an API not deployed yet).
export const isMissingRoute = (err) => err && err.status === 404 && /no such endpoint/i.test(err.message || '');

// A failed request: what went wrong, the request id to quote, and a retry.
export function failure(err, retry) {
  const box = h('div.state-box.error', { role: 'alert' },
    h('h2', isMissingRoute(err) ? 'Not available' : 'Something went wrong'),
    h('p', isMissingRoute(err) ? 'This part of Lattice is not available on this server yet.' : err.message || String(err)),
    err.requestId ? h('p.muted', `Request id: ${err.requestId}`) : null,
    retry ? h('button.btn', { type: 'button', onclick: retry }, 'Try again') : null);
  return box;
}

export function viewHead(title, ...actions) {
  return h('div.view-head', h('h1', title), actions.length ? h('div.actions', ...actions) : null);
}

// The array inside an API answer, whatever the envelope is called.
export function listOf(data, ...keys) {
  if (Array.isArray(data)) return data;
  if (!data || typeof data !== 'object') return [];
  for (const k of [...keys, 'items', 'data', 'results']) if (Array.isArray(data[k])) return data[k];
  return [];
}

const nf = new Intl.NumberFormat('en');
export const num = (n) => (n == null || Number.isNaN(Number(n)) ? '—' : nf.format(Number(n)));
export function ms(n) {
  if (n == null || Number.isNaN(Number(n))) return '—';
  n = Number(n);
  return n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${n < 10 ? n.toFixed(1) : Math.round(n)} ms`;
}
export function pct(n) {
  if (n == null || Number.isNaN(Number(n))) return '—';
  n = Number(n);
  return `${n < 1 && n > 0 ? n.toFixed(2) : n.toFixed(1)}%`;
}

const rtf = new Intl.RelativeTimeFormat('en', { numeric: 'auto' });
export function ago(t) {
  if (!t) return 'never';
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return '—';
  const s = (d.getTime() - Date.now()) / 1000;
  const a = Math.abs(s);
  if (a < 45) return s <= 0 ? 'just now' : 'in a few seconds';
  if (a < 3600) return rtf.format(Math.round(s / 60), 'minute');
  if (a < 86400) return rtf.format(Math.round(s / 3600), 'hour');
  return rtf.format(Math.round(s / 86400), 'day');
}
export function date(t) {
  if (!t) return '—';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? '—' : d.toLocaleString('en', { dateStyle: 'medium', timeStyle: 'short' });
}
export const timeEl = (t, text) => h('time', { datetime: t || '', title: t ? date(t) : '' }, text ?? ago(t));

export function toast(message, kind = 'ok') {
  const t = h('div.toast', { role: kind === 'error' ? 'alert' : 'status', class: kind === 'error' ? 'error' : '' }, message);
  document.body.append(t);
  setTimeout(() => t.remove(), 4000);
}

// A modal confirmation; resolves true when confirmed.
export function confirmDialog(title, body, confirmLabel = 'Confirm', danger = false) {
  return new Promise((resolve) => {
    const ok = h('button.btn', { type: 'button', class: danger ? 'btn-danger' : 'btn-primary' }, confirmLabel);
    const cancel = h('button.btn', { type: 'button' }, 'Cancel');
    const dlg = h('dialog', { 'aria-labelledby': 'dlg-title' }, h('h2', { id: 'dlg-title' }, title), h('p', body),
      h('div.actions', cancel, ok));
    const done = (v) => { dlg.close(); dlg.remove(); resolve(v); };
    ok.addEventListener('click', () => done(true));
    cancel.addEventListener('click', () => done(false));
    dlg.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
    document.body.append(dlg);
    dlg.showModal();
    cancel.focus();
  });
}

// Calls fn every `every` ms while the page is visible; returns a stop function.
export function poll(fn, every) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) { try { await fn(); } catch { /* the view shows its own errors */ } }
    if (!stopped) timer = setTimeout(tick, every);
  };
  timer = setTimeout(tick, every);
  return () => { stopped = true; clearTimeout(timer); };
}

export function statusBadge(status) {
  const s = String(status || 'unknown').toLowerCase();
  const cls = s === 'active' ? 'badge-ok' : s === 'inactive' ? '' : s === 'error' ? 'badge-bad' : '';
  return h('span.badge', { class: cls }, h('span.dot', { class: s, 'aria-hidden': 'true' }), s);
}

export function methodTag(m) {
  const v = String(m || 'ALL').toUpperCase();
  return h('span.method', { class: `m-${v}` }, v);
}

export const serviceHref = (id) => `/dashboard/service?id=${encodeURIComponent(id)}`;

// What a node of the graph is: a registered service, an external caller or
// callee known only by name, a database system, or a messaging destination.
// Servers before `kind` send is_external alone: service or external then
// (and an external node of kind service is external, as the server reads it).
export const NODE_KINDS = ['service', 'external', 'database', 'queue'];
export function nodeKind(n) {
  const k = String(n.kind ?? '').toLowerCase();
  const external = Boolean(n.is_external ?? n.isExternal ?? n.external ?? (n.type === 'external' || n.status === 'external'));
  if (NODE_KINDS.includes(k) && !(k === 'service' && external)) return k;
  return external ? 'external' : 'service';
}
// database and queue nodes are not services (no page of their own), like external ones
export const isExternalKind = (kind) => kind !== 'service';

// A key's scopes as badges (ingest, read); null when the server sent none.
export const SCOPES = {
  ingest: 'The plugins send metadata, traces and errors with it. Give each service an ingest-only key.',
  read: 'Scripts and integrations read services, the graph, changes, errors, performance and usage.',
};
export function scopeBadges(scopes) {
  if (!Array.isArray(scopes)) return null;
  return h('span.scopes', { 'data-scopes': scopes.join(' ') },
    scopes.map((s) => h('span.badge', { class: s === 'read' ? 'badge-brand' : '', title: SCOPES[s] || '' }, s)));
}
