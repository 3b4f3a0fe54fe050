/*
 * Errors: the SQLSTATE -> HTTP table of docs/http-contract.md (PostgREST's
 * model) and the one error body shape:
 *   {"error": {"code", "message", "details", "request_id"}}
 * PTnnn (lattice.raise_http) is decoded by dispatch.c, not here.
 */
#include "shim.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

static bool starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

struct http_error error_from_sqlstate(const char *st)
{
    if (!st || strlen(st) != 5)
        return (struct http_error) { 503, "unavailable", 1 };
    if (!strcmp(st, "23503"))
        return (struct http_error) { 409, "conflict", 0 };
    if (!strcmp(st, "23505"))
        return (struct http_error) { 409, "already_exists", 0 };
    if (starts(st, "22") || !strcmp(st, "23502") || !strcmp(st, "23514") || !strcmp(st, "P0001"))
        return (struct http_error) { 400, "invalid_input", 0 };
    if (!strcmp(st, "28000") || !strcmp(st, "28P01"))
        return (struct http_error) { 401, "unauthorized", 0 };
    if (!strcmp(st, "42501"))
        return (struct http_error) { 403, "forbidden", 0 };
    if (!strcmp(st, "P0002"))
        return (struct http_error) { 404, "not_found", 0 };
    if (!strcmp(st, "54000"))
        return (struct http_error) { 413, "too_large", 0 };
    if (!strcmp(st, "57014"))
        return (struct http_error) { 504, "timeout", 0 };
    if (starts(st, "08") || starts(st, "53") || starts(st, "57P0") || !strcmp(st, "40001") || !strcmp(st, "40P01"))
        return (struct http_error) { 503, "unavailable", 1 };
    return (struct http_error) { 500, "internal", 0 };
}

char *error_body(const char *code, const char *message, const char *details_json, const char *request_id)
{
    json_object *err = json_object_new_object();
    json_object_object_add(err, "code", json_object_new_string(code));
    json_object_object_add(err, "message", json_object_new_string(message ? message : ""));
    if (details_json) {
        json_object *d = json_tokener_parse(details_json);
        if (d)
            json_object_object_add(err, "details", d);
    }
    if (request_id)
        json_object_object_add(err, "request_id", json_object_new_string(request_id));
    json_object *root = json_object_new_object();
    json_object_object_add(root, "error", err);
    char *out = strdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
    return out;
}
