/*
 * writer: the single writer thread (see writer.h for the message protocol).
 *
 * Every change is applied to a copy-on-write clone of the current registry; a batch of queued
 * requests is committed together: seal the clone, persist it once, then make it current,
 * publish the snapshot and the events, and send the replies. A batch whose file could not be
 * written is thrown away whole: each of its changes is answered with an error and nothing
 * changes. A file written whose durability is unknown (the directory fsync failed after the
 * rename) is the new state: memory follows the file, callers get ok, the log a warning.
 * A request whose change fails half way (out of memory) is undone before the next request
 * of the batch is applied, so that only whole changes are ever committed.
 */
#include "writer.h"

#include "discovery.h"
#include "frames.h"
#include "inproc.h"
#include "owner.h"
#include "log.h"
#include "pm_proto.h"
#include "status_keeper.h"
#include "status_ops.h"
#include "store.h"
#include "wire.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define WRITER_MAX_BATCH 256 /* requests committed together at most */
#define WRITER_MAX_FRAMES 16 /* frames of one request message, type byte included */
/* Group commit: when a commit is expensive (a big registry), the writer waits a little for
 * more writes before committing, at most this share of the last commit's duration ... */
#define WRITER_GATHER_SHARE 0.05
/* ... and never longer than this (ms). Cheap commits (under 20 ms) never wait. */
#define WRITER_GATHER_MAX_MS 3
#define WRITER_TRIM_MODELS 50000 /* registries this big return freed memory after commits */
/* How long a message to the front end may wait for one to connect (ms): only a writer with no
 * front end ever waits (see writer_new). */
#define WRITER_SEND_TIMEOUT_MS 1000
#define WRITER_MAX_CALLER 255     /* a key name (file name without ".pub") */
#define WRITER_CONTROL_RELOAD 'L' /* control pipe: 'L' + a writer_reload_t pointer */

struct writer_t {
    void *ctx;
    pthread_t thread;
    bool thread_started;
    void *pipe;                    /* PAIR, bound; used only by the thread once it runs */
    atomic_uint_fast64_t handoffs; /* messages wholly sent on pipe (writer_handoffs) */
    /* The stop signal of writer_stop: a PAIR pair of our own, so that stopping needs neither
     * the front end nor its message format. control is the owner's end, control_peer the
     * thread's; both stay open until writer_destroy. */
    void *control;
    void *control_peer;
    void *pub; /* events PUB */
    discovery_t *discovery;
    status_keeper_t *status; /* model status: its table, journal and discovery observer */
    registry_t *current;     /* sealed */
    uint64_t state_version;
    int jobs_running_published;
    config_getenv_fn *getenv_fn;
    char endpoint[OWNER_ENDPOINT_SIZE];
    char store_path[PATH_MAX];
    snapshot_t *first;     /* for the front end, made before the thread starts */
    struct batch *batch;   /* reused for every batch: it is large (WRITER_MAX_BATCH items) */
    double last_commit_ms; /* how long the last seal + persist took */
    char epoch[WRITER_EPOCH_SIZE];
    int heartbeat_ms;
    double next_heartbeat_ms; /* monotonic */
    bool stopping;
    bool stop_sent; /* writer_stop already signalled */
    /* Metrics (NULL: off). Set once by writer_set_metrics while the thread may run, hence
     * atomic; the state at start-up seeds the gauges (read-only once the thread runs). */
    _Atomic(metrics_t *) metrics;
    bool metrics_synced; /* the thread's own: gauges published since metrics was set */
    uint64_t start_status_version;
    size_t start_providers;
    size_t start_counts[STATUS_STATE_COUNT];
    /* Who made the changes being committed, for the `by` of their `models` events (the
     * changes of the commit under way; borrowed during one commit only). */
    bool curve; /* `by` is only sent with CURVE on (without it nobody is named) */
    const struct change *event_changes;
    size_t event_count;
};

/* Settings handed to the thread by writer_reload (owned by the message, then the thread). */
typedef struct {
    config_discovery_t discovery;
    config_ignore_t ignore;
    size_t provider_ignore_count;
    config_ignore_t *provider_ignore;
    size_t spec_count; /* provider overrides that differ from the running ones */
    provider_spec_t *specs;
} writer_reload_t;

/* One request of a batch, held until the batch is committed. */
typedef struct {
    zmq_msg_t frames[WRITER_MAX_FRAMES]; /* routing frames + delimiter (type byte dropped) */
    size_t frame_count;
    zmq_msg_t body; /* the request; its strings (and the id) point into it */
    bool has_body;
    msgpack_sbuffer reply;
    bool deferred;   /* a change or a persist: the reply waits for the commit */
    bool is_persist; /* persist_provider_configs: packed at commit time */
    const msgpack_object *id;
    pm_request_t request; /* kept alive for the id of deferred replies */
    char *changed_key;    /* the key this request changed, for its event */
    uint64_t received_ns; /* for request_duration_seconds (0 without metrics) */
    /* Its ProviderConfig as this request left it, for its event: the last config_size bytes
     * of the reply, from config_offset (no config: a removal). The event must carry what the
     * reply carried, even when a later request of the same batch changes the same provider
     * again; the reply is not touched again before the events are published. */
    bool has_config;
    size_t config_offset;
    size_t config_size;
    char caller[WRITER_MAX_CALLER + 1]; /* the caller's key name ("" without CURVE) */
} pending_t;

/* One change for the events: a key and its new packed config (NULL: removed). lost: the
 * config could not be packed (out of memory), so the event is not sent at all: a replica
 * must see a gap and re-snapshot, never a wrong config. */
typedef struct change {
    const char *key;
    const char *config;
    size_t config_size;
    bool lost;
    const char *by; /* v1.1 audit: who made the change (NULL: nobody named, or no CURVE) */
} change_t;

typedef struct batch {
    pending_t items[WRITER_MAX_BATCH];
    size_t count;
    registry_t *next; /* clone of current, created by the first change */
    size_t change_count;
    bool need_persist;
} batch_t;

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double s_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

snapshot_t *snapshot_new(registry_t *registry, uint64_t state_version, int jobs_running)
{
    snapshot_t *self = malloc(sizeof *self);
    if (!self)
        return NULL;
    self->registry = registry_ref(registry);
    self->state_version = state_version;
    self->jobs_running = jobs_running;
    self->status_version = 0;
    self->epoch[0] = '\0';
    return self;
}

void snapshot_destroy(snapshot_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    registry_destroy(&(*self_p)->registry);
    free(*self_p);
    *self_p = NULL;
}

/* ------------------------------------------------------------------------ metrics */

static metrics_t *s_metrics(writer_t *self)
{
    return atomic_load_explicit(&self->metrics, memory_order_acquire);
}

/* The gauges from the current state: O(1) (the status table keeps its counts). */
static void s_publish_gauges(writer_t *self)
{
    metrics_t *metrics = s_metrics(self);
    if (!metrics)
        return;
    size_t counts[STATUS_STATE_COUNT];
    model_status_counts(status_keeper_table(self->status), counts);
    metrics_set_state(metrics, self->state_version, status_keeper_version(self->status),
                      registry_count(self->current), counts);
    self->metrics_synced = true;
}

static void s_count_upstream(void *ctx, const char *key, bool probe, discovery_verdict_t verdict,
                             double latency_ms)
{
    static const metrics_verdict_t verdicts[] = {
        [DISCOVERY_VERDICT_VALID] = METRICS_VERDICT_VALID,
        [DISCOVERY_VERDICT_INVALID_MODEL] = METRICS_VERDICT_INVALID_MODEL,
        [DISCOVERY_VERDICT_AUTH_ERROR] = METRICS_VERDICT_AUTH,
        [DISCOVERY_VERDICT_TRANSIENT] = METRICS_VERDICT_TRANSIENT,
        [DISCOVERY_VERDICT_ERROR] = METRICS_VERDICT_ERROR,
    };
    metrics_t *metrics = s_metrics(ctx);
    if (!metrics || (unsigned)verdict >= sizeof verdicts / sizeof verdicts[0])
        return;
    /* No request made (a provider without a usable key): counted, not timed. */
    metrics_upstream_observe(metrics, key, probe ? METRICS_UPSTREAM_PROBE : METRICS_UPSTREAM_LIST,
                             verdicts[verdict], latency_ms > 0 ? latency_ms / 1000.0 : -1.0);
}

static void s_count_job(void *ctx, discovery_job_kind_t kind, bool success)
{
    metrics_job_done(s_metrics(ctx),
                     kind == DISCOVERY_JOB_VERIFY ? METRICS_JOB_VERIFY : METRICS_JOB_DISCOVER,
                     success);
}

