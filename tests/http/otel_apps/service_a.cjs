// otel-a: the front service.  GET /orders/:id asks otel-b for the stock of
// the order's item over HTTP (a CLIENT span whose SERVER child is in otel-b);
// GET /boom throws (instrumentation-express records the exception on the
// route handler's span).  Prints {"port": N} once it listens on 127.0.0.1.
// Env: OTEL_B_URL (otel-b's base URL), PORT (0: any), the OTEL_* of tracing.cjs.
'use strict';
const otel = require('./tracing.cjs')('otel-a'); // before express and http
const http = require('node:http');
const express = require('express');

const B = process.env.OTEL_B_URL;
if (!B) throw new Error('OTEL_B_URL is not set');

// node:http (instrumented; fetch would not be), JSON in and out
function getJson(url) {
  return new Promise((resolve, reject) => {
    http.get(url, { agent: keepAlive }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => {
        try { resolve({ status: res.statusCode, json: JSON.parse(body) }); } catch (e) { reject(e); }
      });
    }).on('error', reject);
  });
}
const keepAlive = new http.Agent({ keepAlive: true });

const app = express();
otel.mountAdmin(app);
app.get('/orders/:id', async (req, res) => {
  const stock = await getJson(`${B}/stock/sku-${encodeURIComponent(req.params.id)}`);
  if (stock.status !== 200) return res.status(502).json({ error: 'stock service failed', status: stock.status });
  res.json({ order: req.params.id, item: stock.json.sku, inStock: stock.json.quantity > 0 });
});
app.get('/boom', () => {
  throw new Error('otel-a boom: the order could not be priced');
});
// Express's own error answer, without its stack trace on stderr
app.use((err, _req, res, _next) => { res.status(500).json({ error: err.message }); });

const server = app.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ service: otel.serviceName, port: server.address().port })}\n`);
});
