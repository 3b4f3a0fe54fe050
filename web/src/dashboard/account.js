// Account: the profile (e-mail, its verification, a change of address, a
// change of password), two-factor authentication (enrolment with a QR code,
// recovery codes, turning it off), the sessions, the account's own activity,
// the export of everything it owns, and its deletion.  See docs/account.md.
import { get, post, del, tooManyText } from '../api.js';
import { h, fill, listOf, date, timeEl, empty, failure, viewHead, toast, confirmDialog } from './common.js';
import { copyText } from '../ui.js';

const SVG = 'http://www.w3.org/2000/svg';

// The account's audit actions in words; others are spelled out from their name.
const ACTIONS = {
  'user.signup': 'Account created',
  'user.created': 'Account created by an operator',
  'login.success': 'Logged in',
  'login.failure': 'Failed log-in attempt',
  'logout': 'Logged out',
  'session.revoked': 'Session signed out',
  'reauth.failure': 'Wrong password given to confirm an action',
  'mfa.verified': 'Two-factor code accepted',
  'mfa.failure': 'Wrong two-factor code',
  'mfa.recovery_code_used': 'Recovery code used',
  'mfa.setup': 'Two-factor set-up started',
  'mfa.setup_started': 'Two-factor set-up started',
  'mfa.enabled': 'Two-factor authentication turned on',
  'mfa.disabled': 'Two-factor authentication turned off',
  'mfa.recovery_codes_regenerated': 'New recovery codes made',
  'mfa.recovery_codes': 'New recovery codes made',
  'mfa.recovery_codes_renewed': 'New recovery codes made',
  'password.changed': 'Password changed',
  'password.reset': 'Password reset with an e-mailed link',
  'password.reset_requested': 'Password reset link asked for',
  'password.reset_sent': 'Password reset link e-mailed',
  'email.verification_sent': 'Verification link e-mailed',
  'email.verify_sent': 'Verification link e-mailed',
  'email.verified': 'E-mail address verified',
  'email.change_requested': 'Change of e-mail address asked for',
  'email.changed': 'E-mail address changed',
  'account.link_refused': 'An invalid e-mail link was refused',
  'account.exported': 'Data exported',
  'account.export': 'Data exported',
  'account.deleted': 'Account deleted',
  'account.data_purged': 'Service data removed after the read-only year',
  'key.created': 'API key created',
  'key.rotated': 'API key rotated',
  'key.revoked': 'API key revoked',
  'key.used_after_revocation': 'A revoked API key was used',
  'token.issued': 'Access token issued',
  'auth.insufficient_scope': 'Request refused: the key lacks the scope',
  'admin.act_as_tenant': 'An operator acted on the account',
  'billing.checkout_started': 'Checkout started',
  'billing.checkout_completed': 'Subscribed',
  'billing.customer_created': 'Billing customer created',
  'billing.portal_opened': 'Billing portal opened',
  'billing.subscription_changed': 'Subscription changed',
};
export function actionWords(action) {
  const a = String(action || '');
  if (ACTIONS[a]) return ACTIONS[a];
  const [head, ...rest] = a.split('.');
  const words = (x) => x.replace(/[_-]+/g, ' ');
  const first = words(head);
  return rest.length ? `${first.charAt(0).toUpperCase()}${first.slice(1)}: ${words(rest.join(' '))}` : first || '—';
}

// "Chrome on Linux" from a user agent.
function browserOf(ua) {
  if (!ua) return 'Unknown browser';
  const b = /Edg\//.test(ua) ? 'Edge' : /OPR\//.test(ua) ? 'Opera' : /Firefox\//.test(ua) ? 'Firefox'
    : /Chrom(e|ium)\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : /curl\//i.test(ua) ? 'curl' : null;
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS' : /Windows/.test(ua) ? 'Windows'
    : /Mac OS X|Macintosh/.test(ua) ? 'macOS' : /CrOS/.test(ua) ? 'ChromeOS' : /Linux/.test(ua) ? 'Linux' : null;
  if (!b) return ua.length > 40 ? `${ua.slice(0, 40)}…` : ua;
  return os ? `${b} on ${os}` : b;
}

