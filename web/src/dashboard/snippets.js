// The integration snippets, with the real endpoint and (when known) the key:
// an ingest-only key, all a plugin needs.
export function endpoint() {
  return `${location.origin}/api/v1`;
}

export function expressSnippet(key) {
  return `// npm install @lattice.black/plugin-express
// .env: LATTICE_API_KEY=${key || '<an ingest key: Dashboard → API keys>'}
import { LatticePlugin } from '@lattice.black/plugin-express';

const lattice = new LatticePlugin({
  serviceName: 'my-service',
  apiEndpoint: '${endpoint()}',
  apiKey: process.env.LATTICE_API_KEY,
});
app.use(lattice.createMetricsMiddleware());
// ... your routes ...
app.listen(3000, () => lattice.analyze(app));`;
}

export function nextSnippet(key) {
  return `// npm install @lattice.black/plugin-nextjs
// .env.local: LATTICE_API_KEY=${key || '<an ingest key: Dashboard → API keys>'}
// src/instrumentation.ts
import { LatticeNextPlugin } from '@lattice.black/plugin-nextjs';

export async function register() {
  if (process.env.NEXT_RUNTIME === 'nodejs') {
    await new LatticeNextPlugin({
      serviceName: 'my-next-app',
      apiEndpoint: '${endpoint()}',
      apiKey: process.env.LATTICE_API_KEY,
    }).analyze();
  }
}`;
}

// OpenTelemetry: any SDK exporting traces over OTLP/HTTP to <origin>/otlp
// (the SDK appends /v1/traces).  Environment variables wherever the SDK
// reads them; traces only (Lattice takes no metrics or logs) and never gRPC.
export function otlpEndpoint() {
  return `${location.origin}/otlp`;
}

const KEY_HINT = '<an ingest key: Dashboard → API keys>';

// [name, value] pairs every SDK below reads; `signals` adds the three that
// turn metrics and logs off where the SDK would otherwise send them.
function otelEnv(key, service, signals) {
  return [
    ['OTEL_SERVICE_NAME', service],
    ['OTEL_RESOURCE_ATTRIBUTES', 'deployment.environment.name=production'],
    ['OTEL_EXPORTER_OTLP_ENDPOINT', otlpEndpoint()],
    ['OTEL_EXPORTER_OTLP_PROTOCOL', 'http/protobuf'],
    ['OTEL_EXPORTER_OTLP_HEADERS', `x-lattice-api-key=${key || KEY_HINT}`],
    ...(signals ? [['OTEL_TRACES_EXPORTER', 'otlp'], ['OTEL_METRICS_EXPORTER', 'none'], ['OTEL_LOGS_EXPORTER', 'none']] : []),
  ];
}
const shellExports = (pairs) => pairs.map(([k, v]) => `export ${k}="${v}"`).join('\n');

export function otelNodeSnippet(key, service = 'my-service', start = 'node app.js') {
  return `# npm install @opentelemetry/api @opentelemetry/auto-instrumentations-node
${shellExports(otelEnv(key, service, true))}
export NODE_OPTIONS="--require @opentelemetry/auto-instrumentations-node/register"
${start}`;
}

export function otelPythonSnippet(key) {
  return `# pip install opentelemetry-distro opentelemetry-exporter-otlp-proto-http
# opentelemetry-bootstrap -a install   # instrumentation for the libraries you use
${shellExports(otelEnv(key, 'my-service', true))}
opentelemetry-instrument python app.py`;
}

export function otelGoEnv(key) {
  return shellExports(otelEnv(key, 'my-service', false));
}

export function otelGoSnippet() {
  return `// go get go.opentelemetry.io/otel go.opentelemetry.io/otel/sdk \\
//   go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp \\
//   go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp
import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Call once at start; defer the returned shutdown (it sends the last spans).
func initTracing(ctx context.Context) (func(context.Context) error, error) {
	exporter, err := otlptracehttp.New(ctx) // endpoint and headers: OTEL_EXPORTER_OTLP_*
	if err != nil {
		return nil, err
	}
	// service and environment: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	return tp.Shutdown, nil
}

// Then wrap your server and clients:
//   http.ListenAndServe(":8080", otelhttp.NewHandler(mux, "server"))
//   client := &http.Client{Transport: otelhttp.NewTransport(http.DefaultTransport)}`;
}

export function otelJavaSnippet(key) {
  return `# curl -LO https://github.com/open-telemetry/opentelemetry-java-instrumentation/releases/latest/download/opentelemetry-javaagent.jar
${shellExports(otelEnv(key, 'my-service', true))}
java -javaagent:./opentelemetry-javaagent.jar -jar app.jar`;
}

export function otelNextEnv(key) {
  return `# .env.local
${otelEnv(key, 'my-next-app', false).filter(([k]) => k !== 'OTEL_SERVICE_NAME').map(([k, v]) => `${k}=${v}`).join('\n')}`;
}

// Next.js without @vercel/otel: the Node SDK's auto-instrumentation
export function otelNextNodeSnippet(key) {
  return otelNodeSnippet(key, 'my-next-app', 'next start');
}

export function otelNextSnippet() {
  return `// npm install @vercel/otel @opentelemetry/api
// instrumentation.ts (in src/ if your app has one)
import { registerOTel } from '@vercel/otel';

export function register() {
  registerOTel({ serviceName: 'my-next-app' });
}`;
}

export function otelCollectorSnippet(key) {
  return `# Add to your Collector's config (add otlphttp/lattice to an existing traces pipeline's exporters)
exporters:
  otlphttp/lattice:
    endpoint: ${otlpEndpoint()}
    compression: gzip
    headers:
      x-lattice-api-key: "${key || KEY_HINT}"

service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlphttp/lattice]`;
}