void writer_set_metrics(writer_t *self, metrics_t *metrics)
{
    if (!self)
        return;
    metrics_set_state(metrics, 0, self->start_status_version, self->start_providers,
                      self->start_counts);
    atomic_store_explicit(&self->metrics, metrics, memory_order_release);
}

/* ------------------------------------------------------------------------ sending */

static int s_send_snapshot(writer_t *self)
{
    int running = discovery_running(self->discovery);
    snapshot_t *snap = snapshot_new(self->current, self->state_version, running);
    if (!snap) {
        log_error("writer: out of memory publishing a snapshot");
        return -1;
    }
    snap->status_version = status_keeper_version(self->status);
    memcpy(snap->epoch, self->epoch, sizeof snap->epoch);
    WRITER_TSAN_RELEASE(snap);
    char type = WRITER_MSG_SNAPSHOT;
    if (zmq_send(self->pipe, &type, 1, ZMQ_SNDMORE) < 0 ||
        zmq_send(self->pipe, &snap, sizeof snap, 0) < 0) {
        log_error("writer: cannot send a snapshot: %s", zmq_strerror(errno));
        snapshot_destroy(&snap);
        return -1;
    }
    atomic_fetch_add_explicit(&self->handoffs, 1, memory_order_release);
    self->jobs_running_published = running;
    s_publish_gauges(self);
    return 0;
}

/* Sends one packed event on topic `providers`. An event that could not be packed (out of
 * memory) is not sent: a subscriber then sees a gap, which the Clone pattern repairs. */
static void s_send_event(writer_t *self, const msgpack_sbuffer *buf, int packed)
{
    if (packed != 0 || !buf->data) {
        log_error("writer: out of memory packing an event");
        return;
    }
    /* PUB never blocks: a slow subscriber loses events at its high-water mark, by design. */
    if (zmq_send(self->pub, PM_PROTO_EVENTS_TOPIC, strlen(PM_PROTO_EVENTS_TOPIC), ZMQ_SNDMORE) <
            0 ||
        zmq_send(self->pub, buf->data, buf->size, 0) < 0)
        log_warn("writer: cannot publish event: %s", zmq_strerror(errno));
}

static void s_publish_event(writer_t *self, uint64_t version, const change_t *change)
{
    if (change->lost) {
        log_error("writer: event of state_version %llu not sent (out of memory)",
                  (unsigned long long)version);
        return;
    }
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, change->by ? 6 : 5);
    if (change->by) { /* v1.1 audit: who made the change (absent without CURVE) */
        rc |= pm_pack_str(&pk, "by");
        rc |= pm_pack_str(&pk, change->by);
    }
    rc |= pm_pack_str(&pk, "event");
    rc |= pm_pack_str(&pk, "changed");
    rc |= pm_pack_str(&pk, "state_version");
    rc |= msgpack_pack_uint64(&pk, version);
    rc |= pm_pack_str(&pk, "providers");
    rc |= msgpack_pack_array(&pk, 1);
    rc |= pm_pack_str(&pk, change->key);
    /* v1.1: the new ProviderConfig of each key (nil: removed), so that a replica applies the
     * change without asking; v1 subscribers ignore the key. */
    rc |= pm_pack_str(&pk, "configs");
    rc |= msgpack_pack_array(&pk, 1);
    if (change->config)
        rc |= msgpack_sbuffer_write(&buf, change->config, change->config_size);
    else
        rc |= msgpack_pack_nil(&pk);
    rc |= pm_pack_str(&pk, "epoch");
    rc |= pm_pack_str(&pk, self->epoch);
    s_send_event(self, &buf, rc);
    msgpack_sbuffer_destroy(&buf);
}

/* A heartbeat: the versions as of now, in order with the changes on the same socket, so that
 * a subscriber that hears one knows it has missed nothing up to it, or that it has. */
static void s_publish_heartbeat(writer_t *self)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, 4);
    rc |= pm_pack_str(&pk, "event");
    rc |= pm_pack_str(&pk, "heartbeat");
    rc |= pm_pack_str(&pk, "state_version");
    rc |= msgpack_pack_uint64(&pk, self->state_version);
    rc |= pm_pack_str(&pk, "status_version");
    rc |= msgpack_pack_uint64(&pk, status_keeper_version(self->status));
    rc |= pm_pack_str(&pk, "epoch");
    rc |= pm_pack_str(&pk, self->epoch);
    s_send_event(self, &buf, rc);
    msgpack_sbuffer_destroy(&buf);
}

/* Sends the heartbeat when it is due and returns the ms until the next one (>= 0). A writer
 * that fell behind (a long commit) sends one and starts a new period from now rather than a
 * burst of catch-up heartbeats. */
static long s_heartbeat_due(writer_t *self)
{
    double now = s_monotonic_ms();
    if (now >= self->next_heartbeat_ms) {
        s_publish_heartbeat(self);
        self->next_heartbeat_ms += self->heartbeat_ms;
        if (self->next_heartbeat_ms <= now)
            self->next_heartbeat_ms = now + self->heartbeat_ms;
    }
    double left = self->next_heartbeat_ms - now;
    return left < 1 ? 1 : (long)left + 1;
}

/* A fresh epoch: 64 random bits as 16 hex digits. getrandom() does not fail for 8 bytes once
 * the pool is ready; before that (early boot) the time, pid and an address stand in, which is
 * still different at every start, all an epoch needs. */
static void s_new_epoch(char *out, size_t size)
{
    uint64_t bits = 0;
    if (getrandom(&bits, sizeof bits, GRND_NONBLOCK) != (ssize_t)sizeof bits) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        bits = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 20) ^
               (uint64_t)(uintptr_t)out;
    }
    snprintf(out, size, "%016llx", (unsigned long long)bits);
}

/* The caller who changed provider key in the commit under way (NULL: none named). */
static const char *s_event_by(const writer_t *self, const char *key, size_t len)
{
    for (size_t i = 0; i < self->event_count; i++) {
        const char *k = self->event_changes[i].key;
        if (self->event_changes[i].by && strlen(k) == len && memcmp(k, key, len) == 0)
            return self->event_changes[i].by;
    }
    return NULL;
}

/* Packs body (a msgpack map) again with "by" added. The status module packs its events
 * without knowing who asked; the writer does. 0, or -1 (then the event goes out as it was). */
static int s_add_by(const void *body, size_t size, const char *by_of_key, msgpack_sbuffer *out)
{
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    size_t offset = 0;
    int rc = -1;
    if (msgpack_unpack_next(&unpacked, body, size, &offset) != MSGPACK_UNPACK_SUCCESS ||
        unpacked.data.type != MSGPACK_OBJECT_MAP || offset != size)
        goto done;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, unpacked.data.via.map.size + 1);
    pm_pack_str(&pk, "by");
    pm_pack_str(&pk, by_of_key);
    for (uint32_t i = 0; i < unpacked.data.via.map.size; i++) {
        msgpack_pack_object(&pk, unpacked.data.via.map.ptr[i].key);
        msgpack_pack_object(&pk, unpacked.data.via.map.ptr[i].val);
    }
    rc = out->data ? 0 : -1;
done:
    msgpack_unpacked_destroy(&unpacked);
    return rc;
}

/* status_keeper's publisher: `models` events go out on the same PUB socket, with the `by` of
 * the change that caused them. */
static void s_publish_raw(void *arg, const char *topic, const void *body, size_t size)
{
    writer_t *self = arg;
    msgpack_sbuffer with_by;
    msgpack_sbuffer_init(&with_by);
    /* Only when someone is named (never without CURVE): a models event can be large. */
    bool named = false;
    for (size_t i = 0; i < self->event_count && !named; i++)
        named = self->event_changes[i].by != NULL;
    if (named) {
        msgpack_unpacked unpacked;
        msgpack_unpacked_init(&unpacked);
        size_t offset = 0;
        const char *by = NULL;
        if (msgpack_unpack_next(&unpacked, body, size, &offset) == MSGPACK_UNPACK_SUCCESS) {
            const msgpack_object *provider = pm_map_get(&unpacked.data, "provider");
            if (provider && provider->type == MSGPACK_OBJECT_STR)
                by = s_event_by(self, provider->via.str.ptr, provider->via.str.size);
        }
        if (by && s_add_by(body, size, by, &with_by) == 0) {
            body = with_by.data;
            size = with_by.size;
        }
        msgpack_unpacked_destroy(&unpacked);
    }
    if (zmq_send(self->pub, topic, strlen(topic), ZMQ_SNDMORE) < 0 ||
        zmq_send(self->pub, body, size, 0) < 0)
        log_warn("writer: cannot publish event: %s", zmq_strerror(errno));
    msgpack_sbuffer_destroy(&with_by);
}

