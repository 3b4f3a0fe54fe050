// The dashboard shell: checks the session (no session -> /login), draws the
// account banners (trial / read-only from GET /billing; "verify your e-mail"
// from GET /account), and routes /dashboard/<view> to a view module.  In-app links
// use the History API; every view URL is also a real file (see README.md).
import { get, post, pick, ApiError, waitText } from '../api.js';
import { h, fill } from '../ui.js';
import { failure } from './common.js';
import { initCopyButtons } from '../ui.js';

const views = {
  onboarding: () => import('./onboarding.js'),
  services: () => import('./services.js'),
  service: () => import('./service.js'),
  graph: () => import('./graph.js'),
  changes: () => import('./changes.js'),
  errors: () => import('./errors.js'),
  performance: () => import('./performance.js'),
  alerts: () => import('./alerts.js'),
  keys: () => import('./keys.js'),
  billing: () => import('./billing.js'),
  usage: () => import('./usage.js'),
  account: () => import('./account.js'),
};

const root = document.getElementById('view');
const ctx = { user: null, account: null, billing: null, navigate, toLogin };
let cleanup = null;
let renderSeq = 0;

function toLogin(reason) {
  const next = location.pathname + location.search;
  location.replace(`/login?next=${encodeURIComponent(next)}${reason ? `&reason=${reason}` : ''}`);
}

// Any 401 from a view means the session ended: back to the login page.
window.addEventListener('unhandledrejection', (ev) => {
  if (ev.reason instanceof ApiError && ev.reason.status === 401) { ev.preventDefault(); toLogin('expired'); }
});

function viewName() {
  const m = location.pathname.replace(/\/+$/, '').match(/^\/dashboard(?:\/([a-z-]+))?/);
  return m && m[1] && views[m[1]] ? m[1] : null;
}

async function render() {
  const seq = ++renderSeq;
  if (cleanup) { try { cleanup(); } catch { /* view already gone */ } cleanup = null; }
  let name = viewName();
  if (!name) name = await defaultView();
  if (seq !== renderSeq) return;
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === name || (name === 'service' && a.dataset.nav === 'services')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.getElementById('app-nav').classList.remove('open');
  fill(root, h('div.state-box', { role: 'status' }, h('span.spinner', { 'aria-hidden': 'true' }), ' Loading…'));
  try {
    const mod = await views[name]();
    if (seq !== renderSeq) return;
    const params = new URLSearchParams(location.search);
    cleanup = (await mod.render(root, { ...ctx, params })) || null;
    if (seq !== renderSeq && cleanup) { cleanup(); cleanup = null; }
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return toLogin('expired');
    if (seq === renderSeq) fill(root, failure(err, render));
    console.warn('view failed', err);
  }
}

// /dashboard alone: onboarding for an account with no service yet, else services.
async function defaultView() {
  try {
    const d = await get('/services?limit=1');
    const list = Array.isArray(d) ? d : (d && (d.services || d.items)) || [];
    const total = d && (d.total ?? d.count);
    return (total ?? list.length) > 0 ? 'services' : 'onboarding';
  } catch {
    return 'services';
  }
}

export function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', url); else history.pushState(null, '', url);
  render();
  root.focus({ preventScroll: false });
}

document.addEventListener('click', (ev) => {
  const a = ev.target.closest('a[href]');
  if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || a.target) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !/^\/dashboard(\/|$)/.test(url.pathname)) return;
  ev.preventDefault();
  if (url.pathname + url.search !== location.pathname + location.search) navigate(url.pathname + url.search + url.hash);
});
window.addEventListener('popstate', render);

const menu = document.querySelector('.menu-toggle');
menu.addEventListener('click', () => {
  const open = document.getElementById('app-nav').classList.toggle('open');
  menu.setAttribute('aria-expanded', String(open));
});

document.getElementById('logout').addEventListener('click', async (ev) => {
  ev.currentTarget.disabled = true;
  try { await post('/auth/logout'); } catch { /* the session is gone either way */ }
  location.assign('/login');
});

