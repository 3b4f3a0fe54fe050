/*
 * auth_jwt_json.c
 *		Reads a JWT's header and claims with json-c: strict mode, UTF-8
 *		validated, depth-limited, nothing trailing, objects only.
 *
 * Its own file because json-c's json_object type clashes with PostgreSQL's
 * json_object() in utils/fmgrprotos.h; it includes nothing of PostgreSQL
 * (the fuzz target in tests/fuzz/ links it as it is) and raises nothing: the
 * caller turns false into a 401.
 */
#include "auth_jwt_token.h"

#include <limits.h>
#include <string.h>

#include <json-c/json.h>

static struct json_object *
parse_object(const char *s, size_t len)
{
	struct json_tokener *tok;
	struct json_object *obj;

	if (len > INT_MAX || (tok = json_tokener_new_ex(8)) == NULL)
		return NULL;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	obj = json_tokener_parse_ex(tok, s, (int) len);
	if (obj != NULL &&
		(json_tokener_get_error(tok) != json_tokener_success || json_tokener_get_parse_end(tok) != len ||
		 !json_object_is_type(obj, json_type_object)))
	{
		json_object_put(obj);
		obj = NULL;
	}
	json_tokener_free(tok);
	return obj;
}

static bool
get_string(struct json_object *obj, const char *key, char *buf, size_t buflen)
{
	struct json_object *v;
	const char *s;

	if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
		return false;
	s = json_object_get_string(v);
	if ((size_t) json_object_get_string_len(v) >= buflen || strlen(s) >= buflen)
		return false;
	memcpy(buf, s, strlen(s) + 1);
	return true;
}

static bool
get_int(struct json_object *obj, const char *key, int64_t *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_int))
		return false;
	*out = json_object_get_int64(v);
	return true;
}

/* false when the header is not a JSON object; alg and kid are optional here */
bool
jwt_json_parse_header(const char *json, size_t len, char *alg, size_t alg_size, bool *has_alg, char *kid,
					  size_t kid_size, bool *has_kid)
{
	struct json_object *obj = parse_object(json, len);

	if (obj == NULL)
		return false;
	*has_alg = get_string(obj, "alg", alg, alg_size);
	*has_kid = get_string(obj, "kid", kid, kid_size);
	json_object_put(obj);
	return true;
}

/*
 * false when the payload is not a JSON object; *complete when sub, iss, exp,
 * iat are there, and scope (optional) is a string that fits when present.
 */
bool
jwt_json_parse_claims(const char *json, size_t len, char *sub, size_t sub_size, char *iss,
					  size_t iss_size, int64_t *exp, int64_t *iat, int64_t *nbf, bool *has_nbf,
					  char *scope, size_t scope_size, bool *has_scope, bool *complete)
{
	struct json_object *obj = parse_object(json, len);

	if (obj == NULL)
		return false;
	*complete = get_string(obj, "sub", sub, sub_size) && get_string(obj, "iss", iss, iss_size) &&
		get_int(obj, "exp", exp) && get_int(obj, "iat", iat);
	*has_nbf = get_int(obj, "nbf", nbf);
	*has_scope = json_object_object_get_ex(obj, "scope", NULL);
	if (*has_scope && !get_string(obj, "scope", scope, scope_size))
		*complete = false;
	json_object_put(obj);
	return true;
}
