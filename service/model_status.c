/*
 * model_status: the model status table (see model_status.h for the contract).
 *
 * Layout: providers in an insertion-ordered array with a chained hash by key; per provider,
 * records in an insertion-ordered array (NULL holes after removals, compacted when they
 * outnumber the live ones) with a chained hash by long name. Both lookups are O(1) expected.
 */
#include "model_status.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------ types */

typedef struct s_rec {
    status_record_t pub;
    struct s_rec *next; /* hash chain */
    uint64_t hash;
    size_t order;           /* index in the provider's records array */
    bool dirty;             /* queued in the dirty list */
    bool prune_pending;     /* planned for removal by the prune policy */
    unsigned long list_gen; /* last list that held it (duplicate names in one list) */
} s_rec_t;

typedef struct s_prov {
    char *key;
    status_provider_t pub;
    struct s_prov *next;
    uint64_t hash;
    size_t order;
    bool dirty;
    s_rec_t **records; /* insertion order; NULL holes */
    size_t records_len, records_cap, records_live;
    s_rec_t **buckets;
    size_t bucket_count;
    char **list_names; /* the last successful list, distinct names in order */
    size_t list_count;
    unsigned long list_gen;
    bool list_stale; /* restored records: list_names to rebuild from list_index */
    status_change_t *changes;
    size_t changes_len, changes_cap;
    size_t ignore_index; /* index in settings.provider_ignore, or SIZE_MAX */
} s_prov_t;

typedef struct {
    char *provider;
    char *model; /* NULL: the provider status */
} s_dirty_t;

typedef struct {
    char *provider;
    char **patterns;
    size_t count;
} s_ignore_t;

typedef struct {
    long long fail_threshold;
    long long gone_threshold;
    status_prune_t prune;
    char **ignore;
    size_t ignore_count;
    s_ignore_t *provider_ignore;
    size_t provider_ignore_count;
} s_settings_t;

struct model_status_t {
    s_settings_t settings;
    s_prov_t **providers; /* insertion order; NULL holes */
    size_t providers_len, providers_cap, providers_live;
    s_prov_t **buckets;
    size_t bucket_count;
    uint64_t version;
    size_t counts[STATUS_STATE_COUNT];
    size_t record_count;
    s_dirty_t *dirty;
    size_t dirty_len, dirty_cap;
    char **removed_providers;
    size_t removed_len, removed_cap;
};

/* ------------------------------------------------------------------------------ names */

static const char *const s_state_names[STATUS_STATE_COUNT] = {
    NULL, "valid", "invalid", "failing", "gone", "unverified", "ignored"};

const char *status_state_name(status_state_t state)
{
    if ((unsigned)state >= STATUS_STATE_COUNT)
        return NULL;
    return s_state_names[state];
}

int status_state_from_name(const char *name, size_t len, status_state_t *out)
{
    if (!name)
        return -1;
    for (unsigned i = 1; i < STATUS_STATE_COUNT; i++) {
        if (strlen(s_state_names[i]) == len && memcmp(s_state_names[i], name, len) == 0) {
            if (out)
                *out = (status_state_t)i;
            return 0;
        }
    }
    return -1;
}

const char *status_provider_state_name(status_provider_state_t state)
{
    static const char *const names[STATUS_PROVIDER_STATE_COUNT] = {
        "unknown", "ok", "no_key", "auth_failed", "unreachable", "error"};
    if ((unsigned)state >= STATUS_PROVIDER_STATE_COUNT)
        return "unknown";
    return names[state];
}

const char *status_error_class_name(status_error_class_t error_class)
{
    static const char *const names[STATUS_ERROR_CLASS_COUNT] = {NULL, "model", "auth", "transient",
                                                                "error"};
    if ((unsigned)error_class >= STATUS_ERROR_CLASS_COUNT)
        return NULL;
    return names[error_class];
}

/* ------------------------------------------------------------------------------ helpers */

static char *s_strdup(const char *s)
{
    if (!s)
        return NULL;
    size_t len = strlen(s);
    char *copy = malloc(len + 1);
    if (copy)
        memcpy(copy, s, len + 1);
    return copy;
}

/* A copy of at most STATUS_MAX_MESSAGE_LEN bytes, cut on a UTF-8 boundary so that the wire
 * never carries half a character. */
static char *s_message_dup(const char *s)
{
    if (!s)
        s = "";
    size_t len = strlen(s);
    if (len > STATUS_MAX_MESSAGE_LEN) {
        len = STATUS_MAX_MESSAGE_LEN;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return NULL;
    memcpy(copy, s, len);
    copy[len] = '\0';
    return copy;
}

/* FNV-1a: short keys, no adversary able to choose many colliding names cheaply enough to
 * matter here (names come from the operator and the providers the operator configured). */
static uint64_t s_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    return h;
}

static int s_grow(void **array, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t new_cap = *cap ? *cap : 8;
    while (new_cap < need) {
        if (new_cap > SIZE_MAX / 2 / size)
            return -1;
        new_cap *= 2;
    }
    void *grown = realloc(*array, new_cap * size);
    if (!grown)
        return -1;
    *array = grown;
    *cap = new_cap;
    return 0;
}

void status_error_clear(status_error_t *e)
{
    if (!e)
        return;
    free(e->message);
    memset(e, 0, sizeof *e);
}

void status_record_clear(status_record_t *rec)
{
    if (!rec)
        return;
    free(rec->model);
    free(rec->short_name);
    status_error_clear(&rec->last_error);
    model_meta_clear(&rec->meta);
    memset(rec, 0, sizeof *rec);
}

void status_provider_clear(status_provider_t *ps)
{
    if (!ps)
        return;
    status_error_clear(&ps->last_error);
    memset(ps, 0, sizeof *ps);
}

static int s_error_set(status_error_t *e, status_error_class_t error_class, int http_status,
                       const char *message)
{
    char *copy = s_message_dup(message);
    if (!copy)
        return -1;
    free(e->message);
    e->message = copy;
    e->error_class = error_class;
    e->http_status = http_status > 0 ? http_status : 0;
    return 0;
}

static int s_error_copy(status_error_t *dst, const status_error_t *src)
{
    if (src->error_class == STATUS_ERROR_NONE) {
        status_error_clear(dst);
        return 0;
    }
    return s_error_set(dst, src->error_class, src->http_status, src->message);
}

/* ------------------------------------------------------------------------------ settings */

void model_status_settings_init(model_status_settings_t *s)
{
    memset(s, 0, sizeof *s);
    s->fail_threshold = STATUS_DEFAULT_FAIL_THRESHOLD;
    s->gone_threshold = STATUS_DEFAULT_GONE_THRESHOLD;
    s->prune = STATUS_PRUNE_NONE;
}

