/*
 * registry: the in-memory provider registry (the seed's ProviderManager). See registry.h.
 *
 * Pure C11: no I/O, no globals, no printing. See registry.h for the sharing model (immutable
 * sealed registries shared by readers, copy-on-write providers with an atomic refcount).
 *
 * Layout, and why:
 *   - providers is an array in registry order plus a hashtab index: key -> index + 1.
 *   - A sealed registry adds one global index over every (provider, model) pair: name -> the
 *     first pair, in merged_models order, whose long or short name it is. Resolution then costs
 *     two hash lookups whatever the number of providers and models. Building it reuses the
 *     hashes each provider stored for its names (provider_model_entry), so sealing hashes no
 *     string again.
 *
 * Entries are never deleted one by one: a key index whose array shifted is rebuilt, which is
 * O(n) like the removal that caused it.
 */
#include "registry.h"
#include "hashtab.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define S_ARRAY_MIN_CAPACITY 8u

struct registry_t {
    atomic_size_t refs;
    bool sealed;
    provider_t **providers; /* in registry order; one reference each */
    size_t count;
    size_t capacity;
    hashtab_t key_index; /* key -> index + 1 */
    size_t model_total;  /* running total of (provider, model) pairs */
    bool total_stale;    /* registry_edit() handed out a provider that may change its count */
    /* Sealed only: global first-hit index. A value v encodes pair = (v - 1) / 2, the pair's
     * position in merged_models order, and (v - 1) % 2 = 1 when the name is the pair's short
     * name. offsets[p] is the position of provider p's first pair (count + 1 entries). */
    hashtab_t global_index;
    size_t *offsets;
};

static bool s_match_key(const void *ctx, uint32_t value, const char *name, size_t len)
{
    const char *key = provider_key(((const registry_t *)ctx)->providers[value - 1]);
    return hashtab_name_equal(key, strlen(key), name, len);
}

static long s_registry_find(const registry_t *self, const char *key, size_t len)
{
    if (!key)
        return -1;
    const hashtab_slot_t *slot =
        hashtab_find(&self->key_index, hashtab_hash(key, len), s_match_key, self, key, len);
    return slot ? (long)slot->value - 1 : -1;
}

/* Index of the provider holding pair number `pair`: the last p with offsets[p] <= pair
 * (providers without models share their offset with the next one). */
static size_t s_provider_of_pair(const registry_t *self, size_t pair)
{
    size_t low = 0, high = self->count; /* answer in [low, high) */
    while (high - low > 1) {
        size_t mid = low + (high - low) / 2;
        if (self->offsets[mid] <= pair)
            low = mid;
        else
            high = mid;
    }
    return low;
}

static bool s_match_global(const void *ctx, uint32_t value, const char *name, size_t len)
{
    const registry_t *self = ctx;
    size_t pair = (value - 1) / 2;
    bool is_short = ((value - 1) % 2) == 1;
    size_t p = s_provider_of_pair(self, pair);
    provider_model_entry_t model;
    provider_model_entry(self->providers[p], pair - self->offsets[p], &model);
    if (is_short)
        return hashtab_name_equal(model.short_name ? model.short_name : model.long_name,
                                  model.short_len, name, len);
    return hashtab_name_equal(model.long_name, model.long_len, name, len);
}

static size_t s_sum_models(const registry_t *self)
{
    size_t total = 0;
    for (size_t i = 0; i < self->count; i++)
        total += provider_model_count(self->providers[i]);
    return total;
}

/* After registry_edit() the caller may have changed that provider's models: recount once. */
static void s_refresh_total(registry_t *self)
{
    if (self->total_stale) {
        self->model_total = s_sum_models(self);
        self->total_stale = false;
    }
}

static void s_rebuild_key_index(registry_t *self)
{
    hashtab_clear(&self->key_index);
    for (size_t i = 0; i < self->count; i++) {
        const char *key = provider_key(self->providers[i]);
        hashtab_insert(&self->key_index, hashtab_hash(key, strlen(key)), (uint32_t)i + 1);
    }
}

/* Room for one more provider in the array and the key index. 0, or -1 (nothing changes). */
static int s_registry_reserve_one(registry_t *self)
{
    if (self->count >= REGISTRY_MAX_PROVIDERS)
        return -1;
    if (self->count == self->capacity) {
        size_t capacity = self->capacity ? self->capacity * 2 : S_ARRAY_MIN_CAPACITY;
        provider_t **providers = realloc(self->providers, capacity * sizeof(*providers));
        if (!providers)
            return -1;
        self->providers = providers;
        self->capacity = capacity;
    }
    return hashtab_reserve(&self->key_index, self->count + 1);
}

/* Appends; takes over the caller's reference. Room was reserved. */
static void s_registry_append(registry_t *self, provider_t *provider)
{
    self->providers[self->count] = provider;
    self->count++;
    const char *key = provider_key(provider);
    hashtab_insert(&self->key_index, hashtab_hash(key, strlen(key)), (uint32_t)self->count);
}