/* Commits model status after the registry changed (or a job part ended): sync, journal, then
 * one `models` event per provider; health learns the new status_version by a snapshot. */
static void s_commit_status(writer_t *self, const char *const *only, size_t only_count,
                            bool send_snapshot)
{
    int rc = status_keeper_commit(self->status, self->current, s_now(), only, only_count,
                                  s_publish_raw, self);
    if (rc < 0)
        log_error("writer: model status not committed (kept for the next commit)");
    if (rc > 0 && send_snapshot)
        s_send_snapshot(self);
}

static bool s_refuse_oversized(pending_t *item);

/* The caller's name for the audit lines ("-" without CURVE). */
static const char *s_who(const pending_t *item)
{
    return item->caller[0] ? item->caller : "-";
}

static void s_send_reply(writer_t *self, pending_t *item)
{
    /* Changes were checked when applied; this catches every other reply (job_status). */
    s_refuse_oversized(item);
    /* Counted before the reply leaves: a caller that holds its reply finds it in /metrics. */
    metrics_t *metrics = s_metrics(self);
    if (metrics && item->received_ns)
        metrics_request_observe(metrics_requests(metrics, METRICS_SET_WRITER), item->request.op,
                                metrics_reply_outcome(item->reply.data, item->reply.size),
                                metrics_now_ns() - item->received_ns);
    char type = WRITER_MSG_REPLY;
    int rc = zmq_send(self->pipe, &type, 1, ZMQ_SNDMORE);
    for (size_t i = 0; rc >= 0 && i < item->frame_count; i++)
        rc = zmq_msg_send(&item->frames[i], self->pipe, ZMQ_SNDMORE);
    if (rc >= 0)
        rc = zmq_send(self->pipe, item->reply.data, item->reply.size, 0);
    if (rc < 0)
        log_error("writer: cannot hand a reply to the front end: %s", zmq_strerror(errno));
    else
        atomic_fetch_add_explicit(&self->handoffs, 1, memory_order_release);
}

/* ------------------------------------------------------------------------ operations */

static registry_t *s_next(writer_t *self, batch_t *batch)
{
    if (!batch->next)
        batch->next = registry_clone(self->current);
    return batch->next;
}

/* The registry that reflects this batch so far. */
static const registry_t *s_view(const writer_t *self, const batch_t *batch)
{
    return batch->next ? batch->next : self->current;
}

/* Tests inject a failure after a change is applied (writer_set_fault_hook); NULL in the daemon.
 * Atomic because a test sets it while the writer thread runs. */
static _Atomic(writer_fault_fn *) s_fault_hook; /* NULL: static storage starts zeroed */

void writer_set_fault_hook(writer_fault_fn *hook)
{
    atomic_store(&s_fault_hook, hook);
}

static bool s_injected_fault(const char *key)
{
    writer_fault_fn *hook = atomic_load(&s_fault_hook);
    return hook && hook(key);
}

/* The undo of one request's change to the batch's next registry: a change that fails half way
 * (out of memory) must leave nothing behind, or it would be committed with the next change of
 * the batch. Holding a reference to the provider as it was costs nothing and makes the
 * registry copy it before any change (copy-on-write), so it stays as it was. */
typedef struct {
    const char *key;
    provider_t *before; /* our reference; NULL when the request creates the provider */
} undo_t;

static void s_undo_begin(registry_t *next, const char *key, undo_t *undo)
{
    undo->key = key;
    const provider_t *old = registry_get(next, key, strlen(key));
    /* Taking a reference changes only the provider's atomic count, never what it holds. */
    undo->before = old ? provider_ref((provider_t *)old) : NULL;
}

/* Puts back what was there. Neither step allocates: the provider returns to its own slot (its
 * model count was in the registry before), or the one created is removed. */
static void s_undo_rollback(registry_t *next, undo_t *undo)
{
    if (undo->before) {
        if (registry_put(next, &undo->before) < 0) {
            log_error("writer: cannot roll back the change of %s", undo->key);
            provider_destroy(&undo->before);
        }
    } else {
        registry_remove(next, undo->key);
    }
}

static void s_undo_end(undo_t *undo)
{
    provider_destroy(&undo->before);
}

/* An sbuffer writer that remembers a failed write: wire_pack_provider() does not report one,
 * and a config cut short must never reach an event. */
typedef struct {
    msgpack_sbuffer *sbuf;
    bool failed;
} s_tracked_t;

static int s_tracked_write(void *data, const char *buf, size_t len)
{
    s_tracked_t *self = data;
    if (self->failed || msgpack_sbuffer_write(self->sbuf, buf, len) != 0) {
        self->failed = true;
        return -1;
    }
    return 0;
}

/* Packs provider's ProviderConfig at the end of sbuf. 0, or -1 when out of memory. */
static int s_pack_config(msgpack_sbuffer *sbuf, const provider_t *provider)
{
    s_tracked_t tracked = {sbuf, false};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &tracked, s_tracked_write);
    wire_pack_provider(&pk, provider);
    return tracked.failed ? -1 : 0;
}

/* Packs the ok reply with provider's ProviderConfig as its result, and remembers where the
 * config is, for the change's event (packed once: a big provider's config is most of a
 * write's cost). -1 when out of memory. */
static int s_reply_config(pending_t *item, const provider_t *provider)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, &item->reply, msgpack_sbuffer_write);
    if (pm_reply_ok_begin(&pk, item->id) < 0)
        return -1;
    item->config_offset = item->reply.size;
    if (s_pack_config(&item->reply, provider) < 0)
        return -1;
    item->config_size = item->reply.size - item->config_offset;
    item->has_config = true;
    return 0;
}

/* Replaces a reply that no client would accept (over PM_PROTO_MAX_REPLY_SIZE) by the error
 * that says so. True when it did. */
static bool s_refuse_oversized(pending_t *item)
{
    if (wire_reply_fits(item->reply.size))
        return false;
    size_t size = item->reply.size;
    item->reply.size = 0;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &item->reply, msgpack_sbuffer_write);
    wire_pack_reply_too_large(&pk, item->id, size);
    log_error("writer: reply of %zu bytes refused (over the reply limit)", size);
    return true;
}

static void s_op_set_provider(writer_t *self, batch_t *batch, pending_t *item, msgpack_packer *pk)
{
    char err[256];
    provider_spec_t spec;
    int rc = wire_spec_from_request(&item->request, &spec, err, sizeof err);
    if (rc < 0) {
        pm_reply_error(pk, item->id, rc == -1 ? PM_ERR_BAD_REQUEST : PM_ERR_INTERNAL, err);
        return;
    }
    const registry_t *view = s_view(self, batch);
    const provider_t *old = registry_get(view, spec.key, strlen(spec.key));
    size_t old_models = old ? provider_model_count(old) : 0;
    size_t new_models = spec.has_valid_models ? spec.model_count : old_models;
    if (!old && registry_count(view) >= REGISTRY_MAX_PROVIDERS) {
        pm_reply_error(pk, item->id, PM_ERR_BAD_REQUEST, "too many providers");
        goto done;
    }
    if (registry_model_count(view) - old_models + new_models > REGISTRY_MAX_MODELS) {
        pm_reply_error(pk, item->id, PM_ERR_BAD_REQUEST, "too many models in the registry");
        goto done;
    }
    registry_t *next = s_next(self, batch);
    if (!next) {
        pm_reply_error(pk, item->id, PM_ERR_INTERNAL, "out of memory");
        goto done;
    }
    undo_t undo;
    s_undo_begin(next, spec.key, &undo);
    if (provider_spec_apply(&spec, next, PROVIDER_SPEC_REPLACE_MODELS, false) < 0) {
        /* provider_spec_apply changes nothing when it fails */
        pm_reply_error(pk, item->id, PM_ERR_INTERNAL, "out of memory");
        s_undo_end(&undo);
        goto done;
    }
    provider_t *edited = s_injected_fault(spec.key) ? NULL : registry_edit(next, spec.key);
    /* The environment wins, as at start-up (also for a provider created now). */
    if (!edited || (!old && config_apply_env_key(edited, self->getenv_fn) < 0)) {
        s_undo_rollback(next, &undo);
        s_undo_end(&undo);
        pm_reply_error(pk, item->id, PM_ERR_INTERNAL, "out of memory");
        goto done;
    }
    if (s_reply_config(item, edited) < 0) {
        item->reply.size = 0;
        item->has_config = false;
        s_undo_rollback(next, &undo);
        s_undo_end(&undo);
        pm_reply_error(pk, item->id, PM_ERR_INTERNAL, "out of memory");
        goto done;
    }
    if (s_refuse_oversized(item)) {
        s_undo_rollback(next, &undo);
        s_undo_end(&undo);
        goto done;
    }
    s_undo_end(&undo);
    item->deferred = true;
    item->changed_key = spec.key;
    spec.key = NULL;
    batch->change_count++;
    char masked[32];
    log_info("audit: set_provider %s (%zu models, key %s) by %s", item->changed_key,
             provider_model_count(edited),
             log_mask_key(provider_api_key(edited), masked, sizeof masked), s_who(item));
done:
    provider_spec_clear(&spec);
}

