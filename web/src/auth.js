// Sign-up and log-in forms.  On success the API has set the session cookies;
// we go to the dashboard (or the page the user was sent away from).
import { post, ApiError } from './api.js';
import './site.js';

const form = document.querySelector('form[data-auth]');
const errorBox = document.getElementById('form-error');

function nextUrl() {
  const next = new URLSearchParams(location.search).get('next') || '';
  // only same-site dashboard paths: never an open redirect
  return /^\/dashboard(\/[\w\-/]*)?(\?[\w=&%-]*)?$/.test(next) ? next : '/dashboard';
}

function showError(message, field) {
  errorBox.textContent = message;
  errorBox.hidden = false;
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  const input = field && form.elements[field];
  if (input) { input.setAttribute('aria-invalid', 'true'); input.focus(); } else errorBox.focus();
}

function messageFor(err, mode) {
  if (err.code === 'invalid_credentials') return 'That email and password do not match an account.';
  if (err.code === 'already_exists' || err.code === 'email_taken') return 'An account with this email already exists. Log in instead?';
  if (err.status === 429) return 'Too many attempts. Wait a minute and try again.';
  if (err.status === 0) return err.message;
  return err.message || (mode === 'signup' ? 'Sign-up failed.' : 'Log-in failed.');
}

if (form) {
  const mode = form.dataset.auth;
  const button = form.querySelector('button[type=submit]');
  const params = new URLSearchParams(location.search);
  if (params.get('reason') === 'expired') {
    errorBox.className = 'alert alert-warn';
    errorBox.textContent = 'Your session has ended. Log in again to continue.';
    errorBox.hidden = false;
  }
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    errorBox.hidden = true;
    errorBox.className = 'alert alert-error';
    const data = Object.fromEntries(new FormData(form));
    if (mode === 'signup' && String(data.password).length < 10) {
      showError('Choose a password of at least 10 characters.', 'password');
      return;
    }
    button.disabled = true;
    button.setAttribute('aria-busy', 'true');
    try {
      if (mode === 'signup') await post('/auth/signup', { name: data.name, email: data.email, password: data.password });
      else await post('/auth/login', { email: data.email, password: data.password });
      location.assign(mode === 'signup' ? '/dashboard/onboarding' : nextUrl());
    } catch (err) {
      const e = err instanceof ApiError ? err : new ApiError(0, null);
      const field = e.details && (e.details.field || e.details.path);
      showError(messageFor(e, mode), typeof field === 'string' ? field.replace(/^\$?\.?/, '') : null);
    } finally {
      button.disabled = false;
      button.removeAttribute('aria-busy');
    }
  });
}
