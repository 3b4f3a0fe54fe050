// make run's demo shop: the services, their routes and packages, the calls
// between them, and a client that reports them the way the Express plugin
// does (tests/fixtures/captured/*.json): POST /api/v1/ingest/metadata,
// /performance/traces/batch and /errors/batch with the demo ingest key.
// Used by scripts/demo_seed.mjs (once per start) and scripts/demo_live.mjs
// (while make run runs).  Nothing here touches the database directly.
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

// [method, path, median ms]
const R = (spec) => spec.trim().split('\n').map((l) => {
  const [m, p, ms] = l.trim().split(/\s+/);
  return [m, p, Number(ms)];
});

// name, framework, production version, staging (a version ahead, or null),
// routes, routes a later deploy adds, packages [name, version, type]
export const SERVICES = [
  { name: 'web-frontend', framework: 'nextjs', version: '3.4.1', staging: '3.5.0-rc.1',
    routes: R(`GET / 38
               GET /products 55
               GET /products/:slug 61
               GET /cart 42
               GET /checkout 70
               POST /api/checkout 140
               GET /account 45`),
    later: R(`GET /wishlist 40
              GET /orders/:id 52`),
    packages: [['next', '14.2.15', 'direct'], ['react', '18.3.1', 'direct'], ['react-dom', '18.3.1', 'direct'],
      ['swr', '2.2.5', 'direct'], ['typescript', '5.6.3', 'dev'], ['eslint', '8.57.1', 'dev']] },
  { name: 'api-gateway', framework: 'express', version: '2.8.0', staging: '2.9.0',
    routes: R(`GET /api/products 24
               GET /api/products/:id 18
               GET /api/search 35
               GET /api/cart 15
               POST /api/cart/items 22
               DELETE /api/cart/items/:itemId 16
               POST /api/orders 95
               GET /api/orders/:id 20
               POST /api/login 60`),
    later: R(`GET /api/recommendations 30
              POST /api/orders/:id/cancel 40`),
    packages: [['express', '4.21.2', 'direct'], ['http-proxy-middleware', '3.0.3', 'direct'],
      ['helmet', '8.0.0', 'direct'], ['jsonwebtoken', '9.0.2', 'direct'], ['pino', '9.5.0', 'direct'],
      ['jest', '29.7.0', 'dev']] },
  { name: 'auth', framework: 'express', version: '1.9.2', staging: null,
    routes: R(`POST /login 48
               POST /logout 6
               POST /token/refresh 9
               GET /verify 3`),
    later: R(`POST /mfa/verify 12`),
    packages: [['express', '4.21.2', 'direct'], ['argon2', '0.41.1', 'direct'], ['jsonwebtoken', '9.0.2', 'direct'],
      ['ioredis', '5.4.1', 'direct']] },
  { name: 'users', framework: 'express', version: '1.4.0', staging: null,
    routes: R(`GET /users/:id 7
               PATCH /users/:id 14
               GET /users/:id/preferences 6`),
    later: R(`GET /users/:id/addresses 8`),
    packages: [['express', '4.21.2', 'direct'], ['pg', '8.13.1', 'direct'], ['zod', '3.23.8', 'direct']] },
  { name: 'catalog', framework: 'express', version: '5.0.3', staging: '5.1.0',
    routes: R(`GET /products 22
               GET /products/:id 9
               GET /categories 5
               GET /categories/:slug/products 19`),
    later: R(`GET /products/:id/reviews 16
              GET /brands 6`),
    packages: [['express', '4.21.2', 'direct'], ['pg', '8.13.1', 'direct'], ['ioredis', '5.4.1', 'direct'],
      ['zod', '3.23.8', 'direct'], ['lodash', '4.17.21', 'transitive']] },
  { name: 'search', framework: 'express', version: '0.9.7', staging: null,
    routes: R(`GET /search 42
               GET /suggest 11`),
    later: R(`GET /search/facets 25`),
    packages: [['express', '4.21.2', 'direct'], ['@elastic/elasticsearch', '8.15.1', 'direct']] },
  { name: 'cart', framework: 'express', version: '2.2.0', staging: null,
    routes: R(`GET /carts/:id 6
               POST /carts/:id/items 12
               DELETE /carts/:id/items/:itemId 8`),
    later: R(`POST /carts/:id/coupon 10`),
    packages: [['express', '4.21.2', 'direct'], ['ioredis', '5.4.1', 'direct'], ['uuid', '10.0.0', 'direct']] },
  { name: 'orders', framework: 'express', version: '4.1.5', staging: '4.2.0-rc.2',
    routes: R(`POST /orders 85
               GET /orders/:id 11
               GET /orders 24
               POST /orders/:id/cancel 38`),
    later: R(`POST /orders/:id/return 44`),
    packages: [['express', '4.21.2', 'direct'], ['pg', '8.13.1', 'direct'], ['kafkajs', '2.2.4', 'direct'],
      ['decimal.js', '10.4.3', 'direct'], ['jest', '29.7.0', 'dev']] },
  { name: 'payments', framework: 'express', version: '3.0.0', staging: null,
    routes: R(`POST /payments 210
               GET /payments/:id 9
               POST /refunds 160
               POST /webhooks/psp 14`),
    later: R(`POST /payments/:id/capture 120`),
    packages: [['express', '4.21.2', 'direct'], ['stripe', '17.2.1', 'direct'], ['pg', '8.13.1', 'direct'],
      ['decimal.js', '10.4.3', 'direct']] },
  { name: 'inventory', framework: 'express', version: '1.7.1', staging: null,
    routes: R(`GET /stock/:sku 5
               POST /reservations 17
               DELETE /reservations/:id 9`),
    later: R(`GET /warehouses 7`),
    packages: [['express', '4.21.2', 'direct'], ['pg', '8.13.1', 'direct']] },
  { name: 'shipping', framework: 'express', version: '1.1.0', staging: null,
    routes: R(`POST /shipments 65
               GET /shipments/:id 10
               GET /rates 48`),
    later: R(`GET /shipments/:id/tracking 30`),
    packages: [['express', '4.21.2', 'direct'], ['axios', '1.7.7', 'direct'], ['pg', '8.13.1', 'direct']] },
  { name: 'notifications', framework: 'express', version: '0.6.2', staging: null,
    routes: R(`POST /notifications/email 28
               POST /notifications/sms 35`),
    later: R(`POST /notifications/push 20`),
    packages: [['express', '4.21.2', 'direct'], ['nodemailer', '6.9.16', 'direct'], ['twilio', '5.3.5', 'direct']] },
  { name: 'recommendations', framework: 'express', version: '0.3.0', staging: null,
    routes: R(`GET /recommendations/:userId 75
               GET /similar/:productId 55`),
    later: R(`GET /trending 30`),
    packages: [['express', '4.21.2', 'direct'], ['onnxruntime-node', '1.20.0', 'direct'], ['ioredis', '5.4.1', 'direct']] },
  // the service that stopped reporting: registered once, never again
  { name: 'legacy-reports', framework: 'express', version: '0.9.0', staging: null, stopped: true,
    routes: R(`GET /reports/daily 900
               GET /reports/export 2400`),
    later: [],
    packages: [['express', '4.17.1', 'direct'], ['moment', '2.29.4', 'direct'], ['pg', '7.18.2', 'direct']] },
];