static void s_op_remove_provider(writer_t *self, batch_t *batch, pending_t *item,
                                 msgpack_packer *pk)
{
    char err[256];
    pm_str_t key;
    if (wire_required_str(&item->request, "provider", WIRE_MAX_NAME_LEN, &key, err, sizeof err) <
        0) {
        pm_reply_error(pk, item->id, PM_ERR_BAD_REQUEST, err);
        return;
    }
    const provider_t *old = registry_get(s_view(self, batch), key.ptr, key.len);
    if (!old) {
        pm_reply_ok_begin(pk, item->id);
        msgpack_pack_false(pk);
        return;
    }
    if (provider_pinned(old)) {
        wire_pack_error_spans(pk, item->id, PM_ERR_CONFLICT,
                              "Provider '%s' is defined by the built-in baseline or the config "
                              "file and cannot be removed",
                              key, (pm_str_t){0});
        return;
    }
    char *changed = pm_str_dup(key);
    registry_t *next = s_next(self, batch);
    if (!changed || !next || registry_remove(next, changed) != 1) {
        free(changed);
        pm_reply_error(pk, item->id, PM_ERR_INTERNAL, "out of memory");
        return;
    }
    pm_reply_ok_begin(pk, item->id);
    msgpack_pack_true(pk);
    item->deferred = true;
    item->changed_key = changed;
    batch->change_count++;
    log_info("audit: remove_provider %s by %s", changed, s_who(item));
}

static void s_op_set_short_name(writer_t *self, batch_t *batch, pending_t *item, msgpack_packer *pk)
{
    char err[256];
    pm_str_t key, long_name, short_name;
    if (wire_required_str(&item->request, "provider", WIRE_MAX_NAME_LEN, &key, err, sizeof err) <
            0 ||
        wire_required_str(&item->request, "long_name", WIRE_MAX_NAME_LEN, &long_name, err,
                          sizeof err) < 0 ||
        wire_required_str(&item->request, "short_name", WIRE_MAX_NAME_LEN, &short_name, err,
                          sizeof err) < 0) {
        pm_reply_error(pk, item->id, PM_ERR_BAD_REQUEST, err);
        return;
    }
    const provider_t *old = registry_get(s_view(self, batch), key.ptr, key.len);
    if (!old) {
        wire_pack_error_spans(pk, item->id, PM_ERR_NOT_FOUND, "Provider '%s' not found", key,
                              (pm_str_t){0});
        return;
    }
    if (provider_model_index(old, long_name.ptr, long_name.len) < 0) {
        wire_pack_error_spans(pk, item->id, PM_ERR_INVALID_MODEL,
                              "Invalid model for provider %s: %s", key, long_name);
        return;
    }
    char *changed = pm_str_dup(key);
    char *long_copy = pm_str_dup(long_name);
    char *short_copy = pm_str_dup(short_name);
    registry_t *next = s_next(self, batch);
    undo_t undo = {NULL, NULL};
    provider_t *edited = NULL;
    if (next && changed) {
        s_undo_begin(next, changed, &undo);
        edited = registry_edit(next, changed);
    }
    if (!edited || !long_copy || !short_copy ||
        provider_put_model(edited, long_copy, short_copy) < 0 || s_injected_fault(changed) ||
        s_reply_config(item, edited) < 0) {
        if (undo.key)
            s_undo_rollback(next, &undo);
        item->reply.size = 0;
        item->has_config = false;
        pm_reply_error(pk, item->id, PM_ERR_INTERNAL, "out of memory");
        free(changed);
    } else {
        if (s_refuse_oversized(item)) {
            s_undo_rollback(next, &undo);
            free(changed);
        } else {
            item->deferred = true;
            item->changed_key = changed;
            batch->change_count++;
            log_info("audit: set_short_name %s %s -> %s by %s", changed, long_copy, short_copy,
                     s_who(item));
        }
    }
    s_undo_end(&undo);
    free(long_copy);
    free(short_copy);
}

static void s_op_discover(writer_t *self, pending_t *item, msgpack_packer *pk)
{
    char err[256];
    bool force = false, persist = true;
    pm_str_t provider = {NULL, 0};
    if (pm_arg_bool(&item->request, "force_refresh", &force, err, sizeof err) < 0 ||
        pm_arg_bool(&item->request, "persist_on_success", &persist, err, sizeof err) < 0 ||
        pm_arg_str_or_nil(&item->request, "provider", &provider, err, sizeof err) < 0) {
        pm_reply_error(pk, item->id, PM_ERR_BAD_REQUEST, err);
        return;
    }
    char *key = NULL;
    if (provider.ptr && !(key = pm_str_dup(provider))) {
        pm_reply_error(pk, item->id, PM_ERR_INTERNAL, "out of memory");
        return;
    }
    char job[DISCOVERY_JOB_ID_SIZE];
    int code = PM_ERR_INTERNAL;
    if (discovery_start(self->discovery, self->current, key, force, persist,
                        item->caller[0] ? item->caller : NULL, s_now(), job, &code, err,
                        sizeof err) < 0) {
        pm_reply_error(pk, item->id, (pm_error_t)code, err);
    } else {
        pm_reply_ok_begin(pk, item->id);
        msgpack_pack_map(pk, 1);
        pm_pack_str(pk, "job");
        pm_pack_str(pk, job);
        log_info("audit: discover_models job %s (provider %s, force %d, persist %d) by %s", job,
                 key ? key : "*", force, persist, s_who(item));
    }
    free(key);
}

static void s_op_job_status(writer_t *self, pending_t *item, msgpack_packer *pk)
{
    char err[256];
    pm_str_t job;
    int rc = pm_arg_str(&item->request, "job", &job, err, sizeof err);
    if (rc == 0)
        pm_arg_require("job", err, sizeof err);
    if (rc != 1) {
        pm_reply_error(pk, item->id, PM_ERR_BAD_REQUEST, err);
        return;
    }
    /* Pack the status into a side buffer so that an unknown job leaves pk untouched. */
    msgpack_sbuffer status;
    msgpack_sbuffer_init(&status);
    msgpack_packer status_pk;
    msgpack_packer_init(&status_pk, &status, msgpack_sbuffer_write);
    if (discovery_pack_status(self->discovery, job.ptr, job.len, &status_pk) < 0) {
        wire_pack_error_spans(pk, item->id, PM_ERR_NOT_FOUND, "Job '%s' not found", job,
                              (pm_str_t){0});
    } else {
        pm_reply_ok_begin(pk, item->id);
        msgpack_sbuffer_write(&item->reply, status.data, status.size);
    }
    msgpack_sbuffer_destroy(&status);
}

/* Decodes one request of the batch and applies it to the batch's next registry. */
static void s_handle_request(writer_t *self, batch_t *batch, pending_t *item, zmq_msg_t *body)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, &item->reply, msgpack_sbuffer_write);
    char err[256];
    pm_error_t code =
        pm_request_decode(&item->request, zmq_msg_data(body), zmq_msg_size(body), err, sizeof err);
    item->id = item->request.id;
    if (code != PM_OK) {
        pm_reply_error(&pk, item->id, code, err);
        return;
    }
    switch (item->request.op) {
    case PM_OP_SET_PROVIDER:
        s_op_set_provider(self, batch, item, &pk);
        break;
    case PM_OP_REMOVE_PROVIDER:
        s_op_remove_provider(self, batch, item, &pk);
        break;
    case PM_OP_SET_SHORT_NAME:
        s_op_set_short_name(self, batch, item, &pk);
        break;
    case PM_OP_PERSIST_PROVIDER_CONFIGS:
        item->deferred = true;
        item->is_persist = true;
        batch->need_persist = true;
        break;
    case PM_OP_DISCOVER_MODELS:
        s_op_discover(self, item, &pk);
        break;
    case PM_OP_JOB_STATUS:
        s_op_job_status(self, item, &pk);
        break;
    case PM_OP_MODEL_STATUS:
        status_ops_model_status(status_keeper_table(self->status), self->current, &item->request,
                                &pk);
        break;
    case PM_OP_PROVIDER_STATUS:
        status_ops_provider_status(status_keeper_table(self->status), self->current, &item->request,
                                   &pk);
        break;
    case PM_OP_VERIFY_MODELS:
        status_ops_verify_models(self->discovery, self->current, &item->request,
                                 item->caller[0] ? item->caller : NULL, s_now(), &pk);
        log_info("audit: verify_models by %s", s_who(item));
        break;
    default:
        /* The front end answers reads itself; reaching here is a bug of ours. */
        pm_reply_error(&pk, item->id, PM_ERR_INTERNAL, "read operation sent to the writer");
        break;
    }
}