static void s_strings_free(char **list, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(list[i]);
    free(list);
}

static void s_settings_clear(s_settings_t *s)
{
    s_strings_free(s->ignore, s->ignore_count);
    for (size_t i = 0; i < s->provider_ignore_count; i++) {
        free(s->provider_ignore[i].provider);
        s_strings_free(s->provider_ignore[i].patterns, s->provider_ignore[i].count);
    }
    free(s->provider_ignore);
    memset(s, 0, sizeof *s);
}

static int s_strings_copy(const char *const *src, size_t count, char ***out)
{
    *out = NULL;
    if (count == 0)
        return 0;
    if (!src || count > STATUS_MAX_IGNORE_PATTERNS)
        return -1;
    char **list = calloc(count, sizeof *list);
    if (!list)
        return -1;
    for (size_t i = 0; i < count; i++) {
        list[i] = s_strdup(src[i]);
        if (!list[i]) {
            s_strings_free(list, i);
            return -1;
        }
    }
    *out = list;
    return 0;
}

static int s_settings_copy(s_settings_t *dst, const model_status_settings_t *src)
{
    memset(dst, 0, sizeof *dst);
    if (src->fail_threshold < 1 || src->gone_threshold < 1 ||
        (unsigned)src->prune > STATUS_PRUNE_FAILING_AND_GONE ||
        src->provider_ignore_count > REGISTRY_MAX_PROVIDERS)
        return -1;
    dst->fail_threshold = src->fail_threshold;
    dst->gone_threshold = src->gone_threshold;
    dst->prune = src->prune;
    if (s_strings_copy(src->ignore, src->ignore_count, &dst->ignore) != 0)
        return -1;
    dst->ignore_count = src->ignore_count;
    if (src->provider_ignore_count > 0) {
        if (!src->provider_ignore)
            goto fail;
        dst->provider_ignore = calloc(src->provider_ignore_count, sizeof *dst->provider_ignore);
        if (!dst->provider_ignore)
            goto fail;
        dst->provider_ignore_count = src->provider_ignore_count;
        for (size_t i = 0; i < src->provider_ignore_count; i++) {
            const status_ignore_t *in = &src->provider_ignore[i];
            s_ignore_t *o = &dst->provider_ignore[i];
            if (!in->provider)
                goto fail;
            o->provider = s_strdup(in->provider);
            if (!o->provider || s_strings_copy(in->patterns, in->count, &o->patterns) != 0)
                goto fail;
            o->count = in->count;
        }
    }
    return 0;
fail:
    s_settings_clear(dst);
    return -1;
}

static size_t s_ignore_index(const s_settings_t *s, const char *key)
{
    for (size_t i = 0; i < s->provider_ignore_count; i++)
        if (strcmp(s->provider_ignore[i].provider, key) == 0)
            return i;
    return SIZE_MAX;
}

static bool s_matches(char *const *patterns, size_t count, const char *model)
{
    for (size_t i = 0; i < count; i++)
        if (fnmatch(patterns[i], model, 0) == 0)
            return true;
    return false;
}

static bool s_ignored(const model_status_t *self, const s_prov_t *pv, const char *model)
{
    if (s_matches(self->settings.ignore, self->settings.ignore_count, model))
        return true;
    if (pv->ignore_index != SIZE_MAX) {
        const s_ignore_t *pi = &self->settings.provider_ignore[pv->ignore_index];
        return s_matches(pi->patterns, pi->count, model);
    }
    return false;
}

/* ------------------------------------------------------------------------------ providers */

static s_prov_t *s_prov_find(const model_status_t *self, const char *key)
{
    if (!key || self->bucket_count == 0)
        return NULL;
    uint64_t h = s_hash(key);
    for (s_prov_t *p = self->buckets[h % self->bucket_count]; p; p = p->next)
        if (p->hash == h && strcmp(p->key, key) == 0)
            return p;
    return NULL;
}

static int s_prov_rehash(model_status_t *self, size_t bucket_count)
{
    s_prov_t **buckets = calloc(bucket_count, sizeof *buckets);
    if (!buckets)
        return -1;
    for (size_t i = 0; i < self->providers_len; i++) {
        s_prov_t *p = self->providers[i];
        if (!p)
            continue;
        p->next = buckets[p->hash % bucket_count];
        buckets[p->hash % bucket_count] = p;
    }
    free(self->buckets);
    self->buckets = buckets;
    self->bucket_count = bucket_count;
    return 0;
}

static s_prov_t *s_prov_add(model_status_t *self, const char *key)
{
    if (self->providers_live + 1 > self->bucket_count &&
        s_prov_rehash(self, self->bucket_count ? self->bucket_count * 2 : 16) != 0)
        return NULL;
    /* Compact the holes left by removed providers before growing (providers come and go). */
    if (self->providers_len == self->providers_cap &&
        self->providers_live < self->providers_len / 2) {
        size_t j = 0;
        for (size_t i = 0; i < self->providers_len; i++) {
            if (self->providers[i]) {
                self->providers[i]->order = j;
                self->providers[j++] = self->providers[i];
            }
        }
        self->providers_len = j;
    }
    if (s_grow((void **)&self->providers, &self->providers_cap, self->providers_len + 1,
               sizeof *self->providers) != 0)
        return NULL;
    s_prov_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->key = s_strdup(key);
    if (!p->key) {
        free(p);
        return NULL;
    }
    p->pub.state = STATUS_PROVIDER_UNKNOWN;
    p->pub.last_list_at = STATUS_TIME_NIL;
    p->pub.last_list_ok_at = STATUS_TIME_NIL;
    p->hash = s_hash(key);
    p->order = self->providers_len;
    p->ignore_index = s_ignore_index(&self->settings, key);
    self->providers[self->providers_len++] = p;
    self->providers_live++;
    p->next = self->buckets[p->hash % self->bucket_count];
    self->buckets[p->hash % self->bucket_count] = p;
    return p;
}

/* ------------------------------------------------------------------------------ dirty */

static int s_dirty_push(model_status_t *self, const char *provider, const char *model)
{
    if (s_grow((void **)&self->dirty, &self->dirty_cap, self->dirty_len + 1, sizeof *self->dirty) !=
        0)
        return -1;
    s_dirty_t *d = &self->dirty[self->dirty_len];
    d->provider = s_strdup(provider);
    d->model = model ? s_strdup(model) : NULL;
    if (!d->provider || (model && !d->model)) {
        free(d->provider);
        free(d->model);
        return -1;
    }
    self->dirty_len++;
    return 0;
}

