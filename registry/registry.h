/*
 * registry: the in-memory provider registry (the seed's ProviderManager).
 *
 * Pure C11, no I/O, no globals. A registry_t is an insertion-ordered set of providers
 * (provider.h, the seed's ProviderConfig) plus, once sealed, a global name index so that
 * resolution never scans all models.
 *
 * Sharing model: values are copy-on-write. A registry is MUTABLE until registry_seal(); after
 * that it is immutable and may be read from any thread. A provider inside a sealed registry is
 * immutable too and may be shared by several registries (reference counted, atomically).
 * The writer thread changes state by registry_clone() of the current sealed registry (cheap:
 * it shares every provider), registry_edit() of the providers it touches (clones only those),
 * then registry_seal(). Readers keep the sealed registry they hold for as long as they like.
 * Layering a provider_spec_t onto a registry is provider_spec.h's job.
 *
 * Strings: functions taking (const char *s, size_t len) accept text that is not NUL-terminated
 * (a msgpack string points into a received message). Returned const char * are borrowed and
 * live as long as the provider / registry they came from.
 */
#ifndef PM_REGISTRY_H
#define PM_REGISTRY_H

#include "provider.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The registry's limits. The per-provider ones are provider.h's, under the names the callers
 * and the protocol documents use. */
#define REGISTRY_MAX_KEY_LEN PROVIDER_MAX_KEY_LEN
#define REGISTRY_MAX_NAME_LEN PROVIDER_MAX_NAME_LEN
#define REGISTRY_MAX_URL_LEN PROVIDER_MAX_URL_LEN
#define REGISTRY_MAX_API_KEY_LEN PROVIDER_MAX_API_KEY_LEN
#define REGISTRY_MAX_PROVIDERS 4096
#define REGISTRY_MAX_MODELS PROVIDER_MAX_MODELS /* (provider, model) pairs in one registry */
#define REGISTRY_DEFAULT_CACHE_DURATION PROVIDER_DEFAULT_CACHE_DURATION

typedef struct registry_t registry_t;

/* An empty mutable registry, or NULL on allocation failure. */
registry_t *registry_new(void);
/* A mutable registry holding the same providers (shared, by reference) in the same order.
 * self may be sealed or not. NULL on allocation failure. */
registry_t *registry_clone(const registry_t *self);
registry_t *registry_ref(registry_t *self);
void registry_destroy(registry_t **self_p);

/* Builds the global name index and makes the registry (and its providers) immutable.
 * 0, or -1 on allocation failure (the registry stays mutable and usable). */
int registry_seal(registry_t *self);
bool registry_sealed(const registry_t *self);

/* Mutation (mutable registry only). registry_put takes ownership of *provider_p (sets it to
 * NULL): a provider with the same key is replaced in place (its position kept), otherwise it
 * is appended. 0, or -1 (then *provider_p is untouched and still the caller's). */
int registry_put(registry_t *self, provider_t **provider_p);
/* Removes the provider with this key: 1 when it was there, 0 when not. */
int registry_remove(registry_t *self, const char *key);
/* Copy-on-write access for changing one provider of a mutable registry: returns a provider
 * that only this registry holds (cloning it first when it is shared), or NULL when the key is
 * unknown or on allocation failure. Borrowed; valid until the registry changes again. */
provider_t *registry_edit(registry_t *self, const char *key);

/* Dict-like reads (get / getitem / contains / keys / values / items). */
size_t registry_count(const registry_t *self);
const provider_t *registry_at(const registry_t *self, size_t index);
/* get / get_provider_config / __getitem__: NULL when unknown. O(1). */
const provider_t *registry_get(const registry_t *self, const char *key, size_t len);
bool registry_contains(const registry_t *self, const char *key, size_t len);
/* Number of (provider, model) pairs, i.e. the length of merged_models. */
size_t registry_model_count(const registry_t *self);

/* Model resolution (get_api_for_model_string / validate_model), per protocol-v1 "Model
 * resolution": split at the first '/', lower-case the prefix; a known prefix: long or short
 * name of that provider, else REGISTRY_INVALID_FOR_PROVIDER; otherwise the WHOLE string is
 * tried first, then the after-slash model, each by the seed's first-hit order over
 * merged_models; else REGISTRY_INVALID_MODEL. The result is always the LONG name.
 * Needs a sealed registry (the global index); O(1) in the number of models. */
typedef enum {
    REGISTRY_RESOLVED = 0,
    REGISTRY_INVALID_FOR_PROVIDER, /* "Invalid model for provider <prefix>: <model>" */
    REGISTRY_INVALID_MODEL         /* "Invalid model: <model>" */
} registry_status_t;

typedef struct {
    const provider_t *provider; /* on success */
    const char *long_name;      /* on success, borrowed from provider */
    /* For the error message: spans into the caller's model_string. */
    const char *prefix; /* lower-cased prefix = the provider key (INVALID_FOR_PROVIDER) */
    const char *model;  /* the after-slash model text (not NUL-terminated) */
    size_t model_len;
} registry_resolution_t;

registry_status_t registry_resolve(const registry_t *self, const char *model_string, size_t len,
                                   registry_resolution_t *out);

/* Global first hit for an unprefixed name (seed's merged_models scan, but indexed): the
 * provider and long name of the first (provider, model) pair whose long or short name equals
 * name. Returns the provider or NULL. Sealed registry only. */
const provider_t *registry_first_hit(const registry_t *self, const char *name, size_t len,
                                     const char **long_name_out);

#endif
