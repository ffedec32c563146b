/*
 * clone: the Clone pattern's state machine (see clone.h). Sans I/O: the owner's thread feeds
 * it reply and event bodies and the clock; this file decides what they mean (apply, drop,
 * re-snapshot) and keeps the current sealed registry.
 *
 * Every applied change is built on a registry_clone() of the current sealed registry (cheap:
 * the providers are shared, only the touched ones are replaced) and sealed before it becomes
 * current, so a reader that holds an older registry (registry_ref) is never disturbed.
 */
#include "clone.h"

#include "pm_proto.h"

#include <stdlib.h>
#include <string.h>

/* The primary's silence after which the replica is presumed cut off: 3 x heartbeat_ms
 * (protocol v1.1, "Snapshot and replication", step 4). */
#define S_SILENT_HEARTBEATS 3

struct clone_t {
    int heartbeat_ms;
    int backoff_max_ms;

    registry_t *registry; /* sealed; NULL before the first snapshot */
    int64_t version;      /* -1 before the first snapshot */
    char epoch[CLONE_MAX_EPOCH_LEN + 1];
    int64_t primary_version;
    int64_t status_version;
    int64_t last_contact_ms;

    clone_cause_t pending;   /* NONE while in sync */
    bool caught_up;          /* an event or heartbeat confirmed the snapshot's version */
    int64_t next_attempt_ms; /* when a snapshot may be asked for */
    int backoff_ms;          /* the wait after the next failure */

    clone_counters_t counters;

    /* The keys of the last applied `changed` event (clone_changed_keys). */
    char **changed_keys;
    size_t changed_count;
};

/* ------------------------------------------------------------------------------ helpers */

static bool s_is_str(const msgpack_object *obj)
{
    return obj && obj->type == MSGPACK_OBJECT_STR;
}

/* A msgpack str the service could have packed from a C string: no NUL inside (the registry
 * holds NUL-terminated strings, so a key "a\0b" would silently become "a"). */
static bool s_is_text(const msgpack_object *obj)
{
    return s_is_str(obj) &&
           (obj->via.str.size == 0 || memchr(obj->via.str.ptr, '\0', obj->via.str.size) == NULL);
}

static bool s_str_equals(const msgpack_object *obj, const char *text)
{
    size_t len = strlen(text);
    return s_is_str(obj) && obj->via.str.size == len && memcmp(obj->via.str.ptr, text, len) == 0;
}

static bool s_version_of(const msgpack_object *obj, int64_t *out)
{
    if (!obj || obj->type != MSGPACK_OBJECT_POSITIVE_INTEGER || obj->via.u64 > INT64_MAX)
        return false;
    *out = (int64_t)obj->via.u64;
    return true;
}

/* The epoch as held: a str truncated to CLONE_MAX_EPOCH_LEN, "" when absent or not a str. */
static void s_copy_epoch(char *dest, const msgpack_object *epoch)
{
    dest[0] = '\0';
    if (!s_is_str(epoch))
        return;
    size_t len = epoch->via.str.size;
    if (len > CLONE_MAX_EPOCH_LEN)
        len = CLONE_MAX_EPOCH_LEN;
    memcpy(dest, epoch->via.str.ptr, len);
    dest[len] = '\0';
}

static void s_clear_changed_keys(clone_t *self)
{
    for (size_t i = 0; i < self->changed_count; i++)
        free(self->changed_keys[i]);
    free(self->changed_keys);
    self->changed_keys = NULL;
    self->changed_count = 0;
}

/* Unpacks one body after the precheck (hostile lengths are refused before msgpack-c
 * allocates for them). true when *unpacked holds a map. */
static bool s_unpack_map(const void *data, size_t size, msgpack_unpacked *unpacked)
{
    if (!data || pm_proto_precheck(data, size, PM_PROTO_MAX_REPLY_DEPTH, NULL, 0) != 0)
        return false;
    size_t offset = 0;
    return msgpack_unpack_next(unpacked, data, size, &offset) == MSGPACK_UNPACK_SUCCESS &&
           unpacked->data.type == MSGPACK_OBJECT_MAP;
}

/* Asks for a new snapshot at once, counting the cause. Nothing when one is already pending:
 * one re-snapshot repairs every cause at once. */
