// Tiny SVG charts (no library): bars for counts, lines for latency.  Sized by
// viewBox and attributes only (no inline style: CSP).
const NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  for (const c of children) if (c != null) el.append(c);
  return el;
}
const W = 720; const H = 220; const L = 48; const R = 10; const T = 10; const B = 26;

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
}

function frame(max, labels, fmtY, title) {
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': title });
  svg.append(s('title', {}, title));
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - T - B) * (1 - i / 4);
    svg.append(s('line', { x1: L, x2: W - R, y1: y, y2: y, class: 'axis' }), s('text', { x: L - 6, y: y + 4, 'text-anchor': 'end' }, fmtY((max * i) / 4)));
  }
  const step = Math.max(1, Math.ceil(labels.length / 8));
  labels.forEach((lab, i) => {
    if (i % step) return;
    const x = L + ((W - L - R) * (i + 0.5)) / labels.length;
    svg.append(s('text', { x, y: H - 8, 'text-anchor': 'middle' }, lab));
  });
  return svg;
}

// bars: [{label, value, refused?}]
export function barChart(bars, title, fmtY = (v) => Math.round(v)) {
  const max = niceMax(Math.max(...bars.map((b) => (b.value || 0) + (b.refused || 0)), 0));
  const svg = frame(max, bars.map((b) => b.label), fmtY, title);
  const bw = (W - L - R) / Math.max(bars.length, 1);
  const ys = (v) => ((H - T - B) * v) / max;
  bars.forEach((b, i) => {
    const x = L + i * bw + bw * 0.15;
    const hv = ys(b.value || 0); const hr = ys(b.refused || 0);
    const base = H - B;
    svg.append(s('rect', { x, y: base - hv, width: bw * 0.7, height: hv, class: 'bar' }, s('title', {}, `${b.label}: ${b.value}`)));
    if (hr) svg.append(s('rect', { x, y: base - hv - hr, width: bw * 0.7, height: hr, class: 'bar refused' }, s('title', {}, `${b.label}: ${b.refused} refused`)));
  });
  return svg;
}

// series: [{name, cls, values:[number|null]}], labels: [string]
export function lineChart(labels, series, title, fmtY) {
  const max = niceMax(Math.max(0, ...series.flatMap((x) => x.values.filter((v) => v != null))));
  const svg = frame(max, labels, fmtY, title);
  const x = (i) => L + ((W - L - R) * (i + 0.5)) / Math.max(labels.length, 1);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  for (const ser of series) {
    let d = '';
    ser.values.forEach((v, i) => { if (v != null) d += `${d && ser.values[i - 1] != null ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`; });
    if (d) svg.append(s('path', { d, class: `line ${ser.cls}` }, s('title', {}, ser.name)));
  }
  return svg;
}

// Stacked bars, one stack per label: series [{name, cls, values:[number]}],
// drawn bottom to top in order.
export function stackedBarChart(labels, series, title, fmtY = (v) => Math.round(v)) {
  const totals = labels.map((_, i) => series.reduce((a, ser) => a + (ser.values[i] || 0), 0));
  const max = niceMax(Math.max(...totals, 0));
  const svg = frame(max, labels, fmtY, title);
  const bw = (W - L - R) / Math.max(labels.length, 1);
  const ys = (v) => ((H - T - B) * v) / max;
  labels.forEach((lab, i) => {
    const x = L + i * bw + bw * 0.15;
    let top = H - B;
    for (const ser of series) {
      const v = ser.values[i] || 0;
      if (!v) continue;
      const hv = ys(v);
      top -= hv;
      svg.append(s('rect', { x, y: top, width: bw * 0.7, height: hv, class: `bar ${ser.cls}` }, s('title', {}, `${lab}: ${v} ${ser.name}`)));
    }
  });
  return svg;
}
