/*
 * The request fields the shim reads itself, as plain functions of strings:
 * the query string, the Authorization bearer token, a cookie, the JSON
 * content type.  Kept apart from dispatch.c (which needs a connection) so
 * that the fuzz target in tests/fuzz/ calls exactly this code.
 */
#include "shim.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The query string as {"name": "value"}; the last value wins. */
json_object *query_object(const char *qs)
{
    json_object *q = json_object_new_object();
    if (!qs || !*qs)
        return q;
    char *copy = strdup(qs);
    struct mg_header fields[64];
    int n = copy ? mg_split_form_urlencoded(copy, fields, 64) : 0;
    for (int i = 0; i < n; i++) {
        const char *v = fields[i].value ? fields[i].value : "";
        if (fields[i].name && *fields[i].name)
            json_object_object_add(q, fields[i].name, json_object_new_string(v));
    }
    free(copy);
    return q;
}

/* "Bearer <token>" -> the token (pointing into auth), or NULL. */
const char *bearer_token(const char *auth)
{
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0)
        return NULL;
    const char *tok = auth + 7;
    while (*tok == ' ')
        tok++;
    return *tok ? tok : NULL;
}

/* The value of cookie name in a Cookie header, into buf; false when absent
   or longer than buf. */
bool cookie_value(const char *cookies, const char *name, char *buf, size_t buflen)
{
    return cookies && mg_get_cookie(cookies, name, buf, buflen) > 0;
}

bool is_json_type(const char *ct)
{
    if (!ct)
        return false;
    while (*ct == ' ')
        ct++;
    size_t n = strcspn(ct, "; ");
    if (n == 16 && strncasecmp(ct, "application/json", 16) == 0)
        return true;
    /* application/<something>+json */
    return n > 17 && strncasecmp(ct, "application/", 12) == 0 && strncasecmp(ct + n - 5, "+json", 5) == 0;
}
