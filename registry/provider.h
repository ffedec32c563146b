/*
 * provider: one OpenAI-compatible provider of the registry (the seed's ProviderConfig).
 *
 * Pure C11, no I/O, no globals. A provider_t holds its registry key, name, base_api_url, the
 * api key (stored and environment), valid_models as an insertion-ordered long->short map with
 * hash indexes, invalid_models as an ordered set, and the runtime-only discovery cache.
 *
 * Sharing model (see registry.h for the whole picture): a provider is MUTABLE while exactly one
 * reference holds it; a provider inside a sealed registry is immutable and may be shared by
 * several registries (reference counted, atomically). Changing a shared provider means cloning
 * it first (registry_edit does that).
 *
 * Strings: functions taking (const char *s, size_t len) accept text that is not NUL-terminated
 * (a msgpack string points into a received message). Returned const char * are borrowed and
 * live as long as the provider they came from (and, for a mutable one, until it changes).
 */
#ifndef PM_PROVIDER_H
#define PM_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROVIDER_MAX_KEY_LEN 64    /* registry key: 1..64 of [a-z0-9._-] */
#define PROVIDER_MAX_NAME_LEN 1024 /* model names, provider display names */
#define PROVIDER_MAX_URL_LEN 2048  /* base_api_url */
#define PROVIDER_MAX_API_KEY_LEN 4096
#define PROVIDER_MAX_MODELS 1000000 /* valid, invalid or cached models of one provider */
#define PROVIDER_DEFAULT_CACHE_DURATION 3600.0

typedef struct provider_t provider_t;

/* Creates an empty, exclusively owned (mutable) provider. Copies the strings. No key, no
 * models. Returns NULL on allocation failure or when key is not a valid registry key. */
provider_t *provider_new(const char *key, const char *name, const char *base_api_url);

/* Deep copy; the copy is exclusively owned (mutable). NULL on allocation failure. */
provider_t *provider_clone(const provider_t *self);

/* Deep copy of everything but valid_models, which the copy has empty: for a caller about to
 * replace the whole map, which copying first would waste. Mutable; NULL on allocation failure. */
provider_t *provider_clone_without_models(const provider_t *self);

/* Takes one more reference (atomic). Returns self. */
provider_t *provider_ref(provider_t *self);

/* Drops the caller's reference and sets *self_p to NULL; frees at zero. Safe on NULL. */
void provider_destroy(provider_t **self_p);

/* True when more than one reference holds the provider: it is then immutable, and a caller
 * that wants to change it must change a clone. */
bool provider_shared(const provider_t *self);

/* True when key is a valid registry key: 1..PROVIDER_MAX_KEY_LEN of [a-z0-9._-]. */
bool provider_key_valid(const char *key, size_t len);

/* The seed's get_short_name: today the long name itself (returned as given). */
const char *provider_get_short_name(const char *long_name);

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
/* count provider_put_model calls in a row (short_names NULL, or an entry NULL, means "the long
 * name"), but the short index is rebuilt once at most, however many first holders of a short
 * name change: O(count + models) where single calls could cost O(count * models).
 * 0, or -1 on allocation failure or a NULL long name: the models put before the failing one
 * stay and the provider stays consistent. A caller that needs all or nothing works on a clone,
 * as provider_spec_apply does. */
int provider_put_models(provider_t *self, const char *const *long_names,
                        const char *const *short_names, size_t count);
/* Removes every valid model. */
void provider_clear_models(provider_t *self);
/* The seed's merge_valid_models: every name not yet a long name is appended with
 * provider_get_short_name(name) as its short name; existing entries and their short names
 * are kept; nothing is removed. 0, or -1 on allocation failure. */
int provider_merge_valid_models(provider_t *self, const char *const *names, size_t count);
/* The seed's ProviderConfig.find_model / get_valid_models lookups by name, O(1):
 * the long name when name is a long name; else the long name of the FIRST model (in order)
 * whose short name is name; else NULL. */
const char *provider_find_model(const provider_t *self, const char *name, size_t len);
/* Index (in model order) of the first model whose long OR short name equals name, or -1.
 * This is the seed's merged_models first-hit rule within one provider. O(1). */
long provider_first_hit(const provider_t *self, const char *name, size_t len);

/* The stored form of model `index`, for an index built over many providers (the sealed
 * registry's global first-hit index) without measuring or hashing every name again. The hashes
 * are hashtab_hash() of the names. Borrowed; valid as long as provider_model_long(). */
typedef struct {
    const char *long_name;
    size_t long_len;
    uint32_t long_hash;
    const char *short_name; /* NULL when the short name is the long name */
    size_t short_len;       /* == long_len when short_name is NULL */
    uint32_t short_hash;    /* == long_hash when short_name is NULL */
} provider_model_entry_t;
void provider_model_entry(const provider_t *self, size_t index, provider_model_entry_t *out);
/* Models whose short name differs from the long name: with provider_model_count(), the number
 * of distinct names an index over this provider's models may have to hold. */
size_t provider_explicit_short_count(const provider_t *self);

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

#endif