// Trial days left / read-only warnings, from GET /billing.
export async function refreshBanner() {
  const el = document.getElementById('account-banner');
  try {
    const b = await get('/billing');
    ctx.billing = b;
    const ent = b.entitlement || {};
    const status = String(pick(b, 'status') || ent.status || '');
    const left = pick(b, 'trial_days_left', 'trialDaysLeft');
    el.className = 'banner';
    fill(el, );
    if (ent.read_only || ent.state === 'read_only') {
      el.classList.add('bad');
      el.append('Your account is read-only: new data is refused. ', h('a', { href: '/dashboard/billing' }, 'Subscribe'));
    } else if (ent.state === 'grace' || status === 'past_due') {
      el.classList.add('warn');
      el.append(ent.warning || 'Your last payment failed. ', ' ', h('a', { href: '/dashboard/billing' }, 'Update payment'));
    } else if ((status === 'trial' || status === 'trialing') && left != null) {
      el.classList.add('trial');
      el.append(`Free trial: ${left} day${left === 1 ? '' : 's'} left. `, h('a', { href: '/dashboard/billing' }, 'Subscribe'));
    } else {
      el.hidden = true;
      return;
    }
    el.hidden = false;
  } catch {
    el.hidden = true;  // billing not available: no banner
  }
}
ctx.refreshBanner = refreshBanner;

// GET /account: the account's own state (email_verified, mfa_enabled, …),
// kept in ctx.account; redraws the verification banner.
export async function loadAccount() {
  const r = await get('/account');
  ctx.account = (r && r.user) || r;
  drawVerifyBanner();
  return ctx.account;
}
ctx.loadAccount = loadAccount;

// On every view while the address is not verified: a banner with a re-send button.
function drawVerifyBanner() {
  const el = document.getElementById('verify-banner');
  const a = ctx.account;
  if (!a || a.email_verified !== false) { el.hidden = true; fill(el); return; }
  const note = h('span.verify-note', { id: 'resend-note', role: 'status' });
  const btn = h('button.btn.btn-small', { type: 'button', id: 'resend-verify' }, 'Re-send link');
  btn.addEventListener('click', async () => {
    btn.disabled = true;
    note.className = 'verify-note';
    try {
      await post('/account/email/verify');
      note.textContent = `Sent. Check your inbox at ${a.email}; the link works for 48 hours.`;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return toLogin('expired');
      if (err.code === 'already_verified') { loadAccount().catch(() => {}); return; }
      note.classList.add('bad');
      note.textContent = err.code === 'too_many_attempts' || err.status === 429
        ? `A link was sent a moment ago. You can ask for another one ${waitText(err) || 'later'}.`
        : err.message;
    } finally {
      btn.disabled = false;
    }
  });
  fill(el, h('span.verify-text', h('strong', 'Please verify your e-mail address.'), ' ',
    `We sent a link to ${a.email}. Until you follow it you cannot subscribe.`), btn, note);
  el.hidden = false;
}

// The address may have been verified in another tab: check again on return.
document.addEventListener('visibilitychange', () => {
  if (!document.hidden && ctx.account && ctx.account.email_verified === false) loadAccount().catch(() => {});
});

async function start() {
  // no readable session half: skip the round trip (and its 401) and log in
  if (!/(?:^|;\s*)lattice_csrf=/.test(document.cookie)) return toLogin();
  try {
    const me = await get('/auth/me');
    ctx.user = me.user || me;
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return toLogin();
    document.body.dataset.state = 'ready';
    fill(root, failure(err, () => location.reload()));
    return;
  }
  document.getElementById('user-name').textContent = ctx.user.name || ctx.user.email || '';
  document.body.dataset.state = 'ready';
  initCopyButtons(document);
  refreshBanner();
  loadAccount().catch((err) => {
    if (err instanceof ApiError && err.status === 401) toLogin('expired');
    // else: no banner (the account route is not available)
  });
  render();
}

start();
