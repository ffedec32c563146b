/*
 * discovery_msg: the job and result messages between the discovery coordinator and its
 * workers (inproc PUSH/PULL, msgpack maps). This module is the only code that knows their
 * layout: the coordinator sends jobs and reads results with it, the worker reads jobs and
 * sends results with it. The API key travels inside a job (inproc only) and is wiped from
 * every buffer that held it; a result never holds it.
 */
#ifndef PM_DISCOVERY_MSG_H
#define PM_DISCOVERY_MSG_H

#include "discovery_classify.h"
#include "model_meta.h"

#include <stddef.h>
#include <stdint.h>

#define DISCOVERY_MAX_MODEL_ID_LEN 1024    /* longer ids in a model list are skipped */
#define DISCOVERY_MAX_LISTED_MODELS 100000 /* a longer model list is an error */
#define DISCOVERY_MAX_JOB_MESSAGE 16384    /* url + key + model + framing, with room to spare */
#define DISCOVERY_ERROR_SIZE 512           /* error texts are truncated to this */

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

/* A job as a worker decodes it. Owned strings; free with discovery_job_msg_clear() (which
 * wipes the key). */
typedef struct {
    uint64_t task;
    uint64_t req;
    discovery_kind_t kind;
    char *base_api_url;
    char *api_key;
    char *model; /* NULL for a list */
} discovery_job_msg_t;

/* Decodes one job message of size bytes. 0 with *job filled; 1 when task, req and kind are
 * readable but the rest is not a valid job (it must be answered with an error; the strings
 * are NULL); -1 when not even the ids are readable (it cannot be answered). The caller
 * wipes data (it holds the key). */
int discovery_job_decode(const void *data, size_t size, discovery_job_msg_t *job);
void discovery_job_msg_clear(discovery_job_msg_t *job);

/* A result. Decoded results own their strings (free with discovery_result_clear()); a worker
 * sending one may point them at its own buffers and never clear it. metas has model_count
 * entries: a caller that adopts `models` (and zeroes model_count) clears and frees metas
 * first. */
typedef struct {
    uint64_t task;
    uint64_t req;
    discovery_kind_t kind;
    discovery_result_status_t status;
    discovery_verdict_t verdict; /* OK: valid; INVALID: invalid_model; ERROR: auth, transient
                                    (retries exhausted) or error */
    long http_status;            /* of the last attempt; 0 when no response was received */
    int attempts;                /* HTTP requests made, retries included */
    double latency_ms;           /* of the last attempt (for OK results: the successful one);
                                    0 when no request was made */
    char *model;                 /* probe: the model; NULL for a list */
    char *error;                 /* status ERROR: a message without secrets; else NULL */
    size_t model_count;          /* list OK: distinct ids in listed order */
    char **models;
    model_meta_t *metas; /* list OK: model_count entries (may be NULL: all empty) */
} discovery_result_t;

void discovery_result_clear(discovery_result_t *result);

/* Packs result and sends it on socket (a PUSH), blocking: the results pipe has no high-water
 * mark, and its length is bounded by the jobs handed out. When packing runs out of memory an
 * "out of memory" error result for the same task/req is sent instead, so the coordinator
 * never waits for an answer that cannot come. 0, or -1 on a zmq error (ETERM). */
int discovery_result_send(void *socket, const discovery_result_t *result);

/* Receives one result from socket (a PULL). flags as zmq_msg_recv (ZMQ_DONTWAIT).
 * 0 with *result filled; 1 when the message was an empty frame (a wake-up the coordinator
 * sends itself; *result is zeroed); -1 on a zmq error (errno: EAGAIN, ETERM, EINTR, ...) or
 * when the message cannot be decoded (errno EPROTO). */
int discovery_result_recv(void *socket, discovery_result_t *result, int flags);

#endif
