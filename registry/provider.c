/*
 * provider: one provider of the registry (the seed's ProviderConfig). See provider.h.
 *
 * Pure C11: no I/O, no globals, no printing.
 *
 * Layout, and why:
 *   - valid_models is an array in insertion order (the wire and the YAML file keep that order)
 *     plus two hash indexes over it: long name -> index, and short name -> index of the FIRST
 *     model having that short name. Both are needed for the seed's rules in O(1): find_model
 *     prefers a long-name match, merged_models' first hit takes whichever comes first.
 *     A short name equal to the long name (what discovery produces for every model) is stored
 *     as NULL, so 100,000 discovered models cost one string each, not two.
 *   - invalid_models is an ordered array plus a hash set (discovery skips those by name).
 *
 * The indexes are hashtab tables whose values are an array index + 1. Entries are never
 * deleted one by one: a table whose array shifted or whose first-holder changed is rebuilt,
 * which is O(n) like the change that caused it.
 */
#include "provider.h"
#include "hashtab.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define S_ARRAY_MIN_CAPACITY 8u
/* Stored string lengths are 32-bit (they keep a model entry at 32 bytes). */
#define S_MAX_STRING_LEN UINT32_MAX

/* ------------------------------------------------------------------------------- strings */

/* A NUL-terminated copy of len bytes of s; the caller frees it. NULL on allocation failure. */
static char *s_dup(const char *s, size_t len)
{
    char *copy = malloc(len + 1);
    if (!copy)
        return NULL;
    if (len > 0)
        memcpy(copy, s, len);
    copy[len] = '\0';
    return copy;
}

/* Replaces *field by a copy of value (NULL allowed when nullable). 0, or -1 (unchanged). */
static int s_set_string(char **field, const char *value)
{
    char *copy = NULL;
    if (value) {
        copy = s_dup(value, strlen(value));
        if (!copy)
            return -1;
    }
    free(*field);
    *field = copy;
    return 0;
}

/* -------------------------------------------------------------------------- provider_t */

typedef struct {
    char *long_name;
    char *short_name; /* NULL: same as long_name */
    uint32_t long_len;
    uint32_t short_len; /* == long_len when short_name is NULL */
    uint32_t long_hash;
    uint32_t short_hash; /* == long_hash when short_name is NULL */
} s_model_t;

typedef struct {
    char *text;
    uint32_t len;
    uint32_t hash;
} s_name_t;

struct provider_t {
    atomic_size_t refs;
    char *key;
    char *name;
    char *base_api_url;
    char *api_key;     /* stored (persisted) key, NULL when none */
    char *env_api_key; /* from the environment, NULL when none; never persisted */
    bool pinned;

    s_model_t *models; /* valid_models in insertion order */
    size_t model_count;
    size_t model_capacity;
    size_t explicit_shorts; /* models whose short name differs from the long name */
    hashtab_t long_index;   /* long name -> index + 1 */
    hashtab_t short_index;  /* short name -> index + 1 of the first model having it */

    s_name_t *invalid; /* invalid_models in order, no duplicates */
    size_t invalid_count;
    hashtab_t invalid_index;

    char **cached; /* runtime-only discovery cache */
    size_t cached_count;
    bool has_cache;
    double cache_timestamp;
    double cache_duration;
};

/* Mutators are for an exclusively owned provider only (see provider.h). */
static void s_assert_mutable(const provider_t *self)
{
    assert(self);
    assert(atomic_load_explicit(&((provider_t *)self)->refs, memory_order_acquire) == 1);
    (void)self;
}

static const char *s_model_short(const s_model_t *model)
{
    return model->short_name ? model->short_name : model->long_name;
}

static bool s_match_long(const void *ctx, uint32_t value, const char *name, size_t len)
{
    const s_model_t *model = &((const provider_t *)ctx)->models[value - 1];
    return hashtab_name_equal(model->long_name, model->long_len, name, len);
}

static bool s_match_short(const void *ctx, uint32_t value, const char *name, size_t len)
{
    const s_model_t *model = &((const provider_t *)ctx)->models[value - 1];
    return hashtab_name_equal(s_model_short(model), model->short_len, name, len);
}

