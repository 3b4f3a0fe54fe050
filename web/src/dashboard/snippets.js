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
