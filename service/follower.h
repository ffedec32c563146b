/*
 * follower: the read replica's own thread, in place of the writer (protocol v1.1 "Read
 * replicas"). It keeps a copy of a primary's registry by the Clone pattern (replica/clone.h
 * holds the state machine; this module only does the I/O around it) and hands it to the front
 * end exactly as the writer does, so that reads on a replica take the primary's code path and
 * give the primary's bytes.
 *
 * Sockets, all owned by the follower's thread:
 *   - SUB on the primary's events endpoint (topics `providers` and `models`);
 *   - one DEALER on the primary's request endpoint, for `snapshot` requests and for the ops a
 *     replica forwards (model_status, provider_status, job_status: status is not in the
 *     snapshot). Each request goes out as [tag][empty][body]; the primary's ROUTER echoes the
 *     envelope, so the tag matches a reply to its pending request;
 *   - PUB on the replica's own events endpoint: the primary's `changed` events it applied (once
 *     the front end has the new snapshot) and its `models` events, as they came, and the
 *     replica's own heartbeats, so that replicas can fan out in a tree;
 *   - the PAIR to the front end, with the writer's protocol (writer.h): 'W' requests in
 *     (forwarded ops only; the front end refuses the rest), 'R' replies, 'S' snapshots, 'Q'.
 */
#ifndef PM_FOLLOWER_H
#define PM_FOLLOWER_H

#include "auth.h"
#include "config.h"
#include "metrics.h"
#include "writer.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* How long a forwarded op waits for the primary before its caller gets `unavailable`,
 * `Primary <REQ_EP> did not answer`. */
#define FOLLOWER_FORWARD_TIMEOUT_MS 2000
/* How long a `snapshot` request waits before it counts as failed (then retried with backoff). */
#define FOLLOWER_SNAPSHOT_TIMEOUT_MS 5000
/* Longest wait between two failed snapshot requests. */
#define FOLLOWER_BACKOFF_MAX_MS 2000
/* Forwarded requests waiting for the primary at most; more get `unavailable` at once. */
#define FOLLOWER_MAX_PENDING 1024

typedef struct follower_t follower_t;

/* Binds the replica's events endpoint (cfg->events_endpoint) and the inproc pipe, connects to
 * the primary (cfg->replica_of, cfg->replica_events; with CURVE towards it when
 * cfg->replica_server_key_file is set, the replica's own server key pair as its client
 * identity) and starts the thread. NULL with err on failure; *bind_failed is set when the
 * events endpoint could not be bound. */
follower_t *follower_new(void *zmq_ctx, const config_t *cfg, const auth_t *auth, bool *bind_failed,
                         char *err, size_t err_size);

/* The inproc endpoint the front end connects its PAIR socket to. */
const char *follower_endpoint(const follower_t *self);

/* How many messages (replies and snapshots) the thread has handed to the front end, counted
 * after each one is wholly on the pipe, as writer_handoffs: for front_set_handoffs. Every
 * forwarded request gets exactly one reply (the primary's, or `unavailable`), so the front
 * end's count of requests in hand comes back to zero. */
const atomic_uint_fast64_t *follower_handoffs(const follower_t *self);

/* The front end's first snapshot: an empty registry at state_version 0 and epoch "", which the
 * front end never answers from (it says "not yet synchronised" until the first 'S'). Caller
 * owns it. NULL on allocation failure. */
snapshot_t *follower_first_snapshot(follower_t *self);

/* What health reads (a front_primary_seen_fn, any thread): the highest state_version the
 * primary announced (-1: none yet) and the milliseconds since the primary was last heard
 * (event, heartbeat or snapshot; -1: never). self is a follower_t. */
void follower_seen(void *self, int64_t *primary_version, int64_t *since_ms);

/* Turns counting on: forwarded requests are counted in metrics' writer set, the gauges follow
 * the replica, and /healthz says ok once the first snapshot is applied (before: 503 with
 * "Replica not yet synchronised with <REQ_EP>"). Borrowed; must outlive the follower. Call it
 * from the thread that called follower_new, once. */
void follower_set_metrics(follower_t *self, metrics_t *metrics);

/* Stops the thread and waits for it (forwarded requests in hand are answered `unavailable`).
 * Needed when no front end runs; after the front end's own stop it only joins. Safe on NULL
 * and twice. */
void follower_stop(follower_t *self);

/* Stops the thread if it still runs, and frees. Safe on NULL. */
void follower_destroy(follower_t **self_p);

#endif
