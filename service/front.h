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

typedef struct front_t front_t;

/* Binds the request endpoint and connects to the writer. Takes ownership of *first_p.
 * NULL with err on failure; *bind_failed tells a bind failure (e.g. port in use) apart. */
front_t *front_new(void *zmq_ctx, const config_t *cfg, const auth_t *auth,
                   const char *writer_endpoint, snapshot_t **first_p, bool *bind_failed, char *err,
                   size_t err_size);

/* Serves until stop_fd becomes readable (the signal self-pipe), then stops taking requests,
 * lets the writer finish the write in hand, delivers its replies and returns 0 (-1 on a
 * socket error). */
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

void front_destroy(front_t **self_p);

#endif
