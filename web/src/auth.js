// Sign-up and log-in forms.  On success the API has set the session cookies;
// we go to the dashboard (or the page the user was sent away from).  A login
// to an account with two-factor authentication takes two steps: the API
// answers 401 mfa_required, the form then asks for a code and sends
// {email, password, code} again.
import { post, ApiError, tooManyText } from './api.js';
import './site.js';

const form = document.querySelector('form[data-auth]');
const errorBox = document.getElementById('form-error');

function nextUrl() {
  const next = new URLSearchParams(location.search).get('next') || '';
  // only same-site dashboard paths: never an open redirect
  return /^\/dashboard(\/[\w\-/]*)?(\?[\w=&%-]*)?$/.test(next) ? next : '/dashboard';
}

function say(message, kind = 'error') {
  errorBox.className = `alert alert-${kind}`;
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function showError(message, field) {
  say(message, 'error');
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  const input = field && form.elements[field];
  if (input && !input.disabled) { input.setAttribute('aria-invalid', 'true'); input.focus(); } else errorBox.focus();
}

function messageFor(err, mode) {
  if (err.code === 'invalid_credentials') return 'That email and password do not match an account.';
  if (err.code === 'invalid_code') return 'That code is not valid. Enter the current 6-digit code from your authenticator app (it changes every 30 seconds), or a recovery code you have not used yet.';
  if (err.code === 'already_exists' || err.code === 'email_taken') return 'An account with this email already exists. Log in instead?';
  if (err.code === 'invalid_password') return 'Choose a password of 10 to 1024 characters.';
  if (err.status === 429) return tooManyText(err);
  if (err.status === 0) return err.message;
  return err.message || (mode === 'signup' ? 'Sign-up failed.' : 'Log-in failed.');
}

// "123 456" -> "123456"; recovery codes keep their dash.
const normalizeCode = (v) => String(v || '').replace(/\s+/g, '');

if (form) {
  const mode = form.dataset.auth;
  const button = form.querySelector('button[type=submit]');
  const codeField = document.getElementById('code-field');
  const codeInput = form.elements.code;
  let mfaStep = false;
  const params = new URLSearchParams(location.search);
  if (params.get('reason') === 'expired') say('Your session has ended. Log in again to continue.', 'warn');
  else if (params.get('reset') === 'done') say('Your password has been changed. Log in with the new one.', 'ok');

  function enterMfaStep() {
    mfaStep = true;
    codeField.hidden = false;
    codeInput.disabled = false;
    codeInput.required = true;
    button.textContent = 'Verify and log in';
    say('Two-factor authentication is on for this account. Enter the code from your authenticator app to finish logging in.', 'info');
    codeInput.focus();
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    errorBox.hidden = true;
    const data = Object.fromEntries(new FormData(form));
    if (mode === 'signup' && String(data.password).length < 10) {
      showError('Choose a password of at least 10 characters.', 'password');
      return;
    }
    let code;
    if (mode === 'login' && mfaStep) {
      code = normalizeCode(data.code);
      if (!/^\d{6}$/.test(code) && !/^[A-Za-z0-9]{5}-?[A-Za-z0-9]{5}$/.test(code)) {
        showError('Enter the 6-digit code from your authenticator app, or a recovery code like abcde-fghij.', 'code');
        return;
      }
    }
    button.disabled = true;
    button.setAttribute('aria-busy', 'true');
    try {
      if (mode === 'signup') await post('/auth/signup', { name: data.name, email: data.email, password: data.password });
      else await post('/auth/login', code ? { email: data.email, password: data.password, code } : { email: data.email, password: data.password });
      location.assign(mode === 'signup' ? '/dashboard/onboarding' : nextUrl());
    } catch (err) {
      const e = err instanceof ApiError ? err : new ApiError(0, null);
      if (mode === 'login' && e.code === 'mfa_required') {
        enterMfaStep();
        return;
      }
      if (e.code === 'invalid_code') {
        if (codeInput) codeInput.value = '';
        showError(messageFor(e, mode), 'code');
        return;
      }
      const field = e.details && (e.details.field || e.details.path);
      showError(messageFor(e, mode), typeof field === 'string' ? field.replace(/^\$?\.?/, '') : null);
    } finally {
      button.disabled = false;
      button.removeAttribute('aria-busy');
    }
  });
}
