/*
 * front: the ROUTER front end; reads answered from the snapshot, writes handed to the writer.
 * See front.h.
 */
#include "front.h"

#include "frames.h"
#include "log.h"
#include "pm_proto.h"
#include "registry.h"
#include "wire.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define FRONT_MAX_FRAMES 15       /* routing frames + delimiter + body of one request */
#define FRONT_STOP_GRACE_MS 1500  /* how long the writer may take to finish at shutdown */
#define FRONT_REPLY_LINGER_MS 500 /* replies still queued at close get this long to leave */
#define FRONT_IDLE_WAKE_MS 100    /* front_set_handoffs: longest blocking wait for a request */

/* A provider's ProviderConfig, packed once per provider version: providers are immutable
 * once sealed, and packing a big one (10,000 models) is most of a read's cost otherwise. */
typedef struct {
    const provider_t *provider; /* held by the current snapshot; NULL: empty slot */
    char *bytes;
    size_t size;
} packed_t;

struct front_t {
    auth_t *auth; /* roles: looked up per request (CURVE on) */
    front_reload_fn *reload;
    void *reload_arg;
    double reloaded_at; /* unix seconds of the last SIGHUP reload */
    int reload_ok;      /* -1: none yet, else 0 or 1 */
    void *router;
    void *pipe;
    snapshot_t *snapshot;
    packed_t *packed; /* open addressing by provider pointer; capacity a power of two */
    size_t packed_capacity;
    msgpack_sbuffer reply;
    size_t max_reply; /* PM_PROTO_MAX_REPLY_SIZE; lowered by tests */
    struct timespec started;
    metrics_requests_t *metrics; /* this thread's counters; NULL: off */
    /* Read replica mode: the primary's request endpoint (NULL: a primary), its follower, and
     * whether the follower has sent a first snapshot (the first one of front_new is empty). */
    char *replica_of;
    front_primary_seen_fn *seen;
    void *seen_arg;
    bool synced;
    /* front_set_handoffs: the writer's count of messages sent to us, the number of them we
     * handled, and the writes handed to the writer whose replies have not come back. */
    const atomic_uint_fast64_t *handoffs;
    uint64_t handled;
    size_t in_flight;
    zmq_msg_t frames[FRONT_MAX_FRAMES];
};

/* ------------------------------------------------------------------------ packed cache */

#define FRONT_REPLY_KEEP_BYTES (1024 * 1024) /* a larger reply buffer is freed after use */

static size_t s_slot(const provider_t *provider, size_t capacity)
{
    uintptr_t bits = (uintptr_t)provider >> 4;
    return (size_t)((bits * 0x9E3779B97F4A7C15ull) >> 17) & (capacity - 1);
}

static packed_t *s_find_slot(packed_t *table, size_t capacity, const provider_t *provider)
{
    size_t i = s_slot(provider, capacity);
    while (table[i].provider && table[i].provider != provider)
        i = (i + 1) & (capacity - 1);
    return &table[i];
}

/* After a snapshot swap: keeps the packed bytes of the providers the new snapshot still holds
 * (same pointer = same immutable version), frees the rest. On allocation failure the cache is
 * simply dropped; it is only a cache. */
static void s_rebuild_cache(front_t *self)
{
    const registry_t *reg = self->snapshot->registry;
    size_t capacity = 16;
    while (capacity < 2 * registry_count(reg))
        capacity *= 2;
    packed_t *table = calloc(capacity, sizeof *table);
    for (size_t i = 0; i < self->packed_capacity; i++) {
        packed_t *old = &self->packed[i];
        if (!old->provider)
            continue;
        const char *key = provider_key(old->provider);
        if (table && registry_get(reg, key, strlen(key)) == old->provider)
            *s_find_slot(table, capacity, old->provider) = *old;
        else
            free(old->bytes);
    }
    free(self->packed);
    self->packed = table;
    self->packed_capacity = table ? capacity : 0;
}

static void s_free_cache(front_t *self)
{
    for (size_t i = 0; i < self->packed_capacity; i++)
        free(self->packed[i].bytes);
    free(self->packed);
    self->packed = NULL;
    self->packed_capacity = 0;
}

/* Packs provider's ProviderConfig into pk from the cache, packing it there first. */
static void s_pack_provider(front_t *self, msgpack_packer *pk, const provider_t *provider)
{
    packed_t *slot =
        self->packed ? s_find_slot(self->packed, self->packed_capacity, provider) : NULL;
    if (slot && !slot->provider) {
        msgpack_sbuffer buffer;
        msgpack_sbuffer_init(&buffer);
        msgpack_packer packer;
        msgpack_packer_init(&packer, &buffer, msgpack_sbuffer_write);
        wire_pack_provider(&packer, provider);
        if (buffer.data) {
            slot->size = buffer.size;
            slot->bytes = msgpack_sbuffer_release(&buffer);
            slot->provider = provider;
        }
    }
    if (slot && slot->provider)
        pk->callback(pk->data, slot->bytes, slot->size);
    else
        wire_pack_provider(pk, provider);
}

/* ------------------------------------------------------------------------ read operations */

