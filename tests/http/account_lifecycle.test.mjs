// The account lifecycle (docs/account.md) end to end through a real shim and
// PostgreSQL, with every e-mail sent by the shim's outbox worker over SMTP to
// a real receiver (tests/stripe_standin/smtp_sink.py, python3-aiosmtpd): each
// link is read from the DELIVERED message (MIME parsed, quoted-printable
// decoded here) and followed as the page it points to does.  Verification,
// forgotten password (no enumeration, by answer or by time), reset, change of
// password and of address, TOTP second factor (codes computed here, RFC 6238),
// the account's audit trail, export, and deletion down to the catalog.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { performance } from 'node:perf_hooks';
import { startShim, startSmtpSink, psql, freePort, eventually, assertErrorShape, ROOT } from './lib.mjs';
import { send } from './owasp_lib.mjs';
import { capturedBody } from '../fixtures/captured.mjs';

// This file's own client addresses (address quotas: sign-up 20/h, forgot 10/h, link claims 30/15 min)
const FROM = '127.0.86.1';
const password = 'a fine long password';
const run = randomUUID().slice(0, 8);
const addr = (tag) => `acct-${tag}-${run}@example.com`;

let shim;
let smtp;
let smtpPort;
let origin;
const work = mkdtempSync(join(tmpdir(), 'account-lifecycle-'));
const smtpOut = join(work, 'smtp.jsonl');

// ---- SMTP: the receiver and the messages it got ------------------------------------

const startSmtp = () => startSmtpSink(smtpPort, smtpOut);

