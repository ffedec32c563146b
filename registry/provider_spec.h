/*
 * provider_spec: one layer's description of one provider, and how it is layered onto a
 * registry. The config file's providers: section, the built-in baseline, the YAML file and a
 * set_provider request each contribute specs; config, store and writer apply them in order.
 *
 * Pure C11, no I/O: part of the registry core (pmregistry), like registry.h and provider.h.
 */
#ifndef PM_PROVIDER_SPEC_H
#define PM_PROVIDER_SPEC_H

#include "registry.h"

#include <stdbool.h>
#include <stddef.h>

/* Each field is optional. Owned strings; free with provider_spec_clear(). A zero-initialised
 * spec is empty and may be cleared. */
typedef struct {
    char *key;
    char *name;         /* NULL: not given */
    char *base_api_url; /* NULL: not given */
    bool has_api_key;   /* api_key given (it may be NULL: an explicit nil) */
    char *api_key;
    bool has_valid_models;
    size_t model_count;
    char **model_long;  /* model_count entries */
    char **model_short; /* model_count entries; an entry may be NULL = the long name */
    bool has_invalid_models;
    size_t invalid_count;
    char **invalid_models;
} provider_spec_t;

/* Frees every string and array of the spec and zeroes it. Safe on NULL and on an empty spec. */
void provider_spec_clear(provider_spec_t *self);

typedef enum {
    PROVIDER_SPEC_MERGE_MODELS,  /* layering: valid_models merged per model */
    PROVIDER_SPEC_REPLACE_MODELS /* set_provider: a given valid_models replaces the whole map */
} provider_spec_mode_t;

/* Applies the spec to a mutable registry: creates the provider (appended) when the key is new,
 * else changes the given fields in place (per field; invalid_models replaced when given).
 * A new provider without name or base_api_url gets the key as name and "" as URL.
 * pinned: mark the provider as defined by the baseline / config file (never unmarks).
 * The spec stays the caller's (only read). Cost: a clone of the one provider changed (without
 * its models in replace mode), plus the spec's models.
 * Returns 0, or -1 on allocation failure, an invalid key or a limit of the registry (registry
 * unchanged). */
int provider_spec_apply(const provider_spec_t *self, registry_t *registry,
                        provider_spec_mode_t mode, bool pinned);

#endif