// The QR code of an otpauth:// URI as an inline SVG built node by node: no
// data: URI, no markup parsed, no style attribute (the CSP allows none).  The
// encoder (npm qrcode) is loaded only when someone sets up two-factor.
export async function qrSvg(text, label) {
  const { create } = await import('qrcode');
  const qr = create(text, { errorCorrectionLevel: 'M' });
  const n = qr.modules.size;
  const quiet = 4;
  const dim = n + 2 * quiet;
  let d = '';
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) if (qr.modules.data[y * n + x]) d += `M${x + quiet} ${y + quiet}h1v1h-1z`;
  }
  const svg = document.createElementNS(SVG, 'svg');
  for (const [k, v] of Object.entries({ viewBox: `0 0 ${dim} ${dim}`, width: 208, height: 208, role: 'img',
    'aria-label': label, 'shape-rendering': 'crispEdges', class: 'qr', 'data-modules': n })) svg.setAttribute(k, String(v));
  const bg = document.createElementNS(SVG, 'rect');
  for (const [k, v] of Object.entries({ width: dim, height: dim, fill: '#ffffff' })) bg.setAttribute(k, String(v));
  const fg = document.createElementNS(SVG, 'path');
  fg.setAttribute('d', d);
  fg.setAttribute('fill', '#000000');
  svg.append(bg, fg);
  return svg;
}

const groups = (s) => String(s).replace(/\s+/g, '').replace(/(.{4})(?=.)/g, '$1 ');

// A labelled input.
function field(id, label, attrs = {}, hint = null) {
  const input = h('input', { id, type: 'text', ...attrs, 'aria-describedby': hint ? `${id}-hint` : null });
  return h('div.field', h('label', { for: id }, label), input, hint ? h('p.hint', { id: `${id}-hint` }, hint) : null);
}
const passwordField = (id, label = 'Current password', name = 'password', hint = null) =>
  field(id, label, { type: 'password', name, autocomplete: 'current-password', required: true, maxlength: 1024 }, hint);
const codeField = (id, label = 'Authentication code') => field(id, label, { name: 'code', autocomplete: 'one-time-code',
  inputmode: 'text', autocapitalize: 'off', spellcheck: 'false', maxlength: 24, required: true },
'The 6-digit code from your authenticator app, or a recovery code.');

// The errors these forms share, in words; `field` is the input to mark.
function explain(err) {
  switch (err.code) {
    case 'wrong_password': return ['The password is not right.', 'password'];
    case 'invalid_code': return ['That code is not valid. Enter the current 6-digit code from your authenticator app, or a recovery code you have not used yet.', 'code'];
    case 'mfa_required': return ['Enter a code from your authenticator app as well.', 'code'];
    case 'invalid_password': return ['Choose a password of 10 to 1024 characters.', 'new_password'];
    case 'email_taken': return ['That address belongs to another account.', 'email'];
    case 'same_email': return ['That is already your address.', 'email'];
    case 'mfa_not_set_up': return ['The set-up has expired or was not started: cancel and set it up again.', null];
    case 'mfa_not_enabled': return ['Two-factor authentication is not on.', null];
    case 'mfa_already_enabled': return ['Two-factor authentication is already on.', null];
    case 'invalid_email': return ['Enter a valid e-mail address.', 'email'];
    case 'too_many_attempts': return [tooManyText(err), null];
    default:
      if (err.status === 429) return [tooManyText(err), null];
      return [err.message || 'That did not work.', (err.details && typeof err.details.path === 'string') ? err.details.path.replace(/^\$?\.?/, '') : null];
  }
}
// A 401 that is not about what was typed: the session has ended.
const sessionEnded = (err) => err && err.status === 401
  && !['wrong_password', 'invalid_code', 'mfa_required', 'invalid_credentials'].includes(err.code);

