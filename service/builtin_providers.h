/*
 * builtin_providers: the built-in baseline (the seed's PROVIDER_DATA), a static table of
 * well-known OpenAI-compatible providers with their public base URLs and the conventional
 * environment variable for each one's API key. Sources for every URL are in the .c file.
 */
#ifndef PM_BUILTIN_PROVIDERS_H
#define PM_BUILTIN_PROVIDERS_H

#include <stddef.h>

typedef struct {
    const char *key;          /* registry key, e.g. "openai" */
    const char *name;         /* display name, e.g. "OpenAI" */
    const char *base_api_url; /* e.g. "https://api.openai.com/v1" */
    const char *api_key_env;  /* e.g. "OPENAI_API_KEY" */
} builtin_provider_t;

/* The table and its length. Static storage. */
const builtin_provider_t *builtin_providers(size_t *count);
/* The entry for key, or NULL. */
const builtin_provider_t *builtin_provider_find(const char *key);

#endif