/* ctx is the s_name_t array the table indexes. */
static bool s_match_name(const void *ctx, uint32_t value, const char *name, size_t len)
{
    const s_name_t *entry = &((const s_name_t *)ctx)[value - 1];
    return hashtab_name_equal(entry->text, entry->len, name, len);
}

static long s_long_lookup(const provider_t *self, const char *name, size_t len, uint32_t hash)
{
    const hashtab_slot_t *slot =
        hashtab_find(&self->long_index, hash, s_match_long, self, name, len);
    return slot ? (long)slot->value - 1 : -1;
}

static long s_short_lookup(const provider_t *self, const char *name, size_t len, uint32_t hash)
{
    const hashtab_slot_t *slot =
        hashtab_find(&self->short_index, hash, s_match_short, self, name, len);
    return slot ? (long)slot->value - 1 : -1;
}

/* Rebuilds the short index from the model array: each short name maps to the first model
 * holding it. Cannot fail: the table already has room for model_count entries. */
static void s_rebuild_short_index(provider_t *self)
{
    hashtab_clear(&self->short_index);
    for (size_t i = 0; i < self->model_count; i++) {
        const s_model_t *model = &self->models[i];
        if (s_short_lookup(self, s_model_short(model), model->short_len, model->short_hash) < 0)
            hashtab_insert(&self->short_index, model->short_hash, (uint32_t)i + 1);
    }
}

static void s_rebuild_long_index(provider_t *self)
{
    hashtab_clear(&self->long_index);
    for (size_t i = 0; i < self->model_count; i++)
        hashtab_insert(&self->long_index, self->models[i].long_hash, (uint32_t)i + 1);
}

/* Room for `extra` more models in the array and both indexes. 0, or -1 when the provider
 * would exceed PROVIDER_MAX_MODELS or on allocation failure (nothing visible changes). */
static int s_reserve_models(provider_t *self, size_t extra)
{
    if (extra > PROVIDER_MAX_MODELS || self->model_count > PROVIDER_MAX_MODELS - extra)
        return -1;
    size_t want = self->model_count + extra;
    if (want > self->model_capacity) {
        size_t capacity = self->model_capacity ? self->model_capacity : S_ARRAY_MIN_CAPACITY;
        while (capacity < want)
            capacity *= 2;
        s_model_t *models = realloc(self->models, capacity * sizeof(*models));
        if (!models)
            return -1;
        self->models = models;
        self->model_capacity = capacity;
    }
    if (hashtab_reserve(&self->long_index, want) != 0)
        return -1;
    /* Distinct short names never outnumber the models, so this bound holds for every later
     * insertion or rebuild. */
    if (hashtab_reserve(&self->short_index, want) != 0)
        return -1;
    return 0;
}

/* Gives the existing model `index` the short name (short_name, short_len), NULL meaning the
 * long name. Keeps the short index right when it can in O(1); sets *short_stale when the
 * model was the first holder of its old short name (the next holder must then be found by a
 * rebuild, done once by the caller). 0, or -1 on allocation failure (unchanged). */
static int s_replace_short(provider_t *self, size_t index, const char *short_name, size_t short_len,
                           uint32_t short_hash, bool *short_stale)
{
    s_model_t *model = &self->models[index];
    const char *new_short = short_name ? short_name : model->long_name;
    size_t new_len = short_name ? short_len : model->long_len;
    if (hashtab_name_equal(s_model_short(model), model->short_len, new_short, new_len))
        return 0;

    char *copy = NULL;
    if (short_name) {
        copy = s_dup(short_name, short_len);
        if (!copy)
            return -1;
    }
    if (!*short_stale) {
        long first_old =
            s_short_lookup(self, s_model_short(model), model->short_len, model->short_hash);
        if (first_old == (long)index) {
            *short_stale = true;
        } else {
            hashtab_slot_t *slot = hashtab_find(&self->short_index, short_hash, s_match_short, self,
                                                new_short, new_len);
            if (!slot)
                hashtab_insert(&self->short_index, short_hash, (uint32_t)index + 1);
            else if (slot->value - 1 > index)
                slot->value = (uint32_t)index + 1;
        }
    }
    if (model->short_name)
        self->explicit_shorts--;
    if (copy)
        self->explicit_shorts++;
    free(model->short_name);
    model->short_name = copy;
    model->short_len = (uint32_t)new_len;
    model->short_hash = short_hash;
    return 0;
}