/* Makes next current: state_version, model status (the batches of status_only, or every
 * provider's when NULL), snapshot, one event per change (in order). */
static void s_make_current(writer_t *self, registry_t **next_p, const change_t *changes,
                           size_t key_count, const char *const *status_only,
                           size_t status_only_count)
{
    registry_destroy(&self->current);
    self->current = *next_p;
    *next_p = NULL;
    uint64_t first = self->state_version + 1;
    self->state_version += key_count;
    self->event_changes = changes;
    self->event_count = changes ? key_count : 0;
    s_commit_status(self, status_only, status_only_count, false);
    self->event_count = 0;
    s_send_snapshot(self);
    /* changes NULL: the events could not be prepared (out of memory); subscribers see a gap
     * at the next heartbeat and re-snapshot. */
    for (size_t i = 0; changes && i < key_count; i++)
        s_publish_event(self, first + i, &changes[i]);
    if (!changes && key_count)
        log_error("writer: %zu events not sent (out of memory)", key_count);
    /* A commit of a big registry frees a whole global index; give such memory back to the
     * system instead of keeping it as a free heap for good. */
    if (registry_model_count(self->current) >= WRITER_TRIM_MODELS)
        malloc_trim(0);
}

/* Seals and persists next (or persists current when next is NULL). 0 (also when the file was
 * written but its durability is unknown), or -1 with err when the file was not written. */
static int s_seal_and_persist(writer_t *self, registry_t *next, bool persist, char *err,
                              size_t err_size)
{
    if (next && registry_seal(next) < 0) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    if (!persist)
        return 0;
    char detail[512];
    int rc = store_persist(next ? next : self->current, self->store_path, detail, sizeof detail);
    if (rc < 0) {
        snprintf(err, err_size, "could not persist providers: %s", detail);
        log_error("%s", err);
        return -1;
    }
    /* The new file is in place (readers of the file, a restart, all see it): the state follows
     * the file and the callers are answered ok; only a crash soon after might lose it. */
    if (rc > 0)
        log_warn("providers written, but their durability is unknown: %s", detail);
    return 0;
}

static void s_commit_batch(writer_t *self, batch_t *batch)
{
    char err[600] = "";
    bool ok = true;
    if (batch->change_count > 0 || batch->need_persist) {
        double started = s_monotonic_ms();
        ok = s_seal_and_persist(self, batch->next, true, err, sizeof err) == 0;
        self->last_commit_ms = s_monotonic_ms() - started;
        if (ok)
            metrics_commit_observe(s_metrics(self), self->last_commit_ms / 1000.0);
    }

    change_t changes[WRITER_MAX_BATCH];
    size_t key_count = 0;
    for (size_t i = 0; i < batch->count; i++) {
        pending_t *item = &batch->items[i];
        if (!item->deferred)
            continue;
        msgpack_packer pk;
        msgpack_packer_init(&pk, &item->reply, msgpack_sbuffer_write);
        if (!ok) {
            item->reply.size = 0; /* the prepared reply is replaced by the failure */
            pm_reply_error(&pk, item->id, PM_ERR_INTERNAL, err);
        } else if (item->is_persist) {
            pm_reply_ok_begin(&pk, item->id);
            msgpack_pack_map(&pk, 2);
            pm_pack_str(&pk, "path");
            pm_pack_str(&pk, self->store_path);
            pm_pack_str(&pk, "providers");
            msgpack_pack_uint64(&pk, registry_count(s_view(self, batch)));
        } else {
            /* its reply (and in it its config) was packed when applied */
            const char *config = item->has_config ? item->reply.data + item->config_offset : NULL;
            changes[key_count++] = (change_t){item->changed_key, config, item->config_size, false,
                                              item->caller[0] ? item->caller : NULL};
        }
    }
    if (ok && batch->next && key_count > 0)
        s_make_current(self, &batch->next, changes, key_count, NULL, 0);
}

static void s_clear_batch(batch_t *batch)
{
    for (size_t i = 0; i < batch->count; i++) {
        pending_t *item = &batch->items[i];
        for (size_t f = 0; f < item->frame_count; f++)
            zmq_msg_close(&item->frames[f]);
        msgpack_sbuffer_destroy(&item->reply);
        pm_request_clear(&item->request);
        if (item->has_body)
            zmq_msg_close(&item->body);
        free(item->changed_key);
        memset(item, 0, sizeof *item);
    }
    registry_destroy(&batch->next);
    batch->count = 0;
    batch->change_count = 0;
    batch->need_persist = false;
}

/* True when another write arrived within the gathering window (see WRITER_GATHER_SHARE). */
static bool s_gather_more(writer_t *self, const batch_t *batch, bool *waited)
{
    long wait_ms = (long)(self->last_commit_ms * WRITER_GATHER_SHARE);
    if (*waited || batch->change_count == 0 || wait_ms < 1)
        return false;
    *waited = true;
    zmq_pollitem_t item = {self->pipe, 0, ZMQ_POLLIN, 0};
    return zmq_poll(&item, 1, wait_ms < WRITER_GATHER_MAX_MS ? wait_ms : WRITER_GATHER_MAX_MS) > 0;
}

static void s_handle_batch(writer_t *self)
{
    batch_t *batch = self->batch;
    bool waited = false;
    while (batch->count < WRITER_MAX_BATCH && !self->stopping) {
        zmq_msg_t frames[WRITER_MAX_FRAMES];
        bool overflow;
        int n = frames_recv(self->pipe, batch->count == 0 ? 0 : ZMQ_DONTWAIT, frames,
                            WRITER_MAX_FRAMES, &overflow);
        if (n == 0 && s_gather_more(self, batch, &waited))
            continue;
        if (n == 0)
            break;
        if (n < 0) {
            log_error("writer: receive failed: %s", zmq_strerror(errno));
            break;
        }
        if (overflow) { /* the front end never sends more frames than a request may have */
            frames_close(frames, (size_t)n);
            continue;
        }
        /* The type byte; a request's type frame carries the caller's name after it. */
        size_t type_size = zmq_msg_size(&frames[0]);
        const char *type = type_size >= 1 ? zmq_msg_data(&frames[0]) : "?";
        if (*type == WRITER_MSG_STOP) {
            self->stopping = true;
        } else if (*type == WRITER_MSG_REQUEST && n >= 3) {
            pending_t *item = &batch->items[batch->count++];
            msgpack_sbuffer_init(&item->reply);
            item->received_ns = s_metrics(self) ? metrics_now_ns() : 0;
            /* frames: type, routing..., delimiter, body */
            for (int i = 1; i < n - 1; i++)
                item->frames[item->frame_count++] = frames[i];
            item->body = frames[n - 1];
            item->has_body = true;
            size_t name_len = type_size - 1 > WRITER_MAX_CALLER ? WRITER_MAX_CALLER : type_size - 1;
            memcpy(item->caller, type + 1, name_len);
            item->caller[name_len] = '\0';
            zmq_msg_close(&frames[0]);
            s_handle_request(self, batch, item, &item->body);
            continue;
        } else {
            log_error("writer: unexpected message from the front end");
        }
        for (int i = 0; i < n; i++)
            zmq_msg_close(&frames[i]);
    }
    s_commit_batch(self, batch);
    for (size_t i = 0; i < batch->count; i++)
        s_send_reply(self, &batch->items[i]);
    s_clear_batch(batch);
}

/* Adds key to keys unless it is there (one change per provider and job). */
static void s_add_key(char **keys, size_t *count, char *key)
{
    for (size_t i = 0; i < *count; i++)
        if (strcmp(keys[i], key) == 0)
            return;
    keys[(*count)++] = key;
}