registry_t *registry_new(void)
{
    registry_t *self = calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    atomic_init(&self->refs, 1);
    return self;
}

/* The clone takes one reference on every provider; its key index is a copy of self's (same
 * order, same positions). The global index is not copied: the clone is mutable. */
registry_t *registry_clone(const registry_t *self)
{
    assert(self);
    registry_t *copy = registry_new();
    if (!copy)
        return NULL;
    if (self->count > 0) {
        copy->providers = malloc(self->count * sizeof(*copy->providers));
        if (!copy->providers || hashtab_copy(&copy->key_index, &self->key_index) != 0) {
            registry_destroy(&copy);
            return NULL;
        }
        copy->capacity = self->count;
        for (size_t i = 0; i < self->count; i++)
            copy->providers[i] = provider_ref(self->providers[i]);
        copy->count = self->count;
    }
    copy->model_total = self->total_stale ? s_sum_models(self) : self->model_total;
    return copy;
}

registry_t *registry_ref(registry_t *self)
{
    assert(self);
    atomic_fetch_add_explicit(&self->refs, 1, memory_order_relaxed);
    return self;
}

/* Drops the caller's reference; the last one releases every provider reference it holds. */
void registry_destroy(registry_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    registry_t *self = *self_p;
    *self_p = NULL;
    if (atomic_fetch_sub_explicit(&self->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < self->count; i++)
        provider_destroy(&self->providers[i]);
    free(self->providers);
    hashtab_release(&self->key_index);
    hashtab_release(&self->global_index);
    free(self->offsets);
    free(self);
}

/* Also refuses (-1, still mutable) a registry holding more than REGISTRY_MAX_MODELS pairs,
 * which only registry_edit() followed by growth can produce. */
int registry_seal(registry_t *self)
{
    assert(self);
    if (self->sealed)
        return 0;
    s_refresh_total(self);
    if (self->model_total > REGISTRY_MAX_MODELS)
        return -1;

    size_t *offsets = malloc((self->count + 1) * sizeof(*offsets));
    hashtab_t index = {0};
    if (!offsets)
        return -1;
    size_t pair = 0, names = 0;
    for (size_t p = 0; p < self->count; p++) {
        offsets[p] = pair;
        size_t models = provider_model_count(self->providers[p]);
        pair += models;
        names += models + provider_explicit_short_count(self->providers[p]);
    }
    offsets[self->count] = pair;
    if (hashtab_reserve(&index, names) != 0) {
        free(offsets);
        return -1;
    }

    /* s_match_global decodes through self->offsets, so install them before inserting. */
    free(self->offsets);
    self->offsets = offsets;
    for (size_t p = 0; p < self->count; p++) {
        const provider_t *provider = self->providers[p];
        size_t models = provider_model_count(provider);
        for (size_t m = 0; m < models; m++) {
            provider_model_entry_t model;
            provider_model_entry(provider, m, &model);
            uint32_t base = (uint32_t)(2 * (offsets[p] + m)) + 1;
            /* Only the first holder of a name, in merged_models order, gets its slot. */
            if (!hashtab_find(&index, model.long_hash, s_match_global, self, model.long_name,
                              model.long_len))
                hashtab_insert(&index, model.long_hash, base);
            if (model.short_name && !hashtab_find(&index, model.short_hash, s_match_global, self,
                                                  model.short_name, model.short_len))
                hashtab_insert(&index, model.short_hash, base + 1);
        }
    }
    hashtab_release(&self->global_index);
    self->global_index = index;
    self->sealed = true;
    return 0;
}

bool registry_sealed(const registry_t *self)
{
    return self->sealed;
}

int registry_put(registry_t *self, provider_t **provider_p)
{
    assert(self && !self->sealed);
    assert(provider_p && *provider_p);
    provider_t *provider = *provider_p;
    size_t models = provider_model_count(provider);
    s_refresh_total(self);
    const char *key = provider_key(provider);
    long index = s_registry_find(self, key, strlen(key));
    if (index >= 0) {
        provider_t *old = self->providers[index];
        size_t total = self->model_total - provider_model_count(old);
        if (models > REGISTRY_MAX_MODELS - total)
            return -1;
        self->model_total = total + models;
        self->providers[index] = provider;
        *provider_p = NULL;
        /* Putting the provider already there: the caller's reference is the extra one. */
        provider_destroy(&old);
        return 0;
    }
    if (models > REGISTRY_MAX_MODELS - self->model_total)
        return -1;
    if (s_registry_reserve_one(self) != 0)
        return -1;
    s_registry_append(self, provider);
    self->model_total += models;
    *provider_p = NULL;
    return 0;
}

int registry_remove(registry_t *self, const char *key)
{
    assert(self && !self->sealed);
    if (!key)
        return 0;
    long index = s_registry_find(self, key, strlen(key));
    if (index < 0)
        return 0;
    s_refresh_total(self);
    provider_t *old = self->providers[index];
    self->model_total -= provider_model_count(old);
    memmove(&self->providers[index], &self->providers[index + 1],
            (self->count - (size_t)index - 1) * sizeof(*self->providers));
    self->count--;
    /* Every later provider moved down by one: its index entry must change too. */
    s_rebuild_key_index(self);
    provider_destroy(&old);
    return 1;
}

/* The returned provider is borrowed from self and held by self alone. */
provider_t *registry_edit(registry_t *self, const char *key)
{
    assert(self && !self->sealed);
    if (!key)
        return NULL;
    long index = s_registry_find(self, key, strlen(key));
    if (index < 0)
        return NULL;
    provider_t *provider = self->providers[index];
    if (provider_shared(provider)) {
        provider_t *copy = provider_clone(provider);
        if (!copy)
            return NULL;
        self->providers[index] = copy;
        provider_destroy(&provider);
        provider = copy;
    }
    s_refresh_total(self);
    self->total_stale = true;
    return provider;
}

size_t registry_count(const registry_t *self)
{
    return self->count;
}

const provider_t *registry_at(const registry_t *self, size_t index)
{
    assert(index < self->count);
    return self->providers[index];
}

const provider_t *registry_get(const registry_t *self, const char *key, size_t len)
{
    long index = s_registry_find(self, key, len);
    return index >= 0 ? self->providers[index] : NULL;
}

bool registry_contains(const registry_t *self, const char *key, size_t len)
{
    return s_registry_find(self, key, len) >= 0;
}

size_t registry_model_count(const registry_t *self)
{
    return self->total_stale ? s_sum_models(self) : self->model_total;
}

/* Sealed: one lookup in the global index. Not sealed (allowed, but not the fast path): one
 * lookup per provider, in order, which gives the same answer. */
const provider_t *registry_first_hit(const registry_t *self, const char *name, size_t len,
                                     const char **long_name_out)
{
    if (long_name_out)
        *long_name_out = NULL;
    if (!name)
        return NULL;
    const provider_t *provider = NULL;
    long model = -1;
    if (self->sealed) {
        const hashtab_slot_t *slot = hashtab_find(&self->global_index, hashtab_hash(name, len),
                                                  s_match_global, self, name, len);
        if (!slot)
            return NULL;
        size_t pair = (slot->value - 1) / 2;
        size_t p = s_provider_of_pair(self, pair);
        provider = self->providers[p];
        model = (long)(pair - self->offsets[p]);
    } else {
        for (size_t p = 0; p < self->count && model < 0; p++) {
            model = provider_first_hit(self->providers[p], name, len);
            provider = self->providers[p];
        }
        if (model < 0)
            return NULL;
    }
    if (long_name_out)
        *long_name_out = provider_model_long(provider, (size_t)model);
    return provider;
}

registry_status_t registry_resolve(const registry_t *self, const char *model_string, size_t len,
                                   registry_resolution_t *out)
{
    assert(self && out);
    if (!model_string) {
        model_string = "";
        len = 0;
    }
    memset(out, 0, sizeof(*out));
    const char *slash = len > 0 ? memchr(model_string, '/', len) : NULL;
    size_t prefix_len = slash ? (size_t)(slash - model_string) : 0;
    const char *model = slash ? slash + 1 : model_string;
    size_t model_len = slash ? len - prefix_len - 1 : len;
    out->model = model;
    out->model_len = model_len;

    /* A prefix longer than any key cannot name a provider: no need to lower-case it. */
    if (prefix_len > 0 && prefix_len <= REGISTRY_MAX_KEY_LEN) {
        char lowered[REGISTRY_MAX_KEY_LEN + 1];
        for (size_t i = 0; i < prefix_len; i++) {
            char c = model_string[i];
            lowered[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        lowered[prefix_len] = '\0';
        const provider_t *provider = registry_get(self, lowered, prefix_len);
        if (provider) {
            /* Correction (a): the LONG name, also for a short name; a long match wins. */
            const char *long_name = provider_find_model(provider, model, model_len);
            if (!long_name) {
                out->prefix = provider_key(provider);
                return REGISTRY_INVALID_FOR_PROVIDER;
            }
            out->provider = provider;
            out->long_name = long_name;
            return REGISTRY_RESOLVED;
        }
    }

    const char *long_name = NULL;
    const provider_t *provider = NULL;
    /* Correction (b): model ids such as "meta-llama/Llama-3-8B" contain a slash. */
    if (slash)
        provider = registry_first_hit(self, model_string, len, &long_name);
    if (!provider)
        provider = registry_first_hit(self, model, model_len, &long_name);
    if (!provider)
        return REGISTRY_INVALID_MODEL;
    out->provider = provider;
    out->long_name = long_name;
    return REGISTRY_RESOLVED;
}
