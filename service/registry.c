/*
 * registry: the in-memory provider registry (the seed's ProviderConfig and ProviderManager).
 *
 * Pure C11: no I/O, no globals, no printing. See registry.h for the sharing model (immutable
 * sealed registries shared by readers, copy-on-write providers with an atomic refcount).
 *
 * Layout, and why:
 *   - valid_models is an array in insertion order (the wire and the YAML file keep that order)
 *     plus two hash indexes over it: long name -> index, and short name -> index of the FIRST
 *     model having that short name. Both are needed for the seed's rules in O(1): find_model
 *     prefers a long-name match, merged_models' first hit takes whichever comes first.
 *     A short name equal to the long name (what discovery produces for every model) is stored
 *     as NULL, so 100,000 discovered models cost one string each, not two.
 *   - invalid_models is an ordered array plus a hash set (discovery skips those by name).
 *   - A sealed registry adds one global index over every (provider, model) pair: name -> the
 *     first pair, in merged_models order, whose long or short name it is. Resolution then costs
 *     two hash lookups whatever the number of providers and models.
 *
 * Hash tables are open addressing with linear probing, power-of-two capacity, load <= 0.5.
 * A slot holds the 32-bit hash (cheap rejection, and rehashing without the strings) and a
 * value (an array index + 1; 0 marks an empty slot). Entries are never deleted one by one:
 * a table whose array shifted or whose first-holder changed is rebuilt, which is O(n) like
 * the change that caused it.
 */
#include "registry.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define S_TABLE_MIN_CAPACITY 16u
#define S_ARRAY_MIN_CAPACITY 8u
/* Stored string lengths are 32-bit (they keep a model entry at 32 bytes). */
#define S_MAX_STRING_LEN UINT32_MAX

/* ------------------------------------------------------------------------------- strings */

static bool s_eq(const char *a, size_t a_len, const char *b, size_t b_len)
{
    return a_len == b_len && (a_len == 0 || memcmp(a, b, a_len) == 0);
}

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

/* FNV-1a over the bytes, then MurmurHash3's 64-bit finaliser: FNV-1a alone leaves the low
 * bits (the ones a power-of-two mask keeps) poorly mixed for short, similar keys such as
 * "model-000123". The result is folded to the 32 bits a slot stores. */
static uint32_t s_hash(const char *s, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325); /* FNV-1a 64-bit offset basis */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= UINT64_C(0x100000001b3); /* FNV-1a 64-bit prime */
    }
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= UINT64_C(0xc4ceb53a185ebe1a);
    h ^= h >> 33;
    return (uint32_t)(h ^ (h >> 32));
}

/* --------------------------------------------------------------------------- hash tables */

typedef struct {
    uint32_t hash;
    uint32_t value; /* array index + 1; 0 = empty */
} s_slot_t;

typedef struct {
    s_slot_t *slots;
    size_t capacity; /* 0 or a power of two */
    size_t used;
} s_table_t;

/* Does the entry `value` of the structure ctx hold the name (name, len)? */
typedef bool(s_match_fn)(const void *ctx, uint32_t value, const char *name, size_t len);

static s_slot_t *s_table_find(const s_table_t *table, uint32_t hash, s_match_fn *match,
                              const void *ctx, const char *name, size_t len)
{
    if (table->capacity == 0)
        return NULL;
    size_t mask = table->capacity - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        s_slot_t *slot = &table->slots[i];
        if (slot->value == 0)
            return NULL;
        if (slot->hash == hash && match(ctx, slot->value, name, len))
            return slot;
    }
}

/* Inserts an entry known to be absent. The caller has reserved room (load stays <= 0.5, so
 * an empty slot always exists). */
static void s_table_insert(s_table_t *table, uint32_t hash, uint32_t value)
{
    assert(table->capacity > 0 && (table->used + 1) * 2 <= table->capacity);
    size_t mask = table->capacity - 1;
    size_t i = hash & mask;
    while (table->slots[i].value != 0)
        i = (i + 1) & mask;
    table->slots[i].hash = hash;
    table->slots[i].value = value;
    table->used++;
}