static void s_resync(clone_t *self, clone_cause_t cause)
{
    if (self->pending != CLONE_CAUSE_NONE)
        return;
    self->pending = cause;
    self->next_attempt_ms = 0;
    self->counters.resnapshots++;
    switch (cause) {
    case CLONE_CAUSE_GAP:
    case CLONE_CAUSE_BAD_EVENT:
        self->counters.gaps++;
        break;
    case CLONE_CAUSE_EPOCH:
        self->counters.epoch_changes++;
        break;
    case CLONE_CAUSE_BACKWARDS:
        self->counters.backwards++;
        break;
    case CLONE_CAUSE_HEARTBEAT_AHEAD:
        self->counters.heartbeats_ahead++;
        break;
    case CLONE_CAUSE_SILENCE:
        self->counters.silences++;
        break;
    case CLONE_CAUSE_NONE:
    case CLONE_CAUSE_START:
        break;
    }
}

/* --------------------------------------------------------- wire config -> registry core */

/* Bytes needed to hold obj (a str) NUL-terminated, added to *total; false on overflow. */
static bool s_add_len(size_t *total, const msgpack_object *obj)
{
    size_t len = obj->via.str.size + 1;
    if (*total > SIZE_MAX - len)
        return false;
    *total += len;
    return true;
}

/* Copies obj (a str) NUL-terminated at *cursor, advancing it; returns the copy. */
static char *s_put_text(char **cursor, const msgpack_object *obj)
{
    char *text = *cursor;
    memcpy(text, obj->via.str.ptr, obj->via.str.size);
    text[obj->via.str.size] = '\0';
    *cursor += obj->via.str.size + 1;
    return text;
}

provider_t *clone_provider_from_config(const msgpack_object *config, const char *expected_key,
                                       size_t expected_len)
{
    if (!config || config->type != MSGPACK_OBJECT_MAP)
        return NULL;
    const msgpack_object *key = pm_map_get(config, "provider");
    const msgpack_object *name = pm_map_get(config, "name");
    const msgpack_object *url = pm_map_get(config, "base_api_url");
    const msgpack_object *api_key = pm_map_get(config, "api_key");
    const msgpack_object *models = pm_map_get(config, "valid_models");
    const msgpack_object *invalid = pm_map_get(config, "invalid_models");
    if (!s_is_text(key) || !s_is_text(name) || !s_is_text(url))
        return NULL;
    if (!provider_key_valid(key->via.str.ptr, key->via.str.size))
        return NULL;
    /* An event's config must be the key's: otherwise the event is not to be trusted. */
    if (expected_key && (key->via.str.size != expected_len ||
                         memcmp(key->via.str.ptr, expected_key, expected_len) != 0))
        return NULL;
    if (api_key && api_key->type == MSGPACK_OBJECT_NIL)
        api_key = NULL; /* nil and absent both mean "no key" */
    if (api_key && !s_is_text(api_key))
        return NULL;
    /* An absent list is an empty one, as the request client reads a ProviderConfig. */
    if (models && models->type != MSGPACK_OBJECT_MAP)
        return NULL;
    if (invalid && invalid->type != MSGPACK_OBJECT_ARRAY)
        return NULL;
    uint32_t model_count = models ? models->via.map.size : 0;
    uint32_t invalid_count = invalid ? invalid->via.array.size : 0;

    /* Every string, NUL-terminated, in one block: the registry core copies them anyway. */
    size_t total = 0;
    bool fits = s_add_len(&total, key) && s_add_len(&total, name) && s_add_len(&total, url) &&
                (!api_key || s_add_len(&total, api_key));
    for (uint32_t i = 0; fits && i < model_count; i++) {
        const msgpack_object_kv *kv = &models->via.map.ptr[i];
        if (!s_is_text(&kv->key) || !s_is_text(&kv->val))
            return NULL;
        fits = s_add_len(&total, &kv->key) && s_add_len(&total, &kv->val);
    }
    for (uint32_t i = 0; fits && i < invalid_count; i++) {
        if (!s_is_text(&invalid->via.array.ptr[i]))
            return NULL;
        fits = s_add_len(&total, &invalid->via.array.ptr[i]);
    }
    if (!fits)
        return NULL;

    provider_t *provider = NULL;
    char *block = malloc(total);
    /* One slot at least, so that an empty list is not taken for a failed allocation. */
    const char **longs = calloc(model_count ? model_count : 1, sizeof *longs);
    const char **shorts = calloc(model_count ? model_count : 1, sizeof *shorts);
    const char **invalids = calloc(invalid_count ? invalid_count : 1, sizeof *invalids);
    if (!block || !longs || !shorts || !invalids)
        goto done;
    char *cursor = block;
    const char *key_text = s_put_text(&cursor, key);
    const char *name_text = s_put_text(&cursor, name);
    const char *url_text = s_put_text(&cursor, url);
    const char *api_key_text = api_key ? s_put_text(&cursor, api_key) : NULL;
    for (uint32_t i = 0; i < model_count; i++) {
        longs[i] = s_put_text(&cursor, &models->via.map.ptr[i].key);
        shorts[i] = s_put_text(&cursor, &models->via.map.ptr[i].val);
    }
    for (uint32_t i = 0; i < invalid_count; i++)
        invalids[i] = s_put_text(&cursor, &invalid->via.array.ptr[i]);

    provider = provider_new(key_text, name_text, url_text);
    if (provider && ((api_key_text && provider_set_api_key(provider, api_key_text) != 0) ||
                     provider_put_models(provider, longs, shorts, model_count) != 0 ||
                     provider_set_invalid_models(provider, invalids, invalid_count) != 0))
        provider_destroy(&provider);

done:
    if (block) {
        /* The API key was in there: do not leave it in freed memory. */
        explicit_bzero(block, total);
        free(block);
    }
    free(longs);
    free(shorts);
    free(invalids);
    return provider;
}