/* provider_put_model's work, for single calls and batches alike. Copies both strings.
 * short_name NULL (or equal to the long name) is stored as NULL. 0, or -1 (unchanged). */
static int s_put_model(provider_t *self, const char *long_name, size_t long_len,
                       const char *short_name, size_t short_len, bool *short_stale)
{
    if (long_len > S_MAX_STRING_LEN || short_len > S_MAX_STRING_LEN)
        return -1;
    uint32_t long_hash = hashtab_hash(long_name, long_len);
    if (short_name && hashtab_name_equal(long_name, long_len, short_name, short_len))
        short_name = NULL;
    uint32_t short_hash = short_name ? hashtab_hash(short_name, short_len) : long_hash;

    long existing = s_long_lookup(self, long_name, long_len, long_hash);
    if (existing >= 0)
        return s_replace_short(self, (size_t)existing, short_name, short_len, short_hash,
                               short_stale);

    if (s_reserve_models(self, 1) != 0)
        return -1;
    char *long_copy = s_dup(long_name, long_len);
    char *short_copy = short_name ? s_dup(short_name, short_len) : NULL;
    if (!long_copy || (short_name && !short_copy)) {
        free(long_copy);
        free(short_copy);
        return -1;
    }
    size_t index = self->model_count++;
    s_model_t *model = &self->models[index];
    model->long_name = long_copy;
    model->short_name = short_copy;
    model->long_len = (uint32_t)long_len;
    model->short_len = short_name ? (uint32_t)short_len : (uint32_t)long_len;
    model->long_hash = long_hash;
    model->short_hash = short_hash;
    if (short_copy)
        self->explicit_shorts++;
    hashtab_insert(&self->long_index, long_hash, (uint32_t)index + 1);
    if (!*short_stale &&
        s_short_lookup(self, s_model_short(model), model->short_len, short_hash) < 0)
        hashtab_insert(&self->short_index, short_hash, (uint32_t)index + 1);
    return 0;
}

static void s_free_models(provider_t *self, size_t from)
{
    for (size_t i = from; i < self->model_count; i++) {
        if (self->models[i].short_name)
            self->explicit_shorts--;
        free(self->models[i].long_name);
        free(self->models[i].short_name);
    }
    self->model_count = from;
}

static void s_free_names(s_name_t *names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(names[i].text);
    free(names);
}

static void s_free_strings(char **strings, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(strings[i]);
    free(strings);
}

/* Frees everything, whatever the refcount (the last reference is gone, or a clone failed). */
static void s_provider_free(provider_t *self)
{
    s_free_models(self, 0);
    free(self->models);
    hashtab_release(&self->long_index);
    hashtab_release(&self->short_index);
    s_free_names(self->invalid, self->invalid_count);
    hashtab_release(&self->invalid_index);
    s_free_strings(self->cached, self->cached_count);
    free(self->key);
    free(self->name);
    free(self->base_api_url);
    free(self->api_key);
    free(self->env_api_key);
    free(self);
}

