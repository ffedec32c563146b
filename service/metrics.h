/*
 * metrics: the daemon's Prometheus metrics (protocol v1.1 "Metrics") and their rendering in
 * the text exposition format 0.0.4. metrics_http serves the text; this module only counts
 * and renders, so that its output can be tested without sockets.
 *
 * Who writes what (the rule that keeps counting off the request path's costs):
 *   - requests: each thread that answers requests (the front end: reads; the writer: writes)
 *     owns one metrics_requests_t, plain arrays indexed [op][outcome] that only that thread
 *     stores to, with relaxed atomic load + store (no lock, no read-modify-write, no
 *     allocation per request); the HTTP thread only loads;
 *   - gauges, commits, jobs: stored by the writer thread, relaxed atomics;
 *   - upstream (a label per provider, so a table that grows): the writer thread, under a
 *     mutex that the request path never takes;
 *   - auth refusals: the ZAP handler counts them itself (auth.c); the scraper copies the
 *     number in before rendering.
 * No label ever holds an API key, a header or a URL: labels are op names, error codes,
 * provider names, states, job kinds and verdicts.
 */
#ifndef PM_METRICS_H
#define PM_METRICS_H

#include "model_status.h"
#include "pm_proto.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define METRICS_PREFIX "provider_manager_"
/* The op label of a request whose op is not known (unknown_op, an unreadable envelope): the
 * op a client sent is never a label, so a client cannot create series at will. */
#define METRICS_OP_UNKNOWN_LABEL "unknown"
#define METRICS_OP_LABELS (PM_OP_COUNT_ + 1) /* the ops, then "unknown" */
#define METRICS_REQUEST_BUCKETS 12           /* 25 us .. 100 ms */
#define METRICS_UPSTREAM_BUCKETS 11          /* 50 ms .. 60 s */
#define METRICS_COMMIT_BUCKETS 12            /* 100 us .. 10 s */
/* Providers with an upstream series at most; the rest share provider="_other", so that a
 * registry of many providers cannot grow the scrape without bound. */
#define METRICS_MAX_UPSTREAM_PROVIDERS 1024
#define METRICS_OTHER_PROVIDER "_other"

/* One answering thread's request counters. Written by that thread only. */
typedef struct metrics_requests_t metrics_requests_t;

/* The requests sets: one per thread that answers requests. */
typedef enum { METRICS_SET_FRONT = 0, METRICS_SET_WRITER, METRICS_SET_COUNT } metrics_set_t;

/* Upstream call kinds and verdicts (reading 8's label values). */
typedef enum {
    METRICS_UPSTREAM_LIST = 0,
    METRICS_UPSTREAM_PROBE,
    METRICS_UPSTREAM_KINDS
} metrics_upstream_kind_t;
typedef enum {
    METRICS_VERDICT_VALID = 0,
    METRICS_VERDICT_INVALID_MODEL,
    METRICS_VERDICT_AUTH,
    METRICS_VERDICT_TRANSIENT,
    METRICS_VERDICT_ERROR,
    METRICS_VERDICTS
} metrics_verdict_t;

/* Job kinds of jobs_total{kind}. */
typedef enum { METRICS_JOB_DISCOVER = 0, METRICS_JOB_VERIFY, METRICS_JOB_KINDS } metrics_job_kind_t;

typedef struct metrics_t metrics_t;

/* A new, empty set of metrics; version is build_info's label (copied). NULL on ENOMEM. */
metrics_t *metrics_new(const char *version);
/* Safe on NULL and twice. Nobody may use the metrics any more (the HTTP server is stopped,
 * the threads that count have ended). */
void metrics_destroy(metrics_t **self_p);

/* The requests set of one thread; borrowed, lives as long as self. */
metrics_requests_t *metrics_requests(metrics_t *self, metrics_set_t set);

/* A monotonic clock in nanoseconds, for request durations. */
uint64_t metrics_now_ns(void);

/* Counts one answered request of op (PM_OP_COUNT_ or above: "unknown") with outcome (PM_OK or
 * the error code) that took elapsed_ns. Only the set's own thread may call it. */
void metrics_request_observe(metrics_requests_t *set, pm_op_t op, pm_error_t outcome,
                             uint64_t elapsed_ns);

/* The outcome of a packed reply of ours: PM_OK, the error code it carries, or PM_ERR_INTERNAL
 * when the bytes are not a reply. Reads only the envelope (a few bytes for an ok reply) and
 * allocates nothing. */
pm_error_t metrics_reply_outcome(const void *data, size_t size);

/* Gauges (the writer thread, after each commit): state_version, status_version, providers,
 * and models by status state (counts indexed by status_state_t; STATUS_NIL is not shown). */
void metrics_set_state(metrics_t *self, uint64_t state_version, uint64_t status_version,
                       size_t providers, const size_t counts[STATUS_STATE_COUNT]);

/* One group commit of the providers file that took seconds (the writer thread). */
void metrics_commit_observe(metrics_t *self, double seconds);

/* One finished discovery job (the writer thread). */
void metrics_job_done(metrics_t *self, metrics_job_kind_t kind, bool success);

/* One upstream HTTP call's final result (after retries), its latency in seconds (< 0: none
 * measured, only counted). The writer thread; takes the upstream mutex. provider is copied
 * on first sight. Out-of-range kind or verdict: ignored. */
void metrics_upstream_observe(metrics_t *self, const char *provider, metrics_upstream_kind_t kind,
                              metrics_verdict_t verdict, double seconds);

/* The ZAP handler's refusal count, copied in by the scraper before rendering. */
void metrics_set_auth_refusals(metrics_t *self, uint64_t refusals);

/* Whether the daemon serves requests (for /healthz), with a one-line reason when it does not
 * (copied, cut to 200 bytes; NULL: "not serving"). */
void metrics_set_serving(metrics_t *self, bool serving, const char *reason);
/* True when serving; else false with the reason in reason (reason_size bytes). */
bool metrics_serving(metrics_t *self, char *reason, size_t reason_size);

/* A growable text buffer, at most METRICS_MAX_TEXT bytes. */
#define METRICS_MAX_TEXT (16 * 1024 * 1024)
typedef struct {
    char *data; /* NUL-terminated; the caller frees */
    size_t len;
    size_t cap;
    bool failed; /* out of memory or over the limit: the text is unusable */
} metrics_text_t;

/* Renders every family in the text format 0.0.4 into out (appended; zero it first), the
 * process_* families from /proc included (include_process false leaves them out, for tests
 * that compare exact text). 0, or -1 when out failed. */
int metrics_render(metrics_t *self, metrics_text_t *out, bool include_process);

/* Appends a label value escaped as the text format wants (\\, \" and \n). */
void metrics_text_label_value(metrics_text_t *out, const char *value);

#endif
