// The browser's client of /api/v1: same-origin cookies, the CSRF double-submit
// header on unsafe methods, and one error type carrying the API's
// {"error": {code, message, details, request_id}}.
export const API = '/api/v1';

export class ApiError extends Error {
  constructor(status, body, retryAfter = null) {
    const e = (body && body.error) || {};
    super(e.message || `request failed (${status})`);
    this.status = status;
    this.code = e.code || (status === 0 ? 'network' : 'http_' + status);
    this.details = e.details;
    this.requestId = e.request_id;
    // seconds to wait, from a 429's Retry-After (null when absent)
    this.retryAfter = retryAfter;
  }
}

export function cookie(name) {
  const m = document.cookie.match(new RegExp('(?:^|;\\s*)' + name + '=([^;]*)'));
  return m ? decodeURIComponent(m[1]) : null;
}

export async function api(method, path, body, { signal } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (!['GET', 'HEAD'].includes(method)) {
    const csrf = cookie('lattice_csrf');
    if (csrf) headers['X-CSRF-Token'] = csrf;
  }
  let res;
  try {
    res = await fetch(API + path, {
      method, headers, credentials: 'same-origin', signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, { error: { message: 'The server could not be reached. Check your connection and try again.' } });
  }
  const text = res.status === 204 ? '' : await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) {
    const ra = Number(res.headers.get('Retry-After'));
    throw new ApiError(res.status, data, Number.isFinite(ra) && ra > 0 ? ra : null);
  }
  return data;
}

export const get = (path, opts) => api('GET', path, undefined, opts);
export const post = (path, body = {}) => api('POST', path, body);
export const patch = (path, body = {}) => api('PATCH', path, body);
// DELETE with a body only when one is given (DELETE /account {password, code}).
export const del = (path, body) => api('DELETE', path, body);

// "in 3 minutes" from a 429's Retry-After; '' when the server gave none.
export function waitText(err) {
  const s = err && err.retryAfter;
  if (!s) return '';
  if (s < 60) return `in ${Math.ceil(s)} second${Math.ceil(s) === 1 ? '' : 's'}`;
  if (s < 5400) { const m = Math.ceil(s / 60); return `in ${m} minute${m === 1 ? '' : 's'}`; }
  const hrs = Math.ceil(s / 3600);
  return `in ${hrs} hour${hrs === 1 ? '' : 's'}`;
}

// What a 429 says to the person, with its wait when the server gave one.
export const tooManyText = (err) => `Too many attempts. Wait ${waitText(err) || 'a few minutes'} and try again.`;

// A field of an API object under either naming (ingest speaks camelCase,
// identity and billing snake_case).
export function pick(obj, ...names) {
  if (!obj) return undefined;
  for (const n of names) if (obj[n] !== undefined && obj[n] !== null) return obj[n];
  return undefined;
}
