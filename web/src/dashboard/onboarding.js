// Onboarding: create an ingest-only key (shown once), copy the snippet with
// it filled in (the Lattice plugin, or any OpenTelemetry SDK or Collector
// over OTLP/HTTP), and wait live for the first service to report.
import { get, post } from '../api.js';
import { h, fill, listOf, pick, serviceHref, viewHead } from './common.js';
import { onGraphChange } from './live.js';
import { initTabs } from '../ui.js';
import { expressSnippet, nextSnippet, otlpEndpoint, otelNodeSnippet, otelPythonSnippet, otelGoEnv, otelGoSnippet,
  otelJavaSnippet, otelNextEnv, otelNextSnippet, otelNextNodeSnippet, otelCollectorSnippet } from './snippets.js';

export async function render(root) {
  let key = null;
  const keyStep = h('li');
  const snippetStep = h('li');
  const waitStep = h('li');
  const waiting = h('div.waiting', { role: 'status', 'aria-live': 'polite' }, h('span.pulse', { 'aria-hidden': 'true' }),
    h('span', 'Waiting for your first service…'));

  function drawKeyStep(error) {
    const name = h('input', { id: 'key-name', name: 'name', type: 'text', value: 'Production', maxlength: 100, required: true });
    const button = h('button.btn.btn-primary', { type: 'submit' }, 'Create ingest key');
    const form = h('form.toolbar', h('div.field.grow', h('label', { for: 'key-name' }, 'Key name'), name), button);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      button.disabled = true;
      try {
        key = await post('/keys', { name: name.value.trim() || 'Default', scopes: ['ingest'] });
        drawKeyStep();
        drawSnippet();
      } catch (err) {
        drawKeyStep(err);
      }
    });
    keyStep.className = key ? 'done' : '';
    fill(keyStep, h('h2', 'Create an ingest key'),
      ...(key
        ? [h('p', 'Here is your ingest key. It is shown only this once: copy it now.'),
          h('div.secret', h('code', { id: 'new-key' }, key.key),
            h('button.btn.btn-small', { type: 'button', 'data-copy': '', 'data-copy-text': key.key }, 'Copy'))]
        : [h('p.muted', 'Your services\' plugins send with it. It can only send data, not read it (scope ingest). You can create more, rotate or revoke them later on the API keys page.'),
          error ? h('div.alert.alert-error', { role: 'alert' }, error.message) : '', form]));
  }

  function drawSnippet() {
    const k = key && key.key;
    const tab = (id, label, selected) => h('button', { role: 'tab', id: `tab-${id}`, 'aria-controls': `panel-${id}`,
      'aria-selected': String(selected), tabindex: selected ? '0' : '-1', type: 'button' }, label);
    const code = (text) => h('div.code', h('button.btn.btn-small.copy', { type: 'button', 'data-copy': '' }, 'Copy'), h('pre', h('code', text)));
    // a panel holds one snippet, or several [caption, text] in order
    const panel = (id, content, hidden) => h('div', { role: 'tabpanel', id: `panel-${id}`, 'aria-labelledby': `tab-${id}`, hidden },
      typeof content === 'string' ? code(content) : content.map(([caption, text]) => [h('p.snippet-caption', caption), code(text)]));
    // one tab box: [id, label, content] per tab, the first selected
    const tabs = (label, list) => h('div.tabs', { 'data-tabs': '' },
      h('div', { role: 'tablist', 'aria-label': label }, list.map(([id, name], i) => tab(id, name, i === 0))),
      list.map(([id, , content], i) => panel(id, content, i !== 0)));
    fill(snippetStep, h('h2', 'Connect a service'),
      h('p.muted', k ? 'The ingest key is filled in below.' : 'Create the ingest key first; it will be filled in below.'),
      h('h3', 'With the Lattice plugin'),
      h('p.muted', 'Express and Next.js: routes, packages, traces and errors.'),
      tabs('Framework', [['express', 'Express', expressSnippet(k)], ['next', 'Next.js', nextSnippet(k)]]),
      h('h3', 'Or with OpenTelemetry'),
      h('p.muted', 'Any OpenTelemetry SDK or Collector that exports traces over OTLP/HTTP (protobuf or JSON) to ',
        h('code', { id: 'otlp-endpoint' }, otlpEndpoint()),
        '. gRPC is not supported: keep ', h('code', 'OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf'), '. Traces only, no metrics or logs. ',
        'Older SDKs name the environment ', h('code', 'deployment.environment'), ' instead.'),
      tabs('OpenTelemetry', [
        ['otel-node', 'Node.js', otelNodeSnippet(k)],
        ['otel-python', 'Python', otelPythonSnippet(k)],
        ['otel-go', 'Go', [['The environment:', otelGoEnv(k)], ['Then, once at start (the otlptracehttp exporter):', otelGoSnippet()]]],
        ['otel-java', 'Java', otelJavaSnippet(k)],
        ['otel-next', 'Next.js', [['The environment:', otelNextEnv(k)], ['Then instrumentation.ts, with @vercel/otel:', otelNextSnippet()],
          ['Or, without @vercel/otel, the Node SDK:', otelNextNodeSnippet(k)]]],
        ['otel-collector', 'Collector', otelCollectorSnippet(k)],
      ]));
    initTabs(snippetStep);
  }

  async function check() {
    const d = await get('/services?limit=5');
    const list = listOf(d, 'services');
    if (list.length === 0) return false;
    const first = list[0];
    waitStep.className = 'done';
    waiting.classList.add('arrived');
    fill(waiting, h('span.pulse', { 'aria-hidden': 'true' }),
      h('span', `${pick(first, 'name')} has arrived!`), ' ',
      h('a', { href: serviceHref(first.id) }, 'Open it'), ' · ', h('a', { href: '/dashboard/graph' }, 'See the graph'));
    return true;
  }

  drawKeyStep();
  drawSnippet();
  fill(waitStep, h('h2', 'Start the service'), h('p.muted', 'This turns green as soon as the first report arrives — no reload needed.'), waiting);

  fill(root, viewHead('Get started'),
    h('section.panel', h('ol.steps-ol', keyStep, snippetStep, waitStep)));

  // the first service changes the tenant's graph: the live stream says so
  // (a slow poll stands in when it cannot be had)
  let stop = () => {};
  if (!(await check().catch(() => false))) {
    let checking = false;
    let again = false;
    let arrived = false;
    const recheck = async () => {
      if (checking) { again = true; return; }
      checking = true;
      try { arrived = await check(); } catch { /* the next change tries again */ }
      checking = false;
      if (arrived) stop();
      else if (again) { again = false; recheck(); }
    };
    stop = onGraphChange((change) => {
      if (!arrived && !(change.type === 'ready' && !change.version)) recheck();
    }, { every: 5000 });
  }
  return () => stop();
}