/* Dirty marks never fail the change they describe: when the mark cannot be queued the
 * record stays unmarked, and the journal catches up at the next full snapshot. */
static void s_mark_rec(model_status_t *self, s_prov_t *pv, s_rec_t *r)
{
    if (r->dirty)
        return;
    if (s_dirty_push(self, pv->key, r->pub.model) == 0)
        r->dirty = true;
}

static void s_mark_prov(model_status_t *self, s_prov_t *pv)
{
    if (pv->dirty)
        return;
    if (s_dirty_push(self, pv->key, NULL) == 0)
        pv->dirty = true;
}

/* ------------------------------------------------------------------------------ records */

static s_rec_t *s_rec_find(const s_prov_t *pv, const char *model)
{
    if (!model || pv->bucket_count == 0)
        return NULL;
    uint64_t h = s_hash(model);
    for (s_rec_t *r = pv->buckets[h % pv->bucket_count]; r; r = r->next)
        if (r->hash == h && strcmp(r->pub.model, model) == 0)
            return r;
    return NULL;
}

static int s_rec_rehash(s_prov_t *pv, size_t bucket_count)
{
    s_rec_t **buckets = calloc(bucket_count, sizeof *buckets);
    if (!buckets)
        return -1;
    for (size_t i = 0; i < pv->records_len; i++) {
        s_rec_t *r = pv->records[i];
        if (!r)
            continue;
        r->next = buckets[r->hash % bucket_count];
        buckets[r->hash % bucket_count] = r;
    }
    free(pv->buckets);
    pv->buckets = buckets;
    pv->bucket_count = bucket_count;
    return 0;
}

/* A new record (state nil, every time nil) appended to pv, or NULL on allocation failure. */
static s_rec_t *s_rec_add(model_status_t *self, s_prov_t *pv, const char *model)
{
    if (pv->records_live + 1 > pv->bucket_count &&
        s_rec_rehash(pv, pv->bucket_count ? pv->bucket_count * 2 : 16) != 0)
        return NULL;
    /* Compact the holes left by removals before growing, so the array stays O(live). */
    if (pv->records_len == pv->records_cap && pv->records_live < pv->records_len / 2) {
        size_t j = 0;
        for (size_t i = 0; i < pv->records_len; i++) {
            if (pv->records[i]) {
                pv->records[i]->order = j;
                pv->records[j++] = pv->records[i];
            }
        }
        pv->records_len = j;
    }
    if (s_grow((void **)&pv->records, &pv->records_cap, pv->records_len + 1, sizeof *pv->records) !=
        0)
        return NULL;
    s_rec_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->pub.model = s_strdup(model);
    if (!r->pub.model) {
        free(r);
        return NULL;
    }
    r->pub.state = STATUS_NIL;
    r->pub.listed = STATUS_LISTED_NIL;
    r->pub.first_seen_at = STATUS_TIME_NIL;
    r->pub.last_listed_at = STATUS_TIME_NIL;
    r->pub.last_checked_at = STATUS_TIME_NIL;
    r->pub.last_ok_at = STATUS_TIME_NIL;
    r->pub.latency_ms = STATUS_TIME_NIL;
    r->pub.list_index = -1;
    r->hash = s_hash(model);
    r->order = pv->records_len;
    pv->records[pv->records_len++] = r;
    pv->records_live++;
    r->next = pv->buckets[r->hash % pv->bucket_count];
    pv->buckets[r->hash % pv->bucket_count] = r;
    self->record_count++;
    return r;
}

static void s_rec_free(s_rec_t *r)
{
    status_record_clear(&r->pub);
    free(r);
}

/* Unlinks and frees r. No transition is published (a record that disappears says nothing). */
static void s_rec_remove(model_status_t *self, s_prov_t *pv, s_rec_t *r)
{
    s_rec_t **link = &pv->buckets[r->hash % pv->bucket_count];
    while (*link && *link != r)
        link = &(*link)->next;
    if (*link)
        *link = r->next;
    pv->records[r->order] = NULL;
    pv->records_live--;
    if (r->pub.state != STATUS_NIL)
        self->counts[r->pub.state]--;
    self->record_count--;
    /* Queue the removal for the journal (an entry that no longer resolves is a removal). */
    if (!r->dirty)
        (void)s_dirty_push(self, pv->key, r->pub.model);
    s_rec_free(r);
}

/* THE derivation of a record's state from its facts (see model_status.h). */
static status_state_t s_derive(const model_status_t *self, const s_prov_t *pv,
                               const status_record_t *r)
{
    if (r->in_valid_models || r->pruned) {
        if (r->absent_count >= self->settings.gone_threshold)
            return STATUS_GONE;
        if (r->failures >= self->settings.fail_threshold)
            return STATUS_FAILING;
        return STATUS_VALID;
    }
    if (r->in_invalid_models)
        return STATUS_INVALID;
    if (r->listed == STATUS_LISTED_TRUE)
        return s_ignored(self, pv, r->model) ? STATUS_IGNORED : STATUS_UNVERIFIED;
    return STATUS_NIL;
}

static int s_change_push(s_prov_t *pv, const char *model, status_state_t from, status_state_t to)
{
    if (s_grow((void **)&pv->changes, &pv->changes_cap, pv->changes_len + 1, sizeof *pv->changes) !=
        0)
        return -1;
    status_change_t *c = &pv->changes[pv->changes_len];
    c->model = s_strdup(model);
    if (!c->model)
        return -1;
    c->from = from;
    c->to = to;
    pv->changes_len++;
    return 0;
}

/* Re-derives r's state; a change is queued as a transition (to nil: the record is removed
 * and publishes nothing). Returns 1 when r was removed, 0 otherwise, -1 when the transition
 * could not be queued (the state is then left unchanged, so a retry derives it again). */
static int s_rederive(model_status_t *self, s_prov_t *pv, s_rec_t *r)
{
    status_state_t next = s_derive(self, pv, &r->pub);
    if (next == r->pub.state)
        return 0;
    if (next == STATUS_NIL) {
        s_rec_remove(self, pv, r);
        return 1;
    }
    if (s_change_push(pv, r->pub.model, r->pub.state, next) != 0)
        return -1;
    if (r->pub.state != STATUS_NIL)
        self->counts[r->pub.state]--;
    self->counts[next]++;
    r->pub.state = next;
    s_mark_rec(self, pv, r);
    return 0;
}

static int s_rederive_all(model_status_t *self, s_prov_t *pv)
{
    int rc = 0;
    for (size_t i = 0; i < pv->records_len; i++)
        if (pv->records[i] && s_rederive(self, pv, pv->records[i]) < 0)
            rc = -1;
    return rc;
}

