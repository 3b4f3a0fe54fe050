// ESLint (flat config): the recommended rules over the web assets (browser),
// the test suites and the scripts (node).  make lint runs it (scripts/lint.sh);
// eslint and its packages live in tests/node_modules (tests/package.json), so
// they are resolved from there.
import { createRequire } from 'node:module';

const require = createRequire(new URL('./tests/package.json', import.meta.url));
const js = require('@eslint/js');
const globals = require('globals');

export default [
  {
    ignores: ['**/node_modules/', 'web/dist/', '.build/', '.run/', 'vendor/', 'tests/artifacts/'],
  },
  js.configs.recommended,
  {
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    // an argument that is there for its position only says so with a leading _
    // (Express knows an error handler by its four parameters: (err, req, res, _next))
    rules: { 'no-unused-vars': ['error', { argsIgnorePattern: '^_' }] },
  },
  {
    // the site and the dashboard, bundled by vite for the browser
    files: ['web/src/**/*.js'],
    languageOptions: { ecmaVersion: 'latest', sourceType: 'module', globals: globals.browser },
  },
  {
    files: ['web/vite.config.js', '**/*.mjs'],
    languageOptions: { ecmaVersion: 'latest', sourceType: 'module', globals: globals.node },
  },
  {
    files: ['**/*.cjs'],
    languageOptions: { ecmaVersion: 'latest', sourceType: 'commonjs', globals: globals.node },
  },
  {
    // playwright runs the callbacks given to page.evaluate() in the browser
    files: ['tests/browser/**/*.mjs'],
    languageOptions: { globals: { ...globals.node, ...globals.browser } },
  },
];
