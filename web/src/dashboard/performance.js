// Latency (p50/p95/p99) and traffic over time, per service.
import { get } from '../api.js';
import { h, fill, listOf, allServices, pick, num, ms, empty, failure, viewHead } from './common.js';
import { barChart, lineChart } from './charts.js';

const RANGES = { '1h': [3600, '5m'], '24h': [86400, '1h'], '7d': [604800, '6h'] };

export async function render(root, ctx) {
  let services;
  try {
    services = (await allServices()).sort((a, b) => String(a.name).localeCompare(b.name));
  } catch (err) {
    if (err.status === 401) throw err;
    fill(root, viewHead('Performance'), failure(err, () => render(root, ctx)));
    return null;
  }
  if (services.length === 0) {
    fill(root, viewHead('Performance'), empty('No services yet', 'Latency appears once your services send traces.',
      h('a.btn.btn-primary', { href: '/dashboard/onboarding' }, 'Get started')));
    return null;
  }
  const svcSel = h('select', { id: 'perf-svc' }, services.map((s) => h('option', { value: s.id }, `${s.name}${s.environment ? ` (${s.environment})` : ''}`)));
  const rangeSel = h('select', { id: 'perf-range' }, Object.keys(RANGES).map((r) => h('option', { value: r }, `Last ${r}`)));
  rangeSel.value = '24h';
  if (ctx.params.get('service')) svcSel.value = ctx.params.get('service');
  const box = h('div');

  async function load() {
    fill(box, h('div.state-box', { role: 'status' }, h('span.spinner'), ' Loading…'));
    const [secs, interval] = RANGES[rangeSel.value];
    const to = new Date(); const from = new Date(to.getTime() - secs * 1000);
    let points;
    try {
      const d = await get(`/performance/metrics?service_id=${encodeURIComponent(svcSel.value)}&from=${from.toISOString()}&to=${to.toISOString()}&interval=${interval}`);
      points = listOf(d, 'buckets', 'metrics', 'points', 'series');
    } catch (err) {
      if (err.status === 401) throw err;
      fill(box, failure(err, load));
      return;
    }
    if (points.length === 0) {
      fill(box, empty('No traffic in this period', 'Add the metrics middleware to the service to record latency.'));
      return;
    }
    const t = (p) => new Date(pick(p, 'start', 'bucket', 'time', 'timestamp', 'at'));
    const label = (p) => (interval === '6h' ? t(p).toLocaleDateString('en', { month: 'short', day: 'numeric' })
      : t(p).toLocaleTimeString('en', { hour: '2-digit', minute: '2-digit' }));
    const labels = points.map(label);
    const v = (p, ...k) => { const x = pick(p, ...k); return x == null ? null : Number(x); };
    const count = (p) => v(p, 'requestCount', 'requests', 'count', 'calls') ?? 0;
    const errors = (p) => v(p, 'errorCount', 'errors', 'error_count') ?? 0;
    const total = points.reduce((a, p) => a + count(p), 0);
    const errs = points.reduce((a, p) => a + errors(p), 0);
    const p95s = points.map((p) => v(p, 'p95', 'p95Ms', 'p95_ms')).filter((x) => x != null);
    fill(box, 
      h('div.tiles', h('div.tile', h('div.label', 'Requests'), h('div.value', num(total))),
        h('div.tile', h('div.label', 'Error rate'), h('div.value', { class: errs ? 'bad' : 'ok' }, total ? `${((100 * errs) / total).toFixed(2)}%` : '—')),
        h('div.tile', h('div.label', 'Worst p95'), h('div.value', p95s.length ? ms(Math.max(...p95s)) : '—'))),
      h('section.panel', h('h2', 'Latency'), h('div.chart-legend', h('span.cl-p50', 'p50'), h('span.cl-p95', 'p95'), h('span.cl-p99', 'p99')),
        lineChart(labels, [
          { name: 'p50', cls: 'p50', values: points.map((p) => v(p, 'p50', 'p50Ms', 'p50_ms')) },
          { name: 'p95', cls: 'p95', values: points.map((p) => v(p, 'p95', 'p95Ms', 'p95_ms')) },
          { name: 'p99', cls: 'p99', values: points.map((p) => v(p, 'p99', 'p99Ms', 'p99_ms')) },
        ], 'Latency percentiles over time', (x) => ms(x))),
      h('section.panel', h('h2', 'Requests'), barChart(points.map((p) => ({ label: label(p), value: count(p), refused: errors(p) })), 'Requests and errors over time')));
  }
  svcSel.addEventListener('change', load);
  rangeSel.addEventListener('change', load);
  fill(root, viewHead('Performance'), h('div.toolbar',
    h('div.field.grow', h('label', { for: 'perf-svc' }, 'Service'), svcSel),
    h('div.field', h('label', { for: 'perf-range' }, 'Period'), rangeSel)), box);
  await load();
  return null;
}
