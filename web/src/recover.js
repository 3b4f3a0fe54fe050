// The pages a link from an e-mail leads to, and the one that sends such a
// link: /forgot-password (ask for a reset link), /reset-password?token=…
// (choose a new password), /verify-email?token=… (confirm an address, on
// load), /alerts/verify?token=… (confirm an address an account sends its
// alerts to, on load).  None needs a session.  See docs/account.md and
// docs/alerts.md.
import { post, ApiError, tooManyText } from './api.js';
import { h, fill } from './ui.js';
import './site.js';

const errorBox = document.getElementById('form-error');
const doneBox = document.getElementById('flow-done');
const token = new URLSearchParams(location.search).get('token') || '';

const asApiError = (err) => (err instanceof ApiError ? err : new ApiError(0, null));
const forgotLink = () => h('a', { href: '/forgot-password' }, 'Ask for a new link');

function showError(form, message, field) {
  fill(errorBox, message);
  errorBox.hidden = false;
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  const input = field && form.elements[field];
  if (input) { input.setAttribute('aria-invalid', 'true'); input.focus(); } else errorBox.focus();
}

// A form whose submit runs `send`; the button is busy meanwhile.
function onSubmit(form, send) {
  const button = form.querySelector('button[type=submit]');
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    errorBox.hidden = true;
    button.disabled = true;
    button.setAttribute('aria-busy', 'true');
    try {
      await send(Object.fromEntries(new FormData(form)));
    } finally {
      button.disabled = false;
      button.removeAttribute('aria-busy');
    }
  });
}

// The form is done: it goes, the outcome stays.
function finish(form, ...message) {
  form.hidden = true;
  fill(doneBox, ...message);
  doneBox.hidden = false;
  doneBox.focus();
}

// /forgot-password: the same answer whether or not the address has an account.
const forgot = document.querySelector('form[data-flow=forgot]');
if (forgot) {
  const prefill = new URLSearchParams(location.search).get('email');
  if (prefill) forgot.elements.email.value = prefill;
  onSubmit(forgot, async ({ email }) => {
    email = String(email || '').trim();
    if (!/^[^\s@]+@[^\s@]+$/.test(email)) return showError(forgot, 'Enter the e-mail address of your account.', 'email');
    try {
      await post('/auth/password/forgot', { email });
      document.getElementById('flow-intro').hidden = true;
      finish(forgot, h('strong', 'Check your inbox.'), ' ',
        `If an account exists for ${email}, we sent a link to it to choose a new password. The link works for one hour. `,
        'Nothing arrived? Look in the spam folder, or ask again in a few minutes.');
    } catch (err) {
      const e = asApiError(err);
      if (e.status === 429) return showError(forgot, tooManyText(e));
      if (e.code === 'invalid_input' || e.code === 'invalid_email') return showError(forgot, 'Enter a valid e-mail address.', 'email');
      showError(forgot, e.message);
    }
  });
}

// /reset-password?token=…
const reset = document.querySelector('form[data-flow=reset]');
if (reset) {
  const deadLink = (why) => {
    reset.hidden = true;
    document.getElementById('flow-intro').hidden = true;
    fill(errorBox, why, ' ', forgotLink(), '.');
    errorBox.hidden = false;
  };
  if (!/^[A-Za-z0-9_-]{16,}={0,2}$/.test(token)) {
    deadLink('This link is incomplete: open it straight from the e-mail, or ask for a new one.');
  } else {
    onSubmit(reset, async ({ password, password2 }) => {
      if (String(password).length < 10 || String(password).length > 1024) return showError(reset, 'Choose a password of 10 to 1024 characters.', 'password');
      if (password !== password2) return showError(reset, 'The two passwords are not the same.', 'password2');
      try {
        await post('/auth/password/reset', { token, password });
        document.getElementById('flow-intro').hidden = true;
        document.getElementById('flow-alt').hidden = true;
        finish(reset, h('strong', 'Your password has been changed.'), ' ',
          'Every session of your account was signed out. ',
          h('p.done-action', h('a.btn.btn-primary', { href: '/login?reset=done', id: 'to-login' }, 'Log in with the new password')));
      } catch (err) {
        const e = asApiError(err);
        if (e.code === 'invalid_token') return deadLink('This link no longer works: it was already used, or a newer link was sent since.');
        if (e.code === 'token_expired') return deadLink('This link has expired: reset links work for one hour.');
        if (e.code === 'invalid_password') return showError(reset, 'Choose a password of 10 to 1024 characters.', 'password');
        if (e.status === 429) return showError(reset, tooManyText(e));
        showError(reset, e.message);
      }
    });
  }
}

// A link page that redeems its token on load: POST {token} to path, then
// ok(answer) or failed[code] (expired, used) says what happened.
function redeemOnLoad(path, ok, failed) {
  const out = document.getElementById('verify-result');
  const show = (kind, ...body) => {
    fill(out, h(`div.alert.alert-${kind}`, { 'data-verify': kind === 'ok' ? 'verified' : 'failed' }, ...body));
    out.focus();
  };
  (async () => {
    if (!/^[A-Za-z0-9_-]{16,}={0,2}$/.test(token)) {
      return show('error', 'This link is incomplete: open it straight from the e-mail.');
    }
    try {
      show('ok', ...ok(await post(path, { token })));
    } catch (err) {
      const e = asApiError(err);
      if (e.code === 'token_expired') show('warn', ...failed.token_expired);
      else if (e.code === 'invalid_token') show('error', ...failed.invalid_token);
      else if (e.status === 429) show('error', tooManyText(e));
      else show('error', e.message);
    }
  })();
}

// /verify-email?token=…: the account's own address.
if (document.querySelector('[data-flow=verify]')) {
  redeemOnLoad('/auth/email/verify',
    (r) => [h('strong', 'Thank you: your address is verified.'), ' ',
      r && r.email ? [h('span', { id: 'verified-email' }, r.email), ' is the e-mail address of your Lattice account.'] : null],
    { token_expired: [h('strong', 'This link has expired.'), ' Log in and use “Re-send link” on the dashboard to get a new one.'],
      invalid_token: [h('strong', 'This link no longer works.'), ' It was already used, or a newer one was sent since. ',
        'If you have already verified your address, there is nothing more to do.'] });
}

// /alerts/verify?token=…: an address an account added as an alert channel
// (its owner may have no Lattice account at all).
if (document.querySelector('[data-flow=alert-verify]')) {
  redeemOnLoad('/alerts/recipients/verify',
    (r) => [h('strong', 'Thank you: the address is confirmed.'), ' ',
      r && r.address ? ['Alerts will now be sent to ', h('span', { id: 'verified-address' }, r.address), '.']
        : 'Alerts will now be sent to it.'],
    { token_expired: [h('strong', 'This link has expired.'),
        ' Confirmation links work for 7 days: ask the person who added the address to add it again.'],
      invalid_token: [h('strong', 'This link no longer works.'), ' It was already used, or the address was added again since. ',
        'If you have already confirmed it, there is nothing more to do.'] });
}
