/*
 * fields.c
 *		What the fields people type must look like: e-mail addresses, and
 *		names and labels (an account's name, a key's).
 */
#include "common.h"
#include "auth.h"

#include "catalog/pg_collation.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/formatting.h"

#define EMAIL_MAX_CHARS		  254 /* RFC 5321's path limit */
#define EMAIL_LOCAL_MAX_CHARS 64

/* Trimmed, lower-cased email; NULL when it is not a plausible address */
char *
lattice_normalise_email(text *t)
{
	const char *s = VARDATA_ANY(t);
	int len = VARSIZE_ANY_EXHDR(t);
	char *email;
	char *at;
	char *p;

	while (len > 0 && isspace((unsigned char) *s))
		s++, len--;
	while (len > 0 && isspace((unsigned char) s[len - 1]))
		len--;
	if (len < 3 || len > EMAIL_MAX_CHARS)
		return NULL;
	email = str_tolower(s, len, DEFAULT_COLLATION_OID);
	at = strchr(email, '@');
	if (at == NULL || at == email || strchr(at + 1, '@') != NULL || at - email > EMAIL_LOCAL_MAX_CHARS)
		return NULL;
	for (p = email; *p; p++)
		if ((unsigned char) *p <= ' ' || *p == 0x7f)
			return NULL;
	p = strchr(at + 1, '.');
	if (p == NULL || p == at + 1 || email[strlen(email) - 1] == '.')
		return NULL;
	return email;
}

/* lattice.email_normalise(email text) -> text: as above, NULL when implausible */
PG_FUNCTION_INFO_V1(lattice_email_normalise);
Datum
lattice_email_normalise(PG_FUNCTION_ARGS)
{
	char *email = lattice_normalise_email(PG_GETARG_TEXT_PP(0));

	if (email == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(email));
}

/*
 * A display name or label: surrounding white space trimmed, 1 to max_chars
 * characters, else 400 invalid_name naming what it is.  Shared with keys.
 */
char *
lattice_clean_label(text *t, int max_chars, const char *what)
{
	char *name = text_to_cstring(t);
	char *end;
	int chars;

	while (isspace((unsigned char) *name))
		name++;
	end = name + strlen(name);
	while (end > name && isspace((unsigned char) end[-1]))
		*--end = '\0';
	chars = pg_mbstrlen(name);
	if (chars < 1 || chars > max_chars)
		lattice_raise_http(400, "invalid_name",
						   psprintf("%s must be 1 to %d characters", what, max_chars), NULL, NULL);
	return name;
}
