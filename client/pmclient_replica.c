/*
 * pmclient_replica: the local replica of libpmclient (see pmclient_replica.h).
 *
 * One background thread owns the SUB socket and a request client (for `snapshot`); it drives
 * the Clone pattern's state machine (replica/clone.h, the same one the daemon's read-replica
 * mode drives: what an event or a snapshot means is decided there, not here) and is the only
 * writer of the replica's state. The state readers see is an immutable s_state_t (a sealed
 * registry of the registry core, its version and epoch) behind an atomic pointer.
 *
 * Readers never block and never take a lock: a reader announces itself in one of two counters
 * (chosen by the parity of a generation number), reads the current pointer, does its whole
 * read on that state and leaves. The thread swaps the pointer, bumps the generation (new
 * readers then count in the other counter) and waits for the old parity's counter to drain
 * before it frees the old state: a grace period, as in RCU. Every reader that could have seen
 * the old pointer counted in that parity (or in the other one, drained by the previous swap),
 * so nothing is freed under a reader. The wait is short: a read lasts microseconds.
 */
#include "pmclient_replica.h"

#include "clone.h"
#include "pm_keyfile.h"
#include "pm_proto.h"
#include "pmclient_internal.h"
#include "registry.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

/* The service refuses a longer model_string with bad_request (service/wire.h's
 * WIRE_MAX_MODEL_STRING_LEN); the replica answers as the service would. */
#define S_MAX_MODEL_STRING_LEN 2048
/* Events carry whole configs now; as large as a reply may be. */
#define S_EVENTS_MAX_SIZE PM_PROTO_MAX_REPLY_SIZE
#define S_POLL_MS 20 /* how often the thread looks at the stop flag and the clock */

_Static_assert(PMCLIENT_REPLICA_MAX_EPOCH_LEN == CLONE_MAX_EPOCH_LEN, "epoch limit");

/* One immutable state, as readers see it. */
typedef struct {
    registry_t *registry; /* sealed; a reference of its own (clone's moves on) */
    int64_t version;
    char epoch[PMCLIENT_REPLICA_MAX_EPOCH_LEN + 1];
} s_state_t;

/* The thread's view of the stream: opened by pmclient_replica_new (so that a bad endpoint
 * fails there), then used by the thread only (handed over by pthread_create, a full barrier,
 * as ZeroMQ requires to move a socket between threads). */
typedef struct {
    void *ctx;
    void *sub;
    pmclient_t *client;
    clone_t *clone;
} s_sync_t;

struct pmclient_replica_t {
    char *endpoint;
    char *events_endpoint;
    int timeout_ms;
    int heartbeat_ms;
    int backoff_max_ms;
    bool curve;
    char server_public[PMCLIENT_Z85_KEY_LEN + 1];
    char client_public[PMCLIENT_Z85_KEY_LEN + 1];
    char client_secret[PMCLIENT_Z85_KEY_LEN + 1];
    pmclient_replica_change_fn *on_change;
    void *on_change_arg;

    s_sync_t sync;
    pthread_t thread;
    bool thread_started;
    atomic_bool stop;

    /* What readers read (see the top of the file). */
    _Atomic(s_state_t *) current;
    atomic_uint_fast64_t generation;
    atomic_long readers[2];

    /* Freshness: copied from the clone by the thread, read by pmclient_replica_stats. */
    atomic_int_fast64_t last_contact_ms; /* -1: never */
    atomic_int_fast64_t primary_version;

    /* Counters (copied from the clone) and the waiters of pmclient_replica_wait; never held
     * by a resolution. */
    pthread_mutex_t mutex;
    pthread_cond_t changed;
    pmclient_replica_stats_t counters; /* only the counter fields are used */
};

/* ------------------------------------------------------------------------------ helpers */