bool provider_key_valid(const char *key, size_t len)
{
    if (!key || len == 0 || len > PROVIDER_MAX_KEY_LEN)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = key[i];
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* A NULL name or URL is taken as "" (the caller decides defaults, see provider_spec_apply). */
provider_t *provider_new(const char *key, const char *name, const char *base_api_url)
{
    if (!key || !provider_key_valid(key, strlen(key)))
        return NULL;
    provider_t *self = calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    atomic_init(&self->refs, 1);
    self->cache_duration = PROVIDER_DEFAULT_CACHE_DURATION;
    self->key = s_dup(key, strlen(key));
    self->name = s_dup(name ? name : "", name ? strlen(name) : 0);
    self->base_api_url =
        s_dup(base_api_url ? base_api_url : "", base_api_url ? strlen(base_api_url) : 0);
    if (!self->key || !self->name || !self->base_api_url) {
        s_provider_free(self);
        return NULL;
    }
    return self;
}

/* Deep copy; with_models false leaves valid_models empty (provider_clone_without_models:
 * a caller that replaces the whole map would throw the copy away at once). The copy has one
 * reference, the caller's. */
static provider_t *s_provider_clone(const provider_t *self, bool with_models)
{
    provider_t *copy = provider_new(self->key, self->name, self->base_api_url);
    if (!copy)
        return NULL;
    copy->pinned = self->pinned;
    copy->has_cache = self->has_cache;
    copy->cache_timestamp = self->cache_timestamp;
    copy->cache_duration = self->cache_duration;
    if (s_set_string(&copy->api_key, self->api_key) != 0 ||
        s_set_string(&copy->env_api_key, self->env_api_key) != 0)
        goto failed;

    if (with_models && self->model_count > 0) {
        copy->models = malloc(self->model_count * sizeof(*copy->models));
        if (!copy->models)
            goto failed;
        copy->model_capacity = self->model_count;
        for (size_t i = 0; i < self->model_count; i++) {
            const s_model_t *from = &self->models[i];
            s_model_t *to = &copy->models[i];
            *to = *from;
            to->long_name = s_dup(from->long_name, from->long_len);
            to->short_name = from->short_name ? s_dup(from->short_name, from->short_len) : NULL;
            if (!to->long_name || (from->short_name && !to->short_name)) {
                free(to->long_name);
                free(to->short_name);
                goto failed;
            }
            copy->model_count++;
            if (to->short_name)
                copy->explicit_shorts++;
        }
        /* Same array, same positions: the slot arrays are valid as they are. */
        if (hashtab_copy(&copy->long_index, &self->long_index) != 0 ||
            hashtab_copy(&copy->short_index, &self->short_index) != 0)
            goto failed;
    }

    if (self->invalid_count > 0) {
        copy->invalid = calloc(self->invalid_count, sizeof(*copy->invalid));
        if (!copy->invalid)
            goto failed;
        for (size_t i = 0; i < self->invalid_count; i++) {
            copy->invalid[i] = self->invalid[i];
            copy->invalid[i].text = s_dup(self->invalid[i].text, self->invalid[i].len);
            if (!copy->invalid[i].text)
                goto failed;
            copy->invalid_count++;
        }
        if (hashtab_copy(&copy->invalid_index, &self->invalid_index) != 0)
            goto failed;
    }

    if (self->cached_count > 0) {
        copy->cached = calloc(self->cached_count, sizeof(*copy->cached));
        if (!copy->cached)
            goto failed;
        for (size_t i = 0; i < self->cached_count; i++) {
            copy->cached[i] = s_dup(self->cached[i], strlen(self->cached[i]));
            if (!copy->cached[i])
                goto failed;
            copy->cached_count++;
        }
    }
    return copy;

failed:
    s_provider_free(copy);
    return NULL;
}

provider_t *provider_clone(const provider_t *self)
{
    assert(self);
    return s_provider_clone(self, true);
}

provider_t *provider_clone_without_models(const provider_t *self)
{
    assert(self);
    return s_provider_clone(self, false);
}

provider_t *provider_ref(provider_t *self)
{
    assert(self);
    atomic_fetch_add_explicit(&self->refs, 1, memory_order_relaxed);
    return self;
}

void provider_destroy(provider_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    provider_t *self = *self_p;
    *self_p = NULL;
    /* acq_rel: the thread that frees must see every write made by the other holders. */
    if (atomic_fetch_sub_explicit(&self->refs, 1, memory_order_acq_rel) == 1)
        s_provider_free(self);
}

bool provider_shared(const provider_t *self)
{
    return atomic_load_explicit(&((provider_t *)self)->refs, memory_order_acquire) > 1;
}

/* The seed's get_short_name is the identity; kept as a function so that a later rule (say,
 * stripping a date suffix) changes one place. */
const char *provider_get_short_name(const char *long_name)
{
    return long_name;
}

const char *provider_key(const provider_t *self)
{
    return self->key;
}

const char *provider_name(const provider_t *self)
{
    return self->name;
}

const char *provider_base_api_url(const provider_t *self)
{
    return self->base_api_url;
}

const char *provider_api_key(const provider_t *self)
{
    return self->env_api_key ? self->env_api_key : self->api_key;
}

const char *provider_stored_api_key(const provider_t *self)
{
    return self->api_key;
}

bool provider_api_key_from_env(const provider_t *self)
{
    return self->env_api_key != NULL;
}

/* NULL is taken as "" (a provider always has a name and a URL string). */
int provider_set_name(provider_t *self, const char *name)
{
    s_assert_mutable(self);
    return s_set_string(&self->name, name ? name : "");
}

int provider_set_base_api_url(provider_t *self, const char *url)
{
    s_assert_mutable(self);
    return s_set_string(&self->base_api_url, url ? url : "");
}

int provider_set_api_key(provider_t *self, const char *api_key)
{
    s_assert_mutable(self);
    return s_set_string(&self->api_key, api_key);
}

int provider_set_env_api_key(provider_t *self, const char *api_key)
{
    s_assert_mutable(self);
    return s_set_string(&self->env_api_key, api_key);
}

bool provider_pinned(const provider_t *self)
{
    return self->pinned;
}

void provider_set_pinned(provider_t *self, bool pinned)
{
    s_assert_mutable(self);
    self->pinned = pinned;
}

size_t provider_model_count(const provider_t *self)
{
    return self->model_count;
}

const char *provider_model_long(const provider_t *self, size_t index)
{
    assert(index < self->model_count);
    return self->models[index].long_name;
}

/* Never NULL: a short name stored as "same as long" returns the long name. */
const char *provider_model_short(const provider_t *self, size_t index)
{
    assert(index < self->model_count);
    return s_model_short(&self->models[index]);
}

long provider_model_index(const provider_t *self, const char *name, size_t len)
{
    if (!name)
        return -1;
    return s_long_lookup(self, name, len, hashtab_hash(name, len));
}

int provider_put_model(provider_t *self, const char *long_name, const char *short_name)
{
    s_assert_mutable(self);
    if (!long_name)
        return -1;
    bool short_stale = false;
    int rc = s_put_model(self, long_name, strlen(long_name), short_name,
                         short_name ? strlen(short_name) : 0, &short_stale);
    if (short_stale)
        s_rebuild_short_index(self);
    return rc;
}

/* Rebuilds the short index once at the end, also after a failure, so that the provider stays
 * consistent with the models that were put. */
int provider_put_models(provider_t *self, const char *const *long_names,
                        const char *const *short_names, size_t count)
{
    s_assert_mutable(self);
    if (count > 0 && !long_names)
        return -1;
    bool short_stale = false;
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        const char *long_name = long_names[i];
        const char *short_name = short_names ? short_names[i] : NULL;
        if (!long_name || s_put_model(self, long_name, strlen(long_name), short_name,
                                      short_name ? strlen(short_name) : 0, &short_stale) != 0)
            rc = -1;
    }
    if (short_stale)
        s_rebuild_short_index(self);
    return rc;
}