static void s_prov_free(s_prov_t *pv)
{
    if (!pv)
        return;
    for (size_t i = 0; i < pv->records_len; i++)
        if (pv->records[i])
            s_rec_free(pv->records[i]);
    free(pv->records);
    free(pv->buckets);
    s_strings_free(pv->list_names, pv->list_count);
    for (size_t i = 0; i < pv->changes_len; i++)
        free(pv->changes[i].model);
    free(pv->changes);
    status_provider_clear(&pv->pub);
    free(pv->key);
    free(pv);
}

/* Drops provider pv with its records (no transitions). journal: queue a provider removal. */
static void s_prov_remove(model_status_t *self, s_prov_t *pv, bool journal)
{
    s_prov_t **link = &self->buckets[pv->hash % self->bucket_count];
    while (*link && *link != pv)
        link = &(*link)->next;
    if (*link)
        *link = pv->next;
    self->providers[pv->order] = NULL;
    self->providers_live--;
    for (size_t i = 0; i < pv->records_len; i++) {
        s_rec_t *r = pv->records[i];
        if (!r)
            continue;
        if (r->pub.state != STATUS_NIL)
            self->counts[r->pub.state]--;
        self->record_count--;
    }
    if (journal && s_grow((void **)&self->removed_providers, &self->removed_cap,
                          self->removed_len + 1, sizeof *self->removed_providers) == 0) {
        char *key = s_strdup(pv->key);
        if (key)
            self->removed_providers[self->removed_len++] = key;
    }
    s_prov_free(pv);
}

/* ------------------------------------------------------------------------------ lifecycle */

model_status_t *model_status_new(const model_status_settings_t *s)
{
    model_status_settings_t defaults;
    if (!s) {
        model_status_settings_init(&defaults);
        s = &defaults;
    }
    model_status_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    if (s_settings_copy(&self->settings, s) != 0) {
        free(self);
        return NULL;
    }
    return self;
}

static void s_dirty_free(model_status_t *self)
{
    for (size_t i = 0; i < self->dirty_len; i++) {
        free(self->dirty[i].provider);
        free(self->dirty[i].model);
    }
    self->dirty_len = 0;
    s_strings_free(self->removed_providers, self->removed_len);
    self->removed_providers = NULL;
    self->removed_len = self->removed_cap = 0;
}

void model_status_reset(model_status_t *self)
{
    if (!self)
        return;
    for (size_t i = 0; i < self->providers_len; i++)
        s_prov_free(self->providers[i]);
    free(self->providers);
    free(self->buckets);
    self->providers = NULL;
    self->buckets = NULL;
    self->providers_len = self->providers_cap = self->providers_live = 0;
    self->bucket_count = 0;
    memset(self->counts, 0, sizeof self->counts);
    self->record_count = 0;
    s_dirty_free(self);
}

void model_status_destroy(model_status_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    model_status_t *self = *self_p;
    model_status_reset(self);
    free(self->dirty);
    s_settings_clear(&self->settings);
    free(self);
    *self_p = NULL;
}

int model_status_set_settings(model_status_t *self, const model_status_settings_t *s)
{
    if (!self || !s)
        return -1;
    s_settings_t next;
    if (s_settings_copy(&next, s) != 0)
        return -1;
    s_settings_clear(&self->settings);
    self->settings = next;
    int rc = 0;
    for (size_t i = 0; i < self->providers_len; i++) {
        s_prov_t *pv = self->providers[i];
        if (!pv)
            continue;
        pv->ignore_index = s_ignore_index(&self->settings, pv->key);
        if (s_rederive_all(self, pv) != 0)
            rc = -1;
    }
    return rc;
}

/* ------------------------------------------------------------------------------ facts in */

static s_rec_t *s_rec_get_or_add(model_status_t *self, s_prov_t *pv, const char *model, double now)
{
    s_rec_t *r = s_rec_find(pv, model);
    if (r)
        return r;
    r = s_rec_add(self, pv, model);
    if (r) {
        r->pub.first_seen_at = now;
        s_mark_rec(self, pv, r);
    }
    return r;
}

static int s_sync_provider(model_status_t *self, s_prov_t *pv, const provider_t *p, double now)
{
    int rc = 0;
    /* Provider status from the key alone: the key itself is never kept. */
    bool has_key = provider_api_key(p) != NULL;
    if (!has_key && pv->pub.state != STATUS_PROVIDER_NO_KEY) {
        pv->pub.state = STATUS_PROVIDER_NO_KEY;
        s_mark_prov(self, pv);
    } else if (has_key && pv->pub.state == STATUS_PROVIDER_NO_KEY) {
        pv->pub.state = STATUS_PROVIDER_UNKNOWN;
        s_mark_prov(self, pv);
    }
    /* Facts of the existing records first, then the models that have none yet. */
    for (size_t i = 0; i < pv->records_len; i++) {
        s_rec_t *r = pv->records[i];
        if (!r)
            continue;
        const char *m = r->pub.model;
        size_t len = strlen(m);
        bool in_valid = provider_model_index(p, m, len) >= 0;
        bool in_invalid = !in_valid && provider_is_invalid(p, m, len);
        bool pruned = r->pub.pruned;
        if (in_valid || in_invalid)
            pruned = false; /* returned, or the operator put it back in a list */
        else if (r->prune_pending && r->pub.in_valid_models)
            pruned = true; /* the planned removal was applied */
        r->prune_pending = false;
        if (in_valid != r->pub.in_valid_models || in_invalid != r->pub.in_invalid_models ||
            pruned != r->pub.pruned) {
            r->pub.in_valid_models = in_valid;
            r->pub.in_invalid_models = in_invalid;
            r->pub.pruned = pruned;
            s_mark_rec(self, pv, r);
        }
        if (!pruned && r->pub.short_name) {
            /* Kept only while pruned (a plan that was not applied leaves one behind too). */
            free(r->pub.short_name);
            r->pub.short_name = NULL;
            s_mark_rec(self, pv, r);
        }
    }
    size_t n = provider_model_count(p);
    for (size_t i = 0; i < n; i++) {
        const char *m = provider_model_long(p, i);
        if (s_rec_find(pv, m))
            continue;
        s_rec_t *r = s_rec_get_or_add(self, pv, m, now);
        if (!r) {
            rc = -1;
            continue;
        }
        r->pub.in_valid_models = true;
    }
    n = provider_invalid_count(p);
    for (size_t i = 0; i < n; i++) {
        const char *m = provider_invalid_at(p, i);
        if (s_rec_find(pv, m))
            continue;
        s_rec_t *r = s_rec_get_or_add(self, pv, m, now);
        if (!r) {
            rc = -1;
            continue;
        }
        r->pub.in_invalid_models = true; /* not valid: every valid model has a record now */
    }
    if (s_rederive_all(self, pv) != 0)
        rc = -1;
    return rc;
}