// caller -> callee, calls a second, 5xx share, the callee's paths it uses
// (concrete paths, as the plugin sees them; matched to the routes above)
export const CALLS = [
  ['web-frontend', 'api-gateway', 2.0, 0.004, ['/api/products', '/api/products/{id}', '/api/search', '/api/cart', '/api/cart/items', '/api/orders', '/api/orders/{id}', '/api/login']],
  ['api-gateway', 'auth', 1.0, 0.0008, ['/verify', '/verify', '/verify', '/login', '/token/refresh']],
  ['api-gateway', 'catalog', 0.68, 0.002, ['/products', '/products/{id}', '/products/{id}', '/categories', '/categories/{slug}/products']],
  ['api-gateway', 'cart', 0.25, 0.0015, ['/carts/{id}', 'POST /carts/{id}/items', 'DELETE /carts/{id}/items/{item}']],
  ['api-gateway', 'orders', 0.09, 0.008, ['POST /orders', '/orders/{id}', '/orders']],
  ['api-gateway', 'search', 0.34, 0.0005, ['/search', '/suggest']],
  ['auth', 'users', 0.5, 0.0005, ['/users/{id}', '/users/{id}/preferences']],
  ['catalog', 'inventory', 0.33, 0.002, ['/stock/{sku}']],
  ['catalog', 'recommendations', 0.1, 0.03, ['/recommendations/{user}', '/similar/{id}']],
  ['search', 'catalog', 0.31, 0.001, ['/products/{id}']],
  ['cart', 'catalog', 0.22, 0.0005, ['/products/{id}']],
  ['cart', 'inventory', 0.12, 0.002, ['/stock/{sku}']],
  ['orders', 'payments', 0.09, 0.025, ['POST /payments', 'POST /payments', '/payments/{id}']],
  ['orders', 'inventory', 0.09, 0.002, ['POST /reservations']],
  ['orders', 'shipping', 0.085, 0.003, ['POST /shipments', '/rates']],
  ['orders', 'notifications', 0.085, 0.001, ['POST /notifications/email']],
  ['payments', 'notifications', 0.08, 0.001, ['POST /notifications/email', 'POST /notifications/sms']],
  ['shipping', 'notifications', 0.08, 0.001, ['POST /notifications/sms']],
  ['recommendations', 'users', 0.1, 0.001, ['/users/{id}/preferences']],
  ['notifications', 'users', 0.17, 0.002, ['/users/{id}']],
  ['legacy-reports', 'orders', 0.02, 0.01, ['/orders']],
  ['legacy-reports', 'users', 0.01, 0.0, ['/users/{id}']],
];
// browsers -> web-frontend (no caller: the plugin sees no Lattice caller)
export const ENTRY = { service: 'web-frontend', rate: 2.2, errors: 0.002,
  paths: ['/', '/', '/products', '/products/{slug}', '/products/{slug}', '/cart', '/checkout', '/account'] };