/* Keeps the allocated capacity: a replace is usually followed by as many models again. */
void provider_clear_models(provider_t *self)
{
    s_assert_mutable(self);
    s_free_models(self, 0);
    hashtab_clear(&self->long_index);
    hashtab_clear(&self->short_index);
}

/* All or nothing: on failure the models appended so far are dropped again. */
int provider_merge_valid_models(provider_t *self, const char *const *names, size_t count)
{
    s_assert_mutable(self);
    size_t before = self->model_count;
    bool short_stale = false; /* appends never make it stale */
    for (size_t i = 0; i < count; i++) {
        if (!names[i])
            goto failed;
        size_t len = strlen(names[i]);
        if (s_long_lookup(self, names[i], len, hashtab_hash(names[i], len)) >= 0)
            continue; /* existing entries keep their short names */
        const char *short_name = provider_get_short_name(names[i]);
        if (s_put_model(self, names[i], len, short_name, strlen(short_name), &short_stale) != 0)
            goto failed;
    }
    return 0;

failed:
    s_free_models(self, before);
    s_rebuild_long_index(self);
    s_rebuild_short_index(self);
    return -1;
}

/* Returns the long name, borrowed from self. */
const char *provider_find_model(const provider_t *self, const char *name, size_t len)
{
    if (!name)
        return NULL;
    uint32_t hash = hashtab_hash(name, len);
    long index = s_long_lookup(self, name, len, hash);
    if (index < 0)
        index = s_short_lookup(self, name, len, hash);
    return index >= 0 ? self->models[index].long_name : NULL;
}