typedef struct {
    front_t *front;
    const pm_request_t *req;
    const registry_t *reg;
    msgpack_packer *pk;
} read_t;

/* Reads the provider_name argument; packs the error and returns -1 when it is bad. */
static int s_provider_name(read_t *r, pm_str_t *name)
{
    char err[256];
    int rc = pm_arg_str(r->req, "provider_name", name, err, sizeof err);
    if (rc == 0)
        pm_arg_require("provider_name", err, sizeof err);
    if (rc != 1) {
        pm_reply_error(r->pk, r->req->id, PM_ERR_BAD_REQUEST, err);
        return -1;
    }
    return 0;
}

static void s_op_get(read_t *r)
{
    pm_str_t name;
    if (s_provider_name(r, &name) < 0)
        return;
    const provider_t *p = registry_get(r->reg, name.ptr, name.len);
    pm_reply_ok_begin(r->pk, r->req->id);
    if (p)
        s_pack_provider(r->front, r->pk, p);
    else
        msgpack_pack_nil(r->pk);
}

static void s_op_getitem(read_t *r)
{
    pm_str_t name;
    if (s_provider_name(r, &name) < 0)
        return;
    const provider_t *p = registry_get(r->reg, name.ptr, name.len);
    if (!p) {
        wire_pack_error_spans(r->pk, r->req->id, PM_ERR_NOT_FOUND, "Provider '%s' not found", name,
                              (pm_str_t){0});
        return;
    }
    pm_reply_ok_begin(r->pk, r->req->id);
    s_pack_provider(r->front, r->pk, p);
}

static void s_op_contains(read_t *r)
{
    pm_str_t name;
    if (s_provider_name(r, &name) < 0)
        return;
    pm_reply_ok_begin(r->pk, r->req->id);
    if (registry_contains(r->reg, name.ptr, name.len))
        msgpack_pack_true(r->pk);
    else
        msgpack_pack_false(r->pk);
}

