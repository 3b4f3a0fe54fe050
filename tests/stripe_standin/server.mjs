// TEST CODE: a local stand-in for Stripe's API, never used in production.
// It speaks Stripe's documented form-encoded API for the calls Lattice makes
// (customers, checkout sessions, billing-portal sessions, subscription
// updates), checks the secret key, replays by Idempotency-Key like Stripe,
// and records every request so tests can assert what Lattice sent.
import http from 'node:http';

export async function startStripeStandin({ secretKey = 'sk_test_standin' } = {}) {
  const requests = [];
  const idempotent = new Map(); // key -> {body, status, response}
  let failures = [];            // statuses to answer next, e.g. [500, 500]
  let counter = 0;
  const run = Math.random().toString(36).slice(2, 8); // ids unique across runs, like Stripe's
  const id = (prefix) => `${prefix}_test${run}_${++counter}`;
  const now = () => Math.floor(Date.now() / 1000);

  function error(res, status, type, message) {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { type, message } }));
  }

  function answer(method, path, p) {
    if (method === 'POST' && path === '/v1/customers') {
      return { id: id('cus'), object: 'customer', email: p.get('email'), name: p.get('name'),
               metadata: { user_id: p.get('metadata[user_id]') } };
    }
    if (method === 'POST' && path === '/v1/checkout/sessions') {
      const s = id('cs');
      return { id: s, object: 'checkout.session', mode: p.get('mode'), customer: p.get('customer'),
               url: `https://checkout.stripe.test/c/pay/${s}`, success_url: p.get('success_url') };
    }
    if (method === 'POST' && path === '/v1/billing_portal/sessions') {
      const s = id('bps');
      return { id: s, object: 'billing_portal.session', customer: p.get('customer'),
               url: `https://billing.stripe.test/p/session/${s}`, return_url: p.get('return_url') };
    }
    const m = path.match(/^\/v1\/subscriptions\/(sub_[A-Za-z0-9_]+)$/);
    if (method === 'POST' && m) {
      return { id: m[1], object: 'subscription', status: 'active',
               cancel_at_period_end: p.get('cancel_at_period_end') === 'true',
               current_period_end: now() + 365 * 86400 };
    }
    return null;
  }

  const server = http.createServer((req, res) => {
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { raw += c; });
    req.on('end', () => {
      const url = new URL(req.url, 'http://standin');
      const params = new URLSearchParams(req.method === 'GET' ? url.search : raw);
      requests.push({ method: req.method, path: url.pathname, headers: req.headers, raw,
                      params: Object.fromEntries(params) });
      if (failures.length) {
        const status = failures.shift();
        return error(res, status, 'api_error', 'stand-in failure');
      }
      if (req.headers.authorization !== `Bearer ${secretKey}`) {
        return error(res, 401, 'invalid_request_error', 'Invalid API Key provided');
      }
      if (req.method === 'POST' && req.headers['content-type'] !== 'application/x-www-form-urlencoded') {
        return error(res, 400, 'invalid_request_error', 'expected a form-encoded body');
      }
      const key = req.headers['idempotency-key'];
      if (key && idempotent.has(key)) {
        const prior = idempotent.get(key);
        if (prior.raw !== raw) {
          return error(res, 400, 'idempotency_error', 'Keys for idempotent requests can only be used with the same parameters');
        }
        res.writeHead(200, { 'content-type': 'application/json', 'idempotent-replayed': 'true' });
        return res.end(prior.body);
      }
      const obj = answer(req.method, url.pathname, params);
      if (!obj) return error(res, 404, 'invalid_request_error', `Unrecognized request URL (${req.method}: ${url.pathname})`);
      const body = JSON.stringify(obj);
      if (key) idempotent.set(key, { raw, body });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(body);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    secretKey,
    requests,
    failNext(...statuses) { failures = statuses; },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