static void s_handle_discovery(writer_t *self)
{
    discovery_outcome_t outcome = {0};
    status_keeper_set_registry(self->status, self->current);
    if (discovery_handle(self->discovery, self->current, s_now(), &outcome) < 0)
        log_error("writer: discovery socket error: %s", zmq_strerror(errno));
    /* Providers whose part of a job ended in that call: their prune plans are applied now,
     * in the same change as their discovery update. */
    char **parts = NULL, **part_bys = NULL;
    size_t part_count = 0;
    status_keeper_take_parts(self->status, &parts, &part_bys, &part_count);

    registry_t *next = NULL;
    size_t slots = outcome.update_count + part_count;
    char **keys = slots ? calloc(slots, sizeof(char *)) : NULL;
    size_t key_count = 0;
    if (slots && keys && (next = registry_clone(self->current))) {
        for (size_t i = 0; i < outcome.update_count; i++) {
            discovery_update_t *u = &outcome.updates[i];
            provider_t *p = registry_edit(next, u->provider_key);
            if (!p)
                continue; /* removed while it was being discovered */
            if (provider_set_cached_models(p, (const char *const *)u->cached, u->cached_count,
                                           u->cached_at) < 0 ||
                provider_set_invalid_models(p, (const char *const *)u->invalid, u->invalid_count) <
                    0 ||
                provider_merge_valid_models(p, (const char *const *)u->valid, u->valid_count) < 0) {
                log_error("writer: out of memory applying discovery for %s", u->provider_key);
                continue;
            }
            s_add_key(keys, &key_count, u->provider_key);
        }
    } else if (slots) {
        log_error("writer: out of memory applying discovery results");
    }
    /* Prunes and returns: a ProviderConfig change that must be in the file when the job reads
     * done, whatever the job's outcome (protocol v1.1, reading 8). */
    bool prune_persist = false;
    for (size_t i = 0; next && i < part_count; i++) {
        int rc = status_keeper_apply_prune(self->status, next, parts[i]);
        if (rc < 0)
            log_error("writer: out of memory pruning %s", parts[i]);
        if (rc > 0) {
            s_add_key(keys, &key_count, parts[i]);
            prune_persist = true;
        }
    }

    char err[600] = "";
    bool persist = outcome.persist_count > 0 || prune_persist;
    bool ok = true;
    bool made_current = false;
    if ((next && key_count) || persist)
        ok = s_seal_and_persist(self, key_count ? next : NULL, persist, err, sizeof err) == 0;
    /* Each event carries its provider's new config, packed from the sealed registry. */
    change_t *changes = key_count ? calloc(key_count, sizeof *changes) : NULL;
    msgpack_sbuffer *configs = key_count ? calloc(key_count, sizeof *configs) : NULL;
    for (size_t i = 0; changes && configs && next && i < key_count; i++) {
        changes[i].key = keys[i];
        const provider_t *p = registry_get(next, keys[i], strlen(keys[i]));
        if (!p)
            continue; /* not in the new registry: its event says removed (nil) */
        msgpack_sbuffer_init(&configs[i]);
        changes[i].lost = s_pack_config(&configs[i], p) < 0 || !configs[i].data;
        changes[i].config = configs[i].data;
        changes[i].config_size = configs[i].size;
    }
    if (next && key_count && registry_sealed(next)) {
        static const char *const no_part[1] = {NULL};
        /* Audit: a job's change carries the name of the caller who started the job. */
        for (size_t i = 0; changes && i < key_count; i++) {
            const char *by = NULL;
            for (size_t j = 0; j < part_count && part_bys; j++)
                if (strcmp(parts[j], keys[i]) == 0)
                    by = part_bys[j];
            log_info("audit: job result applied to %s by %s", keys[i], by ? by : "-");
            changes[i].by = self->curve ? by : NULL;
        }
        s_make_current(self, &next, changes && configs ? changes : NULL, key_count,
                       parts ? (const char *const *)parts : no_part, part_count);
        made_current = true;
    }
    for (size_t i = 0; configs && i < key_count; i++)
        msgpack_sbuffer_destroy(&configs[i]);
    free(configs);
    free(changes);
    registry_destroy(&next);
    /* Status of the parts that changed no ProviderConfig: journalled and published before any
     * job of them can read done (job_status is answered by this thread, after this). */
    if (!made_current) {
        /* No part ended: journal what changed, publish nothing (NULL would mean "all"). */
        static const char *const no_part[1] = {NULL};
        change_t *named =
            part_count && part_bys && self->curve ? calloc(part_count, sizeof *named) : NULL;
        for (size_t i = 0; named && i < part_count; i++)
            named[i] = (change_t){.key = parts[i], .by = part_bys[i]};
        self->event_changes = named;
        self->event_count = named ? part_count : 0;
        s_commit_status(self, parts ? (const char *const *)parts : no_part, part_count, true);
        self->event_count = 0;
        free(named);
    }
    for (size_t i = 0; i < outcome.persist_count; i++)
        discovery_job_persisted(self->discovery, outcome.persists[i].job_id, ok, ok ? NULL : err);
    for (size_t i = 0; i < part_count; i++) {
        free(parts[i]);
        if (part_bys)
            free(part_bys[i]);
    }
    free(parts);
    free(part_bys);
    free(keys);
    discovery_outcome_clear(&outcome);
}

static void s_apply_reload(writer_t *self, writer_reload_t *reload);
static void s_apply_overrides(writer_t *self, writer_reload_t *reload);
static void s_reload_free(writer_reload_t **reload_p);

static void *s_thread(void *arg)
{
    writer_t *self = arg;
    while (!self->stopping) {
        zmq_pollitem_t items[3] = {{self->pipe, 0, ZMQ_POLLIN, 0},
                                   {discovery_socket(self->discovery), 0, ZMQ_POLLIN, 0},
                                   {self->control_peer, 0, ZMQ_POLLIN, 0}};
        /* The wait ends at the next heartbeat at the latest: it goes out on time also while
         * nothing else happens (and is checked on every pass, so a stream of writes cannot
         * delay it either). */
        long heartbeat = s_heartbeat_due(self);
        long timeout = discovery_next_timeout_ms(self->discovery, s_now());
        if (timeout < 0 || timeout > heartbeat)
            timeout = heartbeat;
        if (zmq_poll(items, 3, timeout) < 0) {
            if (errno == EINTR)
                continue;
            log_error("writer: poll failed: %s", zmq_strerror(errno));
            break;
        }
        if (items[0].revents & ZMQ_POLLIN)
            s_handle_batch(self);
        if (items[1].revents & ZMQ_POLLIN)
            s_handle_discovery(self);
        if (items[2].revents & ZMQ_POLLIN) {
            /* A reload message, or else the stop signal (the writes in hand were committed
             * above). */
            char message[1 + sizeof(writer_reload_t *)];
            int size = zmq_recv(self->control_peer, message, sizeof message, ZMQ_DONTWAIT);
            if (size == (int)sizeof message && message[0] == WRITER_CONTROL_RELOAD) {
                writer_reload_t *reload;
                memcpy(&reload, message + 1, sizeof reload);
                WRITER_TSAN_ACQUIRE(reload);
                s_apply_reload(self, reload);
                s_reload_free(&reload);
            } else if (size >= 0 || errno != EAGAIN) {
                self->stopping = true;
            }
            if (self->stopping)
                break;
        }
        discovery_tick(self->discovery, self->current, s_now());
        if (discovery_running(self->discovery) != self->jobs_running_published)
            s_send_snapshot(self);
        else if (!self->metrics_synced)
            s_publish_gauges(self); /* metrics turned on after the thread started */
    }
    /* A front end waits for this; without one (stopped by writer_stop before a front end
     * connected) there is nobody to tell, and the writer must not wait for one. */
    char type = WRITER_MSG_STOP;
    if (zmq_send(self->pipe, &type, 1, ZMQ_DONTWAIT) < 0 && errno != EAGAIN)
        log_error("writer: cannot confirm the stop: %s", zmq_strerror(errno));
    return NULL;
}

/* ------------------------------------------------------------------------ life cycle */

/* The status settings (thresholds, prune policy, ignore globs), borrowed from the arguments;
 * *per_provider is the caller's to free after use. 0, or -1 (out of memory). */