static void s_op_keys(read_t *r)
{
    size_t n = registry_count(r->reg);
    pm_reply_ok_begin(r->pk, r->req->id);
    msgpack_pack_array(r->pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        pm_pack_str(r->pk, provider_key(registry_at(r->reg, i)));
}

static void s_op_values(read_t *r, bool items)
{
    size_t n = registry_count(r->reg);
    pm_reply_ok_begin(r->pk, r->req->id);
    msgpack_pack_array(r->pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const provider_t *p = registry_at(r->reg, i);
        if (items) {
            msgpack_pack_array(r->pk, 2);
            pm_pack_str(r->pk, provider_key(p));
        }
        s_pack_provider(r->front, r->pk, p);
    }
}

static void s_op_merged_models(read_t *r, bool scoped)
{
    size_t n = registry_count(r->reg);
    pm_reply_ok_begin(r->pk, r->req->id);
    msgpack_pack_array(r->pk, (uint32_t)registry_model_count(r->reg));
    char small[512];
    for (size_t i = 0; i < n; i++) {
        const provider_t *p = registry_at(r->reg, i);
        const char *key = provider_key(p);
        size_t models = provider_model_count(p);
        for (size_t m = 0; m < models; m++) {
            const char *lng = provider_model_long(p, m), *shrt = provider_model_short(p, m);
            if (!scoped) {
                msgpack_pack_array(r->pk, 2);
                pm_pack_str(r->pk, key);
                msgpack_pack_array(r->pk, 2);
                pm_pack_str(r->pk, lng);
                pm_pack_str(r->pk, shrt);
                continue;
            }
            /* "key/long (short)", the seed's valid_scoped_models format */
            size_t kl = strlen(key), ll = strlen(lng), sl = strlen(shrt);
            size_t len = kl + 1 + ll + 2 + sl + 1;
            char *text = len <= sizeof small ? small : malloc(len);
            if (!text) {
                msgpack_pack_nil(r->pk);
                continue;
            }
            memcpy(text, key, kl);
            text[kl] = '/';
            memcpy(text + kl + 1, lng, ll);
            memcpy(text + kl + 1 + ll, " (", 2);
            memcpy(text + kl + 3 + ll, shrt, sl);
            text[len - 1] = ')';
            pm_pack_strn(r->pk, text, len);
            if (text != small)
                free(text);
        }
    }
}

/* get_api_for_model_string (with_provider) and validate_model. */
static void s_op_resolve(read_t *r, bool with_provider)
{
    char err[256];
    pm_str_t model;
    int rc = pm_arg_str(r->req, "model_string", &model, err, sizeof err);
    if (rc == 0)
        pm_arg_require("model_string", err, sizeof err);
    if (rc == 1 && model.len > WIRE_MAX_MODEL_STRING_LEN) {
        snprintf(err, sizeof err, "argument 'model_string' is longer than %d bytes",
                 WIRE_MAX_MODEL_STRING_LEN);
        rc = -1;
    }
    if (rc != 1) {
        pm_reply_error(r->pk, r->req->id, PM_ERR_BAD_REQUEST, err);
        return;
    }
    registry_resolution_t res;
    registry_status_t status = registry_resolve(r->reg, model.ptr, model.len, &res);
    pm_str_t shown = {res.model, res.model_len};
    if (status == REGISTRY_INVALID_FOR_PROVIDER) {
        pm_str_t prefix = {res.prefix, strlen(res.prefix)};
        wire_pack_error_spans(r->pk, r->req->id, PM_ERR_INVALID_MODEL,
                              "Invalid model for provider %s: %s", prefix, shown);
        return;
    }
    if (status != REGISTRY_RESOLVED) {
        wire_pack_error_spans(r->pk, r->req->id, PM_ERR_INVALID_MODEL, "Invalid model: %s", shown,
                              (pm_str_t){0});
        return;
    }
    pm_reply_ok_begin(r->pk, r->req->id);
    if (with_provider) {
        msgpack_pack_array(r->pk, 2);
        s_pack_provider(r->front, r->pk, res.provider);
    }
    pm_pack_str(r->pk, res.long_name);
}

static void s_op_available_models(read_t *r)
{
    char err[256];
    pm_str_t filter = {NULL, 0};
    if (pm_arg_str_or_nil(r->req, "filter_by_provider", &filter, err, sizeof err) < 0) {
        pm_reply_error(r->pk, r->req->id, PM_ERR_BAD_REQUEST, err);
        return;
    }
    /* The seed: `if filter_by_provider and name != filter` - an empty filter means all. */
    bool filtered = filter.ptr && filter.len > 0;
    const provider_t *only = filtered ? registry_get(r->reg, filter.ptr, filter.len) : NULL;
    size_t total =
        filtered ? (only ? provider_model_count(only) : 0) : registry_model_count(r->reg);
    pm_reply_ok_begin(r->pk, r->req->id);
    msgpack_pack_array(r->pk, (uint32_t)total);
    size_t n = registry_count(r->reg);
    for (size_t i = 0; i < n; i++) {
        const provider_t *p = registry_at(r->reg, i);
        if (filtered && p != only)
            continue;
        size_t models = provider_model_count(p);
        for (size_t m = 0; m < models; m++)
            pm_pack_str(r->pk, provider_model_long(p, m));
    }
}

static void s_op_short_name(read_t *r)
{
    char err[256];
    pm_str_t name;
    int rc = pm_arg_str(r->req, "long_name", &name, err, sizeof err);
    if (rc == 0)
        pm_arg_require("long_name", err, sizeof err);
    if (rc != 1) {
        pm_reply_error(r->pk, r->req->id, PM_ERR_BAD_REQUEST, err);
        return;
    }
    /* provider_get_short_name is the identity today; the reply is built from the span. */
    pm_reply_ok_begin(r->pk, r->req->id);
    pm_pack_strn(r->pk, name.ptr, name.len);
}

static void s_op_find_model(read_t *r)
{
    char err[256];
    pm_str_t name;
    int rc = pm_arg_str(r->req, "name", &name, err, sizeof err);
    if (rc == 0)
        pm_arg_require("name", err, sizeof err);
    if (rc != 1) {
        pm_reply_error(r->pk, r->req->id, PM_ERR_BAD_REQUEST, err);
        return;
    }
    size_t n = registry_count(r->reg), hits = 0;
    for (size_t i = 0; i < n; i++)
        hits += provider_find_model(registry_at(r->reg, i), name.ptr, name.len) != NULL;
    pm_reply_ok_begin(r->pk, r->req->id);
    msgpack_pack_array(r->pk, (uint32_t)hits);
    for (size_t i = 0; i < n && hits; i++) {
        const provider_t *p = registry_at(r->reg, i);
        const char *lng = provider_find_model(p, name.ptr, name.len);
        if (!lng)
            continue;
        msgpack_pack_array(r->pk, 2);
        s_pack_provider(r->front, r->pk, p);
        pm_pack_str(r->pk, lng);
    }
}

/* snapshot: every ProviderConfig with the versions they are at, all from the one immutable
 * snapshot this request is answered from, so the result is exactly the state at its
 * state_version (a replica applies the events above it). The configs come from the packed
 * cache: after the first snapshot, one of a big registry is a copy of bytes. */
static void s_op_snapshot(front_t *self, read_t *r)
{
    size_t n = registry_count(r->reg);
    pm_reply_ok_begin(r->pk, r->req->id);
    msgpack_pack_map(r->pk, 4);
    pm_pack_str(r->pk, "state_version");
    msgpack_pack_uint64(r->pk, self->snapshot->state_version);
    pm_pack_str(r->pk, "status_version");
    msgpack_pack_uint64(r->pk, self->snapshot->status_version);
    pm_pack_str(r->pk, "epoch");
    pm_pack_str(r->pk, self->snapshot->epoch);
    pm_pack_str(r->pk, "providers");
    msgpack_pack_array(r->pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        s_pack_provider(self, r->pk, registry_at(r->reg, i));
}

/* lag_versions: the primary's last announced state_version minus the one reads are answered
 * from (never below 0: a restarted primary announces lower versions until the re-snapshot);
 * primary_seen_s: seconds since the primary was last heard, nil before that. */
static void s_pack_replica_health(front_t *self, msgpack_packer *pk)
{
    int64_t announced = -1, since = -1;
    if (self->seen)
        self->seen(self->seen_arg, &announced, &since);
    int64_t applied = self->synced ? (int64_t)self->snapshot->state_version : 0;
    pm_pack_str(pk, "lag_versions");
    msgpack_pack_int64(pk, announced > applied ? announced - applied : 0);
    pm_pack_str(pk, "primary_seen_s");
    if (since < 0)
        msgpack_pack_nil(pk);
    else
        msgpack_pack_double(pk, (double)since / 1000.0);
}

static void s_op_health(front_t *self, read_t *r)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double uptime = (double)(now.tv_sec - self->started.tv_sec) +
                    (double)(now.tv_nsec - self->started.tv_nsec) / 1e9;
    pm_reply_ok_begin(r->pk, r->req->id);
    msgpack_pack_map(r->pk, self->replica_of ? 15 : 13);
    pm_pack_str(r->pk, "status");
    pm_pack_str(r->pk, "ok");
    pm_pack_str(r->pk, "version");
    pm_pack_str(r->pk, PM_VERSION);
    pm_pack_str(r->pk, "state_version");
    msgpack_pack_uint64(r->pk, self->snapshot->state_version);
    pm_pack_str(r->pk, "providers");
    msgpack_pack_uint64(r->pk, registry_count(r->reg));
    pm_pack_str(r->pk, "models");
    msgpack_pack_uint64(r->pk, registry_model_count(r->reg));
    pm_pack_str(r->pk, "uptime_s");
    msgpack_pack_double(r->pk, uptime);
    pm_pack_str(r->pk, "jobs_running");
    msgpack_pack_int(r->pk, self->snapshot->jobs_running);
    /* v1.1 (additive; v1 callers ignore unknown keys). */
    pm_pack_str(r->pk, "protocol");
    pm_pack_str(r->pk, PM_PROTO_VERSION_TEXT);
    pm_pack_str(r->pk, "status_version");
    msgpack_pack_uint64(r->pk, self->snapshot->status_version);
    pm_pack_str(r->pk, "epoch");
    pm_pack_str(r->pk, self->snapshot->epoch);
    /* v1.1 reload (SIGHUP): nil until the first one. */
    pm_pack_str(r->pk, "reloaded_at");
    if (self->reload_ok < 0)
        msgpack_pack_nil(r->pk);
    else
        msgpack_pack_double(r->pk, self->reloaded_at);
    pm_pack_str(r->pk, "reload_ok");
    if (self->reload_ok < 0)
        msgpack_pack_nil(r->pk);
    else if (self->reload_ok)
        msgpack_pack_true(r->pk);
    else
        msgpack_pack_false(r->pk);
    /* v1.1 read replicas: the role, on a primary too. */
    pm_pack_str(r->pk, "role");
    pm_pack_str(r->pk, self->replica_of ? "replica" : "primary");
    if (self->replica_of)
        s_pack_replica_health(self, r->pk);
}

static void s_dispatch_read(front_t *self, const pm_request_t *req, msgpack_packer *pk)
{
    read_t r = {self, req, self->snapshot->registry, pk};
    switch (req->op) {
    case PM_OP_GET:
    case PM_OP_GET_PROVIDER_CONFIG:
        s_op_get(&r);
        break;
    case PM_OP_GETITEM:
        s_op_getitem(&r);
        break;
    case PM_OP_CONTAINS:
        s_op_contains(&r);
        break;
    case PM_OP_KEYS:
    case PM_OP_GET_ALL_PROVIDER_NAMES:
        s_op_keys(&r);
        break;
    case PM_OP_VALUES:
        s_op_values(&r, false);
        break;
    case PM_OP_ITEMS:
        s_op_values(&r, true);
        break;
    case PM_OP_MERGED_MODELS:
        s_op_merged_models(&r, false);
        break;
    case PM_OP_VALID_SCOPED_MODELS:
        s_op_merged_models(&r, true);
        break;
    case PM_OP_GET_API_FOR_MODEL_STRING:
        s_op_resolve(&r, true);
        break;
    case PM_OP_VALIDATE_MODEL:
        s_op_resolve(&r, false);
        break;
    case PM_OP_GET_AVAILABLE_MODELS:
        s_op_available_models(&r);
        break;
    case PM_OP_GET_SHORT_NAME:
        s_op_short_name(&r);
        break;
    case PM_OP_FIND_MODEL:
        s_op_find_model(&r);
        break;
    case PM_OP_HEALTH:
        s_op_health(self, &r);
        break;
    case PM_OP_SNAPSHOT:
        s_op_snapshot(self, &r);
        break;
    default:
        pm_reply_error(pk, req->id, PM_ERR_INTERNAL, "write operation reached the read path");
        break;
    }
}

/* ------------------------------------------------------------------------ socket loop */

/* A read reply larger than the reply limit is never sent: no client could receive it (their
 * ZMQ_MAXMSGSIZE is that limit, and a too-large message only drops the connection), so the
 * caller gets `internal` saying why instead. */
static void s_refuse_large_reply(front_t *self, msgpack_packer *pk, const msgpack_object *id)
{
    size_t size = self->reply.size;
    char limit[48], message[128];
    if (self->max_reply % (1024 * 1024) == 0)
        snprintf(limit, sizeof limit, "%zu MiB", self->max_reply / (1024 * 1024));
    else
        snprintf(limit, sizeof limit, "%zu-byte", self->max_reply);
    snprintf(message, sizeof message, "Reply of %zu bytes exceeds the %s reply limit", size, limit);
    log_warn("front: %s", message);
    self->reply.size = 0;
    pm_reply_error(pk, id, PM_ERR_INTERNAL, message);
}

/* Sends the routing frames (up to and including the delimiter), then body. */
static int s_send_reply(front_t *self, size_t envelope, const void *body, size_t size)
{
    for (size_t i = 0; i < envelope; i++) {
        if (zmq_msg_send(&self->frames[i], self->router, ZMQ_SNDMORE) < 0)
            return -1;
    }
    return zmq_send(self->router, body, size, 0) < 0 ? -1 : 0;
}

/* Forwards a write to the writer: 'W' followed by the caller's name (empty without CURVE),
 * the routing frames, the body. */
static int s_forward_write(front_t *self, size_t count, const char *caller)
{
    char type[1 + 256];
    size_t len = caller ? strlen(caller) : 0;
    if (len > sizeof type - 1)
        len = sizeof type - 1;
    type[0] = WRITER_MSG_REQUEST;
    if (len)
        memcpy(type + 1, caller, len);
    if (zmq_send(self->pipe, type, 1 + len, ZMQ_SNDMORE) < 0)
        return -1;
    for (size_t i = 0; i < count; i++) {
        if (zmq_msg_send(&self->frames[i], self->pipe, i + 1 < count ? ZMQ_SNDMORE : 0) < 0)
            return -1;
    }
    self->in_flight++;
    return 0;
}

/* Whether the caller (its ZAP user id; NULL without CURVE) may run op. Looked up per request
 * in the current key tables: a reload changes an open connection's role at once, and a
 * removed key's connection is refused every op. */
static bool s_allowed(front_t *self, const char *caller, pm_op_t op)
{
    if (!auth_curve_on(self->auth))
        return true;
    auth_role_t role = auth_role_of(self->auth, caller);
    return role == AUTH_ROLE_ADMIN || (role == AUTH_ROLE_READER && pm_op_allowed_for_reader(op));
}

/* The ops a replica forwards to its primary (through the follower): they change nothing, and
 * their answers (model status, jobs) are not in the snapshot. */
static bool s_forwarded(pm_op_t op)
{
    return op == PM_OP_MODEL_STATUS || op == PM_OP_PROVIDER_STATUS || op == PM_OP_JOB_STATUS;
}
static void s_catch_up(front_t *self);

/* One message from a client: all frames are received before any reply is sent. Returns false
 * when none was waiting (the burst in front_run ends there); sets *wrote when it handed a
 * write to the writer (a send on the pipe, after which the pipe must be looked at again). */
static bool s_handle_client(front_t *self, int flags, bool *wrote)
{
    bool overflow;
    int received = frames_recv(self->router, flags, self->frames, FRONT_MAX_FRAMES, &overflow);
    if (received <= 0)
        return false;
    s_catch_up(self);
    size_t count = (size_t)received;
    /* The envelope ends at the first empty frame; a message without one cannot be answered
     * (no REQ or well-behaved DEALER sends that), so it is dropped. */
    size_t delimiter = 0;
    while (delimiter < count && zmq_msg_size(&self->frames[delimiter]) != 0)
        delimiter++;
    if (overflow || delimiter == 0 || delimiter >= count) {
        frames_close(self->frames, count);
        return true;
    }
    size_t envelope = delimiter + 1;
    size_t body_frames = count - envelope;
    uint64_t received_ns = self->metrics ? metrics_now_ns() : 0;
    pm_op_t op = PM_OP_COUNT_; /* counted as "unknown" until the envelope names one */

    self->reply.size = 0;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &self->reply, msgpack_sbuffer_write);
    if (body_frames != 1) {
        pm_reply_error(&pk, NULL, PM_ERR_BAD_REQUEST,
                       body_frames == 0 ? "request is empty" : "request must be one frame");
    } else {
        zmq_msg_t *body = &self->frames[envelope];
        pm_request_t req;
        char err[256];
        pm_error_t code =
            pm_request_decode(&req, zmq_msg_data(body), zmq_msg_size(body), err, sizeof err);
        op = req.op;
        /* The caller's name comes from the ZAP handler through the connection, never from
         * the request: a connection cannot change who it is. */
        const char *caller = auth_curve_on(self->auth) ? zmq_msg_gets(body, "User-Id") : NULL;
        if (code == PM_ERR_UNKNOWN_OP) {
            wire_pack_error_spans(&pk, req.id, code, "Unknown op '%s'", req.op_name, (pm_str_t){0});
        } else if (code != PM_OK) {
            pm_reply_error(&pk, req.id, code, err);
        } else if (!s_allowed(self, caller, req.op)) {
            /* Before any argument check (v1.1 order of refusals); nothing changes. */
            const char *op_name = pm_op_name(req.op);
            wire_pack_error_spans(&pk, req.id, PM_ERR_FORBIDDEN,
                                  "Operation '%s' is not allowed for this client",
                                  (pm_str_t){op_name, strlen(op_name)}, (pm_str_t){0});
        } else if (self->replica_of && !self->synced && req.op != PM_OP_HEALTH) {
            /* A replica without a first snapshot has nothing true to answer from. */
            wire_pack_error_spans(
                &pk, req.id, PM_ERR_UNAVAILABLE, "Replica not yet synchronised with %s",
                (pm_str_t){self->replica_of, strlen(self->replica_of)}, (pm_str_t){0});
        } else if (self->replica_of && pm_op_is_write(req.op) && !s_forwarded(req.op)) {
            /* After forbidden, before any argument check (v1.1 order of refusals). */
            wire_pack_error_spans(
                &pk, req.id, PM_ERR_READ_ONLY, "Read-only replica; send writes to %s",
                (pm_str_t){self->replica_of, strlen(self->replica_of)}, (pm_str_t){0});
        } else if (pm_op_is_write(req.op)) {
            pm_request_clear(&req);
            *wrote = true;
            if (s_forward_write(self, count, caller) < 0) {
                log_error("front: cannot hand a write to the writer: %s", zmq_strerror(errno));
                frames_close(self->frames, count);
            }
            return true; /* the frames now belong to the writer's message */
        } else {
            s_dispatch_read(self, &req, &pk);
            if (self->reply.size > self->max_reply)
                s_refuse_large_reply(self, &pk, req.id);
        }
        pm_request_clear(&req);
    }
    if (s_send_reply(self, envelope, self->reply.data, self->reply.size) < 0)
        log_debug("front: reply dropped: %s", zmq_strerror(errno));
    if (self->metrics)
        metrics_request_observe(self->metrics, op,
                                metrics_reply_outcome(self->reply.data, self->reply.size),
                                metrics_now_ns() - received_ns);
    frames_close(self->frames, count);
    if (self->reply.alloc > FRONT_REPLY_KEEP_BYTES) {
        /* One big reply (merged_models of a large registry) must not pin its memory. */
        msgpack_sbuffer_destroy(&self->reply);
        msgpack_sbuffer_init(&self->reply);
    }
    return true;
}