/* Decodes config and puts it into the mutable registry. 0 or -1. */
static int s_put_config(registry_t *registry, const msgpack_object *config,
                        const char *expected_key, size_t expected_len)
{
    provider_t *provider = clone_provider_from_config(config, expected_key, expected_len);
    if (!provider)
        return -1;
    if (registry_put(registry, &provider) != 0) {
        provider_destroy(&provider);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ construction */

clone_t *clone_new(int heartbeat_ms, int backoff_max_ms)
{
    if (heartbeat_ms <= 0 || backoff_max_ms <= 0)
        return NULL;
    clone_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->heartbeat_ms = heartbeat_ms;
    /* A maximum below the first wait would make the backoff shrink. */
    self->backoff_max_ms =
        backoff_max_ms < CLONE_BACKOFF_MIN_MS ? CLONE_BACKOFF_MIN_MS : backoff_max_ms;
    self->version = -1;
    self->primary_version = -1;
    self->status_version = -1;
    self->last_contact_ms = -1;
    self->pending = CLONE_CAUSE_START;
    self->backoff_ms = CLONE_BACKOFF_MIN_MS;
    return self;
}

void clone_destroy(clone_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    clone_t *self = *self_p;
    registry_destroy(&self->registry);
    s_clear_changed_keys(self);
    free(self);
    *self_p = NULL;
}

/* ---------------------------------------------------------------------- the snapshot */

bool clone_want_snapshot(clone_t *self, int64_t now_ms)
{
    if (!self)
        return false;
    if (self->pending == CLONE_CAUSE_NONE && self->last_contact_ms >= 0 &&
        now_ms - self->last_contact_ms > S_SILENT_HEARTBEATS * (int64_t)self->heartbeat_ms)
        s_resync(self, CLONE_CAUSE_SILENCE);
    return self->pending != CLONE_CAUSE_NONE && now_ms >= self->next_attempt_ms;
}

void clone_snapshot_failed(clone_t *self, int64_t now_ms)
{
    if (!self)
        return;
    self->counters.snapshot_failures++;
    self->next_attempt_ms = now_ms + self->backoff_ms;
    self->backoff_ms =
        self->backoff_ms > self->backoff_max_ms / 2 ? self->backoff_max_ms : self->backoff_ms * 2;
}

/* Decodes a snapshot reply into a new sealed registry. 0, or -1 when it is not one. */
static int s_decode_snapshot(const msgpack_object *root, registry_t **registry_out,
                             int64_t *version, const msgpack_object **result_out)
{
    *registry_out = NULL;
    const msgpack_object *ok = pm_map_get(root, "ok");
    const msgpack_object *result = pm_map_get(root, "result");
    const msgpack_object *providers = pm_map_get(result, "providers");
    if (!ok || ok->type != MSGPACK_OBJECT_BOOLEAN || !ok->via.boolean || !result ||
        result->type != MSGPACK_OBJECT_MAP ||
        !s_version_of(pm_map_get(result, "state_version"), version) || !providers ||
        providers->type != MSGPACK_OBJECT_ARRAY)
        return -1;
    registry_t *registry = registry_new();
    if (!registry)
        return -1;
    for (uint32_t i = 0; i < providers->via.array.size; i++) {
        if (s_put_config(registry, &providers->via.array.ptr[i], NULL, 0) != 0) {
            registry_destroy(&registry);
            return -1;
        }
    }
    if (registry_seal(registry) != 0) {
        registry_destroy(&registry);
        return -1;
    }
    *registry_out = registry;
    *result_out = result;
    return 0;
}

int clone_apply_snapshot(clone_t *self, const void *reply, size_t size, int64_t now_ms)
{
    if (!self)
        return -1;
    s_clear_changed_keys(self);
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    registry_t *registry = NULL;
    const msgpack_object *result = NULL;
    int64_t version = -1;
    if (!s_unpack_map(reply, size, &unpacked) ||
        s_decode_snapshot(&unpacked.data, &registry, &version, &result) != 0) {
        msgpack_unpacked_destroy(&unpacked);
        clone_snapshot_failed(self, now_ms);
        return -1;
    }
    char epoch[CLONE_MAX_EPOCH_LEN + 1];
    s_copy_epoch(epoch, pm_map_get(result, "epoch"));
    /* What the primary announced in another run, or below this snapshot, is history. */
    if (self->version < 0 || strcmp(epoch, self->epoch) != 0 || self->primary_version < version)
        self->primary_version = version;
    int64_t status_version;
    if (s_version_of(pm_map_get(result, "status_version"), &status_version))
        self->status_version = status_version;
    msgpack_unpacked_destroy(&unpacked);

    registry_destroy(&self->registry);
    self->registry = registry;
    self->version = version;
    memcpy(self->epoch, epoch, sizeof self->epoch);
    self->last_contact_ms = now_ms;
    self->pending = CLONE_CAUSE_NONE;
    self->caught_up = false;
    self->backoff_ms = CLONE_BACKOFF_MIN_MS;
    self->next_attempt_ms = 0;
    self->counters.snapshots++;
    return 0;
}

/* ------------------------------------------------------------------------ the events */

/* Checks epoch and version of an event or heartbeat against the applied state. true when
 * the caller goes on to apply it; false when it is dropped (already held, or a re-snapshot
 * is now pending: see self->pending). */
static bool s_check_order(clone_t *self, const msgpack_object *root, int64_t version,
                          bool heartbeat)
{
    char epoch[CLONE_MAX_EPOCH_LEN + 1];
    s_copy_epoch(epoch, pm_map_get(root, "epoch"));
    if (strcmp(epoch, self->epoch) != 0) {
        s_resync(self, CLONE_CAUSE_EPOCH);
        return false;
    }
    if (version > self->primary_version)
        self->primary_version = version;
    if (version <= self->version) {
        if (heartbeat && version == self->version) {
            self->caught_up = true;
            return false;
        }
        /* Before anything confirmed the snapshot, older messages are those the snapshot
         * already holds (the Clone pattern's "drop at or below"); after, the primary went
         * backwards. */
        if (self->caught_up)
            s_resync(self, CLONE_CAUSE_BACKWARDS);
        return false;
    }
    if (heartbeat) {
        s_resync(self, CLONE_CAUSE_HEARTBEAT_AHEAD);
        return false;
    }
    if (version > self->version + 1) {
        s_resync(self, CLONE_CAUSE_GAP);
        return false;
    }
    return true;
}

/* Applies a `changed` event (version = applied + 1) on a clone of the registry. 0, or -1 when
 * it cannot be applied (no configs: a v1 service; malformed; no memory): then re-snapshot. */
static int s_apply_changed(clone_t *self, const msgpack_object *root, int64_t version)
{
    const msgpack_object *keys = pm_map_get(root, "providers");
    const msgpack_object *configs = pm_map_get(root, "configs");
    if (!keys || keys->type != MSGPACK_OBJECT_ARRAY || !configs ||
        configs->type != MSGPACK_OBJECT_ARRAY || configs->via.array.size != keys->via.array.size)
        return -1;
    uint32_t n = keys->via.array.size;
    char **names = calloc(n ? n : 1, sizeof *names);
    registry_t *registry = registry_clone(self->registry);
    if (!names || !registry)
        goto fail;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *key = &keys->via.array.ptr[i];
        const msgpack_object *config = &configs->via.array.ptr[i];
        if (!s_is_text(key) || !(names[i] = malloc(key->via.str.size + 1)))
            goto fail;
        memcpy(names[i], key->via.str.ptr, key->via.str.size);
        names[i][key->via.str.size] = '\0';
        if (config->type == MSGPACK_OBJECT_NIL)
            registry_remove(registry, names[i]);
        else if (s_put_config(registry, config, key->via.str.ptr, key->via.str.size) != 0)
            goto fail;
    }
    if (registry_seal(registry) != 0)
        goto fail;
    registry_destroy(&self->registry);
    self->registry = registry;
    self->version = version;
    self->caught_up = true;
    self->changed_keys = names;
    self->changed_count = n;
    self->counters.events_applied++;
    return 0;

fail:
    if (names) {
        for (uint32_t i = 0; i < n; i++)
            free(names[i]);
        free(names);
    }
    registry_destroy(&registry);
    return -1;
}

clone_event_t clone_on_event(clone_t *self, const void *body, size_t size, int64_t now_ms)
{
    if (!self)
        return CLONE_EVENT_IGNORED;
    s_clear_changed_keys(self);
    clone_event_t verdict = CLONE_EVENT_IGNORED;
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    /* Malformed: skipped; a gap or a heartbeat will tell if it mattered. */
    if (!s_unpack_map(body, size, &unpacked))
        goto done;
    const msgpack_object *root = &unpacked.data;
    const msgpack_object *event = pm_map_get(root, "event");
    bool heartbeat = s_str_equals(event, "heartbeat");
    if (!heartbeat && !s_str_equals(event, "changed"))
        goto done; /* kinds a replica does not need */
    int64_t version;
    if (!s_version_of(pm_map_get(root, "state_version"), &version))
        goto done;
    self->last_contact_ms = now_ms;
    if (heartbeat) {
        self->counters.heartbeats++;
        verdict = CLONE_EVENT_HEARTBEAT;
        int64_t status_version;
        if (s_version_of(pm_map_get(root, "status_version"), &status_version))
            self->status_version = status_version;
    }
    /* Until a snapshot is applied, the next one holds whatever this says. */
    if (self->pending != CLONE_CAUSE_NONE)
        goto done;
    if (!s_check_order(self, root, version, heartbeat)) {
        if (self->pending != CLONE_CAUSE_NONE)
            verdict = CLONE_EVENT_RESYNC;
        goto done;
    }
    if (s_apply_changed(self, root, version) == 0) {
        verdict = CLONE_EVENT_APPLIED;
    } else {
        s_resync(self, CLONE_CAUSE_BAD_EVENT);
        verdict = CLONE_EVENT_RESYNC;
    }

done:
    msgpack_unpacked_destroy(&unpacked);
    return verdict;
}

/* --------------------------------------------------------------------------- accessors */

registry_t *clone_registry(const clone_t *self)
{
    return self ? self->registry : NULL;
}

bool clone_synced(const clone_t *self)
{
    return self && self->registry != NULL;
}

int64_t clone_version(const clone_t *self)
{
    return self ? self->version : -1;
}

const char *clone_epoch(const clone_t *self)
{
    return self ? self->epoch : "";
}

int64_t clone_primary_version(const clone_t *self)
{
    return self ? self->primary_version : -1;
}

int64_t clone_status_version(const clone_t *self)
{
    return self ? self->status_version : -1;
}

int64_t clone_last_contact_ms(const clone_t *self)
{
    return self ? self->last_contact_ms : -1;
}

clone_cause_t clone_pending(const clone_t *self)
{
    return self ? self->pending : CLONE_CAUSE_NONE;
}

void clone_counters(const clone_t *self, clone_counters_t *out)
{
    if (!out)
        return;
    if (!self) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = self->counters;
}

const char *const *clone_changed_keys(const clone_t *self, size_t *count)
{
    if (count)
        *count = self ? self->changed_count : 0;
    return self ? (const char *const *)self->changed_keys : NULL;
}