// A form with its error box, busy button and success note.  `send(data)`
// returns a message (string or nodes) to show, or nothing.
function actionForm(ctx, { id, label, fields, submit, danger = false, send }) {
  const error = h('div.alert.alert-error', { id: `${id}-error`, role: 'alert', tabindex: -1, hidden: true });
  const ok = h('div.alert.alert-ok', { id: `${id}-ok`, role: 'status', hidden: true });
  const button = h('button.btn', { type: 'submit', class: danger ? 'btn-danger' : 'btn-primary' }, submit);
  const form = h('form.account-form', { id, novalidate: true, 'aria-label': label }, fields, error, ok, h('div.form-foot', button));
  const fail = (message, name) => {
    error.textContent = message;
    error.hidden = false;
    const input = name && form.elements[name];
    if (input && input.focus) { input.setAttribute('aria-invalid', 'true'); input.focus(); } else error.focus();
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    ok.hidden = true;
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    const data = Object.fromEntries(new FormData(form));
    for (const k of Object.keys(data)) if (typeof data[k] === 'string' && !/password/.test(k)) data[k] = data[k].trim();
    button.disabled = true;
    button.setAttribute('aria-busy', 'true');
    try {
      const message = await send(data, { fail, form });
      if (message) { fill(ok, message); ok.hidden = false; }
    } catch (err) {
      if (sessionEnded(err)) { ctx.toLogin('expired'); return; }
      const [message, name] = explain(err);
      fail(message, name);
    } finally {
      button.disabled = false;
      button.removeAttribute('aria-busy');
    }
  });
  return form;
}