/* One message from the writer: a reply to route, a new snapshot, or the stop confirmation.
 * Returns 1 when the writer has stopped, -1 when no message was waiting, else 0. */
static int s_handle_writer(front_t *self)
{
    zmq_msg_t type;
    zmq_msg_init(&type);
    if (zmq_msg_recv(&type, self->pipe, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&type);
        return -1;
    }
    char kind = zmq_msg_size(&type) == 1 ? *(const char *)zmq_msg_data(&type) : '?';
    bool more = zmq_msg_more(&type);
    zmq_msg_close(&type);
    if (kind == WRITER_MSG_STOP)
        return 1;
    self->handled++;
    if (kind == WRITER_MSG_REPLY && self->in_flight > 0)
        self->in_flight--;
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, self->pipe, 0) < 0) {
            zmq_msg_close(&part);
            return 0;
        }
        more = zmq_msg_more(&part);
        if (kind == WRITER_MSG_SNAPSHOT && zmq_msg_size(&part) == sizeof(snapshot_t *)) {
            snapshot_t *next, *old = self->snapshot;
            memcpy(&next, zmq_msg_data(&part), sizeof next);
            WRITER_TSAN_ACQUIRE(next);
            self->snapshot = next;
            self->synced = true;
            /* While the old snapshot still holds its providers: a freed provider's address
             * could otherwise come back as a new version and match a stale entry. */
            s_rebuild_cache(self);
            snapshot_destroy(&old);
        } else if (kind == WRITER_MSG_REPLY) {
            if (zmq_msg_send(&part, self->router, more ? ZMQ_SNDMORE : 0) < 0)
                log_debug("front: reply dropped: %s", zmq_strerror(errno));
        }
        zmq_msg_close(&part);
    }
    return 0;
}

