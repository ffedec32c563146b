/*
 * metrics: counters, gauges and histograms of the daemon, rendered in the Prometheus text
 * format 0.0.4. See metrics.h for who writes what.
 */
#include "metrics.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Bucket bounds: a read is answered in microseconds, a write's commit in milliseconds, an
 * upstream call in tenths of seconds to a minute (the worker's timeouts). Each bound is kept
 * twice: as a number to compare with, and as the exact text of its `le` label. */
static const uint64_t s_request_bounds_ns[METRICS_REQUEST_BUCKETS] = {
    25000,   50000,   100000,   250000,   500000,   1000000,
    2500000, 5000000, 10000000, 25000000, 50000000, 100000000};
static const char *const s_request_le[METRICS_REQUEST_BUCKETS] = {
    "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001",
    "0.0025",  "0.005", "0.01",   "0.025",   "0.05",   "0.1"};
static const double s_upstream_bounds[METRICS_UPSTREAM_BUCKETS] = {0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                                   5,    10,  20,   30,  60};
static const char *const s_upstream_le[METRICS_UPSTREAM_BUCKETS] = {
    "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "20", "30", "60"};
static const double s_commit_bounds[METRICS_COMMIT_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1, 10};
static const char *const s_commit_le[METRICS_COMMIT_BUCKETS] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
    "0.01",   "0.025",   "0.05",   "0.1",   "1",      "10"};

static const char *const s_upstream_kind_names[METRICS_UPSTREAM_KINDS] = {"list", "probe"};
static const char *const s_verdict_names[METRICS_VERDICTS] = {"valid", "invalid_model", "auth",
                                                              "transient", "error"};
static const char *const s_job_kind_names[METRICS_JOB_KINDS] = {"discover", "verify"};

typedef _Atomic uint64_t counter_t;

struct metrics_requests_t {
    counter_t count[METRICS_OP_LABELS][PM_ERR_COUNT_];
    /* Per bucket, not cumulative (one store per request); the last slot is above the top. */
    counter_t bucket[METRICS_OP_LABELS][METRICS_REQUEST_BUCKETS + 1];
    counter_t sum_ns[METRICS_OP_LABELS];
};

typedef struct {
    char *provider;
    uint64_t count[METRICS_UPSTREAM_KINDS][METRICS_VERDICTS];
    uint64_t bucket[METRICS_UPSTREAM_KINDS][METRICS_UPSTREAM_BUCKETS + 1];
    uint64_t observed[METRICS_UPSTREAM_KINDS];
    double sum[METRICS_UPSTREAM_KINDS];
} upstream_t;

struct metrics_t {
    char *version;
    metrics_requests_t requests[METRICS_SET_COUNT];
    counter_t state_version;
    counter_t status_version;
    counter_t providers;
    counter_t models[STATUS_STATE_COUNT];
    counter_t commits;
    counter_t commit_bucket[METRICS_COMMIT_BUCKETS + 1];
    _Atomic double commit_sum;
    counter_t jobs[METRICS_JOB_KINDS][2]; /* [kind][success] */
    counter_t auth_refusals;
    pthread_mutex_t upstream_lock; /* upstream table; never taken on the request path */
    upstream_t *upstream;
    size_t upstream_count;
    size_t upstream_cap;
    pthread_mutex_t serving_lock; /* the reason text; the flag itself is atomic */
    _Atomic bool serving;
    char reason[201];
};

/* Single-writer increment: the owning thread is the only one that stores, so a load and a
 * store (no lock prefix) suffice; readers see a whole value. */
static inline void s_add(counter_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t s_get(counter_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* ------------------------------------------------------------------------ life cycle */

metrics_t *metrics_new(const char *version)
{
    metrics_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->version = strdup(version ? version : "");
    if (!self->version || pthread_mutex_init(&self->upstream_lock, NULL) != 0) {
        free(self->version);
        free(self);
        return NULL;
    }
    if (pthread_mutex_init(&self->serving_lock, NULL) != 0) {
        pthread_mutex_destroy(&self->upstream_lock);
        free(self->version);
        free(self);
        return NULL;
    }
    snprintf(self->reason, sizeof self->reason, "starting");
    return self;
}

void metrics_destroy(metrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    metrics_t *self = *self_p;
    for (size_t i = 0; i < self->upstream_count; i++)
        free(self->upstream[i].provider);
    free(self->upstream);
    pthread_mutex_destroy(&self->upstream_lock);
    pthread_mutex_destroy(&self->serving_lock);
    free(self->version);
    free(self);
    *self_p = NULL;
}

metrics_requests_t *metrics_requests(metrics_t *self, metrics_set_t set)
{
    if (!self || (unsigned)set >= METRICS_SET_COUNT)
        return NULL;
    return &self->requests[set];
}

uint64_t metrics_now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* ------------------------------------------------------------------------ counting */

void metrics_request_observe(metrics_requests_t *set, pm_op_t op, pm_error_t outcome,
                             uint64_t elapsed_ns)
{
    if (!set)
        return;
    unsigned index = (unsigned)op < PM_OP_COUNT_ ? (unsigned)op : PM_OP_COUNT_;
    unsigned code = (unsigned)outcome < PM_ERR_COUNT_ ? (unsigned)outcome : PM_ERR_INTERNAL;
    s_add(&set->count[index][code], 1);
    unsigned b = 0;
    while (b < METRICS_REQUEST_BUCKETS && elapsed_ns > s_request_bounds_ns[b])
        b++;
    s_add(&set->bucket[index][b], 1);
    s_add(&set->sum_ns[index], elapsed_ns);
}

void metrics_set_state(metrics_t *self, uint64_t state_version, uint64_t status_version,
                       size_t providers, const size_t counts[STATUS_STATE_COUNT])
{
    if (!self)
        return;
    atomic_store_explicit(&self->state_version, state_version, memory_order_relaxed);
    atomic_store_explicit(&self->status_version, status_version, memory_order_relaxed);
    atomic_store_explicit(&self->providers, providers, memory_order_relaxed);
    for (unsigned i = 0; i < STATUS_STATE_COUNT; i++)
        atomic_store_explicit(&self->models[i], counts ? counts[i] : 0, memory_order_relaxed);
}

void metrics_commit_observe(metrics_t *self, double seconds)
{
    if (!self)
        return;
    if (seconds < 0)
        seconds = 0;
    unsigned b = 0;
    while (b < METRICS_COMMIT_BUCKETS && seconds > s_commit_bounds[b])
        b++;
    s_add(&self->commit_bucket[b], 1);
    atomic_store_explicit(&self->commit_sum,
                          atomic_load_explicit(&self->commit_sum, memory_order_relaxed) + seconds,
                          memory_order_relaxed);
    s_add(&self->commits, 1);
}

void metrics_job_done(metrics_t *self, metrics_job_kind_t kind, bool success)
{
    if (!self || (unsigned)kind >= METRICS_JOB_KINDS)
        return;
    s_add(&self->jobs[kind][success ? 1 : 0], 1);
}

/* The provider's row, added when new; the shared "_other" row once the table is full. NULL
 * on ENOMEM. Called with the lock held. */
static upstream_t *s_upstream_row(metrics_t *self, const char *provider)
{
    for (size_t i = 0; i < self->upstream_count; i++)
        if (strcmp(self->upstream[i].provider, provider) == 0)
            return &self->upstream[i];
    if (self->upstream_count >= METRICS_MAX_UPSTREAM_PROVIDERS &&
        strcmp(provider, METRICS_OTHER_PROVIDER) != 0)
        return s_upstream_row(self, METRICS_OTHER_PROVIDER);
    if (self->upstream_count == self->upstream_cap) {
        size_t cap = self->upstream_cap ? self->upstream_cap * 2 : 16;
        upstream_t *rows = realloc(self->upstream, cap * sizeof *rows);
        if (!rows)
            return NULL;
        self->upstream = rows;
        self->upstream_cap = cap;
    }
    upstream_t *row = &self->upstream[self->upstream_count];
    memset(row, 0, sizeof *row);
    row->provider = strdup(provider);
    if (!row->provider)
        return NULL;
    self->upstream_count++;
    return row;
}

void metrics_upstream_observe(metrics_t *self, const char *provider, metrics_upstream_kind_t kind,
                              metrics_verdict_t verdict, double seconds)
{
    if (!self || !provider || (unsigned)kind >= METRICS_UPSTREAM_KINDS ||
        (unsigned)verdict >= METRICS_VERDICTS)
        return;
    if (pthread_mutex_lock(&self->upstream_lock) != 0)
        return;
    upstream_t *row = s_upstream_row(self, provider);
    if (row) {
        row->count[kind][verdict]++;
        if (seconds >= 0) {
            unsigned b = 0;
            while (b < METRICS_UPSTREAM_BUCKETS && seconds > s_upstream_bounds[b])
                b++;
            row->bucket[kind][b]++;
            row->observed[kind]++;
            row->sum[kind] += seconds;
        }
    }
    pthread_mutex_unlock(&self->upstream_lock);
}

void metrics_set_auth_refusals(metrics_t *self, uint64_t refusals)
{
    if (self)
        atomic_store_explicit(&self->auth_refusals, refusals, memory_order_relaxed);
}

void metrics_set_serving(metrics_t *self, bool serving, const char *reason)
{
    if (!self || pthread_mutex_lock(&self->serving_lock) != 0)
        return;
    snprintf(self->reason, sizeof self->reason, "%s", reason ? reason : "not serving");
    atomic_store(&self->serving, serving);
    pthread_mutex_unlock(&self->serving_lock);
}

bool metrics_serving(metrics_t *self, char *reason, size_t reason_size)
{
    if (!self)
        return false;
    if (atomic_load(&self->serving))
        return true;
    if (reason && reason_size && pthread_mutex_lock(&self->serving_lock) == 0) {
        snprintf(reason, reason_size, "%s", self->reason);
        pthread_mutex_unlock(&self->serving_lock);
    }
    return atomic_load(&self->serving);
}

/* ------------------------------------------------------------------------ reply outcome */

/* Skips one msgpack object at *off (our own reply: already well formed, but every length is
 * still checked). 0, or -1 when the bytes end early or nest too deep. */
static int s_skip(const uint8_t *p, size_t n, size_t *off, int depth)
{
    if (depth > PM_PROTO_MAX_REPLY_DEPTH || *off >= n)
        return -1;
    uint8_t t = p[(*off)++];
    uint64_t len = 0, items = 0;
    size_t width = 0; /* bytes of a length field that follows */
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3)
        return 0;
    if (t >= 0xa0 && t <= 0xbf) {
        len = t & 0x1f;
    } else if (t >= 0x90 && t <= 0x9f) {
        items = t & 0x0f;
    } else if (t >= 0x80 && t <= 0x8f) {
        items = 2u * (t & 0x0f);
    } else {
        switch (t) {
        case 0xcc:
        case 0xd0:
            len = 1;
            break;
        case 0xcd:
        case 0xd1:
            len = 2;
            break;
        case 0xca:
        case 0xce:
        case 0xd2:
            len = 4;
            break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
            len = 8;
            break;
        case 0xd4:
            len = 2;
            break;
        case 0xd5:
            len = 3;
            break;
        case 0xd6:
            len = 5;
            break;
        case 0xd7:
            len = 9;
            break;
        case 0xd8:
            len = 17;
            break;
        case 0xc4:
        case 0xd9:
            width = 1;
            break;
        case 0xc5:
        case 0xda:
            width = 2;
            break;
        case 0xc6:
        case 0xdb:
            width = 4;
            break;
        case 0xc7:
            width = 1;
            len = 1;
            break; /* ext: the type byte after the length */
        case 0xc8:
            width = 2;
            len = 1;
            break;
        case 0xc9:
            width = 4;
            len = 1;
            break;
        case 0xdc:
        case 0xde:
            width = 2;
            break;
        case 0xdd:
        case 0xdf:
            width = 4;
            break;
        default:
            return -1;
        }
        if (width) {
            if (n - *off < width)
                return -1;
            uint64_t v = 0;
            for (size_t i = 0; i < width; i++)
                v = (v << 8) | p[*off + i];
            *off += width;
            if (t == 0xdc || t == 0xdd)
                items = v;
            else if (t == 0xde || t == 0xdf)
                items = 2 * v;
            else
                len += v;
        }
    }
    if (len > n - *off)
        return -1;
    *off += (size_t)len;
    for (uint64_t i = 0; i < items; i++)
        if (s_skip(p, n, off, depth + 1) < 0)
            return -1;
    return 0;
}

/* Reads a str at *off into (*s, *len). 0, or -1 when it is not a str. */
static int s_read_str(const uint8_t *p, size_t n, size_t *off, const char **s, size_t *len)
{
    if (*off >= n)
        return -1;
    uint8_t t = p[*off];
    size_t start = *off + 1, l = 0;
    if (t >= 0xa0 && t <= 0xbf) {
        l = t & 0x1f;
    } else if (t == 0xd9 && n - *off >= 2) {
        l = p[*off + 1];
        start++;
    } else if (t == 0xda && n - *off >= 3) {
        l = ((size_t)p[*off + 1] << 8) | p[*off + 2];
        start += 2;
    } else {
        return -1;
    }
    if (l > n - start)
        return -1;
    *s = (const char *)p + start;
    *len = l;
    *off = start + l;
    return 0;
}

/* Reads a map header at *off. 0 with *pairs, or -1. */
static int s_read_map(const uint8_t *p, size_t n, size_t *off, size_t *pairs)
{
    if (*off >= n)
        return -1;
    uint8_t t = p[*off];
    if (t >= 0x80 && t <= 0x8f) {
        *pairs = t & 0x0f;
        (*off)++;
        return 0;
    }
    if (t == 0xde && n - *off >= 3) {
        *pairs = ((size_t)p[*off + 1] << 8) | p[*off + 2];
        *off += 3;
        return 0;
    }
    return -1;
}

static bool s_is(const char *s, size_t len, const char *word)
{
    return len == strlen(word) && memcmp(s, word, len) == 0;
}

pm_error_t metrics_reply_outcome(const void *data, size_t size)
{
    const uint8_t *p = data;
    if (!p)
        return PM_ERR_INTERNAL;
    /* The contract fixes "ok" as the first key: {"ok": true, ...} is recognised by 5 bytes. */
    if (size >= 5 && p[0] >= 0x82 && p[0] <= 0x83 && p[1] == 0xa2 && p[2] == 'o' && p[3] == 'k')
        if (p[4] == 0xc3)
            return PM_OK;
    size_t off = 0, pairs = 0;
    if (s_read_map(p, size, &off, &pairs) < 0)
        return PM_ERR_INTERNAL;
    for (size_t i = 0; i < pairs; i++) {
        const char *key;
        size_t key_len;
        if (s_read_str(p, size, &off, &key, &key_len) < 0)
            return PM_ERR_INTERNAL;
        if (s_is(key, key_len, "ok") && off < size && p[off] == 0xc3)
            return PM_OK;
        if (!s_is(key, key_len, "error")) {
            if (s_skip(p, size, &off, 1) < 0)
                return PM_ERR_INTERNAL;
            continue;
        }
        size_t inner = 0;
        if (s_read_map(p, size, &off, &inner) < 0)
            return PM_ERR_INTERNAL;
        for (size_t j = 0; j < inner; j++) {
            if (s_read_str(p, size, &off, &key, &key_len) < 0)
                return PM_ERR_INTERNAL;
            if (s_is(key, key_len, "code")) {
                const char *code;
                size_t code_len;
                if (s_read_str(p, size, &off, &code, &code_len) < 0)
                    return PM_ERR_INTERNAL;
                pm_error_t value = pm_error_from_name(code, code_len);
                return value == PM_ERR_COUNT_ || value == PM_OK ? PM_ERR_INTERNAL : value;
            }
            if (s_skip(p, size, &off, 2) < 0)
                return PM_ERR_INTERNAL;
        }
        return PM_ERR_INTERNAL;
    }
    return PM_ERR_INTERNAL;
}

/* ------------------------------------------------------------------------ text */

static void s_text_append(metrics_text_t *out, const char *s, size_t len)
{
    if (out->failed)
        return;
    if (out->len + len + 1 > out->cap) {
        size_t cap = out->cap ? out->cap : 4096;
        while (cap < out->len + len + 1)
            cap *= 2;
        if (cap > METRICS_MAX_TEXT) {
            out->failed = true;
            return;
        }
        char *data = realloc(out->data, cap);
        if (!data) {
            out->failed = true;
            return;
        }
        out->data = data;
        out->cap = cap;
    }
    memcpy(out->data + out->len, s, len);
    out->len += len;
    out->data[out->len] = '\0';
}

static void s_puts(metrics_text_t *out, const char *s)
{
    s_text_append(out, s, strlen(s));
}

static void s_printf(metrics_text_t *out, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

static void s_printf(metrics_text_t *out, const char *format, ...)
{
    char small[256];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(small, sizeof small, format, args);
    va_end(args);
    if (n < 0) {
        out->failed = true;
        return;
    }
    if ((size_t)n < sizeof small) {
        s_text_append(out, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        out->failed = true;
        return;
    }
    va_start(args, format);
    vsnprintf(big, (size_t)n + 1, format, args);
    va_end(args);
    s_text_append(out, big, (size_t)n);
    free(big);
}

void metrics_text_label_value(metrics_text_t *out, const char *value)
{
    const char *run = value;
    for (const char *c = value; *c; c++) {
        const char *escape = *c == '\\' ? "\\\\" : *c == '"' ? "\\\"" : *c == '\n' ? "\\n" : NULL;
        if (!escape)
            continue;
        s_text_append(out, run, (size_t)(c - run));
        s_puts(out, escape);
        run = c + 1;
    }
    s_puts(out, run);
}

static void s_family(metrics_text_t *out, const char *name, const char *type, const char *help)
{
    s_printf(out, "# HELP %s%s %s\n# TYPE %s%s %s\n", METRICS_PREFIX, name, help, METRICS_PREFIX,
             name, type);
}

/* Doubles in the shortest of two exact spellings (Go's ParseFloat reads both). */
static void s_double(metrics_text_t *out, double v)
{
    char text[32];
    snprintf(text, sizeof text, "%.15g", v);
    if (strtod(text, NULL) != v) /* 15 digits are exact for most values; 17 always are */
        snprintf(text, sizeof text, "%.17g", v);
    s_puts(out, text);
}

static const char *s_op_label(unsigned index)
{
    return index < PM_OP_COUNT_ ? pm_op_name((pm_op_t)index) : METRICS_OP_UNKNOWN_LABEL;
}

/* requests_total and request_duration_seconds: the sets of every thread summed. Series
 * appear once counted (a daemon serves a handful of the ops; 26 x 11 zeros help nobody). */
static void s_render_requests(metrics_t *self, metrics_text_t *out)
{
    s_family(out, "requests_total", "counter",
             "Requests answered, by op and outcome (ok or the error code).");
    for (unsigned op = 0; op < METRICS_OP_LABELS; op++) {
        for (unsigned code = 0; code < PM_ERR_COUNT_; code++) {
            uint64_t n = 0;
            for (unsigned s = 0; s < METRICS_SET_COUNT; s++)
                n += s_get(&self->requests[s].count[op][code]);
            if (n == 0)
                continue;
            s_printf(out, METRICS_PREFIX "requests_total{op=\"%s\",outcome=\"%s\"} %llu\n",
                     s_op_label(op), pm_error_name((pm_error_t)code), (unsigned long long)n);
        }
    }
    s_family(out, "request_duration_seconds", "histogram",
             "Time from receiving a request to handing its reply to ZeroMQ, by op.");
    for (unsigned op = 0; op < METRICS_OP_LABELS; op++) {
        uint64_t buckets[METRICS_REQUEST_BUCKETS + 1] = {0}, sum_ns = 0, total = 0;
        for (unsigned s = 0; s < METRICS_SET_COUNT; s++) {
            for (unsigned b = 0; b <= METRICS_REQUEST_BUCKETS; b++)
                buckets[b] += s_get(&self->requests[s].bucket[op][b]);
            sum_ns += s_get(&self->requests[s].sum_ns[op]);
        }
        for (unsigned b = 0; b <= METRICS_REQUEST_BUCKETS; b++)
            total += buckets[b];
        if (total == 0)
            continue;
        const char *label = s_op_label(op);
        uint64_t cumulative = 0;
        for (unsigned b = 0; b < METRICS_REQUEST_BUCKETS; b++) {
            cumulative += buckets[b];
            s_printf(out,
                     METRICS_PREFIX "request_duration_seconds_bucket{op=\"%s\",le=\"%s\"} %llu\n",
                     label, s_request_le[b], (unsigned long long)cumulative);
        }
        s_printf(out,
                 METRICS_PREFIX
                 "request_duration_seconds_bucket{op=\"%s\",le=\"+Inf\"} %llu\n" METRICS_PREFIX
                 "request_duration_seconds_sum{op=\"%s\"} %llu.%09llu\n" METRICS_PREFIX
                 "request_duration_seconds_count{op=\"%s\"} %llu\n",
                 label, (unsigned long long)total, label,
                 (unsigned long long)(sum_ns / 1000000000u),
                 (unsigned long long)(sum_ns % 1000000000u), label, (unsigned long long)total);
    }
}

static void s_render_state(metrics_t *self, metrics_text_t *out)
{
    s_family(out, "state_version", "gauge", "Version of the provider state (restarts at 0).");
    s_printf(out, METRICS_PREFIX "state_version %llu\n",
             (unsigned long long)s_get(&self->state_version));
    s_family(out, "status_version", "gauge", "Version of the model status table.");
    s_printf(out, METRICS_PREFIX "status_version %llu\n",
             (unsigned long long)s_get(&self->status_version));
    s_family(out, "providers", "gauge", "Providers in the registry.");
    s_printf(out, METRICS_PREFIX "providers %llu\n", (unsigned long long)s_get(&self->providers));
    s_family(out, "models", "gauge", "Models in the status table, by state.");
    for (unsigned i = 0; i < STATUS_STATE_COUNT; i++) {
        if (i == STATUS_NIL)
            continue;
        s_printf(out, METRICS_PREFIX "models{state=\"%s\"} %llu\n",
                 status_state_name((status_state_t)i), (unsigned long long)s_get(&self->models[i]));
    }
}

static void s_render_commits(metrics_t *self, metrics_text_t *out)
{
    s_family(out, "commits_total", "counter", "Group commits of the providers file.");
    s_printf(out, METRICS_PREFIX "commits_total %llu\n", (unsigned long long)s_get(&self->commits));
    s_family(out, "commit_duration_seconds", "histogram",
             "Time to seal and persist one group commit.");
    uint64_t cumulative = 0;
    for (unsigned b = 0; b < METRICS_COMMIT_BUCKETS; b++) {
        cumulative += s_get(&self->commit_bucket[b]);
        s_printf(out, METRICS_PREFIX "commit_duration_seconds_bucket{le=\"%s\"} %llu\n",
                 s_commit_le[b], (unsigned long long)cumulative);
    }
    cumulative += s_get(&self->commit_bucket[METRICS_COMMIT_BUCKETS]);
    s_printf(out, METRICS_PREFIX "commit_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
             (unsigned long long)cumulative);
    s_puts(out, METRICS_PREFIX "commit_duration_seconds_sum ");
    s_double(out, atomic_load_explicit(&self->commit_sum, memory_order_relaxed));
    s_printf(out, "\n" METRICS_PREFIX "commit_duration_seconds_count %llu\n",
             (unsigned long long)cumulative);
    s_family(out, "jobs_total", "counter", "Finished discovery jobs, by kind and result.");
    for (unsigned k = 0; k < METRICS_JOB_KINDS; k++)
        for (unsigned r = 0; r < 2; r++)
            s_printf(out, METRICS_PREFIX "jobs_total{kind=\"%s\",result=\"%s\"} %llu\n",
                     s_job_kind_names[k], r ? "success" : "failure",
                     (unsigned long long)s_get(&self->jobs[k][r]));
}

static void s_upstream_labels(metrics_text_t *out, const upstream_t *row, unsigned kind)
{
    s_puts(out, "{provider=\"");
    metrics_text_label_value(out, row->provider);
    s_printf(out, "\",kind=\"%s\"", s_upstream_kind_names[kind]);
}

static void s_render_upstream(metrics_t *self, metrics_text_t *out)
{
    if (pthread_mutex_lock(&self->upstream_lock) != 0) {
        out->failed = true;
        return;
    }
    s_family(out, "upstream_requests_total", "counter",
             "Upstream HTTP calls (after retries), by provider, kind and verdict.");
    for (size_t i = 0; i < self->upstream_count; i++) {
        const upstream_t *row = &self->upstream[i];
        for (unsigned k = 0; k < METRICS_UPSTREAM_KINDS; k++) {
            for (unsigned v = 0; v < METRICS_VERDICTS; v++) {
                if (row->count[k][v] == 0)
                    continue;
                s_puts(out, METRICS_PREFIX "upstream_requests_total");
                s_upstream_labels(out, row, k);
                s_printf(out, ",verdict=\"%s\"} %llu\n", s_verdict_names[v],
                         (unsigned long long)row->count[k][v]);
            }
        }
    }
    s_family(out, "upstream_duration_seconds", "histogram",
             "Duration of the last attempt of an upstream HTTP call, by provider and kind.");
    for (size_t i = 0; i < self->upstream_count; i++) {
        const upstream_t *row = &self->upstream[i];
        for (unsigned k = 0; k < METRICS_UPSTREAM_KINDS; k++) {
            if (row->observed[k] == 0)
                continue;
            uint64_t cumulative = 0;
            for (unsigned b = 0; b <= METRICS_UPSTREAM_BUCKETS; b++) {
                cumulative += row->bucket[k][b];
                s_puts(out, METRICS_PREFIX "upstream_duration_seconds_bucket");
                s_upstream_labels(out, row, k);
                s_printf(out, ",le=\"%s\"} %llu\n",
                         b < METRICS_UPSTREAM_BUCKETS ? s_upstream_le[b] : "+Inf",
                         (unsigned long long)cumulative);
            }
            s_puts(out, METRICS_PREFIX "upstream_duration_seconds_sum");
            s_upstream_labels(out, row, k);
            s_puts(out, "} ");
            s_double(out, row->sum[k]);
            s_puts(out, "\n" METRICS_PREFIX "upstream_duration_seconds_count");
            s_upstream_labels(out, row, k);
            s_printf(out, "} %llu\n", (unsigned long long)row->observed[k]);
        }
    }
    pthread_mutex_unlock(&self->upstream_lock);
}

/* ------------------------------------------------------------------------ /proc */

/* Reads a small /proc file whole. Its length, or -1. */
static ssize_t s_read_proc(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, size - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (ssize_t)n;
}

/* The system's boot time (seconds since the epoch), from /proc/stat's btime; -1. */
static long long s_boot_time(void)
{
    FILE *f = fopen("/proc/stat", "re");
    if (!f)
        return -1;
    char line[512];
    long long btime = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "btime ", 6) == 0) {
            char *end;
            errno = 0;
            btime = strtoll(line + 6, &end, 10);
            if (errno || end == line + 6)
                btime = -1;
            break;
        }
    }
    fclose(f);
    return btime;
}

static long s_open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return -1;
    long n = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL)
        if (entry->d_name[0] != '.')
            n++;
    closedir(dir);
    return n - 1; /* the directory's own descriptor */
}