int model_status_sync(model_status_t *self, const registry_t *reg, double now)
{
    if (!self || !reg)
        return -1;
    int rc = 0;
    /* Providers that left the registry go first (they publish nothing). */
    for (size_t i = 0; i < self->providers_len; i++) {
        s_prov_t *pv = self->providers[i];
        if (pv && !registry_get(reg, pv->key, strlen(pv->key)))
            s_prov_remove(self, pv, true);
    }
    size_t count = registry_count(reg);
    for (size_t i = 0; i < count; i++) {
        const provider_t *p = registry_at(reg, i);
        s_prov_t *pv = s_prov_find(self, provider_key(p));
        if (!pv) {
            pv = s_prov_add(self, provider_key(p));
            if (!pv) {
                rc = -1;
                continue;
            }
            s_mark_prov(self, pv);
        }
        if (s_sync_provider(self, pv, p, now) != 0)
            rc = -1;
    }
    return rc;
}

int model_status_list_ok(model_status_t *self, const char *key, size_t n, const char *const *models,
                         const model_meta_t *metas, double now)
{
    if (!self || (n > 0 && !models) || n > REGISTRY_MAX_MODELS)
        return -1;
    s_prov_t *pv = s_prov_find(self, key);
    if (!pv)
        return -1;
    char **names = n ? calloc(n, sizeof *names) : NULL;
    if (n && !names)
        return -1;
    int rc = 0;
    size_t distinct = 0;
    unsigned long gen = ++pv->list_gen;
    for (size_t i = 0; i < n; i++) {
        if (!models[i])
            continue;
        s_rec_t *r = s_rec_get_or_add(self, pv, models[i], now);
        if (!r) {
            rc = -1;
            break;
        }
        if (r->list_gen == gen)
            continue; /* a duplicate name in one list counts once */
        names[distinct] = s_strdup(models[i]);
        if (!names[distinct]) {
            rc = -1;
            break;
        }
        r->list_gen = gen;
        r->pub.listed = STATUS_LISTED_TRUE;
        r->pub.last_listed_at = now;
        r->pub.absent_count = 0;
        r->pub.list_index = (long long)distinct;
        distinct++;
        model_meta_t empty = {0};
        if (model_meta_copy(&r->pub.meta, metas ? &metas[i] : &empty) != 0)
            rc = -1;
        s_mark_rec(self, pv, r);
    }
    if (rc != 0) {
        /* Out of memory half way: the list is not applied as a whole; what was touched stays
         * (listed records are truly listed). Absences are not counted for an unfinished list. */
        s_strings_free(names, distinct);
        return -1;
    }
    for (size_t i = 0; i < pv->records_len; i++) {
        s_rec_t *r = pv->records[i];
        if (!r || r->list_gen == gen)
            continue;
        r->pub.listed = STATUS_LISTED_FALSE;
        r->pub.list_index = -1;
        r->pub.absent_count++;
        s_mark_rec(self, pv, r);
    }
    s_strings_free(pv->list_names, pv->list_count);
    pv->list_names = names;
    pv->list_count = distinct;
    pv->pub.state = STATUS_PROVIDER_OK;
    pv->pub.last_list_at = now;
    pv->pub.last_list_ok_at = now;
    pv->pub.has_models_listed = true;
    pv->pub.models_listed = (long long)distinct;
    status_error_clear(&pv->pub.last_error);
    s_mark_prov(self, pv);
    return s_rederive_all(self, pv);
}

int model_status_list_failed(model_status_t *self, const char *key,
                             status_error_class_t verdict_class, int http_status,
                             const char *message, double now)
{
    if (!self)
        return -1;
    s_prov_t *pv = s_prov_find(self, key);
    if (!pv)
        return -1;
    status_provider_state_t state;
    switch (verdict_class) {
    case STATUS_ERROR_AUTH:
        state = STATUS_PROVIDER_AUTH_FAILED;
        break;
    case STATUS_ERROR_TRANSIENT:
        /* No HTTP answer at all (refused, timeout, DNS): unreachable. A transient HTTP answer
         * (429, 5xx) means the provider is there but failing: error, class transient. */
        state = http_status > 0 ? STATUS_PROVIDER_ERROR : STATUS_PROVIDER_UNREACHABLE;
        break;
    case STATUS_ERROR_MODEL:
    case STATUS_ERROR_ERROR:
        state = STATUS_PROVIDER_ERROR;
        break;
    default:
        return -1;
    }
    if (s_error_set(&pv->pub.last_error, verdict_class, http_status, message) != 0)
        return -1;
    pv->pub.state = state;
    pv->pub.last_list_at = now;
    s_mark_prov(self, pv);
    return 0;
}

int model_status_probe(model_status_t *self, const char *key, const char *model,
                       status_probe_outcome_t outcome, int http_status, double latency_ms,
                       const char *message, double now)
{
    if (!self || !model)
        return -1;
    s_prov_t *pv = s_prov_find(self, key);
    if (!pv)
        return -1;
    s_rec_t *r = s_rec_find(pv, model);
    if (!r)
        return -1;
    status_record_t *rec = &r->pub;
    switch (outcome) {
    case STATUS_PROBE_OK:
        rec->failures = 0;
        rec->last_ok_at = now;
        rec->latency_ms = latency_ms >= 0 ? latency_ms : 0.0;
        status_error_clear(&rec->last_error);
        break;
    case STATUS_PROBE_MODEL_FAIL:
        if (s_error_set(&rec->last_error, STATUS_ERROR_MODEL, http_status, message) != 0)
            return -1;
        rec->failures++;
        break;
    case STATUS_PROBE_AUTH:
        if (s_error_set(&rec->last_error, STATUS_ERROR_AUTH, http_status, message) != 0 ||
            s_error_set(&pv->pub.last_error, STATUS_ERROR_AUTH, http_status, message) != 0)
            return -1;
        pv->pub.state = STATUS_PROVIDER_AUTH_FAILED;
        s_mark_prov(self, pv);
        break;
    case STATUS_PROBE_TRANSIENT:
        if (s_error_set(&rec->last_error, STATUS_ERROR_TRANSIENT, http_status, message) != 0)
            return -1;
        break;
    case STATUS_PROBE_ERROR:
        if (s_error_set(&rec->last_error, STATUS_ERROR_ERROR, http_status, message) != 0)
            return -1;
        break;
    default:
        return -1;
    }
    rec->last_checked_at = now;
    s_mark_rec(self, pv, r);
    return s_rederive(self, pv, r) < 0 ? -1 : 0;
}