static void s_elapsed_ms(const struct timespec *since, long *ms)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    *ms = (now.tv_sec - since->tv_sec) * 1000L + (now.tv_nsec - since->tv_nsec) / 1000000L;
}

/* The wait of the request loop. zmq_poll costs, per call, a first non-blocking poll(2) and a
 * ZMQ_EVENTS query per socket before it blocks (each query is a getpid and a poll(2) of the
 * socket's mailbox), and the same queries again once it wakes: about six polls and four
 * getpids per wake-up, paid by every request of a lone caller (issue 13). This loop polls the
 * sockets' ZMQ_FD descriptors and the stop pipe itself, with one poll(2), and only when every
 * socket it is responsible for is known to be empty.
 *
 * The rule that makes that safe: a ZMQ_FD only signals commands that arrive after the
 * socket's mailbox was last drained, and a receive that fails with EAGAIN has just drained it
 * (it is what a ZMQ_EVENTS query does). So a socket may be waited on through its ZMQ_FD once a
 * non-blocking receive on it failed with EAGAIN and nothing was sent on it since: a send may
 * process (and so consume) the very command that announced a new message. Hence the two
 * "look again" flags below. */
#define FRONT_BURST 64 /* messages from one side before the other side is looked at */

/* With front_set_handoffs: handles what the writer sent since the last look, so that a read
 * is answered from the newest snapshot. Costs one atomic load when there is nothing (the
 * usual case): a receive on the pipe would be a poll(2) and a getpid(2) inside libzmq. */