/* Makes room for `entries` entries at load <= 0.5, rehashing from the stored hashes.
 * 0, or -1 on allocation failure (the table is then unchanged). */
static int s_table_reserve(s_table_t *table, size_t entries)
{
    if (entries <= table->capacity / 2)
        return 0;
    size_t capacity = S_TABLE_MIN_CAPACITY;
    while (capacity / 2 < entries)
        capacity *= 2;
    s_slot_t *slots = calloc(capacity, sizeof(*slots));
    if (!slots)
        return -1;
    for (size_t i = 0; i < table->capacity; i++) {
        const s_slot_t *old = &table->slots[i];
        if (old->value == 0)
            continue;
        size_t j = old->hash & (capacity - 1);
        while (slots[j].value != 0)
            j = (j + 1) & (capacity - 1);
        slots[j] = *old;
    }
    free(table->slots);
    table->slots = slots;
    table->capacity = capacity;
    return 0;
}

static void s_table_clear(s_table_t *table)
{
    if (table->capacity > 0)
        memset(table->slots, 0, table->capacity * sizeof(*table->slots));
    table->used = 0;
}

static void s_table_free(s_table_t *table)
{
    free(table->slots);
    table->slots = NULL;
    table->capacity = 0;
    table->used = 0;
}

/* A copy with the same capacity and slot positions (indexes stay valid for a copied array). */
static int s_table_copy(s_table_t *dest, const s_table_t *src)
{
    dest->slots = NULL;
    dest->capacity = 0;
    dest->used = 0;
    if (src->capacity == 0)
        return 0;
    dest->slots = malloc(src->capacity * sizeof(*src->slots));
    if (!dest->slots)
        return -1;
    memcpy(dest->slots, src->slots, src->capacity * sizeof(*src->slots));
    dest->capacity = src->capacity;
    dest->used = src->used;
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
    size_t key_len;
    char *name;
    char *base_api_url;
    char *api_key;     /* stored (persisted) key, NULL when none */
    char *env_api_key; /* from the environment, NULL when none; never persisted */
    bool pinned;

    s_model_t *models; /* valid_models in insertion order */
    size_t model_count;
    size_t model_capacity;
    size_t explicit_shorts; /* models whose short name differs from the long name */
    s_table_t long_index;   /* long name -> index + 1 */
    s_table_t short_index;  /* short name -> index + 1 of the first model having it */

    s_name_t *invalid; /* invalid_models in order, no duplicates */
    size_t invalid_count;
    s_table_t invalid_index;

    char **cached; /* runtime-only discovery cache */
    size_t cached_count;
    bool has_cache;
    double cache_timestamp;
    double cache_duration;
};

/* Mutators are for an exclusively owned provider only (see registry.h). */
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
    return s_eq(model->long_name, model->long_len, name, len);
}

static bool s_match_short(const void *ctx, uint32_t value, const char *name, size_t len)
{
    const s_model_t *model = &((const provider_t *)ctx)->models[value - 1];
    return s_eq(s_model_short(model), model->short_len, name, len);
}

/* ctx is the s_name_t array the table indexes. */
static bool s_match_name(const void *ctx, uint32_t value, const char *name, size_t len)
{
    const s_name_t *entry = &((const s_name_t *)ctx)[value - 1];
    return s_eq(entry->text, entry->len, name, len);
}

static long s_long_lookup(const provider_t *self, const char *name, size_t len, uint32_t hash)
{
    const s_slot_t *slot = s_table_find(&self->long_index, hash, s_match_long, self, name, len);
    return slot ? (long)slot->value - 1 : -1;
}

