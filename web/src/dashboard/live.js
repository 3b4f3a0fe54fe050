// Live changes: one EventSource on /api/v1/events (Server-Sent Events, see
// docs/shim.md), shared by the views that want to know when the tenant's
// graph changed.  When the stream cannot be had (refused, the listener down,
// a proxy that drops it) a slow poll stands in and the stream is tried again
// later, so a view never depends on the stream to stay correct.
import { API } from '../api.js';
import { poll } from './common.js';

const RETRY_STREAM_MS = 60000;
const subscribers = new Set();
let source = null;
let fallback = null;     // stop function of the slow poll, while it runs
let retryTimer = null;
let fallbackEvery = 30000;

function emit(change) {
  for (const s of subscribers) { try { s(change); } catch { /* a view's own problem */ } }
}

function startFallback() {
  if (fallback || subscribers.size === 0) return;
  fallback = poll(async () => emit({ type: 'poll' }), fallbackEvery);
  document.documentElement.dataset.live = 'poll';
}

function stopFallback() {
  if (fallback) { fallback(); fallback = null; }
}

const data = (ev) => { try { return JSON.parse(ev.data); } catch { return {}; } };

function open() {
  if (source || typeof EventSource === 'undefined') { if (!source) startFallback(); return; }
  source = new EventSource(`${API}/events`, { withCredentials: true });
  // `ready` also follows every automatic reconnect: what changed meanwhile is
  // caught by comparing versions
  source.addEventListener('ready', (ev) => {
    stopFallback();
    document.documentElement.dataset.live = 'stream';
    emit({ type: 'ready', version: data(ev).version });
  });
  source.addEventListener('graph', (ev) => emit({ type: 'graph', version: data(ev).version }));
  source.addEventListener('refetch', () => emit({ type: 'refetch' }));
  source.addEventListener('error', () => {
    // CONNECTING: the browser reconnects by itself (`retry`); CLOSED: it
    // gave up (a 401, 429 or 503 answer), so poll and try again later
    if (!source || source.readyState !== EventSource.CLOSED) return;
    source.close();
    source = null;
    startFallback();
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => { retryTimer = null; if (subscribers.size) open(); }, RETRY_STREAM_MS);
  });
}

function close() {
  if (source) { source.close(); source = null; }
  stopFallback();
  clearTimeout(retryTimer);
  retryTimer = null;
  delete document.documentElement.dataset.live;
}

// Calls fn({type: 'ready' | 'graph' | 'refetch' | 'poll', version?}) on every
// change of the tenant's graph; returns the function that stops it.
// `every`: the fallback poll's period.
export function onGraphChange(fn, { every = 30000 } = {}) {
  fallbackEvery = Math.min(fallbackEvery, every);
  subscribers.add(fn);
  open();
  return () => {
    subscribers.delete(fn);
    if (subscribers.size === 0) { close(); fallbackEvery = 30000; }
  };
}
