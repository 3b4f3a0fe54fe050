/*
 * ingest_validate_utf8.c
 *		The UTF-8 check and character count of ingest validation.
 *
 * PostgreSQL's definition of valid UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF), written out so that the validation
 * needs no backend; characters are counted as in a UTF8 database (Lattice's
 * clusters are UTF8).
 */
#include "ingest_validate_utf8.h"

/*
 * Characters in s, or -1 when it is not well-formed UTF-8 (Unicode's table
 * 3-7, which PostgreSQL's pg_utf8_islegal() implements).
 */
int
ingest_utf8_chars(const char *s, int len)
{
	const unsigned char *p = (const unsigned char *) s;
	const unsigned char *end = p + len;
	int chars = 0;

	while (p < end)
	{
		unsigned char b = *p;
		unsigned char lo = 0x80; /* the range of the second byte */
		unsigned char hi = 0xBF;
		int n;

		chars++;
		if (b < 0x80)
		{
			p++;
			continue;
		}
		if (b >= 0xC2 && b <= 0xDF)
			n = 2;
		else if (b >= 0xE0 && b <= 0xEF)
		{
			n = 3;
			if (b == 0xE0)
				lo = 0xA0; /* overlong */
			else if (b == 0xED)
				hi = 0x9F; /* surrogates */
		}
		else if (b >= 0xF0 && b <= 0xF4)
		{
			n = 4;
			if (b == 0xF0)
				lo = 0x90; /* overlong */
			else if (b == 0xF4)
				hi = 0x8F; /* above U+10FFFF */
		}
		else
			return -1;
		if (end - p < n || p[1] < lo || p[1] > hi)
			return -1;
		for (int i = 2; i < n; i++)
			if ((p[i] & 0xC0) != 0x80)
				return -1;
		p += n;
	}
	return chars;
}