static int s_status_settings(const config_discovery_t *discovery, const config_ignore_t *ignore,
                             const config_ignore_t *provider_ignore, size_t provider_ignore_count,
                             model_status_settings_t *settings, status_ignore_t **per_provider_p)
{
    model_status_settings_init(settings);
    settings->fail_threshold = discovery->fail_threshold;
    settings->gone_threshold = discovery->gone_threshold;
    settings->prune = discovery->prune == CONFIG_PRUNE_FAILING_AND_GONE
                          ? STATUS_PRUNE_FAILING_AND_GONE
                      : discovery->prune == CONFIG_PRUNE_GONE ? STATUS_PRUNE_GONE
                                                              : STATUS_PRUNE_NONE;
    settings->ignore = (const char *const *)ignore->patterns;
    settings->ignore_count = ignore->count;
    status_ignore_t *per_provider =
        provider_ignore_count ? calloc(provider_ignore_count, sizeof *per_provider) : NULL;
    if (provider_ignore_count && !per_provider)
        return -1;
    for (size_t i = 0; i < provider_ignore_count; i++) {
        per_provider[i].provider = provider_ignore[i].provider;
        per_provider[i].patterns = (const char *const *)provider_ignore[i].patterns;
        per_provider[i].count = provider_ignore[i].count;
    }
    settings->provider_ignore = per_provider;
    settings->provider_ignore_count = provider_ignore_count;
    *per_provider_p = per_provider;
    return 0;
}

static int s_open_status(writer_t *self, const config_t *cfg, char *err, size_t err_size)
{
    model_status_settings_t settings;
    status_ignore_t *per_provider = NULL;
    if (s_status_settings(&cfg->discovery, &cfg->ignore, cfg->provider_ignore,
                          cfg->provider_ignore_count, &settings, &per_provider) < 0) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    self->status =
        status_keeper_new(cfg->data_dir, &settings, self->current, s_now(), err, err_size);
    free(per_provider); /* the table copied the settings */
    if (!self->status)
        return -1;
    discovery_observer_t observer;
    status_keeper_observer(self->status, &observer);
    discovery_set_observer(self->discovery, &observer);
    discovery_counters_t counters = {self, s_count_upstream, s_count_job};
    discovery_set_counters(self->discovery, &counters);
    return 0;
}

/* ------------------------------------------------------------------------ reload */

static void s_ignore_free(config_ignore_t *ignore)
{
    for (size_t i = 0; i < ignore->count; i++)
        free(ignore->patterns[i]);
    free(ignore->patterns);
    free(ignore->provider);
    memset(ignore, 0, sizeof *ignore);
}

static char *s_strdup_or_null(const char *text, bool *failed)
{
    if (!text)
        return NULL;
    size_t len = strlen(text) + 1;
    char *copy = malloc(len);
    if (copy)
        memcpy(copy, text, len);
    else
        *failed = true;
    return copy;
}

static int s_ignore_copy(config_ignore_t *to, const config_ignore_t *from)
{
    bool failed = false;
    memset(to, 0, sizeof *to);
    to->provider = s_strdup_or_null(from->provider, &failed);
    to->patterns = from->count ? calloc(from->count, sizeof *to->patterns) : NULL;
    if (failed || (from->count && !to->patterns)) {
        s_ignore_free(to);
        return -1;
    }
    to->count = from->count;
    for (size_t i = 0; i < from->count; i++)
        to->patterns[i] = s_strdup_or_null(from->patterns[i], &failed);
    if (failed) {
        s_ignore_free(to);
        return -1;
    }
    return 0;
}

