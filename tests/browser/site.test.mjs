// The public pages in a real browser through the real shim: they render,
// break no CSP rule, log no error, work at phone width, and an anonymous
// /dashboard goes to the login page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startShim, launchBrowser, openPage, shot } from './lib.mjs';

let shim;
let browser;
before(async () => { shim = await startShim(); browser = await launchBrowser(); });
after(async () => { await browser?.close(); shim?.stop(); });

test('landing: hero, features, snippets with this origin, pricing, no console error', async () => {
  const page = await openPage(browser.context);
  const res = await page.goto(`${shim.base}/`, { waitUntil: 'networkidle' });
  assert.equal(res.status(), 200);
  assert.match(res.headers()['content-security-policy'], /script-src 'self'/);
  assert.match(await page.locator('h1').innerText(), /every service/i);
  assert.equal(await page.locator('#features article').count(), 6);
  // the snippet points apiEndpoint at this very server
  assert.match(await page.locator('#panel-express pre').innerText(), new RegExp(`apiEndpoint: '${shim.base}/api/v1'`));
  // Next.js tab by keyboard
  await page.locator('#tab-express').focus();
  await page.keyboard.press('ArrowRight');
  assert.equal(await page.locator('#panel-next').isVisible(), true);
  assert.match(await page.locator('#panel-next pre').innerText(), /LatticeNextPlugin/);
  assert.match(await page.locator('#pricing .price').innerText(), /\$25\s*\/ year/);
  assert.match(await page.locator('#pricing').innerText(), /7-day free trial/);
  // the real limits, not "unlimited"
  assert.doesNotMatch(await page.locator('body').innerText(), /unlimited/i);
  assert.match(await page.locator('#pricing').innerText(), /Up to 100 services/);
  assert.match(await page.locator('#pricing').innerText(), /own ingest budget: 3,600 requests per hour/);
  // the showcase images are real files
  for (const img of await page.locator('.shots img').all()) {
    assert.ok(await img.evaluate((el) => el.complete && el.naturalWidth > 0), await img.getAttribute('src'));
  }
  await shot(page, 'landing');
  await page.screenshot({ path: `${process.env.LATTICE_ROOT ?? '.'}/tests/artifacts/landing-full.png`, fullPage: true });
  assert.deepEqual(page.problems, []);
  await page.close();
});

test('landing weighs little and loads no render-blocking script', async () => {
  const page = await openPage(browser.context);
  let bytes = 0;
  page.on('response', async (r) => { const len = Number(r.headers()['content-length'] || 0); bytes += len; });
  await page.goto(`${shim.base}/`, { waitUntil: 'networkidle' });
  const blocking = await page.evaluate(() => [...document.querySelectorAll('head script')].filter((s) => !s.defer && !s.async && s.type !== 'module').length);
  assert.equal(blocking, 0);
  assert.ok(bytes < 400_000, `landing transferred ${bytes} bytes`);
  await page.close();
});

for (const [path, heading] of [['/pricing', /pricing/i], ['/signup', /free trial/i], ['/login', /log in/i],
  ['/terms', /terms/i], ['/privacy', /privacy/i], ['/docs', /documentation/i]]) {
  test(`${path} renders with a heading and no console error`, async () => {
    const page = await openPage(browser.context);
    const res = await page.goto(shim.base + path, { waitUntil: 'networkidle' });
    assert.equal(res.status(), 200);
    assert.match(await page.locator('h1').first().innerText(), heading);
    assert.equal(await page.locator('a[href="/"]').first().isVisible(), true);
    await shot(page, path.slice(1));
    assert.deepEqual(page.problems, []);
    await page.close();
  });
}

test('pricing states the real limits: 100 services, an ingest budget per service, the API and the dashboard apart', async () => {
  const page = await openPage(browser.context);
  await page.goto(`${shim.base}/pricing`, { waitUntil: 'networkidle' });
  const text = await page.locator('main').innerText();
  assert.doesNotMatch(text, /unlimited services/i);
  assert.doesNotMatch(text, /dozens of services/i);
  assert.match(await page.locator('.price-card').innerText(), /Up to 100 services/);
  assert.match(await page.locator('.price-card').innerText(), /3,600 requests per hour/);
  await page.locator('#faq-limits summary').click();
  const faq = await page.locator('#faq-limits').innerText();
  assert.match(faq, /up to 100 services/i);
  assert.match(faq, /3,600 requests per hour for each service/);
  assert.match(faq, /about 1,450 an hour/);
  assert.match(faq, /2\.5× headroom/);
  assert.match(faq, /1,000 requests per hour per account for scripts and integrations using API keys/);
  assert.match(faq, /Dashboard:.*counted on its own/);
  await shot(page, 'pricing-limits');
  assert.deepEqual(page.problems, []);
  await page.close();
});

test('phone width: the menu folds and opens, nothing overflows', async () => {
  const page = await openPage(browser.context);
  await page.setViewportSize({ width: 375, height: 740 });
  await page.goto(`${shim.base}/`, { waitUntil: 'networkidle' });
  assert.equal(await page.locator('#site-nav').isVisible(), false);
  await page.locator('.nav-toggle').click();
  assert.equal(await page.locator('#site-nav').isVisible(), true);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than the phone`);
  await shot(page, 'landing-phone');
  assert.deepEqual(page.problems, []);
  await page.close();
});

test('an anonymous visit to /dashboard goes to the login page', async () => {
  await browser.context.clearCookies();
  const page = await openPage(browser.context);
  await page.goto(`${shim.base}/dashboard/keys`);
  await page.waitForURL(/\/login\?next=/);
  assert.equal(new URL(page.url()).searchParams.get('next'), '/dashboard/keys');
  assert.deepEqual(page.problems, []);
  await page.close();
});

test('a wrong password is refused with a clear message', async () => {
  const page = await openPage(browser.context, { allow: [/status of 401/] });
  await page.goto(`${shim.base}/login`);
  await page.fill('#email', `nobody-${Date.now()}@example.com`);
  await page.fill('#password', 'not the password at all');
  await page.click('button[type=submit]');
  await page.locator('#form-error').waitFor({ state: 'visible' });
  assert.match(await page.locator('#form-error').innerText(), /do not match/);
  assert.deepEqual(page.problems, []);
  await page.close();
});