bool model_status_ignored(const model_status_t *self, const char *key, const char *model)
{
    if (!self || !model)
        return false;
    if (s_matches(self->settings.ignore, self->settings.ignore_count, model))
        return true;
    /* The provider's entry caches its pattern list; a provider not synced yet is looked up. */
    const s_prov_t *pv = s_prov_find(self, key);
    size_t idx = pv ? pv->ignore_index : key ? s_ignore_index(&self->settings, key) : SIZE_MAX;
    if (idx == SIZE_MAX)
        return false;
    const s_ignore_t *pi = &self->settings.provider_ignore[idx];
    return s_matches(pi->patterns, pi->count, model);
}

/* ------------------------------------------------------------------------------ decisions */

static bool s_in_only(const char *const *only, size_t only_count, const char *model)
{
    if (!only)
        return true;
    for (size_t i = 0; i < only_count; i++)
        if (only[i] && strcmp(only[i], model) == 0)
            return true;
    return false;
}

typedef struct {
    char **items;
    size_t len, cap;
} s_names_t;

static int s_names_push(s_names_t *v, const char *s)
{
    if (s_grow((void **)&v->items, &v->cap, v->len + 1, sizeof *v->items) != 0)
        return -1;
    v->items[v->len] = s_strdup(s);
    if (!v->items[v->len])
        return -1;
    v->len++;
    return 0;
}

int model_status_verify_targets(const model_status_t *self, const provider_t *p,
                                bool include_invalid, const char *const *only, size_t only_count,
                                char ***out, size_t *out_count)
{
    if (!out || !out_count)
        return -1;
    *out = NULL;
    *out_count = 0;
    if (!self || !p)
        return -1;
    const s_prov_t *pv = s_prov_find(self, provider_key(p));
    s_names_t v = {0};
    size_t n = provider_model_count(p);
    for (size_t i = 0; i < n; i++) {
        const char *m = provider_model_long(p, i);
        const s_rec_t *r = pv ? s_rec_find(pv, m) : NULL;
        if (r && r->pub.state == STATUS_GONE)
            continue; /* a gone model is not probed: its provider no longer lists it */
        if (s_in_only(only, only_count, m) && s_names_push(&v, m) != 0)
            goto fail;
    }
    if (pv) {
        for (size_t i = 0; i < pv->records_len; i++) {
            const s_rec_t *r = pv->records[i];
            if (!r || !r->pub.pruned || r->pub.in_valid_models || r->pub.state != STATUS_FAILING)
                continue;
            if (s_in_only(only, only_count, r->pub.model) && s_names_push(&v, r->pub.model) != 0)
                goto fail;
        }
    }
    if (include_invalid) {
        n = provider_invalid_count(p);
        for (size_t i = 0; i < n; i++) {
            const char *m = provider_invalid_at(p, i);
            if (provider_model_index(p, m, strlen(m)) >= 0)
                continue; /* already a target as a valid model */
            if (model_status_ignored(self, provider_key(p), m))
                continue;
            if (s_in_only(only, only_count, m) && s_names_push(&v, m) != 0)
                goto fail;
        }
    }
    *out = v.items;
    *out_count = v.len;
    return 0;
fail:
    s_strings_free(v.items, v.len);
    return -1;
}

void status_prune_plan_clear(status_prune_plan_t *plan)
{
    if (!plan)
        return;
    s_strings_free(plan->remove, plan->remove_count);
    for (size_t i = 0; i < plan->return_count; i++) {
        free(plan->returns[i].long_name);
        free(plan->returns[i].short_name);
    }
    free(plan->returns);
    memset(plan, 0, sizeof *plan);
}

static bool s_prunes(status_prune_t policy, status_state_t state)
{
    if (state == STATUS_GONE)
        return policy == STATUS_PRUNE_GONE || policy == STATUS_PRUNE_FAILING_AND_GONE;
    if (state == STATUS_FAILING)
        return policy == STATUS_PRUNE_FAILING_AND_GONE;
    return false;
}

int model_status_prune_plan(model_status_t *self, const provider_t *p, status_prune_plan_t *out)
{
    if (!out)
        return -1;
    memset(out, 0, sizeof *out);
    if (!self || !p)
        return -1;
    s_prov_t *pv = s_prov_find(self, provider_key(p));
    if (!pv)
        return 0;
    s_names_t removes = {0};
    status_return_t *returns = NULL;
    size_t returns_len = 0, returns_cap = 0;
    /* Removals in valid_models order, so the plan reads like the provider's list. */
    size_t n = provider_model_count(p);
    for (size_t i = 0; i < n; i++) {
        const char *m = provider_model_long(p, i);
        s_rec_t *r = s_rec_find(pv, m);
        if (!r || !s_prunes(self->settings.prune, r->pub.state))
            continue;
        char *short_copy = s_strdup(provider_model_short(p, i));
        if (!short_copy || s_names_push(&removes, m) != 0) {
            free(short_copy);
            goto fail;
        }
        free(r->pub.short_name);
        r->pub.short_name = short_copy;
        r->prune_pending = true;
    }
    for (size_t i = 0; i < pv->records_len; i++) {
        s_rec_t *r = pv->records[i];
        if (!r || !r->pub.pruned || r->pub.in_valid_models ||
            s_prunes(self->settings.prune, r->pub.state))
            continue;
        if (s_grow((void **)&returns, &returns_cap, returns_len + 1, sizeof *returns) != 0)
            goto fail;
        status_return_t *ret = &returns[returns_len];
        ret->long_name = s_strdup(r->pub.model);
        ret->short_name = s_strdup(r->pub.short_name ? r->pub.short_name : r->pub.model);
        if (!ret->long_name || !ret->short_name) {
            free(ret->long_name);
            free(ret->short_name);
            goto fail;
        }
        returns_len++;
    }
    out->remove = removes.items;
    out->remove_count = removes.len;
    out->returns = returns;
    out->return_count = returns_len;
    return 0;
fail:
    for (size_t i = 0; i < pv->records_len; i++)
        if (pv->records[i])
            pv->records[i]->prune_pending = false;
    s_strings_free(removes.items, removes.len);
    for (size_t i = 0; i < returns_len; i++) {
        free(returns[i].long_name);
        free(returns[i].short_name);
    }
    free(returns);
    return -1;
}

/* ------------------------------------------------------------------------------ batches */

void status_changes_clear(status_changes_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->count; i++)
        free(c->changes[i].model);
    free(c->changes);
    c->changes = NULL;
    c->count = 0;
}

