/*
 * discovery_worker: the HTTP side of model discovery, one thread per worker.
 *
 * The coordinator (discovery.c) binds a PUSH socket for jobs and a PULL socket for results;
 * each worker connects to both (the zguide's ventilator / worker / sink pipeline) and to its
 * own PAIR control socket, over which the owner stops it. A worker drives many transfers at
 * once with one libcurl multi handle (whose connection cache is shared by all its transfers),
 * polling the job and control sockets beside curl's own sockets, so a slow upstream occupies a
 * transfer slot, never a thread. Transient failures are retried inside the same event loop
 * (a timer list; the thread never sleeps). Workers share nothing with other threads except the
 * zmq context and their own copy of the settings.
 *
 * A job is one HTTP request: "list" (GET {base}/models) or "probe" (POST
 * {base}/chat/completions with a one-word prompt). Every job yields exactly one result.
 * The messages are discovery_msg's; the meaning of an answer is discovery_classify's. The API
 * key travels inside the job (inproc only) and never appears in a result, an error text or a
 * log line.
 */
#ifndef PM_DISCOVERY_WORKER_H
#define PM_DISCOVERY_WORKER_H

#include "config.h"
#include "discovery_classify.h"
#include "discovery_msg.h"

#define DISCOVERY_MAX_TRANSFERS 256 /* transfers one worker runs (or waits to retry) at once */
#define DISCOVERY_RETRY_BASE_MS 200 /* first backoff ceiling; doubles per attempt */

/* --------------------------------------------------------------------------------- worker */

typedef struct discovery_worker_t discovery_worker_t;

/* Creates the worker's sockets in the calling thread: a PAIR control pipe (both ends, on an
 * inproc endpoint unique to this worker), a PULL connected to jobs_endpoint (a bound PUSH) and
 * a PUSH connected to results_endpoint (a bound PULL); then starts the thread, which takes
 * its sockets over (pthread_create is the memory barrier zmq asks for). settings is copied.
 * NULL on failure, with nothing left running. */
discovery_worker_t *discovery_worker_new(void *zmq_ctx, const config_discovery_t *settings,
                                         const char *jobs_endpoint, const char *results_endpoint);

/* Sends "stop" over the control pipe, joins the thread (transfers in flight are abandoned and
 * their results never sent), closes the owner's sockets with LINGER 0 and frees the worker.
 * Call it from the thread that created the worker (or after a memory barrier). Safe on NULL
 * and twice. */
void discovery_worker_destroy(discovery_worker_t **self_p);

#endif