static long s_short_lookup(const provider_t *self, const char *name, size_t len, uint32_t hash)
{
    const s_slot_t *slot = s_table_find(&self->short_index, hash, s_match_short, self, name, len);
    return slot ? (long)slot->value - 1 : -1;
}

/* Rebuilds the short index from the model array: each short name maps to the first model
 * holding it. Cannot fail: the table already has room for model_count entries. */
static void s_rebuild_short_index(provider_t *self)
{
    s_table_clear(&self->short_index);
    for (size_t i = 0; i < self->model_count; i++) {
        const s_model_t *model = &self->models[i];
        if (s_short_lookup(self, s_model_short(model), model->short_len, model->short_hash) < 0)
            s_table_insert(&self->short_index, model->short_hash, (uint32_t)i + 1);
    }
}

static void s_rebuild_long_index(provider_t *self)
{
    s_table_clear(&self->long_index);
    for (size_t i = 0; i < self->model_count; i++)
        s_table_insert(&self->long_index, self->models[i].long_hash, (uint32_t)i + 1);
}

/* Room for `extra` more models in the array and both indexes. 0, or -1 when the provider
 * would exceed REGISTRY_MAX_MODELS or on allocation failure (nothing visible changes). */
static int s_reserve_models(provider_t *self, size_t extra)
{
    if (extra > REGISTRY_MAX_MODELS || self->model_count > REGISTRY_MAX_MODELS - extra)
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
    if (s_table_reserve(&self->long_index, want) != 0)
        return -1;
    /* Distinct short names never outnumber the models, so this bound holds for every later
     * insertion or rebuild. */
    if (s_table_reserve(&self->short_index, want) != 0)
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
    if (s_eq(s_model_short(model), model->short_len, new_short, new_len))
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
            s_slot_t *slot = s_table_find(&self->short_index, short_hash, s_match_short, self,
                                          new_short, new_len);
            if (!slot)
                s_table_insert(&self->short_index, short_hash, (uint32_t)index + 1);
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
    uint32_t long_hash = s_hash(long_name, long_len);
    if (short_name && s_eq(long_name, long_len, short_name, short_len))
        short_name = NULL;
    uint32_t short_hash = short_name ? s_hash(short_name, short_len) : long_hash;

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
    s_table_insert(&self->long_index, long_hash, (uint32_t)index + 1);
    if (!*short_stale &&
        s_short_lookup(self, s_model_short(model), model->short_len, short_hash) < 0)
        s_table_insert(&self->short_index, short_hash, (uint32_t)index + 1);
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
    s_table_free(&self->long_index);
    s_table_free(&self->short_index);
    s_free_names(self->invalid, self->invalid_count);
    s_table_free(&self->invalid_index);
    s_free_strings(self->cached, self->cached_count);
    free(self->key);
    free(self->name);
    free(self->base_api_url);
    free(self->api_key);
    free(self->env_api_key);
    free(self);
}