int model_status_take_changes(model_status_t *self, const char *key, status_changes_t *out)
{
    if (!out)
        return -1;
    memset(out, 0, sizeof *out);
    if (!self)
        return -1;
    out->status_version = self->version;
    s_prov_t *pv = s_prov_find(self, key);
    if (!pv || pv->changes_len == 0)
        return 0;
    self->version++;
    out->status_version = self->version;
    out->changes = pv->changes;
    out->count = pv->changes_len;
    pv->changes = NULL;
    pv->changes_len = pv->changes_cap = 0;
    return 0;
}

size_t model_status_pending_changes(const model_status_t *self, const char *key)
{
    const s_prov_t *pv = self ? s_prov_find(self, key) : NULL;
    return pv ? pv->changes_len : 0;
}

uint64_t model_status_version(const model_status_t *self)
{
    return self ? self->version : 0;
}

void model_status_set_version(model_status_t *self, uint64_t version)
{
    if (self)
        self->version = version;
}

void status_dirty_clear(status_dirty_t *d)
{
    if (!d)
        return;
    s_strings_free(d->provider_removals, d->provider_removal_count);
    for (size_t i = 0; i < d->record_removal_count; i++) {
        free(d->record_removals[i].provider);
        free(d->record_removals[i].model);
    }
    free(d->record_removals);
    free(d->providers);
    free(d->records);
    memset(d, 0, sizeof *d);
}