export async function render(root, ctx) {
  let account;
  try {
    account = await ctx.loadAccount();
  } catch (err) {
    if (err.status === 401) throw err;
    fill(root, viewHead('Account'), failure(err, () => render(root, ctx)));
    return null;
  }
  let gone = false;
  const profile = h('section.panel', { id: 'profile', 'aria-labelledby': 'profile-h' });
  const mfa = h('section.panel', { id: 'two-factor', 'aria-labelledby': 'mfa-h' });
  const sessions = h('section.panel', { id: 'sessions', 'aria-labelledby': 'sessions-h' });
  const activity = h('section.panel', { id: 'activity', 'aria-labelledby': 'activity-h' });
  const data = h('section.panel', { id: 'data', 'aria-labelledby': 'data-h' });
  const danger = h('section.panel.danger-zone', { id: 'delete-account', 'aria-labelledby': 'delete-h' });

  async function reload() {
    account = await ctx.loadAccount();
    return account;
  }

  // ---- Profile -----------------------------------------------------------
  const profileFacts = h('dl.kv', { id: 'profile-facts' });
  function drawFacts() {
    const verified = account.email_verified !== false;
    fill(profileFacts,
      h('dt', 'Name'), h('dd', account.name || '—'),
      h('dt', 'E-mail'), h('dd', h('span', { id: 'account-email' }, account.email), ' ',
        h('span.badge', { id: 'email-state', class: verified ? 'badge-ok' : 'badge-warn', 'data-verified': String(verified) },
          verified ? 'verified' : 'not verified')),
      account.pending_email ? [h('dt', 'Changing to'), h('dd', h('span', { id: 'pending-email' }, account.pending_email), ' ',
        h('span.muted', '— waiting for you to follow the link we sent there'))] : null,
      h('dt', 'Member since'), h('dd', date(account.created_at)));
  }
  const emailForm = actionForm(ctx, {
    id: 'email-form', label: 'Change e-mail address', submit: 'Send a confirmation link',
    fields: [field('new-email', 'New e-mail address', { type: 'email', name: 'email', autocomplete: 'email', required: true, maxlength: 254 }),
      passwordField('email-password')],
    async send(d, { fail }) {
      if (!/^[^\s@]+@[^\s@]+$/.test(d.email)) return fail('Enter a valid e-mail address.', 'email');
      if (!d.password) return fail('Enter your current password.', 'password');
      const r = await post('/account/email', { email: d.email, password: d.password });
      emailForm.reset();
      await reload().catch(() => {});
      drawFacts();
      const to = (r && r.pending_email) || d.email;
      return `We sent a link to ${to}: your address changes when you follow it (within 24 hours). Until then it stays ${account.email}, which got a notice.`;
    },
  });
  const passwordForm = actionForm(ctx, {
    id: 'password-form', label: 'Change password', submit: 'Change password',
    fields: [passwordField('current-password', 'Current password', 'current_password'),
      field('new-password', 'New password', { type: 'password', name: 'new_password', autocomplete: 'new-password', required: true, minlength: 10, maxlength: 1024 }, '10 to 1024 characters.'),
      field('new-password2', 'New password, again', { type: 'password', name: 'new_password2', autocomplete: 'new-password', required: true, maxlength: 1024 })],
    async send(d, { fail }) {
      if (!d.current_password) return fail('Enter your current password.', 'current_password');
      if (d.new_password.length < 10 || d.new_password.length > 1024) return fail('Choose a password of 10 to 1024 characters.', 'new_password');
      if (d.new_password !== d.new_password2) return fail('The two new passwords are not the same.', 'new_password2');
      let r;
      try {
        r = await post('/account/password', { current_password: d.current_password, new_password: d.new_password });
      } catch (err) {
        if (err.code === 'wrong_password') return fail('The current password is not right.', 'current_password');
        throw err;
      }
      passwordForm.reset();
      loadSessions();
      const n = Number(r && r.sessions_revoked) || 0;
      return `Password changed. ${n === 0 ? 'No other session was signed in.' : `${n} other session${n === 1 ? ' was' : 's were'} signed out.`}`;
    },
  });
  fill(profile, h('h2', { id: 'profile-h' }, 'Profile'), profileFacts,
    h('div.account-forms',
      h('div', h('h3', 'Change e-mail address'), h('p.hint', 'We send a link to the new address; the old one gets a notice and stays until the link is followed.'), emailForm),
      h('div', h('h3', 'Change password'), h('p.hint', 'Every other session is signed out.'), passwordForm)));
  drawFacts();

  // ---- Two-factor authentication ----------------------------------------
  function recoveryBox(codes, title) {
    const text = `Lattice recovery codes for ${account.email}\n\n${codes.join('\n')}\n\nEach code works once, in place of a code from the authenticator app.\n`;
    const url = URL.createObjectURL(new Blob([text], { type: 'text/plain' }));
    const box = h('div.alert.alert-warn.recovery', { id: 'recovery-codes', role: 'status' },
      h('strong', title), h('p', 'Save these codes somewhere safe, away from your phone: each one lets you log in once if you lose it. They are shown only now.'),
      h('ol.recovery-list', codes.map((c) => h('li', h('code', { 'data-recovery-code': '' }, c)))),
      h('div.toolbar',
        h('button.btn.btn-small', { type: 'button', onclick: async (ev) => {
          const btn = ev.currentTarget;   // null once the handler has awaited
          const ok = await copyText(codes.join('\n'));
          btn.textContent = ok ? 'Copied' : 'Select and copy';
        } }, 'Copy'),
        h('a.btn.btn-small', { href: url, download: 'lattice-recovery-codes.txt', id: 'recovery-download' }, 'Download .txt'),
        h('button.btn.btn-small', { type: 'button', onclick: () => { URL.revokeObjectURL(url); box.remove(); } }, 'I have saved them')));
    return box;
  }

  function drawMfa(extra = null) {
    if (account.mfa_enabled) {
      const left = Number(account.recovery_codes_left ?? 0);
      const disableForm = actionForm(ctx, {
        id: 'mfa-disable-form', label: 'Turn off two-factor authentication', submit: 'Turn off', danger: true,
        fields: [passwordField('mfa-disable-password'), codeField('mfa-disable-code')],
        async send(d, { fail }) {
          if (!d.password) return fail('Enter your current password.', 'password');
          if (!d.code) return fail('Enter a code from your authenticator app.', 'code');
          await post('/account/2fa/disable', { password: d.password, code: d.code });
          await reload();
          toast('Two-factor authentication is off');
          drawMfa();
          drawDanger();
          return null;
        },
      });
      const codesForm = actionForm(ctx, {
        id: 'mfa-codes-form', label: 'New recovery codes', submit: 'Make new recovery codes',
        fields: [passwordField('mfa-codes-password'), codeField('mfa-codes-code')],
        async send(d, { fail }) {
          if (!d.password) return fail('Enter your current password.', 'password');
          if (!d.code) return fail('Enter a code from your authenticator app.', 'code');
          const r = await post('/account/2fa/recovery-codes', { password: d.password, code: d.code });
          await reload().catch(() => {});
          drawMfa(recoveryBox(listOf(r, 'recovery_codes'), 'Your new recovery codes. The old ones no longer work.'));
          return null;
        },
      });
      fill(mfa, h('h2', { id: 'mfa-h' }, 'Two-factor authentication', h('span.badge.badge-ok', { id: 'mfa-state', 'data-mfa': 'on' }, 'on')),
        extra,
        h('p', 'Logging in takes your password and a code from your authenticator app. ',
          h('span', { id: 'recovery-left', class: left <= 3 ? 'bad-text' : '' },
            `${left} unused recovery code${left === 1 ? '' : 's'} left.`)),
        h('div.account-forms',
          h('div', h('h3', 'New recovery codes'), h('p.hint', 'Replaces every recovery code you have with ten new ones.'), codesForm),
          h('div', h('h3', 'Turn off'), h('p.hint', 'Your login then takes your password alone.'), disableForm)));
      return;
    }
    const enrol = h('div', { id: 'mfa-enrol' });
    const setupForm = actionForm(ctx, {
      id: 'mfa-setup-form', label: 'Set up two-factor authentication', submit: 'Set up two-factor authentication',
      fields: [passwordField('mfa-setup-password', 'Current password', 'password', 'To confirm it is you.')],
      async send(d, { fail }) {
        if (!d.password) return fail('Enter your current password.', 'password');
        let r;
        try {
          r = await post('/account/2fa/setup', { password: d.password });
        } catch (err) {
          if (err.code === 'mfa_already_enabled') { await reload(); drawMfa(); return null; }
          throw err;
        }
        setupForm.hidden = true;
        await showEnrolment(enrol, r, () => { setupForm.hidden = false; setupForm.reset(); fill(enrol); });
        return null;
      },
    });
    fill(mfa, h('h2', { id: 'mfa-h' }, 'Two-factor authentication', h('span.badge', { id: 'mfa-state', 'data-mfa': 'off' }, 'off')),
      h('p', 'Protect your login with a second step: after your password, a 6-digit code from an authenticator app on your phone (any app that reads TOTP QR codes).'),
      setupForm, enrol);
  }

  async function showEnrolment(box, { secret, otpauth_uri: uri }, cancel) {
    const enableForm = actionForm(ctx, {
      id: 'mfa-enable-form', label: 'Confirm two-factor authentication', submit: 'Turn on',
      fields: [field('mfa-enable-code', 'Code from the app', { name: 'code', autocomplete: 'one-time-code', inputmode: 'numeric',
        maxlength: 12, required: true }, 'The 6 digits the app shows now for Lattice.')],
      async send(d, { fail }) {
        const code = d.code.replace(/\s+/g, '');
        if (!/^\d{6}$/.test(code)) return fail('Enter the 6 digits your app shows.', 'code');
        const r = await post('/account/2fa/enable', { code });
        await reload().catch(() => { account = { ...account, mfa_enabled: true }; });
        drawMfa(recoveryBox(listOf(r, 'recovery_codes'), 'Two-factor authentication is on.'));
        drawDanger();
        document.getElementById('recovery-codes')?.scrollIntoView({ block: 'nearest' });
        return null;
      },
    });
    let qr;
    try { qr = await qrSvg(uri, 'QR code to scan with your authenticator app'); } catch (err) { qr = h('p.muted', `The QR code could not be drawn (${err.message}): enter the key by hand.`); }
    fill(box, h('div.mfa-enrol',
      h('figure.qr-box', qr, h('figcaption.hint', 'Scan with your authenticator app')),
      h('div',
        h('ol.steps-plain',
          h('li', 'Scan the QR code with your authenticator app, or enter this key by hand:',
            h('div.secret', h('code', { id: 'mfa-secret', 'data-secret': secret }, groups(secret)),
              h('button.btn.btn-small', { type: 'button', 'data-copy': '', 'data-copy-text': secret }, 'Copy'))),
          h('li', 'Enter the 6-digit code the app shows to turn two-factor authentication on.')),
        enableForm,
        h('button.btn.btn-small.btn-ghost', { type: 'button', onclick: cancel }, 'Cancel'))));
    box.querySelector('#mfa-enable-code').focus();
  }
  drawMfa();

  // ---- Sessions ----------------------------------------------------------
  const sessionList = h('div', { id: 'session-list' });
  const revokeOthers = h('button.btn.btn-small.btn-danger', { type: 'button', id: 'revoke-others', disabled: true }, 'Sign out all other sessions');
  let others = [];
  async function loadSessions() {
    let list;
    try {
      list = listOf(await get('/auth/sessions'), 'sessions');
    } catch (err) {
      if (err.status === 401) throw err;
      fill(sessionList, failure(err, loadSessions));
      return;
    }
    if (gone) return;
    others = list.filter((s) => !s.current);
    revokeOthers.disabled = others.length === 0;
    fill(sessionList, h('div.table-wrap', h('table.data', { 'aria-label': 'Sessions' },
      h('thead', h('tr', h('th', 'Browser'), h('th', 'Address'), h('th', 'Signed in'), h('th', 'Last active'), h('th', h('span.visually-hidden', 'Actions')))),
      h('tbody', list.map((s) => h('tr', { 'data-session-id': s.id, class: s.current ? 'current' : '' },
        h('td', { title: s.user_agent || '' }, browserOf(s.user_agent)),
        h('td', s.client_addr || '—'),
        h('td', timeEl(s.created_at, date(s.created_at))),
        h('td', timeEl(s.last_seen_at)),
        h('td', s.current ? h('span.badge.badge-brand', 'this browser')
          : h('button.btn.btn-small', { type: 'button', onclick: (ev) => revoke(s, ev.currentTarget) }, 'Sign out'))))))));
  }
  async function revoke(s, btn) {
    btn.disabled = true;
    try {
      await del(`/auth/sessions/${encodeURIComponent(s.id)}`);
      toast('Session signed out');
    } catch (err) {
      if (err.status === 401) return ctx.toLogin('expired');
      if (err.status !== 404) toast(err.message, 'error');
    }
    await loadSessions();
  }
  revokeOthers.addEventListener('click', async () => {
    const n = others.length;
    if (!(await confirmDialog('Sign out all other sessions?', `${n} other session${n === 1 ? '' : 's'} will have to log in again. This browser stays signed in.`, 'Sign them out', true))) return;
    revokeOthers.disabled = true;
    let failed = 0;
    for (const s of others) {
      try { await del(`/auth/sessions/${encodeURIComponent(s.id)}`); } catch (err) {
        if (err.status === 401) return ctx.toLogin('expired');
        if (err.status !== 404) failed++;
      }
    }
    toast(failed ? `${failed} session${failed === 1 ? '' : 's'} could not be signed out` : 'Every other session is signed out', failed ? 'error' : 'ok');
    await loadSessions();
  });
  fill(sessions, h('h2', { id: 'sessions-h' }, 'Sessions'),
    h('p.blurb.muted', 'Where your account is logged in. Sign out any you do not recognise, then change your password.'),
    h('div.toolbar', revokeOthers), sessionList);

  // ---- Activity ----------------------------------------------------------
  const rows = h('tbody');
  const older = h('button.btn.btn-small', { type: 'button', id: 'audit-older', hidden: true }, 'Older');
  const activityBody = h('div', { id: 'activity-list' });
  let nextBefore = null;
  async function loadActivity(before) {
    older.disabled = true;
    let r;
    try {
      r = await get(`/account/audit?limit=20${before ? `&before=${encodeURIComponent(before)}` : ''}`);
    } catch (err) {
      if (err.status === 401) throw err;
      if (!before) fill(activityBody, failure(err, () => loadActivity()));
      else toast(err.message, 'error');
      older.disabled = false;
      return;
    }
    if (gone) return;
    const events = listOf(r, 'events');
    nextBefore = r && r.next_before != null ? r.next_before : null;
    if (!before && events.length === 0) {
      fill(activityBody, empty('No activity yet', 'Log-ins, key changes and account changes show here.'));
    } else {
      if (!before) {
        rows.replaceChildren();
        fill(activityBody, h('div.table-wrap', h('table.data', { 'aria-label': 'Account activity' },
          h('thead', h('tr', h('th', 'When'), h('th', 'What'), h('th', 'From address'))), rows)));
      }
      for (const e of events) {
        rows.append(h('tr', { 'data-action': e.action, 'data-event-id': e.id },
          h('td', timeEl(e.at, date(e.at))),
          h('td', actionWords(e.action)),
          h('td', e.client_addr ? h('code', e.client_addr) : h('span.muted', '—'))));
      }
    }
    older.hidden = nextBefore == null;
    older.disabled = false;
  }
  older.addEventListener('click', () => loadActivity(nextBefore));
  fill(activity, h('h2', { id: 'activity-h' }, 'Activity'),
    h('p.blurb.muted', 'What happened to your account, newest first: log-ins, changes to keys, the password, the address and two-factor authentication.'),
    activityBody, h('div.toolbar.pager', older));

  // ---- Data --------------------------------------------------------------
  fill(data, h('h2', { id: 'data-h' }, 'Your data'),
    h('p', 'Download everything your account owns — the profile, the services and all their data, the API keys (never their secrets), the sessions and the activity — as one JSON file, at any time.'),
    h('a.btn', { href: '/api/v1/account/export', download: '', id: 'export-link' }, 'Download my data (JSON)'));

  // ---- Delete ------------------------------------------------------------
  const PHRASE = 'delete my account';
  function drawDanger() {
    const form = actionForm(ctx, {
      id: 'delete-form', label: 'Delete account', submit: 'Delete my account permanently', danger: true,
      fields: [passwordField('delete-password'),
        account.mfa_enabled ? codeField('delete-code') : null,
        field('delete-confirm', `Type “${PHRASE}” to confirm`, { name: 'confirm', autocomplete: 'off', spellcheck: 'false', required: true })],
      async send(d, { fail }) {
        if (!d.password) return fail('Enter your current password.', 'password');
        if (account.mfa_enabled && !d.code) return fail('Enter a code from your authenticator app.', 'code');
        if (d.confirm.toLowerCase() !== PHRASE) return fail(`Type “${PHRASE}” to confirm.`, 'confirm');
        const body = { password: d.password };
        if (account.mfa_enabled) body.code = d.code;
        try {
          await del('/account', body);
        } catch (err) {
          if (err.code === 'mfa_required' && !account.mfa_enabled) {
            await reload().catch(() => {});
            drawDanger();
            return null;
          }
          throw err;
        }
        gone = true;
        location.assign('/?account=deleted');
        return null;
      },
    });
    fill(danger, h('h2', { id: 'delete-h' }, 'Delete account'),
      h('p', 'This deletes your account and everything it owns at once: the services and all their data, the API keys, the sessions and the activity. Your login stops working immediately. It cannot be undone.'),
      h('p', 'Only the invoices are kept, for 10 years, as accounting and tax law require — without any of your service data. ',
        h('a', { href: '/api/v1/account/export', download: '' }, 'Download your data'), ' first if you want a copy.'),
      form);
  }
  drawDanger();

  fill(root, viewHead('Account'), profile, mfa, sessions, activity, data, danger);
  await Promise.all([loadSessions(), loadActivity()]);
  return () => { gone = true; };
}