/* Prometheus's standard process_* families (client_golang's names and meanings). */
static void s_render_process(metrics_text_t *out)
{
    char stat[1024];
    long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    ssize_t n = s_read_proc("/proc/self/stat", stat, sizeof stat);
    const char *after = n > 0 ? strrchr(stat, ')') : NULL;
    unsigned long long utime = 0, stime = 0, start = 0;
    long long rss = 0;
    bool have_stat = false;
    if (after && ticks > 0 && page > 0) {
        /* Fields from 3 (state) on, space-separated: utime 14, stime 15, starttime 22, rss 24. */
        unsigned long long field[22] = {0};
        const char *c = after + 1;
        int k = 0;
        while (k < 22 && *c == ' ') {
            char *end;
            c++;
            field[k] = strtoull(c, &end, 10);
            while (*end && *end != ' ')
                end++;
            c = end;
            k++;
        }
        if (k == 22) {
            utime = field[14 - 3];
            stime = field[15 - 3];
            start = field[22 - 3];
            rss = (long long)field[24 - 3];
            have_stat = true;
        }
    }
    if (have_stat) {
        s_puts(out,
               "# HELP process_cpu_seconds_total Total user and system CPU time spent in "
               "seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total ");
        s_double(out, (double)(utime + stime) / (double)ticks);
        s_puts(out, "\n# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                    "# TYPE process_resident_memory_bytes gauge\n");
        s_printf(out, "process_resident_memory_bytes %lld\n", rss * (long long)page);
        long long boot = s_boot_time();
        if (boot >= 0) {
            s_puts(out, "# HELP process_start_time_seconds Start time of the process since unix "
                        "epoch in seconds.\n# TYPE process_start_time_seconds gauge\n"
                        "process_start_time_seconds ");
            s_double(out, (double)boot + (double)start / (double)ticks);
            s_puts(out, "\n");
        }
    }
    long fds = s_open_fds();
    if (fds >= 0)
        s_printf(out,
                 "# HELP process_open_fds Number of open file descriptors.\n"
                 "# TYPE process_open_fds gauge\nprocess_open_fds %ld\n",
                 fds);
}

int metrics_render(metrics_t *self, metrics_text_t *out, bool include_process)
{
    if (!self || !out)
        return -1;
    s_render_requests(self, out);
    s_render_state(self, out);
    s_render_commits(self, out);
    s_render_upstream(self, out);
    s_family(out, "auth_refusals_total", "counter",
             "Client connections refused by the CURVE authenticator.");
    s_printf(out, METRICS_PREFIX "auth_refusals_total %llu\n",
             (unsigned long long)s_get(&self->auth_refusals));
    s_family(out, "build_info", "gauge", "Always 1; the version is a label.");
    s_puts(out, METRICS_PREFIX "build_info{version=\"");
    metrics_text_label_value(out, self->version);
    s_puts(out, "\"} 1\n");
    if (include_process)
        s_render_process(out);
    return out->failed ? -1 : 0;
}