function qpDecode(s) {
  const bytes = [];
  const t = s.replace(/=\r?\n/g, '');
  for (let i = 0; i < t.length; i++) {
    if (t[i] === '=' && /^[0-9A-Fa-f]{2}$/.test(t.slice(i + 1, i + 3))) {
      bytes.push(parseInt(t.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      bytes.push(...Buffer.from(t[i], 'utf8'));
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

function headersOf(block) {
  const h = {};
  for (const line of block.replace(/\r?\n[ \t]+/g, ' ').split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0) h[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return h;
}

// The leaf parts of a MIME entity: [{type, text}], decoded.
function mimeParts(raw) {
  const m = /\r?\n\r?\n/.exec(raw);
  const head = headersOf(m ? raw.slice(0, m.index) : raw);
  const body = m ? raw.slice(m.index + m[0].length) : '';
  const type = (head['content-type'] ?? 'text/plain').toLowerCase();
  if (type.startsWith('multipart/')) {
    const boundary = /boundary="?([^";]+)"?/i.exec(head['content-type'])[1];
    const pieces = body.split(new RegExp(`\\r?\\n?--${boundary.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?:--)?[ \\t]*\\r?\\n?`));
    return pieces.slice(1, -1).filter((p) => p.trim()).flatMap(mimeParts);
  }
  const cte = (head['content-transfer-encoding'] ?? '7bit').toLowerCase();
  const text = cte === 'quoted-printable' ? qpDecode(body)
    : cte === 'base64' ? Buffer.from(body.replace(/\s+/g, ''), 'base64').toString('utf8') : body;
  return [{ type, text }];
}

// Every delivered message: {to, subject, outboxId, text, html}
function delivered() {
  if (!existsSync(smtpOut)) return [];
  return readFileSync(smtpOut, 'utf8').split('\n').filter(Boolean).map((l) => {
    const m = JSON.parse(l);
    const head = headersOf(m.data.split(/\r?\n\r?\n/)[0]);
    const parts = mimeParts(m.data);
    return {
      to: m.rcpt_tos.map((t) => t.toLowerCase()), mailFrom: m.mail_from, subject: head.subject,
      outboxId: Number(/<outbox-(\d+)@/.exec(head['message-id'] ?? '')?.[1] ?? -1),
      text: parts.find((p) => p.type.startsWith('text/plain'))?.text ?? '',
      html: parts.find((p) => p.type.startsWith('text/html'))?.text ?? '',
    };
  });
}
const mailsTo = (email, subject) => delivered().filter((m) => m.to.includes(email.toLowerCase()) &&
                                                                (!subject || subject.test(m.subject)));

// Waits until count messages to email with a matching subject were delivered; the newest first.
async function waitMail(email, subject, count = 1) {
  try {
    await eventually(() => mailsTo(email, subject).length >= count, { timeout: 20000, interval: 100 });
  } catch {
    assert.fail(`no ${count} message(s) "${subject}" to ${email}; delivered to it: ` +
                JSON.stringify(mailsTo(email).map((m) => m.subject)));
  }
  return mailsTo(email, subject).sort((a, b) => b.outboxId - a.outboxId);
}

// The link of a message (its plain-text part) to page of the public origin, and its token
function linkIn(mail, page) {
  const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const m = new RegExp(`${esc(origin)}/${page}\\?token=([A-Za-z0-9_-]+)`).exec(mail.text);
  assert.ok(m, `a ${origin}/${page}?token=… link in: ${mail.text}`);
  return { url: m[0], token: m[1] };
}

// ---- HTTP ---------------------------------------------------------------------------

// One request from a client address of this file; s: {cookie, csrf} of a session
async function call(method, path, { body, raw, s, key, from = FROM } = {}) {
  const headers = {};
  if (body !== undefined || raw !== undefined) headers['Content-Type'] = 'application/json';
  if (s) {
    headers.Cookie = `lattice_session=${s.session}; lattice_csrf=${s.csrf}`;
    headers['X-CSRF-Token'] = s.csrf;
  }
  if (key) headers['X-Lattice-API-Key'] = key;
  return send(shim, method, path, { from, headers, body: raw ?? (body === undefined ? undefined : JSON.stringify(body)) });
}
const setCookies = (r) => [].concat(r.headers['set-cookie'] ?? []);
function sessionOf(r) {
  const c = Object.fromEntries(setCookies(r).map((x) => x.split(';')[0].split('=')));
  assert.match(c.lattice_session ?? '', /^[A-Za-z0-9_-]{43}$/, 'a session cookie');
  return { session: c.lattice_session, csrf: c.lattice_csrf };
}
const login = (email, pw, code, from) => call('POST', '/api/v1/auth/login', { from, body: { email, password: pw, ...(code === undefined ? {} : { code }) } });
const accountOf = (s) => call('GET', '/api/v1/account', { s });

async function signup(tag, from = FROM) {
  const email = addr(tag);
  const r = await call('POST', '/api/v1/auth/signup', { from, body: { email, password, name: `Acct ${tag}` } });
  assert.equal(r.status, 201, r.text);
  return { id: r.json.user.id, email, password, s: sessionOf(r) };
}

// An ingest key and one service sent as the plugin sends it
async function keyAndService(t, serviceName) {
  const k = await call('POST', '/api/v1/keys', { s: t.s, body: { name: 'plugin' } });
  assert.equal(k.status, 201, k.text);
  t.key = k.json.key;
  const meta = JSON.parse(capturedBody('ingest_metadata'));
  meta.service.name = serviceName;
  const r = await call('POST', '/api/v1/ingest/metadata', { key: t.key, raw: JSON.stringify(meta) });
  assert.ok(r.status >= 200 && r.status < 300, `ingest ${r.status} ${r.text}`);
  t.service = serviceName;
}

// ---- TOTP (RFC 6238: HMAC-SHA-1, 30 s, 6 digits) ------------------------------------

function base32Decode(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of s.toUpperCase().replace(/=+$/, '')) {
    const v = alphabet.indexOf(ch);
    if (v < 0) throw new Error(`not base32: ${ch}`);
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = createHmac('sha1', base32Decode(secret)).update(counter).digest();
  const off = mac[mac.length - 1] & 0x0f;
  const n = (mac.readUInt32BE(off) & 0x7fffffff) % 1000000;
  return String(n).padStart(6, '0');
}
const stepNow = () => Math.floor(Date.now() / 30000);

// The code of the next step the server will take: later than the last one
// used, within its window (the step before, of and after now)
let lastStep = -1;
async function nextCode(secret) {
  let step = Math.max(lastStep + 1, stepNow());
  while (step > stepNow() + 1) await sleep(500);
  lastStep = step;
  return totp(secret, step);
}

// ---- the accounts -------------------------------------------------------------------

// The tests run in order and build on each other: a later one stops at once,
// with this message, when what it builds on was not made
const need = (...xs) => { if (xs.some((x) => x === undefined)) assert.fail('an earlier step of this file failed (see above)'); };

let A;   // the account the lifecycle is about
let B;   // another tenant, whose data must stay untouched
let U;   // stays unverified

before(async () => {
  smtpPort = await freePort();
  smtp = await startSmtp();
  shim = await startShim({ cwd: ROOT, env: {
    LATTICE_SMTP_URL: `smtp://127.0.0.1:${smtpPort}`, LATTICE_SMTP_TLS: 'none',
    LATTICE_MAIL_FROM: 'Lattice <account@lattice.test>', LATTICE_SMTP_TIMEOUT_MS: '3000',
    LATTICE_OUTBOX_POLL_MS: '100' } });
  origin = psql('SELECT lattice.billing_public_origin()');
});

after(async () => {
  await shim?.stop();
  smtp?.kill();
});

// ---- 1. verification ----------------------------------------------------------------

test('sign-up e-mails a verification link over SMTP; following it verifies the address once', async () => {
  A = await signup('a');
  const before = await accountOf(A.s);
  assert.equal(before.status, 200, before.text);
  assert.equal(before.json.user.email_verified, false);
  assert.equal(before.json.user.mfa_enabled, false);

  const [mail] = await waitMail(A.email, /^Confirm your e-mail address/);
  assert.equal(mail.mailFrom, 'account@lattice.test');
  const link = linkIn(mail, 'verify-email');
  assert.ok(mail.html.includes(link.url), 'the HTML part has the same link');
  await waitMail(A.email, /^Welcome to Lattice/);

  // the page of the link is served; it posts the token
  const page = await call('GET', new URL(link.url).pathname + new URL(link.url).search);
  assert.equal(page.status, 200);
  assert.match(page.headers['content-type'], /^text\/html/);
  const v = await call('POST', '/api/v1/auth/email/verify', { body: { token: link.token } });
  assert.equal(v.status, 200, v.text);
  assert.deepEqual(v.json, { email: A.email, verified: true });
  const after = await accountOf(A.s);
  assert.equal(after.json.user.email_verified, true);

  assertErrorShape(assert, await call('POST', '/api/v1/auth/email/verify', { body: { token: link.token } }), 400, 'invalid_token');
  assertErrorShape(assert, await call('POST', '/api/v1/account/email/verify', { s: A.s, body: {} }), 409, 'already_verified');
});

test('re-sending the link: 202, then 429 with Retry-After within the minute; checkout needs a verified address', async () => {
  U = await signup('unverified');
  const first = await call('POST', '/api/v1/account/email/verify', { s: U.s, body: {} });
  assert.equal(first.status, 202, first.text);
  assert.deepEqual(first.json, { sent: true });
  const second = await call('POST', '/api/v1/account/email/verify', { s: U.s, body: {} });
  assertErrorShape(assert, second, 429, 'too_many_attempts');
  const retry = Number(second.headers['retry-after']);
  assert.ok(Number.isInteger(retry) && retry >= 1 && retry <= 60, `Retry-After ${second.headers['retry-after']}`);
  // the sign-up's link and the re-sent one, both delivered; the re-sent one superseded the first
  const links = await waitMail(U.email, /^Confirm your e-mail address/, 2);
  assert.notEqual(linkIn(links[0], 'verify-email').token, linkIn(links[1], 'verify-email').token);
  assertErrorShape(assert, await call('POST', '/api/v1/auth/email/verify', { body: { token: linkIn(links[1], 'verify-email').token } }),
                   400, 'invalid_token');

  const checkout = await call('POST', '/api/v1/billing/checkout', { s: U.s, body: {} });
  assertErrorShape(assert, checkout, 403, 'email_unverified');
  assert.match(checkout.headers['content-type'], /^application\/json/);
});

test('the tenants have keys and data: A and another tenant B ingest a service each', async () => {
  need(A);
  await keyAndService(A, `acct-svc-a-${run}`);
  B = await signup('b');
  await keyAndService(B, `acct-svc-b-${run}`);
  const list = await call('GET', '/api/v1/services', { s: A.s });
  assert.equal(list.status, 200, list.text);
  assert.ok(list.text.includes(A.service) && !list.text.includes(B.service));
});

// ---- 2. forgotten password ----------------------------------------------------------

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
let resetLink;

test('forgot password: the same answer and time for a known and an unknown address; only the known get a link', async (t) => {
  need(A, U);
  // five known addresses, three asks each (the per-address limit of links): every known ask does
  // the full work of a link; fifteen unknown ones; a client address per known/unknown pair
  const known = [A];
  for (let i = 1; i <= 4; i++) known.push(await signup(`k${i}`, '127.0.86.2'));
  const unknown = Array.from({ length: 15 }, (_, i) => addr(`nobody${i}`));
  const ask = async (email, from) => {
    const t0 = performance.now();
    const r = await call('POST', '/api/v1/auth/password/forgot', { from, body: { email } });
    return { r, ms: performance.now() - t0 };
  };
  // warm every pooled backend up (U is known too; its address quota is its own)
  for (let i = 0; i < 4; i++) {
    await ask(U.email, `127.0.88.${i + 1}`);
    await ask(addr(`warm${i}`), `127.0.88.${i + 1}`);
  }
  const times = { known: [], unknown: [] };
  const bodies = new Set();
  for (let i = 0; i < 15; i++) {
    const from = `127.0.87.${i + 1}`;
    const pair = i % 2 ? [['unknown', unknown[i]], ['known', known[i % 5].email]] : [['known', known[i % 5].email], ['unknown', unknown[i]]];
    for (const [kind, email] of pair) {
      const { r, ms } = await ask(email, from);
      assert.equal(r.status, 202, `${kind} ${email}: ${r.text}`);
      bodies.add(r.text);
      times[kind].push(ms);
    }
  }
  assert.equal(bodies.size, 1, `byte-identical answers: ${[...bodies].join(' | ')}`);
  assert.equal(JSON.parse([...bodies][0]).accepted, true);
  const mk = median(times.known);
  const mu = median(times.unknown);
  const fmt = (xs) => xs.map((x) => x.toFixed(1)).join(' ');
  const report = `forgot timing (ms): median known ${mk.toFixed(2)}, median unknown ${mu.toFixed(2)}, ` +
                 `|diff| ${Math.abs(mk - mu).toFixed(2)}; known [${fmt(times.known)}]; unknown [${fmt(times.unknown)}]`;
  t.diagnostic(report);
  assert.ok(Math.abs(mk - mu) < 25, report);

  // every known address got its three links, no unknown address anything
  for (const k of known) {
    const got = await waitMail(k.email, /^Reset your Lattice password/, 3);
    assert.equal(got.length, 3, `three links to ${k.email}`);
    for (const m of got) linkIn(m, 'reset-password');
  }
  await sleep(500);
  for (const u of unknown) assert.deepEqual(mailsTo(u), [], `nothing to ${u}`);
  // each new link superseded the one before: the newest works
  resetLink = linkIn((await waitMail(A.email, /^Reset your Lattice password/, 3))[0], 'reset-password');
  const older = linkIn((await waitMail(A.email, /^Reset your Lattice password/, 3))[1], 'reset-password');
  assertErrorShape(assert, await call('POST', '/api/v1/auth/password/reset', { body: { token: older.token, password: 'an older link tried' } }),
                   400, 'invalid_token');
});

test('reset: a weak password changes nothing; a good one resets, revokes sessions, sends a notice; the link is single-use', async () => {
  need(A, resetLink);
  const page = await call('GET', new URL(resetLink.url).pathname + new URL(resetLink.url).search);
  assert.equal(page.status, 200);
  const weak = await call('POST', '/api/v1/auth/password/reset', { body: { token: resetLink.token, password: 'short' } });
  assertErrorShape(assert, weak, 400, 'invalid_password');
  assert.equal((await login(A.email, password)).status, 200, 'the password is unchanged');

  const newPassword = 'a brand new long password';
  const ok = await call('POST', '/api/v1/auth/password/reset', { body: { token: resetLink.token, password: newPassword } });
  assert.equal(ok.status, 200, `the link still worked: ${ok.text}`);
  assert.deepEqual(ok.json, { reset: true });

  assertErrorShape(assert, await login(A.email, password), 401, 'invalid_credentials');
  const fresh = await login(A.email, newPassword);
  assert.equal(fresh.status, 200, fresh.text);
  assertErrorShape(assert, await accountOf(A.s), 401, 'invalid_session');   // the sign-up's session
  A.password = newPassword;
  A.s = sessionOf(fresh);
  assert.equal((await accountOf(A.s)).status, 200);

  await waitMail(A.email, /^Your Lattice password was changed/);

  assertErrorShape(assert, await call('POST', '/api/v1/auth/password/reset', { body: { token: resetLink.token, password: 'yet another long password' } }),
                   400, 'invalid_token');
  const t = resetLink.token;
  const i = 40;
  const forged = t.slice(0, i) + (t[i] === 'A' ? 'B' : 'A') + t.slice(i + 1);
  assertErrorShape(assert, await call('POST', '/api/v1/auth/password/reset', { body: { token: forged, password: 'yet another long password' } }),
                   400, 'invalid_token');
  assertErrorShape(assert, await call('POST', '/api/v1/auth/password/reset', { raw: '{"token": "abc", "password": ' }), 400, 'invalid_json');
  const wrongType = await call('POST', '/api/v1/auth/password/reset', { body: { token: 5, password: 'yet another long password' } });
  assertErrorShape(assert, wrongType, 400);
  assert.equal((await login(A.email, A.password)).status, 200, 'none of those changed the password');
});

// ---- 3. change password -------------------------------------------------------------

test('change password: the current one is required; the other sessions are revoked, this one stays', async () => {
  need(A?.s);
  const second = sessionOf(await login(A.email, A.password));
  assert.equal((await accountOf(second)).status, 200);
  const wrong = await call('POST', '/api/v1/account/password', { s: A.s, body: { current_password: 'not the password', new_password: 'whatever long enough' } });
  assertErrorShape(assert, wrong, 403, 'wrong_password');
  assert.equal((await accountOf(second)).status, 200, 'a refused change revokes nothing');

  const changed = 'the third long password';
  const ok = await call('POST', '/api/v1/account/password', { s: A.s, body: { current_password: A.password, new_password: changed } });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.json.changed, true);
  assert.ok(ok.json.sessions_revoked >= 1, `sessions_revoked ${ok.json.sessions_revoked}`);
  assertErrorShape(assert, await accountOf(second), 401, 'invalid_session');
  assert.equal((await accountOf(A.s)).status, 200, 'the session that changed it keeps working');
  A.password = changed;
  await waitMail(A.email, /^Your Lattice password was changed/, 2);
});

// ---- 4. change e-mail ---------------------------------------------------------------

test('change e-mail: pending until the link sent to the new address is followed', async () => {
  need(A?.s);
  const oldEmail = A.email;
  const newEmail = addr('a-new');
  const r = await call('POST', '/api/v1/account/email', { s: A.s, body: { email: newEmail, password: A.password } });
  assert.equal(r.status, 202, r.text);
  assert.deepEqual(r.json, { pending_email: newEmail });
  assert.equal((await accountOf(A.s)).json.user.pending_email, newEmail);

  const [toNew] = await waitMail(newEmail, /^Confirm your new e-mail address/);
  const [toOld] = await waitMail(oldEmail, /^A change of your Lattice e-mail address was requested/);
  assert.ok(toOld.text.includes(newEmail), 'the notice names the new address');
  assert.ok(!/token=/.test(toOld.text), 'the old address gets no link');
  assert.equal((await login(oldEmail, A.password)).status, 200, 'the old address signs in until then');

  const link = linkIn(toNew, 'verify-email');
  const v = await call('POST', '/api/v1/auth/email/verify', { body: { token: link.token } });
  assert.equal(v.status, 200, v.text);
  assert.deepEqual(v.json, { email: newEmail, verified: true });
  const now = await accountOf(A.s);
  assert.equal(now.json.user.email, newEmail);
  assert.equal(now.json.user.email_verified, true);
  assert.equal(now.json.user.pending_email, null);
  await waitMail(oldEmail, /^The e-mail address of your Lattice account was changed/);

  const loggedIn = await login(newEmail, A.password);
  assert.equal(loggedIn.status, 200, loggedIn.text);
  assertErrorShape(assert, await login(oldEmail, A.password), 401, 'invalid_credentials');
  A.oldEmail = oldEmail;
  A.email = newEmail;
  A.s = sessionOf(loggedIn);
});

// ---- 5. two-factor authentication ---------------------------------------------------

let secret;
let recovery;

test('2FA: set up with the password, enabled with a TOTP code computed here, ten recovery codes', async () => {
  need(A?.s);
  assertErrorShape(assert, await call('POST', '/api/v1/account/2fa/setup', { s: A.s, body: { password: 'not the password' } }), 403, 'wrong_password');
  const setup = await call('POST', '/api/v1/account/2fa/setup', { s: A.s, body: { password: A.password } });
  assert.equal(setup.status, 200, setup.text);
  secret = setup.json.secret;
  assert.match(secret, /^[A-Z2-7]{16,}=*$/);
  const uri = new URL(setup.json.otpauth_uri);
  assert.equal(uri.protocol, 'otpauth:');
  assert.equal(uri.searchParams.get('secret'), secret);
  assert.equal(uri.searchParams.get('issuer'), 'Lattice');
  assert.equal(uri.searchParams.get('digits'), '6');
  assert.equal(uri.searchParams.get('period'), '30');

  const enable = await call('POST', '/api/v1/account/2fa/enable', { s: A.s, body: { code: await nextCode(secret) } });
  assert.equal(enable.status, 200, enable.text);
  recovery = enable.json.recovery_codes;
  assert.equal(recovery.length, 10);
  for (const c of recovery) assert.match(c, /^[a-z2-7]{5}-[a-z2-7]{5}$/i);
  assert.equal(new Set(recovery).size, 10);
  const acct = (await accountOf(A.s)).json.user;
  assert.equal(acct.mfa_enabled, true);
  assert.equal(acct.recovery_codes_left, 10);
  await waitMail(A.email, /^Two-factor authentication is on/);
});

test('2FA login: no code -> mfa_required, wrong -> invalid_code, right -> session; a code and a recovery code work once', async () => {
  need(A?.s, secret, recovery);
  const out = await call('POST', '/api/v1/auth/logout', { s: A.s });
  assert.equal(out.status, 204);
  assertErrorShape(assert, await accountOf(A.s), 401, 'invalid_session');

  const none = await login(A.email, A.password);
  assertErrorShape(assert, none, 401, 'mfa_required');
  assert.deepEqual(setCookies(none), [], 'no cookie without the code');

  const valid = new Set([-1, 0, 1, 2].map((d) => totp(secret, stepNow() + d)));
  let wrongCode = '000000';
  while (valid.has(wrongCode)) wrongCode = String((Number(wrongCode) + 1) % 1000000).padStart(6, '0');
  const wrong = await login(A.email, A.password, wrongCode);
  assertErrorShape(assert, wrong, 401, 'invalid_code');
  assert.deepEqual(setCookies(wrong), []);

  const code = await nextCode(secret);
  const right = await login(A.email, A.password, code);
  assert.equal(right.status, 200, right.text);
  const s = sessionOf(right);
  assert.equal((await accountOf(s)).status, 200);

  const replay = await login(A.email, A.password, code);
  assertErrorShape(assert, replay, 401, 'invalid_code');
  assert.deepEqual(setCookies(replay), []);

  const rc = recovery.shift();
  const byRecovery = await login(A.email, A.password, rc);
  assert.equal(byRecovery.status, 200, byRecovery.text);
  A.s = sessionOf(byRecovery);
  assertErrorShape(assert, await login(A.email, A.password, rc), 401, 'invalid_code');
  assert.equal((await accountOf(A.s)).json.user.recovery_codes_left, 9);
});

// ---- 6. the account's audit trail ----------------------------------------------------

test('audit: paged newest first with next_before through every event of the account', async () => {
  need(A?.s);
  psql('SELECT lattice.flush_deferred()');   // refusals' audit rows wait for the next flush
  const events = [];
  let before;
  let pages = 0;
  for (;;) {
    const r = await call('GET', `/api/v1/account/audit?limit=5${before ? `&before=${before}` : ''}`, { s: A.s });
    assert.equal(r.status, 200, r.text);
    assert.ok(r.json.events.length <= 5);
    events.push(...r.json.events);
    pages++;
    if (r.json.next_before == null) break;
    assert.equal(r.json.next_before, r.json.events.at(-1).id);
    before = r.json.next_before;
    assert.ok(pages < 100, 'paging ends');
  }
  assert.ok(pages > 2, `several pages (${pages})`);
  for (let i = 1; i < events.length; i++) assert.ok(events[i].id < events[i - 1].id, 'newest first, no repeats');
  const ids = psql(`SELECT string_agg(id::text, ',' ORDER BY id DESC) FROM lattice.audit_log WHERE user_id = '${A.id}'`);
  assert.deepEqual(events.map((e) => String(e.id)), ids.split(','), 'every event of the account, once');
  const actions = new Set(events.map((e) => e.action));
  for (const a of ['login.success', 'mfa.setup_started', 'mfa.enabled', 'mfa.verified', 'mfa.failure', 'mfa.recovery_code_used',
                   'password.reset', 'password.changed', 'email.verified', 'email.changed']) {
    assert.ok(actions.has(a), `the trail has ${a} (${[...actions].join(',')})`);
  }
  for (const e of events) {
    assert.deepEqual(Object.keys(e).sort(), ['action', 'at', 'client_addr', 'details', 'id', 'target']);
  }
  assert.ok(events.some((e) => e.client_addr === FROM), 'the client address is shown');

  assertErrorShape(assert, await call('GET', '/api/v1/account/audit?limit=0', { s: A.s }), 400, 'invalid_limit');
  assertErrorShape(assert, await call('GET', '/api/v1/account/audit?limit=101', { s: A.s }), 400, 'invalid_limit');
  assertErrorShape(assert, await call('GET', '/api/v1/account/audit'), 401);
});

// ---- 7. export -----------------------------------------------------------------------

test('export: one JSON document, streamed as an attachment, of the account\'s own data only', async () => {
  need(A?.s, A?.service, B?.service, U);
  const r = await call('GET', '/api/v1/account/export', { s: A.s });
  assert.equal(r.status, 200, r.text.slice(0, 500));
  assert.equal(r.headers['transfer-encoding'], 'chunked');
  assert.equal(r.headers['content-length'], undefined);
  assert.match(r.headers['content-disposition'], /^attachment; filename="lattice-export-\d{4}-\d\d-\d\d\.json"$/);
  assert.match(r.headers['content-type'], /^application\/json/);
  const doc = JSON.parse(r.text);
  assert.equal(doc.format, 'lattice-export-1');
  assert.equal(doc.account.id, A.id);
  assert.equal(doc.account.email, A.email);
  assert.ok(Array.isArray(doc.tables.services), 'tables.services');
  assert.ok(doc.tables.services.some((s) => s.name === A.service), `the ingested service ${A.service}`);
  assert.ok(Array.isArray(doc.tables.api_keys) && doc.tables.api_keys.length >= 1, 'tables.api_keys');
  for (const k of doc.tables.api_keys) {
    assert.equal(k.key_hash, undefined, 'no key hash');
    assert.equal(k.user_id, A.id);
  }
  for (const [table, rows] of Object.entries(doc.tables)) {
    for (const row of rows) {
      for (const col of ['user_id', 'account_id']) {
        if (col in row) assert.equal(row[col], A.id, `${table}.${col} is the account's`);
      }
    }
  }
  for (const other of [B.id, B.email, B.service, U.id, U.email]) assert.ok(!r.text.includes(other), `nothing of another tenant (${other})`);
  for (const secretish of ['$argon2', 'password_hash', 'key_hash', 'token_hash', 'code_hash', 'sealed']) {
    assert.ok(!r.text.includes(secretish), `no ${secretish}`);
  }

  const anon = await call('GET', '/api/v1/account/export');
  assertErrorShape(assert, anon, 401);
  assert.match(anon.headers['content-type'], /^application\/json/);
  assert.equal(anon.headers['content-disposition'], undefined);
  const byKey = await call('GET', '/api/v1/account/export', { key: A.key });
  assert.ok(byKey.status === 401 || byKey.status === 403, `an API key does not export (${byKey.status})`);
});

// ---- 8. deletion ---------------------------------------------------------------------

test('deletion: password and second factor required; then every row, look-up and credential gone; B untouched', async () => {
  need(A?.s, A?.key, B?.key, recovery);
  const countsOf = (id) => psql(`SELECT string_agg(rel::text || '=' || n, ',' ORDER BY rel::text) FROM lattice.tenant_row_counts('${id}')`);
  const bBefore = countsOf(B.id);
  assert.match(bBefore, /services=[1-9]/);

  assertErrorShape(assert, await call('DELETE', '/api/v1/account', { s: A.s, body: { password: 'not the password' } }), 403, 'wrong_password');
  assertErrorShape(assert, await call('DELETE', '/api/v1/account', { s: A.s, body: { password: A.password } }), 401, 'mfa_required');
  assert.equal((await accountOf(A.s)).status, 200, 'still there');

  const del = await call('DELETE', '/api/v1/account', { s: A.s, body: { password: A.password, code: recovery.shift() } });
  assert.equal(del.status, 200, del.text);
  assert.equal(del.json.deleted, true);
  const cleared = setCookies(del);
  for (const name of ['lattice_session', 'lattice_csrf']) {
    const c = cleared.find((x) => x.startsWith(`${name}=`));
    assert.ok(c && c.startsWith(`${name}=;`) && /Max-Age=0/.test(c), `${name} cleared: ${c}`);
  }
  const [bye] = await waitMail(A.email, /^Your Lattice account has been deleted/);
  assert.match(bye.text, /deleted/);

  assertErrorShape(assert, await login(A.email, A.password), 401, 'invalid_credentials');
  assertErrorShape(assert, await accountOf(A.s), 401);
  assertErrorShape(assert, await call('GET', '/api/v1/auth/me', { key: A.key }), 401);

  assert.equal(psql(`SELECT coalesce(sum(n), 0) FROM lattice.tenant_row_counts('${A.id}')`), '0');
  for (const t of ['account_emails', 'api_key_prefixes', 'session_tokens']) {
    assert.equal(psql(`SELECT count(*) FROM lattice.${t} WHERE user_id = '${A.id}'`), '0', `no ${t} row`);
  }
  assert.equal(psql(`SELECT count(*) FROM lattice.account_emails WHERE email IN ('${A.email}', '${A.oldEmail}')`), '0');

  assert.equal(countsOf(B.id), bBefore, 'B\'s rows are as they were');
  assert.equal((await call('GET', '/api/v1/auth/me', { key: B.key })).status, 200, 'B\'s key works');
  const bServices = await call('GET', '/api/v1/services', { s: B.s });
  assert.equal(bServices.status, 200);
  assert.ok(bServices.text.includes(B.service));
  assert.equal((await login(B.email, B.password)).status, 200, 'B signs in');
});
