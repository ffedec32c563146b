/*
 * registry: the in-memory provider registry (the seed's ProviderConfig and ProviderManager).
 *
 * Pure C11, no I/O, no globals. Two types:
 *
 *   provider_t  one OpenAI-compatible provider (ProviderConfig): registry key, name,
 *               base_api_url, api key (stored and environment), valid_models as an
 *               insertion-ordered long->short map with hash indexes, invalid_models as an
 *               ordered set, and the runtime-only discovery cache.
 *   registry_t  an insertion-ordered set of providers (ProviderManager) plus, once sealed,
 *               a global name index so that resolution never scans all models.
 *
 * Sharing model: values are copy-on-write. A registry is MUTABLE until registry_seal(); after
 * that it is immutable and may be read from any thread. A provider inside a sealed registry is
 * immutable too and may be shared by several registries (reference counted, atomically).
 * The writer thread changes state by registry_clone() of the current sealed registry (cheap:
 * it shares every provider), registry_edit() of the providers it touches (clones only those),
 * then registry_seal(). Readers keep the sealed registry they hold for as long as they like.
 *
 * Strings: functions taking (const char *s, size_t len) accept text that is not NUL-terminated
 * (a msgpack string points into a received message). Returned const char * are borrowed and
 * live as long as the provider / registry they came from.
 */
#ifndef PM_REGISTRY_H
#define PM_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define REGISTRY_MAX_KEY_LEN 64    /* registry key: 1..64 of [a-z0-9._-] */
#define REGISTRY_MAX_NAME_LEN 1024 /* model names, provider display names */
#define REGISTRY_MAX_URL_LEN 2048  /* base_api_url */
#define REGISTRY_MAX_API_KEY_LEN 4096
#define REGISTRY_MAX_PROVIDERS 4096
#define REGISTRY_MAX_MODELS 1000000 /* (provider, model) pairs in one registry */
#define REGISTRY_DEFAULT_CACHE_DURATION 3600.0

typedef struct provider_t provider_t;
typedef struct registry_t registry_t;

/* ---------------------------------------------------------------- provider (ProviderConfig) */

/* Creates an empty, exclusively owned (mutable) provider. Copies the strings. No key, no
 * models. Returns NULL on allocation failure or when key is not a valid registry key. */
provider_t *provider_new(const char *key, const char *name, const char *base_api_url);

/* Deep copy; the copy is exclusively owned (mutable). NULL on allocation failure. */
provider_t *provider_clone(const provider_t *self);

/* Takes one more reference (atomic). Returns self. */
provider_t *provider_ref(provider_t *self);

/* Drops the caller's reference and sets *self_p to NULL; frees at zero. Safe on NULL. */
void provider_destroy(provider_t **self_p);

const char *provider_key(const provider_t *self);
const char *provider_name(const provider_t *self);
const char *provider_base_api_url(const provider_t *self);

/* The effective API key: the environment's when one was set, else the stored one; NULL when
 * neither. This is what callers are given and what discovery uses. */
const char *provider_api_key(const provider_t *self);
/* The key that is persisted to the YAML file (never the environment's); NULL when none. */
const char *provider_stored_api_key(const provider_t *self);
/* True when the effective key came from the environment. */
bool provider_api_key_from_env(const provider_t *self);

/* Setters: only on a mutable provider. Copy their arguments. Return 0, or -1 on allocation
 * failure (the provider is then unchanged). NULL clears the key. */
int provider_set_name(provider_t *self, const char *name);
int provider_set_base_api_url(provider_t *self, const char *url);
int provider_set_api_key(provider_t *self, const char *api_key);
int provider_set_env_api_key(provider_t *self, const char *api_key);

/* True when the provider comes from the built-in baseline or the config file's providers:
 * section; such a provider cannot be removed at run time (the YAML file cannot express it). */
bool provider_pinned(const provider_t *self);
void provider_set_pinned(provider_t *self, bool pinned);

