// otel-b: the stock service.  GET /stock/:sku runs one query on PostgreSQL
// through pg (instrumentation-pg makes the db span: db.system postgresql).
// Prints {"port": N} once it listens on 127.0.0.1.
// Env: PGHOST, PGPORT, PGUSER, PGDATABASE (pg reads them), PORT, the OTEL_* of tracing.cjs.
'use strict';
const otel = require('./tracing.cjs')('otel-b'); // before express and pg
const express = require('express');
const { Pool } = require('pg');

const pool = new Pool({ max: 2 });
const app = express();
otel.mountAdmin(app);
app.get('/stock/:sku', async (req, res) => {
  const { rows } = await pool.query(
    'SELECT $1::text AS sku, (length($1::text) * 7) % 50 + 1 AS quantity, current_database() AS db', [req.params.sku]);
  res.json(rows[0]);
});
app.use((err, _req, res, _next) => { res.status(500).json({ error: err.message }); });

const server = app.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ service: otel.serviceName, port: server.address().port })}\n`);
});
