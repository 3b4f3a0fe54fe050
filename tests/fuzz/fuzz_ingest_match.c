/*
 * libFuzzer target: raw trace paths against route templates, and the
 * normalisation of unmatched paths (extension/src/ingest_match_core.c), as
 * the extension runs them.
 *
 * Input: "<method>\n<raw path>\n<template>\n<template>..." (templates are
 * "METHOD /path").  Property: a match names a template of the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ingest_match_core.h"

#define MAX_TEMPLATES 64

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *line[MAX_TEMPLATES + 2];
	int len[MAX_TEMPLATES + 2];
	int n = 0;
	size_t pos = 0;
	IngestSegments raw;
	int pos_match;

	if (size > 65536)
		return 0;
	while (n < MAX_TEMPLATES + 2)
	{
		const char *start = (const char *) data + pos;
		const char *nl = memchr(start, '\n', size - pos);
		size_t l = nl ? (size_t) (nl - start) : size - pos;

		line[n] = start;
		len[n] = (int) l;
		n++;
		if (!nl)
			break;
		pos += l + 1;
	}
	if (n < 2)
		return 0;
	/* an empty template line stands for a NULL array element */
	for (int i = 2; i < n; i++)
		if (len[i] == 0)
			line[i] = NULL;

	if (ingest_split_path(line[1], len[1], &raw))
	{
		pos_match = ingest_match_templates(line + 2, len + 2, n - 2, line[0], len[0], &raw);
		if (pos_match < 0 || pos_match > n - 2 || (pos_match > 0 && line[pos_match + 1] == NULL))
			abort();
		for (int i = 0; i < raw.n; i++)
			if (raw.len[i] <= 0 || memchr(raw.s[i], '/', raw.len[i]) != NULL)
				abort();
		for (int i = 0; i < raw.n; i++)
			(void) ingest_id_like(raw.s[i], raw.len[i]);
	}
	return 0;
}
