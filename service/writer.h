/*
 * writer: the single writer thread. It alone owns the provider state, the YAML file, the
 * events PUB socket and the discovery coordinator.
 *
 * The front end hands it every request that changes state (or reaches discovery) over an
 * inproc PAIR socket. For each batch of queued requests the writer applies every change to a
 * copy-on-write clone of the current registry, persists ONCE (group commit), seals the new
 * registry, sends the front end the new snapshot, publishes one event per change, and only
 * then lets the replies go out: a caller that got its reply finds its change in every read.
 *
 * Messages on the PAIR socket (first frame is one type byte):
 *   front -> writer  'W' + routing frames + empty delimiter + request body   a request
 *                    'Q'                                                     stop
 *   writer -> front  'R' + routing frames + empty delimiter + reply body     a reply
 *                    'S' + snapshot_t * (ownership passes to the front)      a new snapshot
 *                    'Q'                                                     stopped
 *
 * Events on the PUB socket (topic `providers`, protocol v1.1): one `changed` per change, with
 * the new ProviderConfig of its key ("configs"), and a `heartbeat` every heartbeat_ms, both
 * carrying the epoch, so that a subscriber can keep a replica (the Clone pattern) and tell a
 * lost event, a silent service and a restarted one apart.
 *
 * These messages are the front end's business only: an owner stops the writer with
 * writer_stop(), over a control pipe of the writer's own.
 */
#ifndef PM_WRITER_H
#define PM_WRITER_H

#include "auth.h"
#include "config.h"
#include "metrics.h"
#include "registry.h"
#include <stdatomic.h>
#include <stdint.h>

#define WRITER_MSG_REQUEST 'W'
#define WRITER_MSG_REPLY 'R'
#define WRITER_MSG_SNAPSHOT 'S'
#define WRITER_MSG_STOP 'Q'

/* The epoch: 16 hex digits, new at every start of the writer (state_version restarts). */
#define WRITER_EPOCH_SIZE 17

/* An immutable view for readers: a sealed registry and the numbers health reports. */
typedef struct {
    registry_t *registry; /* sealed, one reference owned by the snapshot */
    uint64_t state_version;
    int jobs_running;
    uint64_t status_version;       /* v1.1 model status (0 from snapshot_new; the writer sets it) */
    char epoch[WRITER_EPOCH_SIZE]; /* "" from snapshot_new; the writer sets it */
} snapshot_t;

/* ThreadSanitizer (make tsan) cannot see the synchronisation inside libzmq, which is not
 * instrumented: the sender of a snapshot pointer declares a release on it, the receiver an
 * acquire, so that everything the writer built before the hand-off is ordered before the
 * front end's reads. No-ops in other builds. */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define WRITER_TSAN_RELEASE(p) __tsan_release(p)
#define WRITER_TSAN_ACQUIRE(p) __tsan_acquire(p)
#else
#define WRITER_TSAN_RELEASE(p) ((void)(p))
#define WRITER_TSAN_ACQUIRE(p) ((void)(p))
#endif

/* A new snapshot holding a reference to registry (sealed). NULL on allocation failure. */
snapshot_t *snapshot_new(registry_t *registry, uint64_t state_version, int jobs_running);
void snapshot_destroy(snapshot_t **self_p);

typedef struct writer_t writer_t;

/* Takes ownership of *registry_p (sealed; set to NULL). Binds the events endpoint and the
 * inproc endpoint, starts discovery and the thread. NULL with err on failure (*registry_p is
 * then still the caller's); *bind_failed is set when the events endpoint could not be bound. */
writer_t *writer_new(void *zmq_ctx, const config_t *cfg, const auth_t *auth,
                     config_getenv_fn *getenv_fn, registry_t **registry_p, bool *bind_failed,
                     char *err, size_t err_size);

/* This run's epoch (16 hex digits from getrandom()), as in every snapshot and event. */
const char *writer_epoch(const writer_t *self);

/* The inproc endpoint the front end connects its PAIR socket to. */
const char *writer_endpoint(const writer_t *self);

/* The first snapshot, for the front end (caller owns it). NULL on allocation failure. */
snapshot_t *writer_first_snapshot(writer_t *self);

/* How many messages (replies and snapshots) the thread has handed to the front end, counted
 * after each one is wholly on the pipe. A front end that has handled as many knows without a
 * receive (a system call in libzmq) that the pipe holds nothing for it: front_set_handoffs. */
const atomic_uint_fast64_t *writer_handoffs(const writer_t *self);

/* Reload (SIGHUP): hands the thread copies of cfg's discovery settings (schedule, list cache
 * duration, thresholds, prune policy), ignore patterns, and the provider overrides of cfg
 * (its providers: section) that differ from running_overrides (the ones in force; NULL: none),
 * over the writer's control pipe. The thread applies them between two batches (requests in
 * hand are not disturbed): each changed override is layered again over the provider as at
 * start-up, one change per provider (persisted, one event each). An override that left the
 * file is logged: what it set stays until a restart. Call from the thread that called
 * writer_new. 0, or -1 (out of memory, or the pipe failed). */
int writer_reload(writer_t *self, const config_t *cfg, const store_layer_t *running_overrides);

/* Stops the thread and waits for it: the writes already received are committed and answered
 * first. Needed when no front end runs (one that failed to start); after the front end's own
 * stop it only joins. Call it from the thread that called writer_new. Safe on NULL and twice. */
void writer_stop(writer_t *self);

/* Turns counting on: from now on the writer counts its requests (writes) in metrics' writer
 * set, the commits, the jobs and the upstream calls, and keeps the gauges current; the gauges
 * are set at once from the state at start-up. metrics is borrowed and must outlive the writer
 * (destroy it after writer_destroy). Call it from the thread that called writer_new, once. */
void writer_set_metrics(writer_t *self, metrics_t *metrics);

/* Stops the thread (writer_stop) if it still runs, and frees. Safe on NULL. */
void writer_destroy(writer_t **self_p);

/* For tests only: called with the provider key after a set_provider or set_short_name has
 * been applied to the batch; returning true makes the writer treat that step as an allocation
 * failure (the change is rolled back, the request answered internal "out of memory"). NULL
 * (the default) turns it off. */
typedef bool(writer_fault_fn)(const char *provider_key);
void writer_set_fault_hook(writer_fault_fn *hook);

#endif
