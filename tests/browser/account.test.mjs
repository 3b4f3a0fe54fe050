// The account lifecycle (docs/account.md) end to end in a real browser, real
// shim, real database: the new pages render without a console error or a CSP
// violation; sign-up -> the "verify your e-mail" banner -> the e-mailed link
// (read from lattice.outbox) -> the banner is gone; the Account view;
// "forgot password" -> the e-mailed link -> a new password -> log in with it;
// two-factor enrolment from the QR page (the TOTP code computed here, RFC
// 6238) -> log out -> the login asks for a code; the export downloads one
// JSON file; deleting the account sends to / and its login is then refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID, createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { startShim, launchBrowser, openPage, shot, replay, sql } from './lib.mjs';

let shim;
let browser;
let page;                        // the signed-in page, no console error allowed
const email = `account-${randomUUID()}@example.com`;
const firstPassword = 'a first browser password';
const newPassword = 'a brand-new browser password';
let password = firstPassword;
let secret;                       // the TOTP secret shown at enrolment
let recoveryCodes = [];
let lastStep = 0;                 // a TOTP step is accepted once: never reuse one

before(async () => {
  shim = await startShim();
  browser = await launchBrowser();
  page = await openPage(browser.context);
});
after(async () => { await browser?.close(); shim?.stop(); });

// ---- RFC 4648 base32 and RFC 6238 TOTP (HMAC-SHA-1, 30 s, 6 digits) -------
function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const out = [];
  for (const c of text.replace(/[\s=]/g, '').toUpperCase()) {
    const i = alphabet.indexOf(c);
    if (i < 0) throw new Error(`not base32: ${c}`);
    value = (value << 5) | i;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
      value &= (1 << bits) - 1;
    }
  }
  return Buffer.from(out);
}

function hotp(key, counter, digits = 6) {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const mac = createHmac('sha1', key).update(msg).digest();
  const off = mac[mac.length - 1] & 0x0f;
  const bin = ((mac[off] & 0x7f) << 24) | (mac[off + 1] << 16) | (mac[off + 2] << 8) | mac[off + 3];
  return String(bin % 10 ** digits).padStart(digits, '0');
}

const stepNow = () => Math.floor(Date.now() / 30000);

// A code for a step not used yet and within the server's ±1 window; waits
// for the next step when the window's last one is already used.
async function nextCode() {
  let step = Math.max(stepNow(), lastStep + 1);
  while (step > stepNow() + 1) await new Promise((r) => setTimeout(r, 1000));
  lastStep = step;
  return hotp(base32Decode(secret), step);
}

// The newest e-mail of a purpose to an address, from the outbox; the token of its link.
function linkToken(to, purpose, path) {
  const text = sql(`SELECT mail_text FROM lattice.outbox WHERE mail_to = '${to}' AND purpose = '${purpose}' ORDER BY id DESC LIMIT 1`);
  assert.ok(text, `no ${purpose} e-mail to ${to} in the outbox`);
  const m = text.match(new RegExp(`${path}\\?token=([A-Za-z0-9_-]+)`));
  assert.ok(m, `no ${path} link in the ${purpose} e-mail:\n${text}`);
  return m[1];
}