// what a 5xx of each service looks like in its error report
export const FAILURES = {
  'web-frontend': [['TypeError', "Cannot read properties of undefined (reading 'price')", 'components/ProductCard.tsx', 'ProductCard']],
  'api-gateway': [['FetchError', 'upstream request to catalog timed out after 3000 ms', 'src/proxy.ts', 'forward'],
    ['Error', 'socket hang up', 'src/proxy.ts', 'onProxyError']],
  auth: [['RedisError', 'Connection is closed.', 'src/sessions.ts', 'loadSession']],
  users: [['DatabaseError', 'canceling statement due to statement timeout', 'src/db.ts', 'query']],
  catalog: [['DatabaseError', 'remaining connection slots are reserved for non-replication superuser connections', 'src/db.ts', 'query']],
  search: [['ResponseError', 'search_phase_execution_exception', 'src/search.ts', 'runQuery']],
  cart: [['RedisError', 'READONLY You can\'t write against a read only replica.', 'src/cartStore.ts', 'save']],
  orders: [['ConflictError', 'order 8812 is already being paid', 'src/orders/create.ts', 'lockOrder'],
    ['KafkaJSNumberOfRetriesExceeded', 'Connection error: connect ECONNREFUSED 10.0.3.17:9092', 'src/events.ts', 'publish']],
  payments: [['GatewayTimeoutError', 'payment provider did not answer within 5000 ms', 'src/psp/client.ts', 'charge'],
    ['StripeCardError', 'Your card was declined.', 'src/psp/client.ts', 'charge']],
  inventory: [['DatabaseError', 'deadlock detected', 'src/reservations.ts', 'reserve']],
  shipping: [['AxiosError', 'Request failed with status code 503', 'src/carriers/dhl.ts', 'quote']],
  notifications: [['SMTPError', '421 4.7.0 Try again later, closing connection.', 'src/email.ts', 'send']],
  recommendations: [['TypeError', "Cannot read properties of undefined (reading 'embedding')", 'src/model.ts', 'score'],
    ['Error', 'model session is not ready', 'src/model.ts', 'infer']],
  'legacy-reports': [['Error', 'ETIMEDOUT', 'lib/export.js', 'streamRows']],
};

export const byName = Object.fromEntries(SERVICES.map((s) => [s.name, s]));

// ---- randomness --------------------------------------------------------------

export const pick = (a) => a[Math.floor(Math.random() * a.length)];
function gauss() {
  let u = 0;
  while (u === 0) u = Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}
// lognormal around the median, with a rare slow tail (GC pauses, cold caches)
export function latency(median, factor = 1) {
  let d = median * factor * Math.exp(0.45 * gauss());
  if (Math.random() < 0.01) d *= 4 + Math.random() * 6;
  return Math.round(d * 10) / 10;
}
export function poisson(mean) {
  if (mean > 30) return Math.max(0, Math.round(mean + Math.sqrt(mean) * gauss()));
  const l = Math.exp(-mean);
  let k = 0;
  let p = 1;
  do { k++; p *= Math.random(); } while (p > l);
  return k - 1;
}
const cuid = () => {
  const a = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return [...randomBytes(24)].map((b) => a[b % 36]).join('');
};