static void s_catch_up(front_t *self)
{
    if (!self->handoffs)
        return;
    while (atomic_load_explicit(self->handoffs, memory_order_acquire) != self->handled) {
        /* Counted after the send: the message is on the pipe, a receive finds it. */
        if (s_handle_writer(self) != 0)
            return;
    }
}

/* Handles up to FRONT_BURST writer messages. Returns 1 when the writer has stopped, 0 when
 * its pipe is empty, 2 when more may be waiting. *routed says a reply went to the router. */
static int s_drain_writer(front_t *self, bool *routed)
{
    for (int i = 0; i < FRONT_BURST; i++) {
        int rc = s_handle_writer(self);
        if (rc == 1)
            return 1;
        if (rc < 0)
            return 0;
        *routed = true;
    }
    return 2;
}

/* Reads the signal bytes waiting on fd. True when one asks to stop (also on a read error:
 * a pipe that cannot be read can no longer say stop). Reload bytes run the hook once. */
static bool s_signalled_stop(front_t *self, int fd)
{
    char bytes[64];
    ssize_t n = read(fd, bytes, sizeof bytes);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return false;
    if (n <= 0)
        return true;
    bool reload = false;
    for (ssize_t i = 0; i < n; i++) {
        if (bytes[i] != FRONT_SIGNAL_RELOAD)
            return true;
        reload = true;
    }
    if (reload && self->reload) {
        bool ok = self->reload(self->reload_arg);
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        self->reloaded_at = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
        self->reload_ok = ok ? 1 : 0;
    }
    return false;
}

