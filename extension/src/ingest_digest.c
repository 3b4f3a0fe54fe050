/*
 * ingest_digest.c
 *		The digest of a metadata snapshot, for the cheap periodic re-send.
 *
 * The plugin re-sends its whole snapshot every five minutes with only the
 * volatile fields changed (service.lastSeen; ids and timestamps regenerated
 * at each process start).  One pass of PostgreSQL's JSON parser, with
 * semantic actions, hashes everything else (BLAKE2b-128, in document order),
 * picks out the service's identity and counts routes and dependencies, and
 * checks the volatile fields themselves.  When the hash equals the stored
 * hash of the last accepted snapshot, all non-volatile content is identical
 * to content that passed full validation, and the volatile fields were just
 * checked: the re-send is valid without the full validation (json-c, in
 * ingest_validate.c), which costs several times more.  A body whose keys come
 * in another order only hashes differently and takes the full path.
 *
 * The pass is strict JSON (RFC 8259, \u0000 and lone surrogates refused) and
 * stops at INGEST_DIGEST_MAX_DEPTH, raising PT400 before the parser recurses
 * further.
 */
#include "common.h"

#include <sodium.h>

#include "access/htup_details.h"
#include "common/jsonapi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"

#define INGEST_DIGEST_MAX_BODY	(2 * 1024 * 1024)
#define INGEST_DIGEST_MAX_DEPTH 32

typedef enum Section
{
	SEC_NONE,
	SEC_SERVICE,
	SEC_ROUTES,
	SEC_DEPENDENCIES,
	SEC_OTHER
} Section;

/* which volatile field the next value belongs to */
typedef enum Volatile
{
	VOL_NONE,
	VOL_SERVICE_ID,
	VOL_STATUS,
	VOL_ITEM_ID,
	VOL_ITEM_SERVICE_ID,
	VOL_TIMESTAMP
} Volatile;

typedef struct Digest
{
	crypto_generichash_state hash;
	int depth;
	int skip_depth; /* > 0: inside a volatile value being skipped */
	Section section;
	Volatile pending; /* the value about to come is volatile */
	bool pending_capture_name;
	bool pending_capture_env;
	bool root_is_object;
	bool service_is_object;
	bool volatile_ok;
	int item_required;	  /* bits: 1 id, 2 serviceId, in the current item */
	int service_required; /* bits: 1 id, 2 status */
	char *name;
	char *environment;
	char *instance_id;
	int routes;
	int dependencies;
} Digest;

static void
feed(Digest *d, char tag, const char *s, size_t len)
{
	uint32 n = (uint32) len;

	crypto_generichash_update(&d->hash, (const unsigned char *) &tag, 1);
	if (s)
	{
		crypto_generichash_update(&d->hash, (const unsigned char *) &n, sizeof(n));
		crypto_generichash_update(&d->hash, (const unsigned char *) s, len);
	}
}

static bool
is_date_time(const char *s)
{
	size_t len = strlen(s);
	size_t i = 19;

#define D(k) (s[k] >= '0' && s[k] <= '9')
	if (len < 20 || !(D(0) && D(1) && D(2) && D(3)) || s[4] != '-' || !(D(5) && D(6)) || s[7] != '-' ||
		!(D(8) && D(9)) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || !(D(11) && D(12)) ||
		s[13] != ':' || !(D(14) && D(15)) || s[16] != ':' || !(D(17) && D(18)))
		return false;
	if (s[i] == '.')
	{
		size_t start = ++i;

		while (i < len && D(i))
			i++;
		if (i == start)
			return false;
	}
	if (i == len - 1)
		return s[i] == 'Z' || s[i] == 'z';
	return i + 6 == len && (s[i] == '+' || s[i] == '-') && D(i + 1) && D(i + 2) && s[i + 3] == ':' &&
		D(i + 4) && D(i + 5);
#undef D
}

static bool
is_service_id(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > 128)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
			return false;
	return true;
}

/* Starting a container: the depth cap, and skipping of volatile values. */
static void
container_start(Digest *d, char tag)
{
	d->depth++;
	if (d->depth > INGEST_DIGEST_MAX_DEPTH)
		lattice_raise_http(
			400, "invalid_json", "the request body is not valid JSON",
			"[{\"path\":\"body\",\"message\":\"is not valid JSON: nesting is deeper than 32 levels\"}]",
			NULL);
	if (d->skip_depth > 0)
		return;
	if (d->pending != VOL_NONE)
	{
		/* a volatile field holding a container is invalid: skip it */
		d->volatile_ok = false;
		d->skip_depth = d->depth;
		d->pending = VOL_NONE;
		return;
	}
	d->pending_capture_name = d->pending_capture_env = false;
	if (d->depth == 1)
		d->root_is_object = (tag == '{');
	if (d->depth == 2 && d->section == SEC_SERVICE)
		d->service_is_object = (tag == '{');
	if (d->depth == 3 && tag == '{' && (d->section == SEC_ROUTES || d->section == SEC_DEPENDENCIES))
		d->item_required = 0;
	feed(d, tag, NULL, 0);
}

