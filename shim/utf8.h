/* UTF-8 validation (utf8.c); no civetweb, no libpq: pure-C files use it too. */
#ifndef LATTICE_UTF8_H
#define LATTICE_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Valid UTF-8 without NUL, surrogates, overlong forms or code points past
   U+10FFFF. */
bool utf8_valid(const char *s, size_t len);

#endif