void front_set_reload(front_t *self, front_reload_fn *fn, void *arg)
{
    self->reload = fn;
    self->reload_arg = arg;
}

int front_run(front_t *self, int stop_fd)
{
    int router_fd, pipe_fd;
    size_t fd_size = sizeof router_fd;
    if (zmq_getsockopt(self->router, ZMQ_FD, &router_fd, &fd_size) < 0 ||
        (fd_size = sizeof pipe_fd, zmq_getsockopt(self->pipe, ZMQ_FD, &pipe_fd, &fd_size)) < 0) {
        log_error("front: cannot get the sockets' descriptors: %s", zmq_strerror(errno));
        return -1;
    }
    struct pollfd fds[3] = {{pipe_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}, {router_fd, POLLIN, 0}};
    bool look_pipe = true, look_router = true; /* not known to be empty */
    int served_blocking = 0;
    for (;;) {
        if (self->handoffs && self->in_flight == 0) {
            /* No write in hand, so no caller waits on the writer: wait in a receive on the
             * request socket alone, as a plain REP server does (one poll(2) inside libzmq
             * per request instead of three, issue 13). The writer's unsolicited snapshots
             * are picked up by s_catch_up before the next read, or at the idle wake-up. The
             * stop pipe is read when a signal interrupts the wait, after FRONT_IDLE_WAKE_MS
             * of quiet, and every FRONT_BURST requests (a flood cannot hide a stop). */
            bool wrote = false;
            bool got = s_handle_client(self, 0, &wrote);
            if (got && !wrote && ++served_blocking < FRONT_BURST)
                continue;
            served_blocking = 0;
            if (!got)
                s_catch_up(self);
            /* After a blocking receive the ZMQ_FD rule above no longer says "empty". */
            look_pipe = look_router = true;
            /* Polled first: the stop descriptor need not be non-blocking. */
            struct pollfd stop = {stop_fd, POLLIN, 0};
            if (poll(&stop, 1, 0) > 0 && s_signalled_stop(self, stop_fd))
                break;
            continue;
        }
        /* The writer first: its snapshot must be current before the next read is answered. */
        if (look_pipe) {
            bool routed = false;
            /* (a stop confirmation is only sent in answer to ours, after this loop) */
            look_pipe = s_drain_writer(self, &routed) == 2;
            if (routed)
                look_router = true; /* the sends may have taken the router's wake-up */
        }
        if (look_router) {
            bool wrote = false;
            int served = 0;
            while (served < FRONT_BURST && s_handle_client(self, ZMQ_DONTWAIT, &wrote))
                served++;
            look_router = served == FRONT_BURST;
            if (wrote)
                look_pipe = true;
        }
        /* Block only when both sockets are known to be empty; otherwise just look at the
         * stop pipe (and pick up readiness) without waiting, so a flood cannot hide a stop. */
        int rc = poll(fds, 3, look_pipe || look_router ? 0 : -1);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            log_error("front: poll failed: %s", strerror(errno));
            return -1;
        }
        if ((fds[1].revents & POLLIN) && s_signalled_stop(self, stop_fd))
            break;
        if (fds[0].revents)
            look_pipe = true;
        if (fds[2].revents)
            look_router = true;
    }

    /* Stop taking requests; let the writer finish what it has and deliver its replies. */
    log_info("stopping: no new requests, finishing the writes in hand");
    char type = WRITER_MSG_STOP;
    if (zmq_send(self->pipe, &type, 1, 0) < 0)
        return -1;
    struct timespec since;
    clock_gettime(CLOCK_MONOTONIC, &since);
    long elapsed = 0;
    while (elapsed < FRONT_STOP_GRACE_MS) {
        zmq_pollitem_t pipe_item = {self->pipe, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&pipe_item, 1, FRONT_STOP_GRACE_MS - elapsed);
        if (rc < 0 && errno != EINTR)
            break;
        if (rc > 0 && s_handle_writer(self) == 1)
            return 0;
        s_elapsed_ms(&since, &elapsed);
    }
    log_warn("stopping: the writer did not finish within %d ms", FRONT_STOP_GRACE_MS);
    return 0;
}