// '/products/{id}' -> '/products/4711'; 'POST /orders' -> ['POST', '/orders']
export function concrete(spec, svc) {
  let [method, path] = spec.includes(' ') ? spec.split(' ') : [null, spec];
  path = path.replace(/\{(\w+)\}/g, (_, k) => {
    if (k === 'slug') return pick(['espresso-machine', 'oat-milk', 'grinder-pro', 'travel-mug', 'filter-papers']);
    if (k === 'sku') return `SKU-${1000 + Math.floor(Math.random() * 9000)}`;
    return String(100 + Math.floor(Math.random() * 99900));
  });
  // the route the path falls under, for its latency
  const fits = [...svc.routes, ...svc.later].filter(([m, p]) => (!method || m === method)
    && new RegExp(`^${p.replace(/:\w+/g, '[^/]+')}$`).test(path));
  const route = fits.find(([m]) => m === 'GET') ?? fits[0];
  return { method: method ?? (route ? route[0] : 'GET'), path, median: route ? route[2] : 20 };
}

// ---- state that survives restarts (versions, routes added by deploys) --------

export function loadState(file) {
  let st = {};
  try { st = JSON.parse(readFileSync(file, 'utf8')); } catch { /* first start */ }
  for (const s of SERVICES) {
    st[s.name] ??= {};
    st[s.name].production ??= s.version;
    if (s.staging) st[s.name].staging ??= s.staging;
    st[s.name].added ??= [];      // [env, method, path, ms]
  }
  return st;
}
export function saveState(file, st) {
  writeFileSync(`${file}.tmp`, JSON.stringify(st, null, 1));
  renameSync(`${file}.tmp`, file);
}

// ---- the plugin's requests ------------------------------------------------------

export class Plugin {
  constructor(base, key, log = () => {}) {
    this.base = base.replace(/\/$/, '');
    this.key = key;
    this.log = log;
    this.instances = new Map();   // name/env -> the plugin's per-process service id
    this.firstSeen = new Map();
    this.refused = 0;
    this.sent = 0;
  }

  async post(path, body, schemaHeader = false) {
    const headers = { 'Content-Type': 'application/json', 'X-Lattice-API-Key': this.key };
    if (schemaHeader) headers['X-Lattice-Schema-Version'] = '1.0.0';
    const res = await fetch(`${this.base}${path}`, { method: 'POST', headers, body: JSON.stringify(body) });
    const text = await res.text();
    this.sent++;
    if (res.status === 429) this.refused++;
    if (res.status >= 300) throw new Error(`${path}: ${res.status} ${text.slice(0, 300)}`);
    return JSON.parse(text || 'null');
  }

  // POST /api/v1/ingest/metadata, shaped like 001-POST-api_v1_ingest_metadata.json
  metadata(svc, env, version, extraRoutes = []) {
    const k = `${svc.name}/${env}`;
    if (!this.instances.has(k)) { this.instances.set(k, cuid()); this.firstSeen.set(k, new Date().toISOString()); }
    const id = this.instances.get(k);
    const now = new Date().toISOString();
    const first = this.firstSeen.get(k);
    const plugin = svc.framework === 'nextjs' ? '@lattice/plugin-nextjs' : '@lattice/plugin-express';
    const routes = [...svc.routes, ...extraRoutes].map(([method, path]) => ({
      id: cuid(), serviceId: id, method, path, middlewareChain: path.startsWith('/api/') ? ['helmet', 'authenticate'] : ['anonymous'],
      firstSeen: first, lastSeen: now }));
    const dependencies = [['@lattice.black/core', '0.3.0', 'direct'],
      [svc.framework === 'nextjs' ? '@lattice.black/plugin-nextjs' : '@lattice.black/plugin-express', '0.3.0', 'direct'],
      ...svc.packages].map(([packageName, v, dependencyType]) => ({
      id: cuid(), serviceId: id, packageName, version: v, versionRange: `^${v}`, dependencyType,
      ...(packageName.startsWith('@') ? { scope: packageName.split('/')[0] } : {}),
      firstSeen: first, lastSeen: now }));
    return this.post('/api/v1/ingest/metadata', {
      service: { id, name: svc.name, version, environment: env, language: 'typescript', framework: svc.framework,
        runtime: 'node-v20.20.2', status: 'active', firstSeen: first, lastSeen: now,
        discoveredBy: { pluginName: plugin, pluginVersion: '0.2.0', schemaVersion: '1.0.0' } },
      routes, dependencies }, true);
  }

