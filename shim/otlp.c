/*
 * OTLP/HTTP on R_OTLP routes (docs/shim.md, "OTLP traces"): the body is
 * inflated (Content-Encoding: gzip, bounded by otlp_inflated_max), then a
 * protobuf ExportTraceServiceRequest becomes its OTLP/JSON text
 * (otlp_json.c) and JSON passes as it is; the function gets that text and
 * req.otlp.  A protobuf request gets protobuf answers: the
 * ExportTraceServiceResponse of the function's JSON, and a google.rpc.Status
 * for every error, the shim's own included (reply_error honours
 * r->otlp_proto), with the headers the JSON answer would have had.
 */
#include "shim.h"
#include "otlp_json.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#define OTLP_JSON_FACTOR 4 /* the JSON of a protobuf export: at most this many times otlp_inflated_max */

enum content { CT_NONE, CT_PROTO, CT_JSON, CT_OTHER };

static enum content content_of(const char *ct)
{
    if (!ct || !*ct)
        return CT_NONE;
    if (is_json_type(ct))
        return CT_JSON;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strcspn(ct, "; \t");
    if ((n == 22 && strncasecmp(ct, "application/x-protobuf", n) == 0) ||
        (n == 20 && strncasecmp(ct, "application/protobuf", n) == 0))
        return CT_PROTO;
    return CT_OTHER;
}

/* true for none, identity and gzip (*gzip set); a list or anything else
   is refused */
static bool encoding_of(const char *ce, bool *gzip)
{
    *gzip = false;
    if (!ce)
        return true;
    while (*ce == ' ' || *ce == '\t')
        ce++;
    size_t n = strcspn(ce, " \t");
    if (ce[n + strspn(ce + n, " \t")] != '\0')
        return false;
    if (n == 0 || (n == 8 && strncasecmp(ce, "identity", n) == 0))
        return true;
    *gzip = (n == 4 && strncasecmp(ce, "gzip", n) == 0) || (n == 6 && strncasecmp(ce, "x-gzip", n) == 0);
    return *gzip;
}

bool otlp_wants_proto(struct mg_connection *conn, const char *path)
{
    return path && content_of(mg_get_header(conn, "Content-Type")) == CT_PROTO && (route_path_flags(path) & R_OTLP);
}

enum gz { GZ_OK, GZ_CORRUPT, GZ_TOO_LARGE, GZ_NOMEM };

/* Inflates gzip (one member or several) into at most max bytes: the buffer
   never grows past max + 1, whatever the ratio (a bomb stops there). */
