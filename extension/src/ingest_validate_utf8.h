/*
 * ingest_validate_utf8.h
 *		UTF-8 as PostgreSQL takes it, without PostgreSQL.
 */
#ifndef LATTICE_INGEST_VALIDATE_UTF8_H
#define LATTICE_INGEST_VALIDATE_UTF8_H

/* Characters in s when it is valid UTF-8, else -1 (NUL counts as valid). */
extern int ingest_utf8_chars(const char *s, int len);

#endif /* LATTICE_INGEST_VALIDATE_UTF8_H */
