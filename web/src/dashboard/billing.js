// Billing: plan, trial days left, status, Stripe portal/checkout, cancel or
// resume, invoices.
import { get, post } from '../api.js';
import { h, fill, listOf, pick, date, empty, failure, viewHead, toast, confirmDialog } from './common.js';

const money = (cents, cur = 'usd') => (cents == null ? '—'
  : new Intl.NumberFormat('en', { style: 'currency', currency: String(cur).toUpperCase() }).format(cents / 100));

const STATUS = {
  trial: ['Free trial', 'badge-brand'], trialing: ['Trial (subscribed)', 'badge-brand'], active: ['Active', 'badge-ok'],
  past_due: ['Payment failed', 'badge-warn'], canceled: ['Canceled', 'badge-bad'], unpaid: ['Unpaid', 'badge-bad'],
  none: ['No subscription', 'badge-bad'], incomplete: ['Incomplete', 'badge-warn'],
};

export async function render(root, ctx) {
  let b; let inv;
  try {
    [b, inv] = await Promise.all([get('/billing'), get('/billing/invoices').catch((e) => { if (e.status === 401) throw e; return { __error: e }; })]);
  } catch (err) {
    if (err.status === 401) throw err;
    fill(root, viewHead('Billing'), failure(err, () => render(root, ctx)));
    return null;
  }
  const plan = b.plan || {};
  const ent = b.entitlement || {};
  const status = String(b.status || ent.status || 'none');
  const [label, cls] = STATUS[status] || [status, ''];
  const trialEnd = pick(b, 'trial_end', 'trialEnd');
  const left = pick(b, 'trial_days_left', 'trialDaysLeft');
  const periodEnd = pick(b, 'current_period_end', 'currentPeriodEnd');
  const cancelling = Boolean(pick(b, 'cancel_at_period_end', 'cancelAtPeriodEnd'));
  const subscribed = ['trialing', 'active', 'past_due'].includes(status);

  // Stripe routes answer {url}: we go there (checkout, portal).
  const go = (path, labelText) => h('button.btn', { type: 'button', class: path.endsWith('checkout') ? 'btn-primary' : '', onclick: async (ev) => {
    const btn = ev.currentTarget;   // null once the handler has awaited
    btn.disabled = true;
    try {
      const r = await post(path);
      if (r && r.url) location.assign(r.url); else toast('Done');
    } catch (err) {
      // checkout needs a verified address (docs/account.md): the banner above re-sends the link
      toast(err.code === 'email_unverified' ? 'Verify your e-mail address first: follow the link we sent, or re-send it from the banner above.' : err.message, 'error');
      btn.disabled = false;
    }
  } }, labelText);

  const setCancel = (cancel) => h('button.btn', { type: 'button', class: cancel ? 'btn-danger' : '', onclick: async (ev) => {
    const btn = ev.currentTarget;
    if (cancel && !(await confirmDialog('Cancel your subscription?', `It stays active until ${date(periodEnd)} and is not renewed. You can resume before then.`, 'Cancel subscription', true))) return;
    btn.disabled = true;
    try { await post(cancel ? '/billing/cancel' : '/billing/resume'); toast(cancel ? 'Subscription will end at the period end' : 'Subscription resumed'); ctx.refreshBanner?.(); render(root, ctx); } catch (err) { toast(err.message, 'error'); btn.disabled = false; }
  } }, cancel ? 'Cancel subscription' : 'Resume subscription');

  let statement;
  if (status === 'trial') statement = `Your free trial ends ${date(trialEnd)}${left != null ? ` — ${left} day${left === 1 ? '' : 's'} left` : ''}. Subscribe to keep ingesting after that.`;
  else if (status === 'trialing') statement = `Subscribed. Your trial ends ${date(trialEnd)}${left != null ? ` (${left} day${left === 1 ? '' : 's'} left)` : ''}; the first charge follows.`;
  else if (status === 'active') statement = cancelling ? `Canceled: active until ${date(periodEnd)}, then not renewed.` : `Renews ${date(periodEnd)}.`;
  else if (status === 'past_due') statement = ent.warning || 'Your last payment failed. Update your card to keep ingesting.';
  else statement = 'Your account is read-only: new data from your services is refused. Subscribe to resume.';

  const invoices = listOf(inv, 'invoices');
  const invBox = inv && inv.__error ? h('p.muted', `Invoices unavailable: ${inv.__error.message}`)
    : invoices.length === 0 ? empty('No invoices yet', 'Invoices appear here after the first payment.')
      : h('div.table-wrap', h('table.data', { 'aria-label': 'Invoices' },
        h('thead', h('tr', h('th', 'Date'), h('th', 'Number'), h('th.num', 'Amount'), h('th', 'Status'), h('th', h('span.visually-hidden', 'Links')))),
        h('tbody', invoices.map((i) => h('tr', h('td', date(i.date || i.created)), h('td', i.number || i.id),
          h('td.num', money(pick(i, 'amount_paid', 'amount_due'), i.currency)), h('td', h('span.badge', i.status || '—')),
          h('td', i.hosted_invoice_url ? h('a', { href: i.hosted_invoice_url, rel: 'noopener' }, 'View') : null, ' ',
            i.invoice_pdf ? h('a', { href: i.invoice_pdf, rel: 'noopener' }, 'PDF') : null))))));

  fill(root, viewHead('Billing'),
    h('div.panel-grid',
      h('section.panel', { 'aria-labelledby': 'plan-h' }, h('h2', { id: 'plan-h' }, 'Plan'),
        h('dl.kv', h('dt', 'Plan'), h('dd', plan.name || 'Lattice'),
          h('dt', 'Price'), h('dd', `${money(plan.price_cents ?? 2500, plan.currency || 'usd')} / ${plan.interval || 'year'}`),
          h('dt', 'Status'), h('dd', h('span.badge', { class: cls, 'data-billing-status': status }, label)),
          trialEnd ? [h('dt', 'Trial ends'), h('dd', date(trialEnd))] : null,
          periodEnd ? [h('dt', 'Current period ends'), h('dd', date(periodEnd))] : null,
          plan.rate_limit_per_hour ? [h('dt', 'Quota'), h('dd', `${plan.rate_limit_per_hour.toLocaleString('en')} requests / hour`)] : null)),
      h('section.panel', h('h2', 'Subscription'), h('p', { id: 'billing-statement' }, statement),
        h('div.toolbar',
          subscribed ? null : go('/billing/checkout', 'Subscribe — $25/year'),
          pick(b, 'has_customer', 'hasCustomer') ? go('/billing/portal', 'Manage in Stripe') : null,
          subscribed && !cancelling ? setCancel(true) : null,
          subscribed && cancelling ? setCancel(false) : null))),
    h('section.panel', h('h2', 'Invoices'), invBox));
  return null;
}
