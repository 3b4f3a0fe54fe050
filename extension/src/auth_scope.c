/*
 * auth_scope.c
 *		Scopes of API keys and tokens: names <-> bits, and the scopes of
 *		this transaction's credential.
 */
#include "common.h"
#include "auth.h"
#include "tenant.h"

#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"

/* The scopes of this transaction's key or token; ingest and read for a session */
int
lattice_auth_scopes(void)
{
	const LatticeAuthContext *ctx = lattice_auth_context();

	switch (ctx ? ctx->method : LATTICE_AUTH_NONE)
	{
		case LATTICE_AUTH_API_KEY:
		case LATTICE_AUTH_BEARER:
			return ctx->scopes;
		case LATTICE_AUTH_SESSION:
		case LATTICE_AUTH_PASSWORD:
			return LATTICE_SCOPE_ALL;
		default:
			return 0;
	}
}

static const struct
{
	const char *name;
	int bit;
} scope_names[] = {
	{"ingest", LATTICE_SCOPE_INGEST},
	{"read", LATTICE_SCOPE_READ},
};

static int
scope_bit(const char *name, size_t len)
{
	for (size_t i = 0; i < lengthof(scope_names); i++)
		if (strlen(scope_names[i].name) == len && strncmp(scope_names[i].name, name, len) == 0)
			return scope_names[i].bit;
	return 0;
}

/* Bits of a list of names given by a client: 400 invalid_scopes unless each is known */
int
lattice_scopes_from_names(const char *const *names, int n)
{
	int scopes = 0;

	if (n < 1)
		lattice_raise_http(400, "invalid_scopes", "give at least one scope: ingest, read",
						   "[{\"path\": \"scopes\", \"message\": \"must not be empty\"}]", NULL);
	for (int i = 0; i < n; i++)
	{
		int bit = names[i] ? scope_bit(names[i], strlen(names[i])) : 0;

		if (bit == 0)
			lattice_raise_http(400, "invalid_scopes", "unknown scope: the scopes are ingest and read",
							   "[{\"path\": \"scopes\", \"message\": \"must be ingest or read\"}]",
							   NULL);
		scopes |= bit;
	}
	return scopes;
}

/* Bits of a space-separated list (a token's claim); 0 when any name is unknown */
int
lattice_scopes_from_text(const char *text)
{
	int scopes = 0;
	const char *p = text;

	while (*p)
	{
		size_t len = strcspn(p, " ");
		int bit = scope_bit(p, len);

		if (len > 0 && bit == 0)
			return 0;
		scopes |= bit;
		p += len;
		while (*p == ' ')
			p++;
	}
	return scopes;
}

/* The space-separated names of scope bits, palloc'd */
char *
lattice_scopes_text(int scopes)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (size_t i = 0; i < lengthof(scope_names); i++)
		if (scopes & scope_names[i].bit)
			appendStringInfo(&buf, "%s%s", buf.len ? " " : "", scope_names[i].name);
	return buf.data;
}

/* The text[] of scope bits (as api_keys.scopes stores them) */
Datum
lattice_scopes_array(int scopes)
{
	Datum names[lengthof(scope_names)];
	int n = 0;

	for (size_t i = 0; i < lengthof(scope_names); i++)
		if (scopes & scope_names[i].bit)
			names[n++] = CStringGetTextDatum(scope_names[i].name);
	return PointerGetDatum(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT));
}