static enum gz gunzip(const char *in, size_t in_len, size_t max, char **out, size_t *out_len)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
        return GZ_NOMEM;
    size_t limit = max + 1;                               /* one byte past max proves it is over */
    size_t cap = in_len < limit / 4 ? in_len * 4 : limit; /* a first guess, grown by doubling */
    if (cap < 4096)
        cap = limit < 4096 ? limit : 4096;
    size_t len = 0;
    char *buf = malloc(cap + 1);
    enum gz rc = buf ? GZ_OK : GZ_NOMEM;
    zs.next_in = (Bytef *) in;
    zs.avail_in = (uInt) in_len; /* in_len <= body_max <= 1 GiB */
    while (rc == GZ_OK) {
        if (len == cap) {
            if (cap == limit) {
                rc = GZ_TOO_LARGE;
                break;
            }
            size_t ncap = cap > limit / 2 ? limit : cap * 2;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                rc = GZ_NOMEM;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        zs.next_out = (Bytef *) buf + len;
        zs.avail_out = (uInt) (cap - len);
        int z = inflate(&zs, Z_NO_FLUSH);
        len = cap - zs.avail_out;
        if (z == Z_STREAM_END) {
            if (zs.avail_in == 0)
                break;
            if (inflateReset(&zs) != Z_OK) /* another member follows */
                rc = GZ_CORRUPT;
        } else if (z == Z_MEM_ERROR)
            rc = GZ_NOMEM;
        else if (z != Z_OK) /* Z_BUF_ERROR here: the input ended inside the stream */
            rc = GZ_CORRUPT;
    }
    inflateEnd(&zs);
    if (rc == GZ_OK && len > max) /* the stream ended on the byte past max */
        rc = GZ_TOO_LARGE;
    if (rc != GZ_OK) {
        free(buf);
        return rc;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return GZ_OK;
}

static int refuse(struct reply *r, char **body, int status, const char *code, const char *message)
{
    free(*body);
    *body = NULL;
    reply_error(r, status, code, message, NULL, status == 503 ? "Retry-After: 1\r\n" : NULL);
    return status;
}

static int inflate_body(struct reply *r, char **body, size_t *len)
{
    char *plain = NULL;
    size_t plain_len = 0;
    switch (gunzip(*body, *len, (size_t) cfg.otlp_inflated_max, &plain, &plain_len)) {
    case GZ_OK: break;
    case GZ_CORRUPT: return refuse(r, body, 400, "invalid_gzip", "the body is not valid gzip");
    case GZ_TOO_LARGE: return refuse(r, body, 413, "too_large", "the inflated body is too large");
    case GZ_NOMEM: return refuse(r, body, 503, "unavailable", "out of memory");
    }
    free(*body);
    *body = plain_len ? plain : NULL;
    *len = plain_len;
    if (!plain_len)
        free(plain);
    return 0;
}

static int decode_body(struct reply *r, char **body, size_t *len, struct otlp_req *o)
{
    struct otlp_decoded d;
    switch (otlp_traces_to_json((const uint8_t *) *body, *len, (size_t) cfg.otlp_inflated_max * OTLP_JSON_FACTOR, &d)) {
    case OTLP_DECODED: break;
    case OTLP_MALFORMED:
        return refuse(r, body, 400, "invalid_protobuf", "the body is not an OTLP ExportTraceServiceRequest");
    case OTLP_TOO_DEEP: return refuse(r, body, 400, "invalid_protobuf", "the body nests messages too deeply");
    case OTLP_TOO_LARGE: return refuse(r, body, 413, "too_large", "the decoded request is too large");
    case OTLP_NO_MEMORY: return refuse(r, body, 503, "unavailable", "out of memory");
    }
    free(*body);
    *body = d.json;
    *len = d.len;
    o->rejected_spans = d.rejected_spans;
    snprintf(o->rejected_message, sizeof(o->rejected_message), "%s", d.message);
    if (d.rejected_spans)
        log_request_info(r->request_id, "otlp: %s", d.message);
    return 0;
}

int otlp_prepare(struct mg_connection *conn, struct reply *r, char **body, size_t *len, struct otlp_req *o)
{
    memset(o, 0, sizeof(*o));
    bool gzip;
    if (!encoding_of(mg_get_header(conn, "Content-Encoding"), &gzip))
        return refuse(r, body, 415, "unsupported_encoding", "Content-Encoding must be gzip or identity");
    enum content ct = content_of(mg_get_header(conn, "Content-Type"));
    if (ct == CT_OTHER || (ct == CT_NONE && *body))
        return refuse(r, body, 415, "unsupported_media_type",
                      "the body must be application/x-protobuf or application/json");
    o->proto = ct == CT_PROTO;
    int rc = 0;
    if (*body && gzip)
        rc = inflate_body(r, body, len);
    else if (*body && *len > (size_t) cfg.otlp_inflated_max)
        rc = refuse(r, body, 413, "too_large", "the body is too large");
    if (rc == 0 && *body && o->proto)
        rc = decode_body(r, body, len, o);
    if (rc)
        return rc;
    if (!*body) { /* nothing sent: an empty export */
        *body = strdup("{}");
        *len = 2;
        if (!*body)
            return refuse(r, body, 503, "unavailable", "out of memory");
    }
    return 0;
}

json_object *otlp_req_json(const struct otlp_req *o)
{
    json_object *j = json_object_new_object();
    json_object_object_add(j, "encoding", json_object_new_string(o->proto ? "protobuf" : "json"));
    json_object_object_add(j, "rejectedSpans", json_object_new_int64(o->rejected_spans));
    if (o->rejected_spans)
        json_object_object_add(j, "rejectedMessage", json_object_new_string(o->rejected_message));
    return j;
}

void otlp_reply_status(struct reply *r, int status, const char *code, const char *message, const char *extra_headers)
{
    size_t n;
    uint8_t *pb = otlp_status_pack(status, code, message, &n);
    if (!pb) { /* out of memory: the JSON answer then */
        r->otlp_proto = false;
        reply_error(r, status, code, message, NULL, extra_headers);
        return;
    }
    reply_send(r, status, "application/x-protobuf", extra_headers, (const char *) pb, n, false);
    free(pb);
}

void otlp_reply_answer(struct reply *r, int status, const char *body, const char *extra_headers)
{
    if (status >= 400) { /* the function's own error answer, {"error":{"code","message"}} */
        json_object *root = body ? json_tokener_parse(body) : NULL, *err = NULL, *code = NULL, *msg = NULL;
        if (root && json_object_object_get_ex(root, "error", &err) && json_object_is_type(err, json_type_object)) {
            json_object_object_get_ex(err, "code", &code);
            json_object_object_get_ex(err, "message", &msg);
        }
        otlp_reply_status(
            r, status, code && json_object_is_type(code, json_type_string) ? json_object_get_string(code) : "error",
            msg && json_object_is_type(msg, json_type_string) ? json_object_get_string(msg) : "", extra_headers);
        json_object_put(root);
        return;
    }
    bool shape_ok;
    size_t n = 0;
    uint8_t *pb = otlp_response_pack(body, &n, &shape_ok);
    if (!shape_ok) /* committed all the same: the client must not send it again */
        log_error(r->request_id,
                  "otlp: the function's answer is not {} or {\"partialSuccess\": ...}; sent an empty response");
    reply_send(r, status, "application/x-protobuf", extra_headers, pb ? (const char *) pb : "", pb ? n : 0, false);
    free(pb);
}
