// Multi-page static build.  Every clean URL /x is a directory x/index.html in
// dist/ (see README.md).  No inline scripts or styles anywhere: the shim sends
// a strict Content-Security-Policy.
import { defineConfig } from 'vite';
import { readFileSync, mkdirSync, copyFileSync } from 'node:fs';
import { resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const pages = ['pricing', 'signup', 'login', 'forgot-password', 'reset-password', 'verify-email',
  'alerts/verify', 'terms', 'privacy', 'docs', 'dashboard'];
// Dashboard views get their own copy of dashboard/index.html so that a reload
// of /dashboard/graph works on any static server, SPA fallback or not.
export const dashboardViews = ['services', 'service', 'graph', 'changes', 'errors',
  'performance', 'alerts', 'keys', 'billing', 'usage', 'onboarding', 'account'];

// <!-- @include name --> pulls partials/name.html into a page at build time.
function partials() {
  return {
    name: 'lattice-partials',
    transformIndexHtml: {
      order: 'pre',
      handler: (html) => {
        const include = /<!--\s*@include\s+([a-z-]+)\s*-->/g;
        for (let depth = 0; depth < 4 && include.test(html); depth++) {
          html = html.replace(include, (_, name) =>
            readFileSync(resolve(here, 'partials', `${name}.html`), 'utf8'));
        }
        return html;
      },
    },
  };
}

function dashboardCopies() {
  return {
    name: 'lattice-dashboard-copies',
    apply: 'build',
    closeBundle() {
      const src = resolve(here, 'dist/dashboard/index.html');
      for (const v of dashboardViews) {
        mkdirSync(resolve(here, 'dist/dashboard', v), { recursive: true });
        copyFileSync(src, resolve(here, 'dist/dashboard', v, 'index.html'));
      }
    },
  };
}

export default defineConfig({
  root: here,
  base: '/',
  appType: 'mpa',
  plugins: [partials(), dashboardCopies()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2020',
    assetsInlineLimit: 0,          // no data: URIs (CSP img-src 'self')
    modulePreload: { polyfill: false },
    cssCodeSplit: true,
    reportCompressedSize: false,
    chunkSizeWarningLimit: 800,   // cytoscape, loaded only by the graph view
    rollupOptions: {
      input: Object.fromEntries([
        ['index', resolve(here, 'index.html')],
        ...pages.map((p) => [p.replace(/\//g, '-'), resolve(here, p, 'index.html')]),
      ]),
    },
  },
});