static void
container_end(Digest *d, char tag)
{
	if (d->skip_depth > 0)
	{
		if (d->depth == d->skip_depth)
			d->skip_depth = 0;
		d->depth--;
		return;
	}
	if (d->depth == 3 && tag == '}' && (d->section == SEC_ROUTES || d->section == SEC_DEPENDENCIES) &&
		d->item_required != 3)
		d->volatile_ok = false;
	if (d->depth == 2 && tag == '}' && d->section == SEC_SERVICE && d->service_required != 3)
		d->volatile_ok = false;
	feed(d, tag, NULL, 0);
	d->depth--;
}

static void
on_object_start(void *state)
{
	container_start((Digest *) state, '{');
}

static void
on_object_end(void *state)
{
	container_end((Digest *) state, '}');
}

static void
on_array_start(void *state)
{
	container_start((Digest *) state, '[');
}

static void
on_array_end(void *state)
{
	container_end((Digest *) state, ']');
}

static void
on_field_start(void *state, char *fname, bool isnull)
{
	Digest *d = (Digest *) state;

	if (d->skip_depth > 0)
		return;
	d->pending = VOL_NONE;
	d->pending_capture_name = d->pending_capture_env = false;
	if (d->depth == 1)
	{
		d->section = strcmp(fname, "service") == 0 ? SEC_SERVICE :
			strcmp(fname, "routes") == 0		   ? SEC_ROUTES :
			strcmp(fname, "dependencies") == 0	   ? SEC_DEPENDENCIES :
													 SEC_OTHER;
	}
	else if (d->depth == 2 && d->section == SEC_SERVICE)
	{
		if (strcmp(fname, "id") == 0)
			d->pending = VOL_SERVICE_ID;
		else if (strcmp(fname, "status") == 0)
			d->pending = VOL_STATUS;
		else if (strcmp(fname, "firstSeen") == 0 || strcmp(fname, "lastSeen") == 0)
			d->pending = VOL_TIMESTAMP;
		else if (strcmp(fname, "name") == 0)
			d->pending_capture_name = true;
		else if (strcmp(fname, "environment") == 0)
			d->pending_capture_env = true;
	}
	else if (d->depth == 3 && (d->section == SEC_ROUTES || d->section == SEC_DEPENDENCIES))
	{
		if (strcmp(fname, "id") == 0)
			d->pending = VOL_ITEM_ID;
		else if (strcmp(fname, "serviceId") == 0)
			d->pending = VOL_ITEM_SERVICE_ID;
		else if (strcmp(fname, "firstSeen") == 0 || strcmp(fname, "lastSeen") == 0)
			d->pending = VOL_TIMESTAMP;
	}
	if (d->pending == VOL_NONE)
		feed(d, 'k', fname, strlen(fname));
}

static void
on_field_end(void *state, char *fname, bool isnull)
{
	Digest *d = (Digest *) state;

	if (d->skip_depth == 0)
		d->pending = VOL_NONE;
}

static void
on_element_start(void *state, bool isnull)
{
	Digest *d = (Digest *) state;

	if (d->skip_depth > 0 || d->depth != 2)
		return;
	if (d->section == SEC_ROUTES)
		d->routes++;
	else if (d->section == SEC_DEPENDENCIES)
		d->dependencies++;
}

/* A volatile scalar: checked (and the service id kept), not hashed. */
static void
volatile_scalar(Digest *d, char *token, JsonTokenType type)
{
	bool is_string = (type == JSON_TOKEN_STRING);
	bool ok = is_string;

	switch (d->pending)
	{
		case VOL_SERVICE_ID:
			ok = is_string && is_service_id(token);
			if (ok)
				d->instance_id = token;
			d->service_required |= 1;
			break;
		case VOL_STATUS:
			ok = is_string &&
				(strcmp(token, "active") == 0 || strcmp(token, "inactive") == 0 ||
				 strcmp(token, "unknown") == 0);
			d->service_required |= 2;
			break;
		case VOL_ITEM_ID:
		case VOL_ITEM_SERVICE_ID:
			ok = is_string && pg_mbstrlen(token) <= 128;
			d->item_required |= (d->pending == VOL_ITEM_ID ? 1 : 2);
			break;
		case VOL_TIMESTAMP:
			ok = is_string && is_date_time(token);
			break;
		case VOL_NONE:
			break;
	}
	if (!ok)
		d->volatile_ok = false;
	d->pending = VOL_NONE;
}