long provider_first_hit(const provider_t *self, const char *name, size_t len)
{
    if (!name)
        return -1;
    uint32_t hash = hashtab_hash(name, len);
    long by_long = s_long_lookup(self, name, len, hash);
    long by_short = s_short_lookup(self, name, len, hash);
    if (by_long < 0)
        return by_short;
    if (by_short < 0)
        return by_long;
    return by_long < by_short ? by_long : by_short;
}

void provider_model_entry(const provider_t *self, size_t index, provider_model_entry_t *out)
{
    assert(index < self->model_count && out);
    const s_model_t *model = &self->models[index];
    out->long_name = model->long_name;
    out->long_len = model->long_len;
    out->long_hash = model->long_hash;
    out->short_name = model->short_name;
    out->short_len = model->short_len;
    out->short_hash = model->short_hash;
}

size_t provider_explicit_short_count(const provider_t *self)
{
    return self->explicit_shorts;
}

size_t provider_invalid_count(const provider_t *self)
{
    return self->invalid_count;
}

const char *provider_invalid_at(const provider_t *self, size_t index)
{
    assert(index < self->invalid_count);
    return self->invalid[index].text;
}

bool provider_is_invalid(const provider_t *self, const char *name, size_t len)
{
    if (!name)
        return false;
    return hashtab_find(&self->invalid_index, hashtab_hash(name, len), s_match_name, self->invalid,
                        name, len) != NULL;
}

/* Builds the new list and its set aside, then swaps them in: all or nothing. */
int provider_set_invalid_models(provider_t *self, const char *const *names, size_t count)
{
    s_assert_mutable(self);
    if (count > PROVIDER_MAX_MODELS)
        return -1;
    s_name_t *list = NULL;
    size_t used = 0;
    hashtab_t index = {0};
    if (count > 0) {
        list = calloc(count, sizeof(*list));
        if (!list || hashtab_reserve(&index, count) != 0)
            goto failed;
    }
    for (size_t i = 0; i < count; i++) {
        if (!names[i])
            goto failed;
        size_t len = strlen(names[i]);
        if (len > S_MAX_STRING_LEN)
            goto failed;
        uint32_t hash = hashtab_hash(names[i], len);
        if (hashtab_find(&index, hash, s_match_name, list, names[i], len))
            continue; /* duplicate: the first one is kept */
        list[used].text = s_dup(names[i], len);
        if (!list[used].text)
            goto failed;
        list[used].len = (uint32_t)len;
        list[used].hash = hash;
        used++;
        hashtab_insert(&index, hash, (uint32_t)used);
    }
    s_free_names(self->invalid, self->invalid_count);
    hashtab_release(&self->invalid_index);
    self->invalid = list;
    self->invalid_count = used;
    self->invalid_index = index;
    return 0;

failed:
    s_free_names(list, used);
    hashtab_release(&index);
    return -1;
}

size_t provider_cached_count(const provider_t *self)
{
    return self->cached_count;
}

const char *provider_cached_at(const provider_t *self, size_t index)
{
    assert(index < self->cached_count);
    return self->cached[index];
}

double provider_cache_timestamp(const provider_t *self)
{
    return self->has_cache ? self->cache_timestamp : 0.0;
}

double provider_cache_duration(const provider_t *self)
{
    return self->cache_duration;
}

void provider_set_cache_duration(provider_t *self, double seconds)
{
    s_assert_mutable(self);
    self->cache_duration = seconds;
}

/* An empty list is still a cached list (the server listed nothing). All or nothing. */
int provider_set_cached_models(provider_t *self, const char *const *names, size_t count,
                               double timestamp)
{
    s_assert_mutable(self);
    if (count > PROVIDER_MAX_MODELS)
        return -1;
    char **list = NULL;
    size_t used = 0;
    if (count > 0) {
        list = calloc(count, sizeof(*list));
        if (!list)
            return -1;
    }
    for (; used < count; used++) {
        if (!names[used])
            goto failed;
        list[used] = s_dup(names[used], strlen(names[used]));
        if (!list[used])
            goto failed;
    }
    s_free_strings(self->cached, self->cached_count);
    self->cached = list;
    self->cached_count = count;
    self->has_cache = true;
    self->cache_timestamp = timestamp;
    return 0;

failed:
    s_free_strings(list, used);
    return -1;
}

bool provider_cache_fresh(const provider_t *self, double now)
{
    return self->has_cache && now < self->cache_timestamp + self->cache_duration;
}
