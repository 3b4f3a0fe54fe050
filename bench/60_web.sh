#!/usr/bin/env bash
# The dashboard's graph page in Debian's Chromium (playwright-core) through
# the real shim: time from navigation to an interactive graph (drawn, and a
# search + Enter opens a service's panel), for growing tenants.  The issue's
# target: 1,000 services / 5,000 edges within 3 s.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d tests/node_modules/playwright-core ] || (cd tests && npm ci --silent --no-audit --no-fund)
[ -f web/dist/index.html ] || scripts/build-web.sh >/dev/null
LATTICE_ROOT=$PWD node --input-type=module <<'JS'
import { startShim, launchBrowser, openPage } from './tests/browser/lib.mjs';
import { seedBigGraph, timeGraph } from './tests/browser/biggraph.mjs';
const shim = await startShim();
const browser = await launchBrowser();
const rows = [];
try {
  for (const [n, m] of [[100, 300], [1000, 5000], [3000, 15000]]) {
    const account = seedBigGraph(n, m);
    const page = await openPage(browser.context);
    const cold = await timeGraph(page, shim.base, account);
    await page.goto(`${shim.base}/dashboard/services`);
    const t0 = Date.now();
    await page.goto(`${shim.base}/dashboard/graph`);
    await page.locator('.graph-box[data-ready=true]').waitFor();
    const warm = Date.now() - t0;
    const drawn = await page.locator('.graph-box').getAttribute('data-nodes');
    rows.push([n, account.edges, drawn, cold, warm]);
    await page.close();
  }
} finally { await browser.close(); shim.stop(); }
console.log('services  edges  drawn  interactive_ms  reload_ready_ms  vs_3s_target');
for (const [n, m, d, c, w] of rows) console.log(`${String(n).padStart(8)} ${String(m).padStart(6)} ${String(d).padStart(6)} ${String(c).padStart(15)} ${String(w).padStart(16)} ${(c / 3000).toFixed(2).padStart(13)}`);
JS