static bool s_text_equal(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* True when the two override specs say the same (same fields given, same values). */
static bool s_spec_equal(const provider_spec_t *a, const provider_spec_t *b)
{
    if (!s_text_equal(a->key, b->key) || !s_text_equal(a->name, b->name) ||
        !s_text_equal(a->base_api_url, b->base_api_url) || a->has_api_key != b->has_api_key ||
        !s_text_equal(a->api_key, b->api_key) || a->has_valid_models != b->has_valid_models ||
        a->model_count != b->model_count || a->has_invalid_models != b->has_invalid_models ||
        a->invalid_count != b->invalid_count)
        return false;
    for (size_t i = 0; i < a->model_count; i++) {
        if (!s_text_equal(a->model_long[i], b->model_long[i]) ||
            !s_text_equal(a->model_short[i], b->model_short[i]))
            return false;
    }
    for (size_t i = 0; i < a->invalid_count; i++) {
        if (!s_text_equal(a->invalid_models[i], b->invalid_models[i]))
            return false;
    }
    return true;
}

static char **s_strings_copy(char *const *from, size_t count, bool *failed)
{
    if (!count || !from)
        return NULL;
    char **to = calloc(count, sizeof *to);
    if (!to) {
        *failed = true;
        return NULL;
    }
    for (size_t i = 0; i < count; i++)
        to[i] = s_strdup_or_null(from[i], failed);
    return to;
}

/* A deep copy of from (the thread gets its own). 0, or -1 (out of memory; to is cleared). */
static int s_spec_copy(provider_spec_t *to, const provider_spec_t *from)
{
    bool failed = false;
    memset(to, 0, sizeof *to);
    to->key = s_strdup_or_null(from->key, &failed);
    to->name = s_strdup_or_null(from->name, &failed);
    to->base_api_url = s_strdup_or_null(from->base_api_url, &failed);
    to->has_api_key = from->has_api_key;
    to->api_key = s_strdup_or_null(from->api_key, &failed);
    to->has_valid_models = from->has_valid_models;
    /* Counts first: provider_spec_clear frees whatever entries were copied (NULL arrays and
     * entries are fine), so a failure half way leaks nothing. */
    to->model_count = from->model_count;
    to->model_long = s_strings_copy(from->model_long, from->model_count, &failed);
    to->model_short = s_strings_copy(from->model_short, from->model_count, &failed);
    to->has_invalid_models = from->has_invalid_models;
    to->invalid_count = from->invalid_count;
    to->invalid_models = s_strings_copy(from->invalid_models, from->invalid_count, &failed);
    if (failed) {
        provider_spec_clear(to);
        return -1;
    }
    return 0;
}

static void s_reload_free(writer_reload_t **reload_p)
{
    writer_reload_t *reload = *reload_p;
    if (!reload)
        return;
    for (size_t i = 0; i < reload->spec_count; i++)
        provider_spec_clear(&reload->specs[i]);
    free(reload->specs);
    s_ignore_free(&reload->ignore);
    for (size_t i = 0; i < reload->provider_ignore_count; i++)
        s_ignore_free(&reload->provider_ignore[i]);
    free(reload->provider_ignore);
    free(reload);
    *reload_p = NULL;
}

/* The provider overrides that changed, layered again over the current registry as at
 * start-up (step 4: merged per field, pinned; step 5: the environment's key wins): one change
 * per provider, committed together, persisted, one event each. */
static void s_apply_overrides(writer_t *self, writer_reload_t *reload)
{
    registry_t *next = registry_clone(self->current);
    char **keys = calloc(reload->spec_count, sizeof *keys);
    size_t key_count = 0;
    if (!next || !keys) {
        log_error("writer: reload: out of memory; provider overrides not applied");
        goto done;
    }
    for (size_t i = 0; i < reload->spec_count; i++) {
        provider_spec_t *spec = &reload->specs[i];
        undo_t undo;
        s_undo_begin(next, spec->key, &undo);
        if (provider_spec_apply(spec, next, PROVIDER_SPEC_MERGE_MODELS, true) < 0) {
            log_error("writer: reload: the override of provider %s was not applied (out of "
                      "memory or over a limit)",
                      spec->key);
            s_undo_end(&undo);
            continue;
        }
        provider_t *edited = registry_edit(next, spec->key);
        if (!edited || config_apply_env_key(edited, self->getenv_fn) < 0) {
            s_undo_rollback(next, &undo);
            s_undo_end(&undo);
            log_error("writer: reload: out of memory applying the override of %s", spec->key);
            continue;
        }
        s_undo_end(&undo);
        keys[key_count++] = spec->key;
        log_info("audit: provider override of %s applied by reload", spec->key);
    }
    if (key_count) {
        char err[600];
        if (s_seal_and_persist(self, next, true, err, sizeof err) == 0) {
            /* Each event carries its provider's new config, packed from the sealed registry;
             * a reload names nobody (no `by`). */
            change_t *changes = calloc(key_count, sizeof *changes);
            msgpack_sbuffer *configs = calloc(key_count, sizeof *configs);
            for (size_t i = 0; changes && configs && i < key_count; i++) {
                changes[i].key = keys[i];
                const provider_t *p = registry_get(next, keys[i], strlen(keys[i]));
                msgpack_sbuffer_init(&configs[i]);
                changes[i].lost = !p || s_pack_config(&configs[i], p) < 0 || !configs[i].data;
                changes[i].config = configs[i].data;
                changes[i].config_size = configs[i].size;
            }
            s_make_current(self, &next, changes && configs ? changes : NULL, key_count, NULL, 0);
            for (size_t i = 0; configs && i < key_count; i++)
                msgpack_sbuffer_destroy(&configs[i]);
            free(configs);
            free(changes);
        } else {
            log_error("writer: reload: provider overrides not applied: %s", err);
        }
    }
done:
    registry_destroy(&next);
    free(keys);
}

/* In the thread: the new settings take effect between two batches; the transitions they
 * cause (an ignore glob added, a threshold lowered) are committed and published at once. */
static void s_apply_reload(writer_t *self, writer_reload_t *reload)
{
    model_status_settings_t settings;
    status_ignore_t *per_provider = NULL;
    if (s_status_settings(&reload->discovery, &reload->ignore, reload->provider_ignore,
                          reload->provider_ignore_count, &settings, &per_provider) < 0 ||
        status_keeper_set_settings(self->status, &settings) < 0)
        log_error("writer: reload: the model status settings were not applied (invalid or out "
                  "of memory); the old ones stay");
    free(per_provider);
    discovery_set_schedule(self->discovery, &reload->discovery);
    s_commit_status(self, NULL, 0, true);
    if (reload->spec_count)
        s_apply_overrides(self, reload);
    log_info("writer: reloaded the discovery schedule, thresholds, prune policy and ignore "
             "patterns");
}

int writer_reload(writer_t *self, const config_t *cfg, const store_layer_t *running_overrides)
{
    writer_reload_t *reload = calloc(1, sizeof *reload);
    if (!reload)
        return -1;
    /* The overrides that differ from the running ones (new ones included); a removed one
     * cannot be taken out of the layering without a restart. */
    if (cfg->overrides.count) {
        reload->specs = calloc(cfg->overrides.count, sizeof *reload->specs);
        if (!reload->specs)
            goto fail;
    }
    for (size_t i = 0; i < cfg->overrides.count; i++) {
        const provider_spec_t *spec = &cfg->overrides.specs[i];
        const provider_spec_t *old = NULL;
        for (size_t j = 0; running_overrides && j < running_overrides->count && !old; j++)
            if (s_text_equal(running_overrides->specs[j].key, spec->key))
                old = &running_overrides->specs[j];
        if (old && s_spec_equal(old, spec))
            continue;
        if (s_spec_copy(&reload->specs[reload->spec_count], spec) < 0)
            goto fail;
        reload->spec_count++;
    }
    for (size_t j = 0; running_overrides && j < running_overrides->count; j++) {
        bool kept = false;
        for (size_t i = 0; i < cfg->overrides.count && !kept; i++)
            kept = s_text_equal(running_overrides->specs[j].key, cfg->overrides.specs[i].key);
        if (!kept)
            log_warn("reload: the override of provider %s left the config file; what it set "
                     "stays until a restart",
                     running_overrides->specs[j].key);
    }
    reload->discovery = cfg->discovery;
    if (s_ignore_copy(&reload->ignore, &cfg->ignore) < 0)
        goto fail;
    if (cfg->provider_ignore_count) {
        reload->provider_ignore =
            calloc(cfg->provider_ignore_count, sizeof *reload->provider_ignore);
        if (!reload->provider_ignore)
            goto fail;
        for (size_t i = 0; i < cfg->provider_ignore_count; i++) {
            if (s_ignore_copy(&reload->provider_ignore[i], &cfg->provider_ignore[i]) < 0)
                goto fail;
            reload->provider_ignore_count++;
        }
    }
    /* The settings travel as a pointer: the thread owns them once the message is sent. */
    char message[1 + sizeof reload];
    message[0] = WRITER_CONTROL_RELOAD;
    memcpy(message + 1, &reload, sizeof reload);
    WRITER_TSAN_RELEASE(reload);
    if (zmq_send(self->control, message, sizeof message, 0) < 0)
        goto fail;
    return 0;
fail:
    s_reload_free(&reload);
    return -1;
}

writer_t *writer_new(void *zmq_ctx, const config_t *cfg, const auth_t *auth,
                     config_getenv_fn *getenv_fn, registry_t **registry_p, bool *bind_failed,
                     char *err, size_t err_size)
{
    *bind_failed = false;
    writer_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    self->ctx = zmq_ctx;
    self->getenv_fn = getenv_fn;
    self->state_version = 0;
    s_new_epoch(self->epoch, sizeof self->epoch);
    self->heartbeat_ms = cfg->heartbeat_ms >= CONFIG_MIN_HEARTBEAT_MS ? cfg->heartbeat_ms
                                                                      : CONFIG_DEFAULT_HEARTBEAT_MS;
    self->next_heartbeat_ms = s_monotonic_ms() + self->heartbeat_ms;
    if (store_path(cfg->data_dir, self->store_path, sizeof self->store_path) < 0) {
        snprintf(err, err_size, "data dir path too long");
        goto fail;
    }
    owner_sockets_t own;
    if (owner_sockets_open(&own, zmq_ctx, "writer", auth, cfg->events_endpoint,
                           WRITER_SEND_TIMEOUT_MS, bind_failed, err, err_size) < 0)
        goto fail;
    self->pipe = own.pipe;
    self->control = own.control;
    self->control_peer = own.control_peer;
    self->pub = own.pub;
    memcpy(self->endpoint, own.endpoint, sizeof self->endpoint);
    self->curve = auth_curve_on(auth);
    self->discovery = discovery_new(zmq_ctx, &cfg->discovery, cfg->workers);
    if (!self->discovery) {
        snprintf(err, err_size, "cannot start discovery workers");
        goto fail;
    }
    self->batch = calloc(1, sizeof *self->batch);
    if (!self->batch) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    self->current = *registry_p;
    if (s_open_status(self, cfg, err, err_size) < 0) {
        self->current = NULL;
        goto fail;
    }
    self->first = snapshot_new(self->current, 0, 0);
    if (!self->first) {
        self->current = NULL;
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    self->first->status_version = status_keeper_version(self->status);
    self->start_status_version = self->first->status_version;
    self->start_providers = registry_count(self->current);
    model_status_counts(status_keeper_table(self->status), self->start_counts);
    memcpy(self->first->epoch, self->epoch, sizeof self->first->epoch);
    if (pthread_create(&self->thread, NULL, s_thread, self) != 0) {
        self->current = NULL;
        snprintf(err, err_size, "cannot start the writer thread");
        goto fail;
    }
    *registry_p = NULL;
    self->thread_started = true;
    return self;
fail:
    writer_destroy(&self);
    return NULL;
}

const char *writer_epoch(const writer_t *self)
{
    return self->epoch;
}

const atomic_uint_fast64_t *writer_handoffs(const writer_t *self)
{
    return &self->handoffs;
}

const char *writer_endpoint(const writer_t *self)
{
    return self->endpoint;
}

snapshot_t *writer_first_snapshot(writer_t *self)
{
    snapshot_t *first = self->first;
    self->first = NULL;
    return first;
}

void writer_stop(writer_t *self)
{
    if (!self || !self->thread_started)
        return;
    if (!self->stop_sent) {
        /* The control pipe is connected and holds one byte easily: the send does not wait. A
         * thread that has already stopped (the front end's stop) never reads it; harmless. */
        char byte = 1;
        if (zmq_send(self->control, &byte, 1, 0) < 0)
            log_error("writer: cannot signal the stop: %s", zmq_strerror(errno));
        self->stop_sent = true;
    }
    pthread_join(self->thread, NULL);
    self->thread_started = false;
}

void writer_destroy(writer_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    writer_t *self = *self_p;
    writer_stop(self);
    /* A reload sent just before the stop was never read: its settings are ours to free. */
    char message[1 + sizeof(writer_reload_t *)];
    while (self->control_peer &&
           zmq_recv(self->control_peer, message, sizeof message, ZMQ_DONTWAIT) >= 0) {
        if (message[0] == WRITER_CONTROL_RELOAD) {
            writer_reload_t *reload;
            memcpy(&reload, message + 1, sizeof reload);
            s_reload_free(&reload);
        }
    }
    discovery_destroy(&self->discovery);
    status_keeper_destroy(&self->status);
    if (self->pub)
        zmq_close(self->pub);
    if (self->pipe)
        zmq_close(self->pipe);
    if (self->control)
        zmq_close(self->control);
    if (self->control_peer)
        zmq_close(self->control_peer);
    registry_destroy(&self->current);
    snapshot_destroy(&self->first);
    free(self->batch);
    free(self);
    *self_p = NULL;
}