int model_status_take_dirty(model_status_t *self, status_dirty_t *out)
{
    if (!out)
        return -1;
    memset(out, 0, sizeof *out);
    if (!self)
        return -1;
    size_t n = self->dirty_len;
    if (n > 0) {
        out->records = calloc(n, sizeof *out->records);
        out->providers = calloc(n, sizeof *out->providers);
        out->record_removals = calloc(n, sizeof *out->record_removals);
        if (!out->records || !out->providers || !out->record_removals) {
            status_dirty_clear(out);
            return -1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        s_dirty_t *d = &self->dirty[i];
        s_prov_t *pv = s_prov_find(self, d->provider);
        if (!d->model) {
            if (pv && pv->dirty) {
                pv->dirty = false;
                out->providers[out->provider_count].provider = pv->key;
                out->providers[out->provider_count++].status = &pv->pub;
            }
            free(d->provider);
            continue;
        }
        s_rec_t *r = pv ? s_rec_find(pv, d->model) : NULL;
        if (r) {
            if (r->dirty) {
                r->dirty = false;
                out->records[out->record_count].provider = pv->key;
                out->records[out->record_count++].record = &r->pub;
            }
            free(d->provider);
            free(d->model);
        } else if (pv) {
            /* Gone from a provider that is still here: a single removal (the strings move). */
            out->record_removals[out->record_removal_count].provider = d->provider;
            out->record_removals[out->record_removal_count++].model = d->model;
        } else {
            /* The whole provider went: its provider removal covers the record. */
            free(d->provider);
            free(d->model);
        }
    }
    self->dirty_len = 0;
    out->provider_removals = self->removed_providers;
    out->provider_removal_count = self->removed_len;
    self->removed_providers = NULL;
    self->removed_len = self->removed_cap = 0;
    return 0;
}

void model_status_clear_dirty(model_status_t *self)
{
    if (!self)
        return;
    for (size_t i = 0; i < self->providers_len; i++) {
        s_prov_t *pv = self->providers[i];
        if (!pv)
            continue;
        pv->dirty = false;
        for (size_t j = 0; j < pv->records_len; j++)
            if (pv->records[j])
                pv->records[j]->dirty = false;
    }
    s_dirty_free(self);
}

/* ------------------------------------------------------------------------------ reads */

const status_provider_t *model_status_provider(const model_status_t *self, const char *key)
{
    const s_prov_t *pv = self ? s_prov_find(self, key) : NULL;
    return pv ? &pv->pub : NULL;
}

const status_record_t *model_status_record(const model_status_t *self, const char *key,
                                           const char *model)
{
    const s_prov_t *pv = self ? s_prov_find(self, key) : NULL;
    const s_rec_t *r = pv ? s_rec_find(pv, model) : NULL;
    return r ? &r->pub : NULL;
}

static int s_visit(const s_prov_t *pv, const s_rec_t *r, unsigned mask, model_status_record_fn fn,
                   void *arg)
{
    if (!r || !(mask & STATUS_MASK(r->pub.state)))
        return 0;
    return fn(pv->key, &r->pub, arg);
}

static int s_each_provider_records(const s_prov_t *pv, const provider_t *p, unsigned mask,
                                   model_status_record_fn fn, void *arg)
{
    int rc;
    size_t n = provider_model_count(p);
    for (size_t i = 0; i < n; i++) {
        const s_rec_t *r = s_rec_find(pv, provider_model_long(p, i));
        if (r && r->pub.in_valid_models && (rc = s_visit(pv, r, mask, fn, arg)) != 0)
            return rc;
    }
    n = provider_invalid_count(p);
    for (size_t i = 0; i < n; i++) {
        const s_rec_t *r = s_rec_find(pv, provider_invalid_at(p, i));
        if (r && r->pub.in_invalid_models && (rc = s_visit(pv, r, mask, fn, arg)) != 0)
            return rc;
    }
    for (size_t i = 0; i < pv->list_count; i++) {
        const s_rec_t *r = s_rec_find(pv, pv->list_names[i]);
        if (r && !r->pub.in_valid_models && !r->pub.in_invalid_models &&
            r->pub.listed == STATUS_LISTED_TRUE && (rc = s_visit(pv, r, mask, fn, arg)) != 0)
            return rc;
    }
    for (size_t i = 0; i < pv->records_len; i++) {
        const s_rec_t *r = pv->records[i];
        if (r && !r->pub.in_valid_models && !r->pub.in_invalid_models &&
            r->pub.listed != STATUS_LISTED_TRUE && (rc = s_visit(pv, r, mask, fn, arg)) != 0)
            return rc;
    }
    return 0;
}

int model_status_each(const model_status_t *self, const registry_t *reg, const char *provider,
                      const char *model, unsigned state_mask, model_status_record_fn fn, void *arg)
{
    if (!self || !reg || !fn)
        return -1;
    size_t count = registry_count(reg);
    for (size_t i = 0; i < count; i++) {
        const provider_t *p = registry_at(reg, i);
        if (provider && strcmp(provider, provider_key(p)) != 0)
            continue;
        const s_prov_t *pv = s_prov_find(self, provider_key(p));
        if (!pv)
            continue;
        int rc;
        if (model)
            rc = s_visit(pv, s_rec_find(pv, model), state_mask, fn, arg);
        else
            rc = s_each_provider_records(pv, p, state_mask, fn, arg);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int model_status_each_provider(const model_status_t *self, const registry_t *reg,
                               const char *provider, model_status_provider_fn fn, void *arg)
{
    if (!self || !reg || !fn)
        return -1;
    size_t count = registry_count(reg);
    for (size_t i = 0; i < count; i++) {
        const provider_t *p = registry_at(reg, i);
        if (provider && strcmp(provider, provider_key(p)) != 0)
            continue;
        const s_prov_t *pv = s_prov_find(self, provider_key(p));
        if (!pv)
            continue;
        int rc = fn(pv->key, &pv->pub, arg);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int model_status_each_all(const model_status_t *self, model_status_provider_fn pfn,
                          model_status_record_fn rfn, void *arg)
{
    if (!self)
        return -1;
    for (size_t i = 0; i < self->providers_len; i++) {
        const s_prov_t *pv = self->providers[i];
        if (!pv)
            continue;
        int rc = pfn ? pfn(pv->key, &pv->pub, arg) : 0;
        if (rc != 0)
            return rc;
        for (size_t j = 0; rfn && j < pv->records_len; j++) {
            if (pv->records[j] && (rc = rfn(pv->key, &pv->records[j]->pub, arg)) != 0)
                return rc;
        }
    }
    return 0;
}

void model_status_counts(const model_status_t *self, size_t counts[STATUS_STATE_COUNT])
{
    for (unsigned i = 0; i < STATUS_STATE_COUNT; i++)
        counts[i] = self ? self->counts[i] : 0;
}

size_t model_status_record_count(const model_status_t *self)
{
    return self ? self->record_count : 0;
}

/* ------------------------------------------------------------------------------ restore */

int model_status_restore_provider(model_status_t *self, const char *key,
                                  const status_provider_t *ps)
{
    if (!self || !key || !ps || (unsigned)ps->state >= STATUS_PROVIDER_STATE_COUNT)
        return -1;
    s_prov_t *pv = s_prov_find(self, key);
    if (!pv && !(pv = s_prov_add(self, key)))
        return -1;
    status_error_t err = {0};
    if (s_error_copy(&err, &ps->last_error) != 0)
        return -1;
    status_error_clear(&pv->pub.last_error);
    pv->pub = *ps;
    pv->pub.last_error = err;
    return 0;
}

static int s_cmp_list_index(const void *a, const void *b)
{
    const s_rec_t *ra = *(const s_rec_t *const *)a;
    const s_rec_t *rb = *(const s_rec_t *const *)b;
    return (ra->pub.list_index > rb->pub.list_index) - (ra->pub.list_index < rb->pub.list_index);
}

/* Rebuilds pv's list order from the records' list_index after a restore. O(n log n). */
static int s_rebuild_list(s_prov_t *pv)
{
    size_t n = 0;
    for (size_t i = 0; i < pv->records_len; i++)
        if (pv->records[i] && pv->records[i]->pub.listed == STATUS_LISTED_TRUE)
            n++;
    s_rec_t **sorted = n ? calloc(n, sizeof *sorted) : NULL;
    char **names = n ? calloc(n, sizeof *names) : NULL;
    if (n && (!sorted || !names)) {
        free(sorted);
        free(names);
        return -1;
    }
    size_t j = 0;
    for (size_t i = 0; i < pv->records_len; i++) {
        s_rec_t *r = pv->records[i];
        if (r && r->pub.listed == STATUS_LISTED_TRUE)
            sorted[j++] = r;
    }
    if (n > 1)
        qsort(sorted, n, sizeof *sorted, s_cmp_list_index);
    for (size_t i = 0; i < n; i++) {
        names[i] = s_strdup(sorted[i]->pub.model);
        if (!names[i]) {
            s_strings_free(names, i);
            free(sorted);
            return -1;
        }
    }
    free(sorted);
    s_strings_free(pv->list_names, pv->list_count);
    pv->list_names = names;
    pv->list_count = n;
    pv->list_stale = false;
    return 0;
}

int model_status_restore_finish(model_status_t *self)
{
    if (!self)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < self->providers_len; i++) {
        s_prov_t *pv = self->providers[i];
        if (pv && pv->list_stale && s_rebuild_list(pv) != 0)
            rc = -1;
    }
    model_status_clear_dirty(self);
    return rc;
}

int model_status_restore_record(model_status_t *self, const char *key, const status_record_t *rec)
{
    if (!self || !key || !rec || !rec->model || rec->state == STATUS_NIL ||
        (unsigned)rec->state >= STATUS_STATE_COUNT)
        return -1;
    s_prov_t *pv = s_prov_find(self, key);
    if (!pv && !(pv = s_prov_add(self, key)))
        return -1;
    s_rec_t *r = s_rec_find(pv, rec->model);
    bool created = false;
    if (!r) {
        r = s_rec_add(self, pv, rec->model);
        if (!r)
            return -1;
        created = true;
    }
    status_error_t err = {0};
    model_meta_t meta = {0};
    char *short_name = rec->short_name ? s_strdup(rec->short_name) : NULL;
    if (s_error_copy(&err, &rec->last_error) != 0 || model_meta_copy(&meta, &rec->meta) != 0 ||
        (rec->short_name && !short_name)) {
        status_error_clear(&err);
        model_meta_clear(&meta);
        free(short_name);
        if (created)
            s_rec_remove(self, pv, r);
        return -1;
    }
    char *model = r->pub.model;
    status_state_t old = r->pub.state;
    free(r->pub.short_name);
    status_error_clear(&r->pub.last_error);
    model_meta_clear(&r->pub.meta);
    r->pub = *rec;
    r->pub.model = model;
    r->pub.last_error = err;
    r->pub.meta = meta;
    r->pub.short_name = short_name;
    if (old != STATUS_NIL)
        self->counts[old]--;
    self->counts[r->pub.state]++;
    /* The list order is rebuilt once at the end of the replay (restore_finish): rebuilding
     * it per record would make a load quadratic. */
    pv->list_stale = true;
    return 0;
}

void model_status_forget_provider(model_status_t *self, const char *key)
{
    s_prov_t *pv = self ? s_prov_find(self, key) : NULL;
    if (pv)
        s_prov_remove(self, pv, false);
}

void model_status_forget_record(model_status_t *self, const char *key, const char *model)
{
    s_prov_t *pv = self ? s_prov_find(self, key) : NULL;
    s_rec_t *r = pv ? s_rec_find(pv, model) : NULL;
    if (!r)
        return;
    r->dirty = true; /* restoring: no journal entry for a removal that came from the journal */
    s_rec_remove(self, pv, r);
}
