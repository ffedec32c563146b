/*
 * front: the request front end, run in the daemon's main thread.
 *
 * A ROUTER socket on the request endpoint behaves exactly like REP to REQ clients (and to
 * DEALER clients that send the empty delimiter). Reads are answered at once from the current
 * immutable snapshot, in this thread: a read is microseconds of work, and a hop to another
 * thread would cost more than the work (see docs/benchmarks.md). Writes go to the writer
 * thread over inproc; their replies come back the same way and are routed to the caller, so a
 * slow write (a persist of a big registry) never stalls a read.
 */
#ifndef PM_FRONT_H
#define PM_FRONT_H

#include "auth.h"
#include "config.h"
#include "writer.h"

#include <stdint.h>
#include <stdatomic.h>

typedef struct front_t front_t;

/* Binds the request endpoint and connects to the writer. Takes ownership of *first_p.
 * NULL with err on failure; *bind_failed tells a bind failure (e.g. port in use) apart. */
front_t *front_new(void *zmq_ctx, const config_t *cfg, auth_t *auth, const char *writer_endpoint,
                   snapshot_t **first_p, bool *bind_failed, char *err, size_t err_size);

/* The byte the signal handler writes to stop_fd for SIGHUP; any other byte means stop. */
#define FRONT_SIGNAL_RELOAD 'H'

/* A reload (SIGHUP), run in the front end's thread between two requests. Returns true when the
 * new configuration was applied, false when it was refused (the old one stays). */
typedef bool(front_reload_fn)(void *arg);

/* Sets the reload hook (none by default: a reload byte is then ignored). health reports the
 * time and outcome of the last reload (reloaded_at, reload_ok; nil before the first). */
void front_set_reload(front_t *self, front_reload_fn *fn, void *arg);

/* Serves until stop_fd becomes readable with a byte other than FRONT_SIGNAL_RELOAD (the
 * signal self-pipe; with front_set_handoffs it is read after at most FRONT_IDLE_WAKE_MS of
 * quiet or FRONT_BURST requests, or at once when a signal interrupts the wait), then stops taking
 * requests, lets the writer finish the write in hand, delivers its replies and returns 0 (-1 on a
 * socket error). A FRONT_SIGNAL_RELOAD byte runs the reload hook and goes on serving. */
int front_run(front_t *self, int stop_fd);

/* Lowers the reply limit (PM_PROTO_MAX_REPLY_SIZE by default), so that a test can exercise
 * the refusal of a too-large read reply without building a 64 MiB registry. Call it before
 * front_run. A read whose reply would exceed the limit gets `internal`, "Reply of <n> bytes
 * exceeds the 64 MiB reply limit", instead of the reply. */
void front_set_max_reply(front_t *self, size_t max_bytes);

/* Turns counting on: every request the front end answers itself (reads, and refusals before
 * any op runs) is counted in metrics' front set (borrowed; must outlive the front end). Call
 * it before front_run. Writes are counted by the writer (writer_set_metrics). */
void front_set_metrics(front_t *self, metrics_t *metrics);

/* What a read replica's health says about its primary: the highest state_version the primary
 * announced (-1: none yet) and the milliseconds since it was last heard (-1: never). Called in
 * the front end's thread (follower_seen is one). */
typedef void(front_primary_seen_fn)(void *arg, int64_t *primary_version, int64_t *since_ms);

/* Read replica mode (v1.1 "Read replicas"): writer_endpoint given to front_new was the
 * follower's (follower.h), which speaks the writer's protocol. Before the first snapshot from
 * it, every op but health gets `unavailable`, "Replica not yet synchronised with
 * <primary_endpoint>"; after it, reads are answered from the snapshot as on a primary;
 * model_status, provider_status and job_status go to the follower (which forwards them to the
 * primary); every other op that changes state or starts a job gets `read_only`, "Read-only
 * replica; send writes to <primary_endpoint>". health adds lag_versions and primary_seen_s
 * (from seen; NULL: 0 and nil). Call it before front_run. 0, or -1 (out of memory). */
int front_set_replica(front_t *self, const char *primary_endpoint, front_primary_seen_fn *seen,
                      void *seen_arg);

/* Lets the front end wait the way a plain REP server does: while no write is in hand it blocks
 * in a receive on the request socket alone, and learns from handoffs (the writer's count of
 * messages handed over, writer_handoffs) whether the writer sent it anything, without a
 * system call. Without it (the default) every wait is a poll(2) over the request socket, the
 * writer's pipe and the stop pipe. Call it before front_run; handoffs must outlive the front
 * end. See front_run for the stop latency it implies. */
void front_set_handoffs(front_t *self, const atomic_uint_fast64_t *handoffs);

void front_destroy(front_t **self_p);

#endif