  // POST /api/v1/performance/traces/batch, shaped like 003-…json
  traces(service, traces) {
    return this.post('/api/v1/performance/traces/batch', { traces: traces.map((t) => ({
      service_id: service, operation_name: `${t.method} ${t.path}`, operation_type: 'http_request',
      start_time: new Date(t.at).toISOString(), duration_ms: t.ms, status_code: t.status,
      method: t.method, path: t.path, ...(t.caller ? { caller_service: t.caller } : {}) })) });
  }

  // POST /api/v1/errors/batch, shaped like 004-…json
  errors(service, env, errors) {
    return this.post('/api/v1/errors/batch', { errors: errors.map((e) => ({
      service_id: service, environment: env, error_type: e.type, message: e.message,
      stack_trace: [
        { filename: `/srv/${service}/${e.file}`, line_number: e.line, column_number: 15, function_name: e.fn },
        { filename: `/srv/${service}/node_modules/express/lib/router/layer.js`, line_number: 95, column_number: 5, function_name: 'Layer.handle [as handle_request]' },
        { filename: `/srv/${service}/node_modules/express/lib/router/route.js`, line_number: 149, column_number: 13, function_name: 'next' }],
      context: { method: e.method, path: e.path, url: e.path, user_agent: 'node',
        headers: { 'content-type': 'application/json', accept: '*/*', 'user-agent': 'node' } },
      timestamp: new Date(e.at).toISOString() })) });
  }
}

// One service's traffic over [from, to) (ms since epoch): the traces its
// plugin records (callers from CALLS, browsers for the entry) and the
// errors of its 5xx answers.  `boost` multiplies latency and adds errors.
// Calls from a service that stopped reporting are made before stoppedUntil.
// `extra` routes ([method, path, ms], added by deploys) get a trickle from
// the service's busiest caller.
export function traffic(name, from, to, boost = null, stoppedUntil = 0, extra = []) {
  const svc = byName[name];
  const traces = [];
  const errors = [];
  const inbound = CALLS.filter(([, dst]) => dst === name)
    .map(([src, , rate, err, paths]) => ({ caller: src, rate, err, paths }));
  if (name === ENTRY.service) inbound.push({ caller: null, rate: ENTRY.rate, err: ENTRY.errors, paths: ENTRY.paths });
  const busiest = inbound.filter((e) => !e.caller || !byName[e.caller].stopped).sort((a, b) => b.rate - a.rate)[0];
  for (const [m, p] of extra) {
    inbound.push({ caller: busiest ? busiest.caller : null, rate: 0.05, err: 0.002,
      paths: [`${m} ${p.replace(/:(\w+)/g, '{$1}')}`] });
  }
  for (const e of inbound) {
    const end = e.caller && byName[e.caller].stopped ? Math.min(to, stoppedUntil) : to;
    if (end <= from) continue;
    const n = poisson(e.rate * (end - from) / 1000);
    for (let i = 0; i < n; i++) {
      const c = concrete(pick(e.paths), svc);
      const at = from + Math.random() * (end - from);
      const slow = boost ? boost.factor : 1;
      const errShare = e.err + (boost ? boost.errors : 0);
      let status = c.method === 'POST' ? 201 : 200;
      const r = Math.random();
      if (r < errShare) status = pick([500, 500, 502, 503]);
      else if (r < errShare + 0.01) status = pick([400, 401, 404, 404, 409]);
      const ms = status >= 500 && Math.random() < 0.5 ? latency(c.median * 8, slow) : latency(c.median, slow);
      traces.push({ method: c.method, path: c.path, ms, status, caller: e.caller, at });
      if (status >= 500) {
        const [type, message, file, fn] = pick(FAILURES[name]);
        errors.push({ type, message, file, fn, line: 40 + (fn.length * 7) % 80, method: c.method, path: c.path, at });
      }
    }
  }
  traces.sort((a, b) => a.at - b.at);
  return { traces, errors };
}

export function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