static void
on_scalar(void *state, char *token, JsonTokenType type)
{
	Digest *d = (Digest *) state;
	char tag;

	if (d->skip_depth > 0)
		return;
	if (d->pending != VOL_NONE)
	{
		volatile_scalar(d, token, type);
		return;
	}
	if (d->depth == 2 && d->section == SEC_SERVICE && type == JSON_TOKEN_STRING)
	{
		if (d->pending_capture_name)
			d->name = token;
		else if (d->pending_capture_env)
			d->environment = token;
	}
	d->pending_capture_name = d->pending_capture_env = false;
	switch (type)
	{
		case JSON_TOKEN_STRING:
			tag = 's';
			break;
		case JSON_TOKEN_NUMBER:
			tag = 'n';
			break;
		case JSON_TOKEN_TRUE:
			tag = 't';
			break;
		case JSON_TOKEN_FALSE:
			tag = 'f';
			break;
		default:
			tag = 'z';
			break;
	}
	feed(d, tag, token, token ? strlen(token) : 0);
}

/*
 * lattice.ingest_check_metadata(body text, OUT hash text, OUT name text,
 * OUT environment text, OUT instance_id text, OUT routes int,
 * OUT dependencies int, OUT volatile_ok boolean): the digest of a snapshot.
 * Refuses (PT400/PT413) only what is not JSON; schema validation is
 * lattice.ingest_check('metadata', body).  volatile_ok says the volatile
 * fields are present and valid.
 */
PG_FUNCTION_INFO_V1(lattice_ingest_check_metadata);
Datum
lattice_ingest_check_metadata(PG_FUNCTION_ARGS)
{
	text *body;
	Digest d;
	JsonSemAction sem;
	JsonLexContext *lex;
	JsonParseErrorType perr;
	TupleDesc tupdesc;
	Datum values[7];
	bool nulls[7] = {false};
	unsigned char digest[16];
	char hex[33];

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("lattice.ingest_check_metadata: must return a record")));
	if (PG_ARGISNULL(0) || VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(0)) == 0)
		lattice_raise_http(400, "validation_failed", "the request body is empty",
						   "[{\"path\":\"body\",\"message\":\"is required\"}]", NULL);
	body = PG_GETARG_TEXT_PP(0);
	if (VARSIZE_ANY_EXHDR(body) > INGEST_DIGEST_MAX_BODY)
		lattice_raise_http(413, "too_large", "the request body is too large",
						   psprintf("{\"max_bytes\":%d}", INGEST_DIGEST_MAX_BODY), NULL);

	memset(&d, 0, sizeof(d));
	d.volatile_ok = true;
	crypto_generichash_init(&d.hash, NULL, 0, sizeof(digest));
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &d;
	sem.object_start = on_object_start;
	sem.object_end = on_object_end;
	sem.array_start = on_array_start;
	sem.array_end = on_array_end;
	sem.object_field_start = on_field_start;
	sem.object_field_end = on_field_end;
	sem.array_element_start = on_element_start;
	sem.scalar = on_scalar;

	lex = makeJsonLexContextCstringLen(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), PG_UTF8, true);
	perr = pg_parse_json(lex, &sem);
	if (perr != JSON_SUCCESS)
	{
		StringInfoData det;

		initStringInfo(&det);
		appendStringInfoString(&det, "[{\"path\":\"body\",\"message\":");
		escape_json(&det, psprintf("is not valid JSON: %s", json_errdetail(perr, lex)));
		appendStringInfoString(&det, "}]");
		lattice_raise_http(400, "invalid_json", "the request body is not valid JSON", det.data, NULL);
	}
	if (!d.root_is_object || !d.service_is_object)
		d.volatile_ok = false;

	crypto_generichash_final(&d.hash, digest, sizeof(digest));
	sodium_bin2hex(hex, sizeof(hex), digest, sizeof(digest));
	values[0] = CStringGetTextDatum(hex);
	nulls[1] = d.name == NULL;
	values[1] = d.name ? CStringGetTextDatum(d.name) : (Datum) 0;
	nulls[2] = d.environment == NULL;
	values[2] = d.environment ? CStringGetTextDatum(d.environment) : (Datum) 0;
	nulls[3] = d.instance_id == NULL;
	values[3] = d.instance_id ? CStringGetTextDatum(d.instance_id) : (Datum) 0;
	values[4] = Int32GetDatum(d.routes);
	values[5] = Int32GetDatum(d.dependencies);
	values[6] = BoolGetDatum(d.volatile_ok);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
