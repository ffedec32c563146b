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
 * Messages are msgpack maps; discovery_job_send() and discovery_result_recv() are the only
 * code that knows their layout. The API key travels inside the job (inproc only) and never
 * appears in a result, an error text or a log line.
 */
#ifndef PM_DISCOVERY_WORKER_H
#define PM_DISCOVERY_WORKER_H

#include "config.h"
#include <stddef.h>
#include <stdint.h>

#define DISCOVERY_MAX_MODEL_ID_LEN 1024    /* longer ids in a model list are skipped */
#define DISCOVERY_MAX_LISTED_MODELS 100000 /* a longer model list is an error */
#define DISCOVERY_MAX_TRANSFERS 256 /* transfers one worker runs (or waits to retry) at once */
#define DISCOVERY_RETRY_BASE_MS 200 /* first backoff ceiling; doubles per attempt */
#define DISCOVERY_ERROR_SIZE 512    /* error texts are truncated to this */

/* What one HTTP exchange means, decided by discovery_classify(). */
typedef enum {
    DISCOVERY_VERDICT_VALID = 0,     /* 2xx */
    DISCOVERY_VERDICT_INVALID_MODEL, /* the upstream says this model does not exist / chat */
    DISCOVERY_VERDICT_AUTH_ERROR,    /* 401 / 403: the whole provider fails */
    DISCOVERY_VERDICT_TRANSIENT,     /* worth retrying: 408/409/425/429/5xx, timeouts, ... */
    DISCOVERY_VERDICT_ERROR          /* anything else */
} discovery_verdict_t;

/* The classification table, as a pure function. http_status is the response code (0 when
 * none was received), curl_code a CURLcode (0 = the transfer completed), body/len the
 * response body (may be NULL/0; never needs a NUL). A failed transfer (curl_code != 0) is
 * classified by its curl code alone. */
discovery_verdict_t discovery_classify(long http_status, int curl_code, const char *body,
                                       size_t len);
/* "valid", "invalid_model", "auth_error", "transient", "error". Static strings. */
const char *discovery_verdict_name(discovery_verdict_t verdict);

/* ------------------------------------------------------------------------------- messages */

typedef enum { DISCOVERY_KIND_LIST = 0, DISCOVERY_KIND_PROBE } discovery_kind_t;

typedef enum {
    DISCOVERY_RESULT_OK = 0,  /* list: models filled; probe: the model works */
    DISCOVERY_RESULT_INVALID, /* probe only: the model does not exist or cannot chat */
    DISCOVERY_RESULT_ERROR    /* error filled; for a probe it fails the whole provider */
} discovery_result_status_t;

/* A job as the coordinator describes it. Borrowed strings. */
typedef struct {
    uint64_t task; /* the coordinator's task id, echoed in the result */
    uint64_t req;  /* the coordinator's request id within the task, echoed */
    discovery_kind_t kind;
    const char *base_api_url; /* a trailing '/' is ignored */
    const char *api_key;      /* sent as "Authorization: Bearer <key>" */
    const char *model;        /* probe only (NULL for a list) */
} discovery_job_t;

/* Packs job and sends it on socket (a PUSH connected to workers) without blocking.
 * 0, or -1 with errno set by zmq (EAGAIN when no worker can take it). */
int discovery_job_send(void *socket, const discovery_job_t *job);

/* A decoded result. Owned strings; free with discovery_result_clear(). */
typedef struct {
    uint64_t task;
    uint64_t req;
    discovery_kind_t kind;
    discovery_result_status_t status;
    long http_status;   /* of the last attempt; 0 when no response was received */
    int attempts;       /* HTTP requests made, retries included */
    char *model;        /* probe: the model; NULL for a list */
    char *error;        /* status ERROR: a message without secrets; else NULL */
    size_t model_count; /* list OK: distinct ids in listed order */
    char **models;
} discovery_result_t;

void discovery_result_clear(discovery_result_t *result);

/* Receives one result from socket (a PULL). flags as zmq_msg_recv (ZMQ_DONTWAIT).
 * 0 with *result filled; 1 when the message was an empty frame (a wake-up the coordinator
 * sends itself; *result is zeroed); -1 on a zmq error (errno: EAGAIN, ETERM, EINTR, ...) or
 * when the message cannot be decoded (errno EPROTO). */
int discovery_result_recv(void *socket, discovery_result_t *result, int flags);

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