/* valid_models: insertion-ordered long -> short map. */
size_t provider_model_count(const provider_t *self);
const char *provider_model_long(const provider_t *self, size_t index);
const char *provider_model_short(const provider_t *self, size_t index);
/* Index of the model whose LONG name is exactly name, or -1. O(1). */
long provider_model_index(const provider_t *self, const char *name, size_t len);
/* Adds long -> short, or replaces the short name of an existing long name in place (its
 * position is kept). short_name NULL means "the long name". 0, or -1 on allocation failure. */
int provider_put_model(provider_t *self, const char *long_name, const char *short_name);
/* Removes every valid model. */
void provider_clear_models(provider_t *self);
/* The seed's merge_valid_models: every name not yet a long name is appended with
 * registry_get_short_name(name) as its short name; existing entries and their short names
 * are kept; nothing is removed. 0, or -1 on allocation failure. */
int provider_merge_valid_models(provider_t *self, const char *const *names, size_t count);
/* The seed's ProviderConfig.find_model / get_valid_models lookups by name, O(1):
 * the long name when name is a long name; else the long name of the FIRST model (in order)
 * whose short name is name; else NULL. */
const char *provider_find_model(const provider_t *self, const char *name, size_t len);
/* Index (in model order) of the first model whose long OR short name equals name, or -1.
 * This is the seed's merged_models first-hit rule within one provider. O(1). */
long provider_first_hit(const provider_t *self, const char *name, size_t len);

/* invalid_models: ordered list without duplicates. */
size_t provider_invalid_count(const provider_t *self);
const char *provider_invalid_at(const provider_t *self, size_t index);
bool provider_is_invalid(const provider_t *self, const char *name, size_t len);
/* Replaces the whole list (duplicates dropped, first kept). 0, or -1 (unchanged). */
int provider_set_invalid_models(provider_t *self, const char *const *names, size_t count);

/* Runtime-only discovery cache: never sent on the wire, never persisted. */
size_t provider_cached_count(const provider_t *self);
const char *provider_cached_at(const provider_t *self, size_t index);
double provider_cache_timestamp(const provider_t *self); /* 0 when never listed */
double provider_cache_duration(const provider_t *self);  /* seconds */
void provider_set_cache_duration(provider_t *self, double seconds);
/* Replaces the cached list and its timestamp. 0, or -1 (unchanged). */
int provider_set_cached_models(provider_t *self, const char *const *names, size_t count,
                               double timestamp);
/* True when a cached list exists and now < timestamp + duration. */
bool provider_cache_fresh(const provider_t *self, double now);

/* ------------------------------------------------------------ registry (ProviderManager) */

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

/* The seed's get_short_name: today the long name itself (returned as given). */
const char *registry_get_short_name(const char *long_name);

/* True when key is a valid registry key: 1..REGISTRY_MAX_KEY_LEN of [a-z0-9._-]. */
bool registry_key_valid(const char *key, size_t len);

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

/* ------------------------------------------------------------------- layering (config) */

/* A provider_spec_t is one layer's description of one provider: each field is optional.
 * It is what the config file's providers: section, the built-in baseline, the YAML file and a
 * set_provider request each contribute. Owned strings; free with provider_spec_clear(). */
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

void provider_spec_clear(provider_spec_t *spec);

typedef enum {
    REGISTRY_MERGE_MODELS,  /* layering: valid_models merged per model */
    REGISTRY_REPLACE_MODELS /* set_provider: a given valid_models replaces the whole map */
} registry_models_mode_t;

/* Applies one spec to a mutable registry: creates the provider (appended) when the key is new,
 * else changes the given fields in place (per field; invalid_models replaced when given).
 * A new provider without name or base_api_url gets the key as name and "" as URL.
 * pinned: mark the provider as defined by the baseline / config file (never unmarks).
 * Returns 0, or -1 on allocation failure or an invalid key (registry unchanged). */
int registry_apply_spec(registry_t *self, const provider_spec_t *spec, registry_models_mode_t mode,
                        bool pinned);

#endif
