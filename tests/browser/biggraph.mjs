// A tenant with N services and M edges, inserted as superuser (tests may),
// and a browser measurement of how long /dashboard/graph takes to become
// interactive for it.  Used by graph_scale.test.mjs and bench/60_web.sh.
import { randomUUID } from 'node:crypto';
import { sql } from './lib.mjs';

export function seedBigGraph(services = 1000, edges = 5000) {
  const email = `big-${randomUUID()}@example.com`;
  const password = 'a big graph password';
  const id = sql(`SELECT lattice.create_user('${email}', '${password}', 'Big Graph')`);
  sql(`INSERT INTO lattice.services (user_id, name, environment, version, language, framework, runtime, status)
       SELECT '${id}', 'svc-' || lpad(i::text, 4, '0'), CASE WHEN i % 5 = 0 THEN 'staging' ELSE 'production' END,
              '1.0.' || i, 'typescript', 'express', 'node-v20', 'active'
         FROM generate_series(1, ${services}) i`);
  // a layered system: each edge goes from a lower to a higher number, plus a few back-edges (cycles)
  sql(`WITH s AS (SELECT id, row_number() OVER (ORDER BY name) AS n FROM lattice.services WHERE user_id = '${id}'),
            e AS (SELECT DISTINCT ON (a, b) a, b FROM (
                    SELECT 1 + (random() * (${services} - 2))::int AS a, g FROM generate_series(1, ${edges} * 2) g) x
                    CROSS JOIN LATERAL (SELECT LEAST(${services}, a + 1 + (random() * 40)::int) AS b) y
                   WHERE a <> b LIMIT ${edges})
       INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count, error_count, total_duration_ms)
       SELECT '${id}', sa.id, sb.id, 1 + (random() * 10000)::int, (random() * 50)::int, 1000
         FROM e JOIN s sa ON sa.n = e.a JOIN s sb ON sb.n = e.b`);
  const n = Number(sql(`SELECT count(*) FROM lattice.connections WHERE user_id = '${id}'`));
  return { id, email, password, services, edges: n, middle: `svc-${String(Math.ceil(services / 2)).padStart(4, '0')}` };
}

// Logs in and loads the graph; returns ms from navigation to a drawn,
// clickable graph (a search + Enter opens a service's detail panel).
export async function timeGraph(page, base, account) {
  await page.goto(`${base}/login`);
  await page.fill('#email', account.email);
  await page.fill('#password', account.password);
  await page.click('button[type=submit]');
  await page.waitForURL(/\/dashboard/);
  const t0 = Date.now();
  await page.goto(`${base}/dashboard/graph`);
  await page.locator('.graph-box[data-ready=true]').waitFor({ timeout: 60000 });
  await page.fill('#g-search', account.middle);
  await page.press('#g-search', 'Enter');
  await page.locator(`#graph-detail h2:has-text("${account.middle}")`).waitFor({ timeout: 60000 });
  return Date.now() - t0;
}