bool registry_key_valid(const char *key, size_t len)
{
    if (!key || len == 0 || len > REGISTRY_MAX_KEY_LEN)
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

/* A NULL name or URL is taken as "" (the caller decides defaults, see apply_spec). */
provider_t *provider_new(const char *key, const char *name, const char *base_api_url)
{
    if (!key || !registry_key_valid(key, strlen(key)))
        return NULL;
    provider_t *self = calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    atomic_init(&self->refs, 1);
    self->cache_duration = REGISTRY_DEFAULT_CACHE_DURATION;
    self->key_len = strlen(key);
    self->key = s_dup(key, self->key_len);
    self->name = s_dup(name ? name : "", name ? strlen(name) : 0);
    self->base_api_url =
        s_dup(base_api_url ? base_api_url : "", base_api_url ? strlen(base_api_url) : 0);
    if (!self->key || !self->name || !self->base_api_url) {
        s_provider_free(self);
        return NULL;
    }
    return self;
}

/* Deep copy; with_models false leaves valid_models empty (apply_spec's replace mode would
 * throw the copy away at once). The copy has one reference, the caller's. */
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
        if (s_table_copy(&copy->long_index, &self->long_index) != 0 ||
            s_table_copy(&copy->short_index, &self->short_index) != 0)
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
        if (s_table_copy(&copy->invalid_index, &self->invalid_index) != 0)
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
    return s_long_lookup(self, name, len, s_hash(name, len));
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

/* Keeps the allocated capacity: a replace is usually followed by as many models again. */
void provider_clear_models(provider_t *self)
{
    s_assert_mutable(self);
    s_free_models(self, 0);
    s_table_clear(&self->long_index);
    s_table_clear(&self->short_index);
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
        if (s_long_lookup(self, names[i], len, s_hash(names[i], len)) >= 0)
            continue; /* existing entries keep their short names */
        const char *short_name = registry_get_short_name(names[i]);
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
    uint32_t hash = s_hash(name, len);
    long index = s_long_lookup(self, name, len, hash);
    if (index < 0)
        index = s_short_lookup(self, name, len, hash);
    return index >= 0 ? self->models[index].long_name : NULL;
}

long provider_first_hit(const provider_t *self, const char *name, size_t len)
{
    if (!name)
        return -1;
    uint32_t hash = s_hash(name, len);
    long by_long = s_long_lookup(self, name, len, hash);
    long by_short = s_short_lookup(self, name, len, hash);
    if (by_long < 0)
        return by_short;
    if (by_short < 0)
        return by_long;
    return by_long < by_short ? by_long : by_short;
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
    return s_table_find(&self->invalid_index, s_hash(name, len), s_match_name, self->invalid, name,
                        len) != NULL;
}

/* Builds the new list and its set aside, then swaps them in: all or nothing. */
int provider_set_invalid_models(provider_t *self, const char *const *names, size_t count)
{
    s_assert_mutable(self);
    if (count > REGISTRY_MAX_MODELS)
        return -1;
    s_name_t *list = NULL;
    size_t used = 0;
    s_table_t index = {0};
    if (count > 0) {
        list = calloc(count, sizeof(*list));
        if (!list || s_table_reserve(&index, count) != 0)
            goto failed;
    }
    for (size_t i = 0; i < count; i++) {
        if (!names[i])
            goto failed;
        size_t len = strlen(names[i]);
        if (len > S_MAX_STRING_LEN)
            goto failed;
        uint32_t hash = s_hash(names[i], len);
        if (s_table_find(&index, hash, s_match_name, list, names[i], len))
            continue; /* duplicate: the first one is kept */
        list[used].text = s_dup(names[i], len);
        if (!list[used].text)
            goto failed;
        list[used].len = (uint32_t)len;
        list[used].hash = hash;
        used++;
        s_table_insert(&index, hash, (uint32_t)used);
    }
    s_free_names(self->invalid, self->invalid_count);
    s_table_free(&self->invalid_index);
    self->invalid = list;
    self->invalid_count = used;
    self->invalid_index = index;
    return 0;

failed:
    s_free_names(list, used);
    s_table_free(&index);
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
    if (count > REGISTRY_MAX_MODELS)
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

/* -------------------------------------------------------------------------- registry_t */

struct registry_t {
    atomic_size_t refs;
    bool sealed;
    provider_t **providers; /* in registry order; one reference each */
    size_t count;
    size_t capacity;
    s_table_t key_index; /* key -> index + 1 */
    size_t model_total;  /* running total of (provider, model) pairs */
    bool total_stale;    /* registry_edit() handed out a provider that may change its count */
    /* Sealed only: global first-hit index. A value v encodes pair = (v - 1) / 2, the pair's
     * position in merged_models order, and (v - 1) % 2 = 1 when the name is the pair's short
     * name. offsets[p] is the position of provider p's first pair (count + 1 entries). */
    s_table_t global_index;
    size_t *offsets;
};

static bool s_match_key(const void *ctx, uint32_t value, const char *name, size_t len)
{
    const provider_t *provider = ((const registry_t *)ctx)->providers[value - 1];
    return s_eq(provider->key, provider->key_len, name, len);
}

static long s_registry_find(const registry_t *self, const char *key, size_t len)
{
    if (!key)
        return -1;
    const s_slot_t *slot =
        s_table_find(&self->key_index, s_hash(key, len), s_match_key, self, key, len);
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
    const s_model_t *model = &self->providers[p]->models[pair - self->offsets[p]];
    if (is_short)
        return s_eq(s_model_short(model), model->short_len, name, len);
    return s_eq(model->long_name, model->long_len, name, len);
}

static size_t s_sum_models(const registry_t *self)
{
    size_t total = 0;
    for (size_t i = 0; i < self->count; i++)
        total += self->providers[i]->model_count;
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
    s_table_clear(&self->key_index);
    for (size_t i = 0; i < self->count; i++) {
        const provider_t *provider = self->providers[i];
        s_table_insert(&self->key_index, s_hash(provider->key, provider->key_len), (uint32_t)i + 1);
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
    return s_table_reserve(&self->key_index, self->count + 1);
}

/* Appends; takes over the caller's reference. Room was reserved. */
static void s_registry_append(registry_t *self, provider_t *provider)
{
    self->providers[self->count] = provider;
    self->count++;
    s_table_insert(&self->key_index, s_hash(provider->key, provider->key_len),
                   (uint32_t)self->count);
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
        if (!copy->providers || s_table_copy(&copy->key_index, &self->key_index) != 0) {
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
    s_table_free(&self->key_index);
    s_table_free(&self->global_index);
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
    s_table_t index = {0};
    if (!offsets)
        return -1;
    size_t pair = 0, names = 0;
    for (size_t p = 0; p < self->count; p++) {
        offsets[p] = pair;
        pair += self->providers[p]->model_count;
        names += self->providers[p]->model_count + self->providers[p]->explicit_shorts;
    }
    offsets[self->count] = pair;
    if (s_table_reserve(&index, names) != 0) {
        free(offsets);
        return -1;
    }

    /* s_match_global decodes through self->offsets, so install them before inserting. */
    free(self->offsets);
    self->offsets = offsets;
    for (size_t p = 0; p < self->count; p++) {
        const provider_t *provider = self->providers[p];
        for (size_t m = 0; m < provider->model_count; m++) {
            const s_model_t *model = &provider->models[m];
            uint32_t base = (uint32_t)(2 * (offsets[p] + m)) + 1;
            /* Only the first holder of a name, in merged_models order, gets its slot. */
            if (!s_table_find(&index, model->long_hash, s_match_global, self, model->long_name,
                              model->long_len))
                s_table_insert(&index, model->long_hash, base);
            if (model->short_name && !s_table_find(&index, model->short_hash, s_match_global, self,
                                                   model->short_name, model->short_len))
                s_table_insert(&index, model->short_hash, base + 1);
        }
    }
    s_table_free(&self->global_index);
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
    s_refresh_total(self);
    long index = s_registry_find(self, provider->key, provider->key_len);
    if (index >= 0) {
        provider_t *old = self->providers[index];
        size_t total = self->model_total - old->model_count;
        if (provider->model_count > REGISTRY_MAX_MODELS - total)
            return -1;
        self->model_total = total + provider->model_count;
        self->providers[index] = provider;
        *provider_p = NULL;
        /* Putting the provider already there: the caller's reference is the extra one. */
        provider_destroy(&old);
        return 0;
    }
    if (provider->model_count > REGISTRY_MAX_MODELS - self->model_total)
        return -1;
    if (s_registry_reserve_one(self) != 0)
        return -1;
    s_registry_append(self, provider);
    self->model_total += provider->model_count;
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
    self->model_total -= old->model_count;
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
    if (atomic_load_explicit(&provider->refs, memory_order_acquire) > 1) {
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

const char *registry_get_short_name(const char *long_name)
{
    return long_name;
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
        const s_slot_t *slot =
            s_table_find(&self->global_index, s_hash(name, len), s_match_global, self, name, len);
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
        *long_name_out = provider->models[model].long_name;
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
                out->prefix = provider->key;
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

/* ------------------------------------------------------------------------------ layering */

void provider_spec_clear(provider_spec_t *spec)
{
    if (!spec)
        return;
    free(spec->key);
    free(spec->name);
    free(spec->base_api_url);
    free(spec->api_key);
    for (size_t i = 0; i < spec->model_count; i++) {
        if (spec->model_long)
            free(spec->model_long[i]);
        if (spec->model_short)
            free(spec->model_short[i]);
    }
    free(spec->model_long);
    free(spec->model_short);
    s_free_strings(spec->invalid_models, spec->invalid_models ? spec->invalid_count : 0);
    memset(spec, 0, sizeof(*spec));
}

/* Builds the changed provider aside (a clone of the current one, or a new one), then swaps it
 * in, so that any failure leaves the registry exactly as it was. spec stays the caller's. */
int registry_apply_spec(registry_t *self, const provider_spec_t *spec, registry_models_mode_t mode,
                        bool pinned)
{
    assert(self && !self->sealed);
    if (!spec || !spec->key || !registry_key_valid(spec->key, strlen(spec->key)))
        return -1;
    if (spec->has_valid_models && spec->model_count > 0 && !spec->model_long)
        return -1;
    if (spec->has_invalid_models && spec->invalid_count > 0 && !spec->invalid_models)
        return -1;
    s_refresh_total(self);
    long index = s_registry_find(self, spec->key, strlen(spec->key));
    const provider_t *old = index >= 0 ? self->providers[index] : NULL;
    bool replace_models = spec->has_valid_models && mode == REGISTRY_REPLACE_MODELS;

    provider_t *updated;
    if (old) {
        updated = s_provider_clone(old, !replace_models);
        if (!updated)
            return -1;
        if ((spec->name && provider_set_name(updated, spec->name) != 0) ||
            (spec->base_api_url && provider_set_base_api_url(updated, spec->base_api_url) != 0))
            goto failed;
    } else {
        if (self->count >= REGISTRY_MAX_PROVIDERS)
            return -1;
        updated = provider_new(spec->key, spec->name ? spec->name : spec->key,
                               spec->base_api_url ? spec->base_api_url : "");
        if (!updated)
            return -1;
    }
    if (spec->has_api_key && provider_set_api_key(updated, spec->api_key) != 0)
        goto failed;
    if (spec->has_valid_models) {
        bool short_stale = false;
        for (size_t i = 0; i < spec->model_count; i++) {
            const char *long_name = spec->model_long[i];
            const char *short_name = spec->model_short ? spec->model_short[i] : NULL;
            if (!long_name || s_put_model(updated, long_name, strlen(long_name), short_name,
                                          short_name ? strlen(short_name) : 0, &short_stale) != 0)
                goto failed;
        }
        if (short_stale)
            s_rebuild_short_index(updated);
    }
    if (spec->has_invalid_models &&
        provider_set_invalid_models(updated, (const char *const *)spec->invalid_models,
                                    spec->invalid_count) != 0)
        goto failed;
    if (pinned)
        updated->pinned = true;

    size_t total = self->model_total - (old ? old->model_count : 0);
    if (updated->model_count > REGISTRY_MAX_MODELS - total)
        goto failed;
    if (old) {
        provider_t *previous = self->providers[index];
        self->providers[index] = updated;
        provider_destroy(&previous);
    } else {
        if (s_registry_reserve_one(self) != 0)
            goto failed;
        s_registry_append(self, updated);
    }
    self->model_total = total + updated->model_count;
    return 0;

failed:
    provider_destroy(&updated);
    return -1;
}