// POST /auth/login from node (no browser, no cookie): the API's own answer.
async function apiLogin(body) {
  const res = await fetch(`${shim.base}/api/v1/auth/login`, { method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: await res.json().catch(() => null) };
}

async function accountLoaded(p = page) {
  await p.goto(`${shim.base}/dashboard/account`);
  await p.locator('#profile-facts').waitFor();
  await p.locator('table[aria-label="Sessions"]').waitFor();
}

test('TOTP helper: the RFC 6238 SHA-1 test vectors', () => {
  const key = Buffer.from('12345678901234567890');
  assert.equal(hotp(key, Math.floor(59 / 30), 8), '94287082');
  assert.equal(hotp(key, Math.floor(1111111109 / 30), 8), '07081804');
  assert.equal(hotp(key, Math.floor(20000000000 / 30), 8), '65353130');
  assert.deepEqual(base32Decode('GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ'), key);
});

test('the new pages render with a heading, no console error and no CSP violation', async () => {
  for (const [path, heading] of [['/forgot-password', /forgot/i], ['/reset-password', /new password/i],
    ['/verify-email', /verify/i]]) {
    const p = await openPage(browser.context);
    const res = await p.goto(shim.base + path, { waitUntil: 'networkidle' });
    assert.equal(res.status(), 200);
    assert.match(res.headers()['content-security-policy'], /script-src 'self'/);
    assert.match(await p.locator('h1').innerText(), heading);
    if (path !== '/forgot-password') {
      // without a token: said at once, nothing sent
      assert.match(await p.locator('main').innerText(), /incomplete/i);
    }
    await shot(p, path.slice(1));
    assert.deepEqual(p.problems, [], path);
    await p.close();
  }
  const login = await openPage(browser.context);
  await login.goto(`${shim.base}/login`, { waitUntil: 'networkidle' });
  await login.click('text=Forgot password?');
  await login.waitForURL(/\/forgot-password$/);
  assert.deepEqual(login.problems, []);
  await login.close();
});

test('sign-up: a banner asks to verify the address on every view; the e-mailed link verifies it; the banner goes', async () => {
  await page.goto(`${shim.base}/signup`);
  await page.fill('#name', 'Account Test');
  await page.fill('#email', email);
  await page.fill('#password', password);
  await page.click('button[type=submit]');
  await page.waitForURL(/\/dashboard\/onboarding$/);
  await page.locator('#verify-banner').waitFor({ state: 'visible' });
  assert.match(await page.locator('#verify-banner').innerText(), /verify your e-mail address/i);
  assert.match(await page.locator('#verify-banner').innerText(), new RegExp(email.replace(/[.]/g, '\\.')));
  await shot(page, 'dashboard-verify-banner');
  // another view: still there
  await page.click('nav >> text=API keys');
  await page.locator('table[aria-label="API keys"], .state-box').first().waitFor();
  assert.equal(await page.locator('#verify-banner').isVisible(), true);

  // re-send: sent, or refused nicely when the sign-up's link is too recent
  const resend = await openPage(browser.context, { allow: [/status of 429/] });
  await resend.goto(`${shim.base}/dashboard/services`);
  await resend.locator('#resend-verify').waitFor();
  await resend.click('#resend-verify');
  await resend.locator('#resend-note:not(:empty)').waitFor();
  assert.match(await resend.locator('#resend-note').innerText(), /Sent\.|moment ago/);
  assert.deepEqual(resend.problems, []);
  await resend.close();

  const token = linkToken(email, 'email.verify_email', '/verify-email');
  await page.goto(`${shim.base}/verify-email?token=${token}`);
  await page.locator('[data-verify=verified]').waitFor();
  assert.match(await page.locator('#verify-result').innerText(), /verified/i);
  assert.equal(await page.locator('#verified-email').innerText(), email);
  await shot(page, 'verify-email-done');

  // the same link twice: refused, in words
  const again = await openPage(browser.context, { allow: [/status of 400/] });
  await again.goto(`${shim.base}/verify-email?token=${token}`);
  await again.locator('[data-verify=failed]').waitFor();
  assert.match(await again.locator('#verify-result').innerText(), /no longer works/i);
  assert.deepEqual(again.problems, []);
  await again.close();

  const account = page.waitForResponse((r) => r.url().endsWith('/api/v1/account') && r.status() === 200);
  await page.goto(`${shim.base}/dashboard/services`);
  assert.equal((await (await account).json()).user.email_verified, true);
  await page.locator('body[data-state=ready]').waitFor();
  assert.equal(await page.locator('#verify-banner').isVisible(), false);
  assert.deepEqual(page.problems, []);
});

test('the Account view: profile, two-factor off, this session, activity, data, danger zone', async () => {
  await page.click('nav >> text=Account');
  await page.waitForURL(/\/dashboard\/account$/);
  await page.locator('#profile-facts').waitFor();
  assert.equal(await page.locator('nav a[data-nav=account]').getAttribute('aria-current'), 'page');
  assert.equal(await page.locator('#account-email').innerText(), email);
  assert.equal(await page.locator('#email-state').getAttribute('data-verified'), 'true');
  assert.equal(await page.locator('#mfa-state').getAttribute('data-mfa'), 'off');
  await page.locator('table[aria-label="Sessions"] tr.current').waitFor();
  assert.match(await page.locator('table[aria-label="Sessions"] tr.current').innerText(), /this browser/);
  await page.locator('table[aria-label="Account activity"] tbody tr').first().waitFor();
  const activity = await page.locator('table[aria-label="Account activity"]').innerText();
  assert.match(activity, /Account created|Logged in|verified/i);
  assert.match(activity, /127\.0\.0\.1|::1/);
  assert.equal(await page.locator('#export-link').getAttribute('href'), '/api/v1/account/export');
  assert.equal(await page.locator('#delete-account').isVisible(), true);
  await shot(page, 'dashboard-account');
  await page.screenshot({ path: `${process.env.LATTICE_ROOT ?? '.'}/tests/artifacts/dashboard-account-full.png`, fullPage: true });

  // a wrong current password is refused in words
  const p = await openPage(browser.context, { allow: [/status of 40[13]/] });
  await accountLoaded(p);
  await p.fill('#current-password', 'not my password at all');
  await p.fill('#new-password', 'whatever long enough');
  await p.fill('#new-password2', 'whatever long enough');
  await p.click('#password-form button[type=submit]');
  await p.locator('#password-form-error').waitFor({ state: 'visible' });
  assert.match(await p.locator('#password-form-error').innerText(), /not right/);
  // the two new passwords must agree: said without a request
  await p.fill('#current-password', password);
  await p.fill('#new-password2', 'something else entirely');
  await p.click('#password-form button[type=submit]');
  assert.match(await p.locator('#password-form-error').innerText(), /not the same/);
  assert.deepEqual(p.problems, []);
  await p.close();
  assert.deepEqual(page.problems, []);
});

test('forgot password: the same answer for any address; the e-mailed link sets a new password; log in with it', async () => {
  const p = await openPage(browser.context);
  await p.goto(`${shim.base}/forgot-password`);
  await p.fill('#email', `nobody-${randomUUID()}@example.com`);
  await p.click('button[type=submit]');
  await p.locator('#flow-done').waitFor({ state: 'visible' });
  const unknown = (await p.locator('#flow-done').innerText()).replace(/\S+@example\.com/, '<addr>');

  await p.goto(`${shim.base}/forgot-password`);
  await p.fill('#email', email);
  await p.click('button[type=submit]');
  await p.locator('#flow-done').waitFor({ state: 'visible' });
  assert.match(await p.locator('#flow-done').innerText(), /If an account exists/);
  assert.equal((await p.locator('#flow-done').innerText()).replace(email, '<addr>'), unknown);
  await shot(p, 'forgot-password-sent');

  const token = linkToken(email, 'email.password_reset', '/reset-password');
  await p.goto(`${shim.base}/reset-password?token=${token}`);
  await p.fill('#password', newPassword);
  await p.fill('#password2', 'not the same one at all');
  await p.click('button[type=submit]');
  assert.match(await p.locator('#form-error').innerText(), /not the same/);
  await p.fill('#password2', newPassword);
  await p.click('button[type=submit]');
  await p.locator('#flow-done').waitFor({ state: 'visible' });
  assert.match(await p.locator('#flow-done').innerText(), /password has been changed/i);
  await shot(p, 'reset-password-done');
  password = newPassword;

  // every session was revoked, the old password no longer works
  const old = await apiLogin({ email, password: firstPassword });
  assert.equal(old.status, 401);
  assert.equal(old.body.error.code, 'invalid_credentials');

  await p.click('#to-login');
  await p.waitForURL(/\/login\?reset=done$/);
  assert.match(await p.locator('#form-error').innerText(), /password has been changed/i);
  await p.fill('#email', email);
  await p.fill('#password', password);
  await p.click('button[type=submit]');
  await p.waitForURL(/\/dashboard/);
  assert.deepEqual(p.problems, []);
  await p.close();

  // a used link is refused in words
  const used = await openPage(browser.context, { allow: [/status of 400/] });
  await used.goto(`${shim.base}/reset-password?token=${token}`);
  await used.fill('#password', 'yet another password');
  await used.fill('#password2', 'yet another password');
  await used.click('button[type=submit]');
  await used.locator('#form-error').waitFor({ state: 'visible' });
  assert.match(await used.locator('#form-error').innerText(), /no longer works/);
  assert.equal(await used.locator('form[data-flow=reset]').isVisible(), false);
  assert.deepEqual(used.problems, []);
  await used.close();
});

test('two-factor: enrol from the QR page with a code computed here; recovery codes shown once', async () => {
  // its own page: the wrong code below is a 4xx the console reports
  const p = await openPage(browser.context, { allow: [/status of 40[013]/] });
  await accountLoaded(p);
  await p.fill('#mfa-setup-password', password);
  const setup = p.waitForResponse((r) => r.url().endsWith('/api/v1/account/2fa/setup'));
  await p.click('#mfa-setup-form button[type=submit]');
  const answer = await (await setup).json();
  await p.locator('svg.qr').waitFor();
  // the QR code is drawn in the page (an inline SVG, no image fetched)
  const modules = Number(await p.locator('svg.qr').getAttribute('data-modules'));
  assert.ok(modules >= 21 && (modules - 17) % 4 === 0, `a QR symbol is 21, 25, … modules wide, not ${modules}`);
  const box = await p.locator('svg.qr').boundingBox();
  assert.ok(box.width >= 150 && box.height >= 150, `QR code drawn ${box.width}×${box.height}`);
  secret = (await p.locator('#mfa-secret').innerText()).replace(/\s+/g, '');
  assert.match(secret, /^[A-Z2-7]{16,}$/);
  assert.equal(secret, answer.secret);
  assert.match(answer.otpauth_uri, new RegExp(`^otpauth://totp/.*[?&]secret=${secret}(&|$)`));
  await shot(p, 'dashboard-account-2fa-setup');

  // a wrong code first: refused in words
  const wrong = String((Number(hotp(base32Decode(secret), stepNow())) + 500000) % 1000000).padStart(6, '0');
  await p.fill('#mfa-enable-code', wrong);
  await p.click('#mfa-enable-form button[type=submit]');
  await p.locator('#mfa-enable-form-error').waitFor({ state: 'visible' });
  assert.match(await p.locator('#mfa-enable-form-error').innerText(), /not valid/);

  await p.fill('#mfa-enable-code', await nextCode());
  await p.click('#mfa-enable-form button[type=submit]');
  await p.locator('#recovery-codes').waitFor();
  recoveryCodes = await p.locator('[data-recovery-code]').allInnerTexts();
  assert.equal(recoveryCodes.length, 10);
  for (const c of recoveryCodes) assert.match(c, /^[a-z2-7]{5}-[a-z2-7]{5}$/);
  assert.equal(new Set(recoveryCodes).size, 10);
  assert.equal(await p.locator('#mfa-state').getAttribute('data-mfa'), 'on');
  assert.match(await p.locator('#recovery-left').innerText(), /10 unused recovery codes/);
  assert.equal(await p.locator('#recovery-download').getAttribute('download'), 'lattice-recovery-codes.txt');
  await shot(p, 'dashboard-account-2fa');
  assert.deepEqual(p.problems, []);
  await p.close();

  // shown once: the view drawn again no longer has them
  await accountLoaded();
  assert.equal(await page.locator('[data-recovery-code]').count(), 0);
  assert.equal(await page.locator('#mfa-state').getAttribute('data-mfa'), 'on');
  assert.equal(await page.locator('#delete-code').count(), 1);
  assert.deepEqual(page.problems, []);
});

test('two-factor: log out, log in -> a code step; a wrong code is refused; the right one opens the dashboard', async () => {
  await page.click('#logout');
  await page.waitForURL(/\/login$/);
  const p = await openPage(browser.context, { allow: [/status of 401/] });
  await p.goto(`${shim.base}/login?next=/dashboard/account`);
  await p.fill('#email', email);
  await p.fill('#password', password);
  await p.click('button[type=submit]');
  await p.locator('#code').waitFor({ state: 'visible' });
  assert.match(await p.locator('#form-error').innerText(), /two-factor/i);
  assert.match(await p.locator('button[type=submit]').innerText(), /verify/i);
  await shot(p, 'login-code');

  // without a code the API refuses with mfa_required, with a wrong one invalid_code
  assert.equal((await apiLogin({ email, password })).body.error.code, 'mfa_required');
  await p.fill('#code', '12345');
  await p.click('button[type=submit]');
  assert.match(await p.locator('#form-error').innerText(), /6-digit code/);
  const right = await nextCode();
  await p.fill('#code', String((Number(right) + 1) % 1000000).padStart(6, '0'));
  await p.click('button[type=submit]');
  await p.locator('#form-error', { hasText: 'not valid' }).waitFor();

  await p.fill('#code', right);
  await p.click('button[type=submit]');
  await p.waitForURL(/\/dashboard\/account$/);
  await p.locator('#profile-facts').waitFor();
  assert.deepEqual(p.problems, []);
  await p.close();
});

test('export: "Download my data" saves one JSON file with the account and its service', async () => {
  // a service of this account: an ingest key made in the dashboard, one plugin request
  await page.goto(`${shim.base}/dashboard/keys`);
  await page.fill('#new-key-name', 'export key');
  await page.click('button:has-text("Create key")');
  await page.locator('[data-secret]').waitFor();
  const key = (await page.locator('[data-secret]').innerText()).trim();
  const r = await replay(shim.base, '001-POST-api_v1_ingest_metadata.json', key, 'export-demo');
  assert.equal(r.status, 200, r.body);

  await accountLoaded();
  const download = page.waitForEvent('download');
  await page.click('#export-link');
  const file = await download;
  assert.match(file.suggestedFilename(), /\.json$/);
  const text = readFileSync(await file.path(), 'utf8');
  const doc = JSON.parse(text);
  assert.equal(typeof doc, 'object');
  assert.ok(text.includes(email), 'the export names the account e-mail');
  assert.ok(text.includes('export-demo'), 'the export holds the service');
  assert.ok(!text.includes(key), 'the export never holds an API key secret');
  assert.deepEqual(page.problems, []);
});

test('delete: password, a recovery code and the typed phrase; back on / with a message; the login is refused', async () => {
  await accountLoaded();
  await page.locator('#delete-account').scrollIntoViewIfNeeded();
  await page.fill('#delete-password', password);
  await page.fill('#delete-code', recoveryCodes[0]);
  await page.fill('#delete-confirm', 'delete it');
  await page.click('#delete-form button[type=submit]');
  assert.match(await page.locator('#delete-form-error').innerText(), /to confirm/);
  await shot(page, 'dashboard-account-delete');
  await page.fill('#delete-confirm', 'delete my account');
  await page.click('#delete-form button[type=submit]');
  await page.waitForURL((u) => u.pathname === '/' && u.searchParams.get('account') === 'deleted');
  await page.locator('#site-notice').waitFor();
  assert.match(await page.locator('#site-notice').innerText(), /account has been deleted/i);
  await shot(page, 'account-deleted');
  assert.deepEqual(page.problems, []);

  assert.equal(sql(`SELECT count(*) FROM lattice.users WHERE email = '${email}'`), '0');
  const api = await apiLogin({ email, password });
  assert.equal(api.status, 401);
  assert.equal(api.body.error.code, 'invalid_credentials');

  const p = await openPage(browser.context, { allow: [/status of 401/] });
  await p.goto(`${shim.base}/login`);
  await p.fill('#email', email);
  await p.fill('#password', password);
  await p.click('button[type=submit]');
  await p.locator('#form-error').waitFor({ state: 'visible' });
  assert.match(await p.locator('#form-error').innerText(), /do not match/);
  assert.deepEqual(p.problems, []);
  await p.close();
  // the dashboard sends a deleted account's browser to the login page
  await page.goto(`${shim.base}/dashboard`);
  await page.waitForURL(/\/login/);
});