/* ------------------------------------------------------------------------ life cycle */

front_t *front_new(void *zmq_ctx, const config_t *cfg, auth_t *auth, const char *writer_endpoint,
                   snapshot_t **first_p, bool *bind_failed, char *err, size_t err_size)
{
    *bind_failed = false;
    front_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    msgpack_sbuffer_init(&self->reply);
    self->auth = auth;
    self->reload_ok = -1;
    self->max_reply = PM_PROTO_MAX_REPLY_SIZE;
    clock_gettime(CLOCK_MONOTONIC, &self->started);
    int zero = 0, linger = FRONT_REPLY_LINGER_MS;
    int64_t max_size = PM_PROTO_MAX_MESSAGE_SIZE;
    self->router = zmq_socket(zmq_ctx, ZMQ_ROUTER);
    if (!self->router ||
        zmq_setsockopt(self->router, ZMQ_MAXMSGSIZE, &max_size, sizeof max_size) < 0 ||
        zmq_setsockopt(self->router, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
        auth_apply(auth, self->router) < 0) {
        snprintf(err, err_size, "request socket: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_bind(self->router, cfg->endpoint) < 0) {
        *bind_failed = true;
        snprintf(err, err_size, "cannot bind endpoint %s: %s", cfg->endpoint, zmq_strerror(errno));
        goto fail;
    }
    /* Connected only once the bind succeeded: the writer's PAIR takes one peer, and a peer
     * that connects and closes again races with the one that must then stop the writer
     * (writer_stop), whose stop message would be lost and the daemon hang. */
    self->pipe = zmq_socket(zmq_ctx, ZMQ_PAIR);
    if (!self->pipe || zmq_setsockopt(self->pipe, ZMQ_SNDHWM, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(self->pipe, ZMQ_RCVHWM, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(self->pipe, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_connect(self->pipe, writer_endpoint) < 0) {
        snprintf(err, err_size, "writer pipe: %s", zmq_strerror(errno));
        goto fail;
    }
    self->snapshot = *first_p;
    *first_p = NULL;
    s_rebuild_cache(self);
    return self;
fail:
    front_destroy(&self);
    return NULL;
}

int front_set_replica(front_t *self, const char *primary_endpoint, front_primary_seen_fn *seen,
                      void *seen_arg)
{
    char *copy = strdup(primary_endpoint);
    if (!copy)
        return -1;
    free(self->replica_of);
    self->replica_of = copy;
    self->seen = seen;
    self->seen_arg = seen_arg;
    self->synced = false;
    return 0;
}

void front_set_max_reply(front_t *self, size_t max_bytes)
{
    self->max_reply = max_bytes;
}

void front_set_handoffs(front_t *self, const atomic_uint_fast64_t *handoffs)
{
    int wake_ms = FRONT_IDLE_WAKE_MS;
    if (zmq_setsockopt(self->router, ZMQ_RCVTIMEO, &wake_ms, sizeof wake_ms) < 0) {
        log_warn("front: cannot set the idle wake-up (%s); waiting with poll(2)",
                 zmq_strerror(errno));
        return;
    }
    /* Every message the writer counted went to this front end's pipe (the writer's sends
     * wait for a peer), so all of them are still to be handled here: handled starts at 0. */
    self->handoffs = handoffs;
}

void front_set_metrics(front_t *self, metrics_t *metrics)
{
    self->metrics = metrics_requests(metrics, METRICS_SET_FRONT);
}

void front_destroy(front_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    front_t *self = *self_p;
    if (self->router)
        zmq_close(self->router);
    if (self->pipe)
        zmq_close(self->pipe);
    /* Snapshots still in flight on the pipe are lost with it; the writer is gone by now. */
    s_free_cache(self);
    snapshot_destroy(&self->snapshot);
    msgpack_sbuffer_destroy(&self->reply);
    free(self->replica_of);
    free(self);
    *self_p = NULL;
}