static void s_error(pmclient_replica_error_t *err, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void s_error(pmclient_replica_error_t *err, const char *code, const char *fmt, ...)
{
    if (!err)
        return;
    snprintf(err->code, sizeof err->code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

static void s_ok(pmclient_replica_error_t *err)
{
    if (err) {
        err->code[0] = '\0';
        err->message[0] = '\0';
    }
}

static void s_state_destroy(s_state_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    registry_destroy(&(*self_p)->registry);
    free(*self_p);
    *self_p = NULL;
}

/* Copies the clone's counters and freshness to where pmclient_replica_stats reads them; wakes
 * the waiters when the state changed (after the swap, so that a woken caller sees the change
 * and its count together). The thread only. */
static void s_sync_stats(pmclient_replica_t *self, const clone_t *clone, bool wake)
{
    clone_counters_t c;
    clone_counters(clone, &c);
    atomic_store(&self->last_contact_ms, clone_last_contact_ms(clone));
    atomic_store(&self->primary_version, clone_primary_version(clone));
    pthread_mutex_lock(&self->mutex);
    pmclient_replica_stats_t *out = &self->counters;
    out->snapshots = c.snapshots;
    out->resnapshots = c.resnapshots;
    out->gaps = c.gaps;
    out->epoch_changes = c.epoch_changes;
    out->backwards = c.backwards;
    out->heartbeats_ahead = c.heartbeats_ahead;
    out->silences = c.silences;
    out->snapshot_failures = c.snapshot_failures;
    out->events_applied = c.events_applied;
    out->heartbeats = c.heartbeats;
    if (wake)
        pthread_cond_broadcast(&self->changed);
    pthread_mutex_unlock(&self->mutex);
}

/* ------------------------------------------------------------- readers' side (lock-free) */

static const s_state_t *s_read_begin(pmclient_replica_t *self, unsigned *slot)
{
    for (;;) {
        uint_fast64_t generation = atomic_load(&self->generation);
        unsigned parity = (unsigned)(generation & 1u);
        atomic_fetch_add(&self->readers[parity], 1);
        /* Still the same generation: the thread will wait for this counter before it frees
         * whatever we load next. Otherwise a swap raced us: count in the new parity. */
        if (atomic_load(&self->generation) == generation) {
            *slot = parity;
            return atomic_load(&self->current);
        }
        atomic_fetch_sub(&self->readers[parity], 1);
    }
}

static void s_read_end(pmclient_replica_t *self, unsigned slot)
{
    atomic_fetch_sub(&self->readers[slot], 1);
}

/* Publishes the clone's registry when readers do not have it yet (the thread only), frees the
 * previous state after its grace period, and calls the change callback: with the keys of the
 * event just applied, or as a whole replacement (full). When the state cannot be allocated
 * nothing is published; the thread tries again on its next turn, then as a full change. */
static void s_publish(pmclient_replica_t *self, s_sync_t *sync, bool full)
{
    registry_t *registry = clone_registry(sync->clone);
    /* The thread is the only writer: current stays alive until its own next swap. Its
     * registry reference keeps the address from being reused, so equal means the same. */
    const s_state_t *current = atomic_load(&self->current);
    if (!registry || (current && current->registry == registry &&
                      current->version == clone_version(sync->clone)))
        return;
    s_state_t *next = calloc(1, sizeof *next);
    if (!next)
        return;
    next->registry = registry_ref(registry);
    next->version = clone_version(sync->clone);
    snprintf(next->epoch, sizeof next->epoch, "%s", clone_epoch(sync->clone));
    s_state_t *old = atomic_exchange(&self->current, next);
    uint_fast64_t generation = atomic_fetch_add(&self->generation, 1);
    unsigned parity = (unsigned)(generation & 1u);
    while (atomic_load(&self->readers[parity]) != 0)
        sched_yield();
    s_state_destroy(&old);
    s_sync_stats(self, sync->clone, true);
    if (!self->on_change)
        return;
    size_t key_count = 0;
    const char *const *keys = full ? NULL : clone_changed_keys(sync->clone, &key_count);
    pmclient_replica_change_t change = {.state_version = next->version,
                                        .epoch = next->epoch,
                                        .full = full || !keys,
                                        .key_count = full || !keys ? 0 : key_count,
                                        .keys = full || !keys ? NULL : keys};
    self->on_change(&change, self->on_change_arg);
}

/* ---------------------------------------------------------------- the snapshot, events */

/* Asks `snapshot` and hands the reply to the clone. */
static void s_snapshot(pmclient_replica_t *self, s_sync_t *sync)
{
    void *reply = NULL;
    size_t size = 0;
    if (pmclient_call_raw(sync->client, "snapshot", NULL, 0, &reply, &size) != 0) {
        clone_snapshot_failed(sync->clone, pmc_now_ms());
    } else if (clone_apply_snapshot(sync->clone, reply, size, pmc_now_ms()) == 0) {
        s_publish(self, sync, true);
    }
    free(reply);
}

/* Receives every message waiting on the SUB socket (after a poll said one is there). */
static void s_drain(pmclient_replica_t *self, s_sync_t *sync)
{
    for (;;) {
        int frame = 0, more = 1;
        bool ours = false;
        bool got = false;
        while (more) {
            zmq_msg_t msg;
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, sync->sub, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&msg);
                if (errno == EINTR)
                    continue;
                return; /* EAGAIN: nothing more (parts of a message come together) */
            }
            got = true;
            more = zmq_msg_more(&msg);
            if (frame == 0) {
                size_t len = zmq_msg_size(&msg);
                ours = len == strlen(PM_PROTO_EVENTS_TOPIC) &&
                       memcmp(zmq_msg_data(&msg), PM_PROTO_EVENTS_TOPIC, len) == 0;
            } else if (frame == 1 && ours && !more &&
                       clone_on_event(sync->clone, zmq_msg_data(&msg), zmq_msg_size(&msg),
                                      pmc_now_ms()) == CLONE_EVENT_APPLIED) {
                s_publish(self, sync, false);
            }
            frame++;
            zmq_msg_close(&msg);
        }
        if (!got)
            return;
    }
}

/* -------------------------------------------------------------------------- the thread */

static int s_sync_open(pmclient_replica_t *self, s_sync_t *sync)
{
    memset(sync, 0, sizeof *sync);
    if (!(sync->clone = clone_new(self->heartbeat_ms, self->backoff_max_ms)))
        return -1;
    if (!(sync->ctx = zmq_ctx_new()) || !(sync->sub = zmq_socket(sync->ctx, ZMQ_SUB)))
        return -1;
    int linger = 0;
    int64_t max_size = S_EVENTS_MAX_SIZE;
    /* ZMTP heartbeats: a service that vanished from the network without closing the
     * connection (its machine lost, moved to a new address) is noticed after 3 x
     * heartbeat_ms, and the connection made again (the name resolved again); otherwise the
     * subscription would stay on a half-open TCP connection for ever. */
    int ping_ms = self->heartbeat_ms, dead_ms = 3 * self->heartbeat_ms;
    if (zmq_setsockopt(sync->sub, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(sync->sub, ZMQ_MAXMSGSIZE, &max_size, sizeof max_size) != 0 ||
        zmq_setsockopt(sync->sub, ZMQ_HEARTBEAT_IVL, &ping_ms, sizeof ping_ms) != 0 ||
        zmq_setsockopt(sync->sub, ZMQ_HEARTBEAT_TIMEOUT, &dead_ms, sizeof dead_ms) != 0 ||
        zmq_setsockopt(sync->sub, ZMQ_SUBSCRIBE, PM_PROTO_EVENTS_TOPIC,
                       strlen(PM_PROTO_EVENTS_TOPIC)) != 0)
        return -1;
    if (self->curve && (zmq_setsockopt(sync->sub, ZMQ_CURVE_SERVERKEY, self->server_public,
                                       PMCLIENT_Z85_KEY_LEN + 1) != 0 ||
                        zmq_setsockopt(sync->sub, ZMQ_CURVE_PUBLICKEY, self->client_public,
                                       PMCLIENT_Z85_KEY_LEN + 1) != 0 ||
                        zmq_setsockopt(sync->sub, ZMQ_CURVE_SECRETKEY, self->client_secret,
                                       PMCLIENT_Z85_KEY_LEN + 1) != 0))
        return -1;
    /* Subscribe first, snapshot second: an event published in between is then either in
     * the snapshot or queued here (the Clone pattern). */
    if (zmq_connect(sync->sub, self->events_endpoint) != 0)
        return -1;
    if (!(sync->client = pmclient_new(self->endpoint)) ||
        pmclient_set_timeout(sync->client, self->timeout_ms) != 0 ||
        pmclient_set_retries(sync->client, 1) != 0)
        return -1;
    if (self->curve && pmclient_set_curve(sync->client, self->server_public, self->client_public,
                                          self->client_secret) != 0)
        return -1;
    return 0;
}

static void s_sync_close(s_sync_t *sync)
{
    pmclient_destroy(&sync->client);
    if (sync->sub)
        zmq_close(sync->sub);
    sync->sub = NULL;
    if (sync->ctx) {
        while (zmq_ctx_term(sync->ctx) != 0 && errno == EINTR) {
        }
    }
    sync->ctx = NULL;
    clone_destroy(&sync->clone);
}

static void *s_run(void *arg)
{
    pmclient_replica_t *self = arg;
    s_sync_t sync = self->sync; /* the thread's own from here on; given back at the end */
    while (!atomic_load(&self->stop)) {
        /* The snapshot is asked synchronously: meanwhile the events stay queued on the SUB
         * socket and are fed after it, as the Clone pattern wants. clone_want_snapshot also
         * notices silence. */
        if (clone_want_snapshot(sync.clone, pmc_now_ms()))
            s_snapshot(self, &sync);
        zmq_pollitem_t item = {.socket = sync.sub, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&item, 1, S_POLL_MS);
        if (rc > 0)
            s_drain(self, &sync);
        else if (rc < 0 && errno != EINTR)
            break;
        /* A state that could not be published for want of memory, and the counters. */
        s_publish(self, &sync, true);
        s_sync_stats(self, sync.clone, false);
    }
    self->sync = sync; /* closed by pmclient_replica_destroy after the join */
    return NULL;
}

/* ---------------------------------------------------------------------- construction */

static char *s_strdup_bounded(const char *text)
{
    size_t len = strlen(text);
    if (len > PMCLIENT_MAX_ENDPOINT_LEN)
        return NULL;
    char *copy = malloc(len + 1);
    if (copy)
        memcpy(copy, text, len + 1);
    return copy;
}

pmclient_replica_t *pmclient_replica_new(const char *endpoint, const char *events_endpoint,
                                         const pmclient_replica_options_t *options)
{
    pmclient_replica_options_t defaults = {0};
    if (!options)
        options = &defaults;
    if (options->timeout_ms < 0 || options->timeout_ms > PMCLIENT_MAX_TIMEOUT_MS ||
        options->heartbeat_ms < 0 || options->heartbeat_ms > PMCLIENT_MAX_TIMEOUT_MS ||
        options->backoff_max_ms < 0 || options->backoff_max_ms > PMCLIENT_MAX_TIMEOUT_MS)
        return NULL;
    bool curve =
        options->server_public_z85 || options->client_public_z85 || options->client_secret_z85;
    if (curve && !(pm_keyfile_z85_valid(options->server_public_z85) &&
                   pm_keyfile_z85_valid(options->client_public_z85) &&
                   pm_keyfile_z85_valid(options->client_secret_z85)))
        return NULL;
    pmclient_replica_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    if (pthread_mutex_init(&self->mutex, NULL) != 0) {
        free(self);
        return NULL;
    }
    if (pthread_cond_init(&self->changed, NULL) != 0) {
        pthread_mutex_destroy(&self->mutex);
        free(self);
        return NULL;
    }
    atomic_init(&self->stop, false);
    atomic_init(&self->current, NULL);
    atomic_init(&self->generation, 0);
    atomic_init(&self->readers[0], 0);
    atomic_init(&self->readers[1], 0);
    atomic_init(&self->last_contact_ms, -1);
    atomic_init(&self->primary_version, -1);
    self->endpoint = s_strdup_bounded(endpoint ? endpoint : PMCLIENT_DEFAULT_ENDPOINT);
    self->events_endpoint =
        s_strdup_bounded(events_endpoint ? events_endpoint : PMCLIENT_DEFAULT_EVENTS_ENDPOINT);
    if (!self->endpoint || !self->events_endpoint)
        goto fail;
    self->timeout_ms = options->timeout_ms ? options->timeout_ms : PMCLIENT_DEFAULT_TIMEOUT_MS;
    self->heartbeat_ms =
        options->heartbeat_ms ? options->heartbeat_ms : PMCLIENT_REPLICA_DEFAULT_HEARTBEAT_MS;
    self->backoff_max_ms =
        options->backoff_max_ms ? options->backoff_max_ms : PMCLIENT_REPLICA_DEFAULT_BACKOFF_MAX_MS;
    /* (clone_new raises a maximum below CLONE_BACKOFF_MIN_MS to it.) */
    if (curve) {
        self->curve = true;
        memcpy(self->server_public, options->server_public_z85, PMCLIENT_Z85_KEY_LEN + 1);
        memcpy(self->client_public, options->client_public_z85, PMCLIENT_Z85_KEY_LEN + 1);
        memcpy(self->client_secret, options->client_secret_z85, PMCLIENT_Z85_KEY_LEN + 1);
    }
    self->on_change = options->on_change;
    self->on_change_arg = options->on_change_arg;
    if (s_sync_open(self, &self->sync) != 0)
        goto fail;
    if (pthread_create(&self->thread, NULL, s_run, self) != 0)
        goto fail;
    self->thread_started = true;
    return self;

fail:
    pmclient_replica_destroy(&self);
    return NULL;
}

void pmclient_replica_destroy(pmclient_replica_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pmclient_replica_t *self = *self_p;
    atomic_store(&self->stop, true);
    if (self->thread_started)
        pthread_join(self->thread, NULL);
    s_sync_close(&self->sync);
    s_state_t *state = atomic_load(&self->current);
    s_state_destroy(&state);
    /* The secret key does not outlive the replica in freed memory. */
    memset(self->client_secret, 0, sizeof self->client_secret);
    pthread_cond_destroy(&self->changed);
    pthread_mutex_destroy(&self->mutex);
    free(self->endpoint);
    free(self->events_endpoint);
    free(self);
    *self_p = NULL;
}

int pmclient_replica_wait(pmclient_replica_t *self, int64_t min_version, int timeout_ms)
{
    if (!self)
        return -1;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    if (timeout_ms >= 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    int rc = -1;
    pthread_mutex_lock(&self->mutex);
    for (;;) {
        /* The state is only freed by the thread after a grace period; reading its version
         * under the counters is the readers' protocol. */
        unsigned slot;
        const s_state_t *state = s_read_begin(self, &slot);
        bool reached = state && state->version >= min_version;
        s_read_end(self, slot);
        if (reached) {
            rc = 0;
            break;
        }
        int wait_rc = timeout_ms < 0
                          ? pthread_cond_wait(&self->changed, &self->mutex)
                          : pthread_cond_timedwait(&self->changed, &self->mutex, &deadline);
        if (wait_rc == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&self->mutex);
    return rc;
}

int pmclient_replica_stats(pmclient_replica_t *self, pmclient_replica_stats_t *out)
{
    if (!self || !out)
        return -1;
    pthread_mutex_lock(&self->mutex);
    *out = self->counters;
    pthread_mutex_unlock(&self->mutex);
    unsigned slot;
    const s_state_t *state = s_read_begin(self, &slot);
    out->synced = state != NULL;
    out->state_version = state ? state->version : -1;
    if (state) {
        memcpy(out->epoch, state->epoch, sizeof out->epoch);
        out->providers = registry_count(state->registry);
        out->models = registry_model_count(state->registry);
    } else {
        out->epoch[0] = '\0';
        out->providers = 0;
        out->models = 0;
    }
    s_read_end(self, slot);
    int64_t contact = atomic_load(&self->last_contact_ms);
    out->since_contact_s = contact < 0 ? -1.0 : (double)(pmc_now_ms() - contact) / 1000.0;
    out->primary_version = atomic_load(&self->primary_version);
    out->versions_behind =
        out->primary_version > out->state_version ? out->primary_version - out->state_version : 0;
    out->stale =
        !out->synced || contact < 0 || pmc_now_ms() - contact > 3 * (int64_t)self->heartbeat_ms;
    return 0;
}

/* ------------------------------------------------------------------------------ reads */

/* A new pm_provider_t with the provider's ProviderConfig (what the service would send). */
static pm_provider_t *s_pm_provider(const provider_t *provider)
{
    pm_provider_t *out = calloc(1, sizeof *out);
    if (!out)
        return NULL;
    size_t models = provider_model_count(provider);
    size_t invalid = provider_invalid_count(provider);
    const char *api_key = provider_api_key(provider);
    if (!(out->provider = strdup(provider_key(provider))) ||
        !(out->name = strdup(provider_name(provider))) ||
        !(out->base_api_url = strdup(provider_base_api_url(provider))) ||
        (api_key && !(out->api_key = strdup(api_key))) ||
        !(out->model_long = pmc_calloc_array(models, sizeof(char *))) ||
        !(out->model_short = pmc_calloc_array(models, sizeof(char *))) ||
        !(out->invalid_models = pmc_calloc_array(invalid, sizeof(char *))))
        goto fail;
    for (size_t i = 0; i < models; i++, out->model_count++) {
        if (!(out->model_long[i] = strdup(provider_model_long(provider, i))) ||
            !(out->model_short[i] = strdup(provider_model_short(provider, i)))) {
            out->model_count++; /* so that the free covers the half-filled entry */
            goto fail;
        }
    }
    for (size_t i = 0; i < invalid; i++, out->invalid_count++) {
        if (!(out->invalid_models[i] = strdup(provider_invalid_at(provider, i)))) {
            out->invalid_count++;
            goto fail;
        }
    }
    return out;
fail:
    pm_provider_free(&out);
    return NULL;
}

/* Begins a read: the state, or NULL with "unavailable" set (not synced yet). */
static const s_state_t *s_begin(pmclient_replica_t *self, unsigned *slot,
                                pmclient_replica_error_t *err)
{
    const s_state_t *state = s_read_begin(self, slot);
    if (!state) {
        s_read_end(self, *slot);
        s_error(err, "unavailable", "Replica not yet synchronised with %s", self->endpoint);
    }
    return state;
}

/* The common head of every resolution: checks model_string, takes a read slot and resolves.
 * On success returns the state with *slot held (the caller ends it with s_read_end) and *res
 * filled; on failure the service's error is in err, no slot is held, and NULL is returned. */
static const s_state_t *s_resolve_begin(pmclient_replica_t *self, const char *model_string,
                                        unsigned *slot, registry_resolution_t *res,
                                        pmclient_replica_error_t *err)
{
    if (!self || !model_string) {
        s_error(err, "bad_request", "missing argument 'model_string'");
        return NULL;
    }
    size_t len = strlen(model_string);
    if (len > S_MAX_MODEL_STRING_LEN) {
        s_error(err, "bad_request", "argument 'model_string' is longer than %d bytes",
                S_MAX_MODEL_STRING_LEN);
        return NULL;
    }
    const s_state_t *state = s_begin(self, slot, err);
    if (!state)
        return NULL;
    registry_status_t status = registry_resolve(state->registry, model_string, len, res);
    if (status == REGISTRY_RESOLVED)
        return state;
    if (status == REGISTRY_INVALID_FOR_PROVIDER)
        s_error(err, "invalid_model", "Invalid model for provider %s: %.*s", res->prefix,
                (int)res->model_len, res->model);
    else
        s_error(err, "invalid_model", "Invalid model: %.*s", (int)res->model_len, res->model);
    s_read_end(self, *slot);
    return NULL;
}

static int s_resolve(pmclient_replica_t *self, const char *model_string,
                     pm_provider_t **provider_out, char **long_name_out,
                     pmclient_replica_error_t *err)
{
    if (provider_out)
        *provider_out = NULL;
    if (long_name_out)
        *long_name_out = NULL;
    unsigned slot;
    registry_resolution_t res;
    if (!s_resolve_begin(self, model_string, &slot, &res, err))
        return -1;
    int rc = -1;
    if ((provider_out && !(*provider_out = s_pm_provider(res.provider))) ||
        (long_name_out && !(*long_name_out = strdup(res.long_name)))) {
        s_error(err, PMCLIENT_ERR_NOMEM, "out of memory");
    } else {
        rc = 0;
    }
    s_read_end(self, slot);
    if (rc != 0) {
        if (provider_out)
            pm_provider_free(provider_out);
        if (long_name_out) {
            free(*long_name_out);
            *long_name_out = NULL;
        }
        return -1;
    }
    s_ok(err);
    return 0;
}

_Static_assert(PMCLIENT_REPLICA_MAX_KEY_LEN == PROVIDER_MAX_KEY_LEN, "key limit");
_Static_assert(PMCLIENT_REPLICA_MAX_NAME_LEN == PROVIDER_MAX_NAME_LEN, "name limit");
_Static_assert(PMCLIENT_REPLICA_MAX_URL_LEN == PROVIDER_MAX_URL_LEN, "URL limit");
_Static_assert(PMCLIENT_REPLICA_MAX_API_KEY_LEN == PROVIDER_MAX_API_KEY_LEN, "API key limit");

/* Copies text into a buffer of cap bytes; -1 when it does not fit (the registry's limits
 * make that impossible, but a copy never overflows on trust). */
static int s_copy_into(char *dest, size_t cap, const char *text)
{
    size_t len = strlen(text);
    if (len >= cap)
        return -1;
    memcpy(dest, text, len + 1);
    return 0;
}

int pmclient_replica_resolve(pmclient_replica_t *self, const char *model_string,
                             pmclient_replica_target_t *out, pmclient_replica_error_t *err)
{
    if (!out) {
        s_error(err, "bad_request", "missing argument 'model_string'");
        return -1;
    }
    unsigned slot;
    registry_resolution_t res;
    const s_state_t *state = s_resolve_begin(self, model_string, &slot, &res, err);
    if (!state)
        return -1;
    int rc = -1;
    const char *api_key = provider_api_key(res.provider);
    out->has_api_key = api_key != NULL;
    out->state_version = state->version;
    if (s_copy_into(out->provider, sizeof out->provider, provider_key(res.provider)) != 0 ||
        s_copy_into(out->long_name, sizeof out->long_name, res.long_name) != 0 ||
        s_copy_into(out->base_api_url, sizeof out->base_api_url,
                    provider_base_api_url(res.provider)) != 0 ||
        s_copy_into(out->api_key, sizeof out->api_key, api_key ? api_key : "") != 0)
        s_error(err, "internal", "a resolved value exceeds the registry's limits");
    else
        rc = 0;
    s_read_end(self, slot);
    if (rc == 0)
        s_ok(err);
    return rc;
}

int pmclient_replica_get_api_for_model_string(pmclient_replica_t *self, const char *model_string,
                                              pm_provider_t **provider_out, char **long_name_out,
                                              pmclient_replica_error_t *err)
{
    return s_resolve(self, model_string, provider_out, long_name_out, err);
}

int pmclient_replica_validate_model(pmclient_replica_t *self, const char *model_string,
                                    char **long_name_out, pmclient_replica_error_t *err)
{
    if (!long_name_out) {
        s_error(err, "bad_request", "no place for the long name");
        return -1;
    }
    return s_resolve(self, model_string, NULL, long_name_out, err);
}

int pmclient_replica_find_model(pmclient_replica_t *self, const char *name, pm_matches_t **out,
                                pmclient_replica_error_t *err)
{
    if (out)
        *out = NULL;
    if (!self || !name || !out) {
        s_error(err, "bad_request", "missing argument 'name'");
        return -1;
    }
    unsigned slot;
    const s_state_t *state = s_begin(self, &slot, err);
    if (!state)
        return -1;
    size_t len = strlen(name);
    size_t n = registry_count(state->registry), hits = 0;
    for (size_t i = 0; i < n; i++)
        hits += provider_find_model(registry_at(state->registry, i), name, len) != NULL;
    pm_matches_t *matches = calloc(1, sizeof *matches);
    if (!matches || !(matches->providers = pmc_calloc_array(hits, sizeof(pm_provider_t *))) ||
        !(matches->model_long = pmc_calloc_array(hits, sizeof(char *))))
        goto nomem;
    for (size_t i = 0; i < n && matches->count < hits; i++) {
        const provider_t *p = registry_at(state->registry, i);
        const char *lng = provider_find_model(p, name, len);
        if (!lng)
            continue;
        size_t at = matches->count++;
        if (!(matches->providers[at] = s_pm_provider(p)) ||
            !(matches->model_long[at] = strdup(lng)))
            goto nomem;
    }
    s_read_end(self, slot);
    *out = matches;
    s_ok(err);
    return 0;
nomem:
    s_read_end(self, slot);
    pm_matches_free(&matches);
    s_error(err, PMCLIENT_ERR_NOMEM, "out of memory");
    return -1;
}

int pmclient_replica_get(pmclient_replica_t *self, const char *provider_name, pm_provider_t **out,
                         pmclient_replica_error_t *err)
{
    if (out)
        *out = NULL;
    if (!self || !provider_name || !out) {
        s_error(err, "bad_request", "missing argument 'provider_name'");
        return -1;
    }
    unsigned slot;
    const s_state_t *state = s_begin(self, &slot, err);
    if (!state)
        return -1;
    const provider_t *p = registry_get(state->registry, provider_name, strlen(provider_name));
    int rc = 0;
    if (p && !(*out = s_pm_provider(p))) {
        s_error(err, PMCLIENT_ERR_NOMEM, "out of memory");
        rc = -1;
    }
    s_read_end(self, slot);
    if (rc == 0)
        s_ok(err);
    return rc;
}

int pmclient_replica_contains(pmclient_replica_t *self, const char *provider_name, bool *out,
                              pmclient_replica_error_t *err)
{
    if (out)
        *out = false;
    if (!self || !provider_name || !out) {
        s_error(err, "bad_request", "missing argument 'provider_name'");
        return -1;
    }
    unsigned slot;
    const s_state_t *state = s_begin(self, &slot, err);
    if (!state)
        return -1;
    *out = registry_contains(state->registry, provider_name, strlen(provider_name));
    s_read_end(self, slot);
    s_ok(err);
    return 0;
}

/* A pm_strings_t with room for count items (count set as they are filled). */
static pm_strings_t *s_strings_new(size_t count)
{
    pm_strings_t *strings = calloc(1, sizeof *strings);
    if (strings && !(strings->items = pmc_calloc_array(count, sizeof(char *)))) {
        free(strings);
        strings = NULL;
    }
    return strings;
}

int pmclient_replica_keys(pmclient_replica_t *self, pm_strings_t **out,
                          pmclient_replica_error_t *err)
{
    if (out)
        *out = NULL;
    if (!self || !out) {
        s_error(err, "bad_request", "missing argument");
        return -1;
    }
    unsigned slot;
    const s_state_t *state = s_begin(self, &slot, err);
    if (!state)
        return -1;
    size_t n = registry_count(state->registry);
    pm_strings_t *keys = s_strings_new(n);
    for (size_t i = 0; keys && i < n; i++) {
        if (!(keys->items[i] = strdup(provider_key(registry_at(state->registry, i)))))
            pm_strings_free(&keys);
        else
            keys->count++;
    }
    s_read_end(self, slot);
    if (!keys) {
        s_error(err, PMCLIENT_ERR_NOMEM, "out of memory");
        return -1;
    }
    *out = keys;
    s_ok(err);
    return 0;
}

int pmclient_replica_available_models(pmclient_replica_t *self, const char *filter_by_provider,
                                      pm_strings_t **out, pmclient_replica_error_t *err)
{
    if (out)
        *out = NULL;
    if (!self || !out) {
        s_error(err, "bad_request", "missing argument");
        return -1;
    }
    unsigned slot;
    const s_state_t *state = s_begin(self, &slot, err);
    if (!state)
        return -1;
    /* The seed: an empty filter means every provider (as the service's s_op_available_models). */
    bool filtered = filter_by_provider && filter_by_provider[0];
    const provider_t *only =
        filtered ? registry_get(state->registry, filter_by_provider, strlen(filter_by_provider))
                 : NULL;
    size_t total =
        filtered ? (only ? provider_model_count(only) : 0) : registry_model_count(state->registry);
    pm_strings_t *names = s_strings_new(total);
    size_t n = registry_count(state->registry);
    for (size_t i = 0; names && i < n; i++) {
        const provider_t *p = registry_at(state->registry, i);
        if (filtered && p != only)
            continue;
        size_t models = provider_model_count(p);
        for (size_t m = 0; names && m < models; m++) {
            if (!(names->items[names->count] = strdup(provider_model_long(p, m))))
                pm_strings_free(&names);
            else
                names->count++;
        }
    }
    s_read_end(self, slot);
    if (!names) {
        s_error(err, PMCLIENT_ERR_NOMEM, "out of memory");
        return -1;
    }
    *out = names;
    s_ok(err);
    return 0;
}
