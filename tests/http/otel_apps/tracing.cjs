// OpenTelemetry for the test services, set up as an application would: the
// NodeSDK with the real instrumentations (http, express, pg) and an OTLP/HTTP
// trace exporter configured by the standard environment:
//   OTEL_EXPORTER_OTLP_PROTOCOL     http/protobuf (default) | http/json
//   OTEL_EXPORTER_OTLP_ENDPOINT     e.g. http://127.0.0.1:PORT/otlp (-> /otlp/v1/traces)
//   OTEL_EXPORTER_OTLP_HEADERS      x-lattice-api-key=KEY | Authorization=Bearer%20KEY
//   OTEL_EXPORTER_OTLP_COMPRESSION  gzip | none
//   OTEL_SERVICE_NAME               overrides the service's own name
// The exporter reads those itself; this file only picks its class.  Spans go
// out every 100 ms (not the SDK's 5 s), and the app's GET /__otel/flush
// (see mountAdmin) flushes and answers what the exporter saw: each export's
// result and every warning or error the SDK logged through diag.
//
// Must be required before express, pg or http: const otel = require('./tracing.cjs')('otel-a');
'use strict';

process.env.OTEL_METRICS_EXPORTER ??= 'none'; // the SDK would start OTLP metrics and logs otherwise
process.env.OTEL_LOGS_EXPORTER ??= 'none';

const api = require('@opentelemetry/api');
const { NodeSDK, tracing } = require('@opentelemetry/sdk-node');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { ATTR_SERVICE_NAME } = require('@opentelemetry/semantic-conventions');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');
const { ExpressInstrumentation } = require('@opentelemetry/instrumentation-express');
const { PgInstrumentation } = require('@opentelemetry/instrumentation-pg');

module.exports = function startTracing(defaultName) {
  const serviceName = process.env.OTEL_SERVICE_NAME || defaultName;
  const protocol = process.env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || process.env.OTEL_EXPORTER_OTLP_PROTOCOL || 'http/protobuf';
  let OTLPTraceExporter;
  if (protocol === 'http/protobuf') ({ OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto'));
  else if (protocol === 'http/json') ({ OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http'));
  else throw new Error(`unsupported OTEL_EXPORTER_OTLP_PROTOCOL ${protocol}`);

  // What the SDK says about itself (export failures reach diag.error through
  // the span processor's global error handler; partial success is a warning).
  const logged = { error: [], warn: [], info: [] };
  const text = (args) => args.map((a) => (a instanceof Error ? `${a.name}: ${a.message}${a.code ? ` (code ${a.code})` : ''}`
    : typeof a === 'string' ? a : JSON.stringify(a))).join(' ');
  const keep = (level) => (...args) => {
    const line = text(args);
    logged[level].push(line);
    process.stderr.write(`[${serviceName}] otel ${level}: ${line}\n`);
  };
  api.diag.setLogger({ error: keep('error'), warn: keep('warn'), info: keep('info'), debug() {}, verbose() {} },
                     api.DiagLogLevel.INFO);

  // The exporter as configured by the environment; each result is kept.
  const exporter = new OTLPTraceExporter();
  const exports = [];
  const inFlight = new Set();
  const recording = {
    export(spans, done) {
      let finished;
      const p = new Promise((resolve) => { finished = resolve; });
      inFlight.add(p);
      exporter.export(spans, (result) => {
        exports.push({ ok: result.code === 0, spans: spans.length,
                       error: result.error ? { message: result.error.message, code: result.error.code ?? null } : null });
        inFlight.delete(p);
        finished();
        done(result);
      });
    },
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush?.() ?? Promise.resolve(),
  };
  const processor = new tracing.BatchSpanProcessor(recording, { scheduledDelayMillis: 100 });

  const sdk = new NodeSDK({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: serviceName }),
    spanProcessors: [processor],
    instrumentations: [
      new HttpInstrumentation({ ignoreIncomingRequestHook: (req) => (req.url ?? '').startsWith('/__otel') }),
      new ExpressInstrumentation(),
      new PgInstrumentation(),
    ],
  });
  sdk.start();

  const report = () => ({ service: serviceName, protocol, exports, logged });
  // The processor's forceFlush exports what is buffered but does not wait for
  // an export its timer started: those are waited for here.  A failed export
  // rejects forceFlush: the failure is in exports (and diag) already.
  const flush = async () => {
    try { await processor.forceFlush(); } catch (e) { logged.flush = String(e?.message ?? e); }
    await Promise.all([...inFlight]);
    return report();
  };
  let stopping = null;
  const shutdown = () => (stopping ??= sdk.shutdown().catch((e) => keep('error')(e)));
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.once(sig, () => { shutdown().finally(() => process.exit(0)); });
  }
  return {
    serviceName,
    sdk,
    flush,
    report,
    shutdown,
    // GET /__otel/flush: flush, then answer report() (not traced).
    mountAdmin(app) {
      app.get('/__otel/flush', async (_req, res) => { res.json(await flush()); });
    },
  };
};
