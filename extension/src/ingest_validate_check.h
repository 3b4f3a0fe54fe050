/*
 * ingest_validate_check.h
 *		Checking one value of an ingest body at a time, at its JSON path.
 *
 * Each *_field function looks up a key of an object, checks it and reports
 * every problem at the key's path, under the current one; push_key and
 * push_index descend, pop (with what they returned) comes back up.
 */
#ifndef LATTICE_INGEST_VALIDATE_CHECK_H
#define LATTICE_INGEST_VALIDATE_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "ingest_validate_core.h"

#define INGEST_MAX_LIST 200	 /* middlewareChain, tags, parameters */
#define INGEST_MAX_STR	1024 /* default string cap */

/* The walk works on the validation itself: path, problems, hooks. */
typedef IngestValidation Checker;

/* The path: returns the length to pop back to. */
extern size_t ingest_push_key(Checker *c, const char *key);
extern size_t ingest_push_index(Checker *c, size_t i);
extern void ingest_pop(Checker *c, size_t saved);

/* Requires the value at the current path to be an object. */
extern bool ingest_is_object(Checker *c, struct json_object *v);

/*
 * Walks a free-form value (metadata, schemas, context, examples): every
 * string and key is checked, every number must be finite.
 */
extern void ingest_check_any(Checker *c, struct json_object *v);

/* Checks each element of an array of objects with fn, at key[i]. */
extern void ingest_check_items(Checker *c, struct json_object *arr, const char *key,
							   void (*fn)(Checker *, struct json_object *));

/*
 * Fields of obj.  A missing required field or a wrong type is a problem;
 * absent (or JSON null) optional fields are not.  Those that return the
 * value return NULL when it is absent or wrong.
 */
extern struct json_object *ingest_field(Checker *c, struct json_object *obj, const char *key,
										json_type want, bool required);

/*
 * A string of at least minlen bytes and at most maxlen characters (no cap
 * when 0) that matches pattern, when given (pattern_desc is the problem).
 */
extern const char *ingest_str_field(Checker *c, struct json_object *obj, const char *key, bool required,
									int minlen, int maxlen, const char *pattern,
									const char *pattern_desc);

/* One of allowed (NULL-terminated). */
extern const char *ingest_enum_field(Checker *c, struct json_object *obj, const char *key, bool required,
									 const char *const *allowed);

/* An integer in [min, max]; floats with a fraction and huge values refused. */
extern void ingest_int_field(Checker *c, struct json_object *obj, const char *key, bool required,
							 int64_t min, int64_t max);

/* A finite number in [min, max]. */
extern void ingest_num_field(Checker *c, struct json_object *obj, const char *key, bool required,
							 double min, double max);

/* An optional free-form value of type want, walked with ingest_check_any. */
extern void ingest_obj_any_field(Checker *c, struct json_object *obj, const char *key, json_type want);

/* A date-time, as ingest_re_date_time has it. */
extern void ingest_datetime_field(Checker *c, struct json_object *obj, const char *key, bool required);

/* An array of minitems..maxitems elements; returns it, or NULL. */
extern struct json_object *ingest_array_field(Checker *c, struct json_object *obj, const char *key,
											  bool required, size_t minitems, size_t maxitems);

/* An optional array of at most INGEST_MAX_LIST strings of maxlen characters. */
extern void ingest_string_list_field(Checker *c, struct json_object *obj, const char *key, int maxlen);

#endif /* LATTICE_INGEST_VALIDATE_CHECK_H */
