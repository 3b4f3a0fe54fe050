#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, built from the captured plugin requests
(tests/fixtures/captured/*.json: method, path, query, headers, raw body), the
recorded OpenTelemetry exports (tests/fixtures/otlp) and the shim's route table.  Deterministic: the same fixtures give the same seeds.

    seeds.py ROOT OUTDIR     writes OUTDIR/<target>/<n>
"""
import base64
import glob
import gzip
import hashlib
import hmac
import json
import os
import re
import sys
import urllib.parse

root, out = sys.argv[1], sys.argv[2]
seeds = {t: [] for t in ("fuzz_stripe_signature", "fuzz_jwt", "fuzz_ingest_match", "fuzz_shim_request",
                         "fuzz_ingest_check", "fuzz_ingest_validate", "fuzz_otlp_decode",
                         "fuzz_otlp_flatten")}

captured = []
for f in sorted(glob.glob(os.path.join(root, "tests/fixtures/captured/*.json"))):
    with open(f, encoding="utf-8") as fh:
        captured.append(json.load(fh))

# ---- the shim: method, path, query, authorization, cookie, content type, request id, origin
routes = re.findall(r'\{\s*"([A-Z]+)",\s*"(/[^"]*)"', open(os.path.join(root, "shim/routes.c")).read())
for c in captured:
    h = {k.lower(): v for k, v in c.get("headers", {}).items()}
    q = urllib.parse.urlencode(c.get("query") or {})
    auth = "Bearer " + h["x-lattice-api-key"] if "x-lattice-api-key" in h else ""
    seeds["fuzz_shim_request"].append("\n".join([
        c["method"], c["path"], q, auth, "lattice_session=s1; lattice_csrf=c1",
        h.get("content-type", ""), h.get("x-request-id", "req-1"), h.get("origin", "")]))
for method, pattern in routes:
    path = re.sub(r"\{[a-z_]+\}", "0b6f2c1e-6d3f-4a59-9d2b-4b1f3c6f8a10", pattern)
    seeds["fuzz_shim_request"].append("\n".join([
        method, path, "limit=10&cursor=abc&x=%20y", "Bearer eyJ.eyJ.sig",
        "a=b; lattice_session=tok; lattice_csrf=\"q\"", "application/vnd.api+json; charset=utf-8",
        "abc_DEF-1.2", "https://app.example"]))

# ---- route templates: the metadata's routes, raw paths: the traces'
templates, raws = [], []
for c in captured:
    body = c.get("body_raw") or ""
    try:
        doc = json.loads(body)
    except ValueError:
        continue
    for r in doc.get("routes", []) if isinstance(doc, dict) else []:
        templates.append("%s %s" % (r.get("method", "GET"), r.get("path", "/")))
    for t in doc.get("traces", []) if isinstance(doc, dict) else []:
        if "path" in t:
            raws.append((t.get("method", "GET"), t["path"]))
templates = sorted(set(templates)) + ["ALL /api/*", "GET /orders/:orderId/items/:itemId"]
for method, path in sorted(set(raws)) + [("GET", "/o1"), ("GET", "/users/42?x=1"), ("DELETE", "//a///b/")]:
    seeds["fuzz_ingest_match"].append("\n".join([method, path] + templates))

# ---- ingest bodies: kind byte (index into the kinds of fuzz_ingest_check.c and
# fuzz_ingest_validate.c) + a body: the captured ones as they are, and the
# kinds the plugins did not send during the capture built from their records
KINDS = ("metadata", "traces", "errors", "error", "breadcrumbs", "metrics")
kind_of = {"ingest_metadata": 0, "traces_batch": 1, "errors_batch": 2}
ingest = []
def ingest_seed(kind, doc):
    ingest.append(bytes([KINDS.index(kind)]) + json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
for c in captured:
    for k, i in kind_of.items():
        if k in c.get("url", "").replace("/", "_") and c.get("body_raw"):
            ingest.append(bytes([i]) + c["body_raw"].encode())
docs = [json.loads(c["body_raw"]) for c in captured if c.get("body_raw")]
for doc in docs:
    for e in doc.get("errors", []):
        ingest_seed("error", e)                       # one browser error
    traces = doc.get("traces", [])
    if traces:
        ingest_seed("breadcrumbs", {"breadcrumbs": [
            {"session_id": "s-%d" % i, "category": "http", "message": t.get("operation_name", ""),
             "level": "info" if t.get("status_code", 200) < 400 else "error",
             "timestamp": t.get("start_time"), "data": {"status": t.get("status_code"), "ms": t.get("duration_ms")}}
            for i, t in enumerate(traces)]})
        ingest_seed("metrics", {"serviceName": traces[0]["service_id"], "metrics": [
            {"method": t.get("method", "GET"), "path": t.get("path", "/"), "statusCode": t.get("status_code", 200),
             "responseTime": t.get("duration_ms", 0), "callerServiceName": t.get("caller_service", "web"),
             "timestamp": t.get("start_time") if i % 2 else 1764386016463 + i}
            for i, t in enumerate(traces)]})
# the optional fields of a snapshot: URIs and parameters (the rules without a C fast path)
for doc in docs:
    if "service" in doc and doc.get("routes"):
        doc["service"].update({"repository": "git+https://github.com/acme/demo.git", "healthCheckUrl": "/health",
                               "deploymentType": "docker", "description": "caf\u00e9 \u2603"})
        r = doc["routes"][0]
        r.update({"handlerLocation": {"file": "app.js", "line": 12, "function": "list"},
                  "pathParameters": [{"name": "id", "required": True, "type": "string", "example": [1, {"a": None}]}],
                  "queryParameters": [{"name": "q", "required": False}], "tags": ["users"],
                  "avgResponseTimeMs": 1.5, "callFrequency": 10, "errorRate": 0.1, "requestSchema": {"type": "object"}})
        for d in doc.get("dependencies", [])[:2]:
            d.update({"repository": "https://github.com/acme/x", "homepage": "https://acme.example",
                      "installedSize": 1024, "hasVulnerabilities": False, "highestSeverity": "low"})
        ingest_seed("metadata", doc)
        break
ingest += [b"\x03" + json.dumps({"message": "boom", "stack": "at x", "timestamp": "2026-01-01T00:00:00Z"}).encode(),
           b"\x04" + json.dumps({"breadcrumbs": [{"category": "http", "message": "GET /", "level": "info"}]}).encode()]
seeds["fuzz_ingest_check"] += ingest
seeds["fuzz_ingest_validate"] += ingest

# ---- Stripe-Signature: headers over the captured bodies
secret = b"whsec_fuzz_two"
for i, c in enumerate(captured):
    body = (c.get("body_raw") or "").encode()
    t = str(1700000000 + i).encode()
    mac = hmac.new(secret, t + b"." + body, hashlib.sha256).hexdigest().encode()
    seeds["fuzz_stripe_signature"].append(b"t=" + t + b",v1=" + mac + b",v0=" + mac[:8] + b"\n" + body)
seeds["fuzz_stripe_signature"].append(b"t=1,v1=" + b"0" * 64 + b",v1=" + b"f" * 64 + b"\n{}")

# ---- JWTs shaped like lattice.jwt_issue's, with the captured requests' ids as jti
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")
key = b"fuzz-key-0123456789abcdef-012345"
for i, c in enumerate(captured):
    header = b'{"alg":"HS256","typ":"JWT","kid":"k%d"}' % i
    now = 1800000000 - 10 * i
    payload = ('{"iss":"lattice","sub":"0b6f2c1e-6d3f-4a59-9d2b-4b1f3c6f8a1%d","iat":%d,"nbf":%d,"exp":%d,"jti":"%s"}'
               % (i % 10, now, now, now + 3600, c.get("seq", i))).encode()
    signing = b64(header) + b"." + b64(payload)
    seeds["fuzz_jwt"].append(signing + b"." + b64(hmac.new(key, signing, hashlib.sha256).digest()))
seeds["fuzz_jwt"].append(b64(b'{"alg":"none","kid":"k"}') + b"." + b64(b"{}") + b".")
# the scope claim of 0.2.0 (space-separated, as lattice.jwt_issue writes it),
# and the shapes that must not verify: not a string, too long for the token
for i, scope in enumerate([b'"ingest read"', b'"read"', b'"ingest"', b'""', b'["read"]', b'null', b'"' + b"read " * 14 + b'"']):
    header = b'{"alg":"HS256","typ":"JWT","kid":"s%d"}' % i
    payload = (b'{"iss":"lattice","sub":"0b6f2c1e-6d3f-4a59-9d2b-4b1f3c6f8a10","iat":1800000000,"nbf":1800000000,'
               b'"exp":1800003600,"jti":"scope%d","scope":%s}' % (i, scope))
    signing = b64(header) + b"." + b64(payload)
    seeds["fuzz_jwt"].append(signing + b"." + b64(hmac.new(key, signing, hashlib.sha256).digest()))

# ---- OTLP: the SDK's recorded protobuf exports (the gzip one inflated), and
# the JSON answers the function gives (fuzz_otlp_decode packs those too)
for f in sorted(glob.glob(os.path.join(root, "tests/fixtures/otlp/*.pb*"))):
    with open(f, "rb") as fh:
        raw = fh.read()
    seeds["fuzz_otlp_decode"].append(gzip.decompress(raw) if f.endswith(".gz") else raw)
seeds["fuzz_otlp_decode"] += [b"", b'{}', b'{"partialSuccess":{"rejectedSpans":"2","errorMessage":"two dropped"}}']
# the flattener: the SDK's own OTLP/JSON export
for f in sorted(glob.glob(os.path.join(root, "tests/fixtures/otlp/*.json"))):
    with open(f, "rb") as fh:
        seeds["fuzz_otlp_flatten"].append(fh.read())
seeds["fuzz_otlp_flatten"] += [b'{}', b'{"resourceSpans":[]}']

for target, items in seeds.items():
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        os.unlink(os.path.join(d, old))
    for n, s in enumerate(items):
        with open(os.path.join(d, "seed-%03d" % n), "wb") as fh:
            fh.write(s if isinstance(s, bytes) else s.encode())
    print("%s: %d seeds" % (target, len(items)))
