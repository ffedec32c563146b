/*
 * bench_client: load generator for the provider-manager request endpoint (or bench_echo).
 *
 * N threads, each with its own REQ socket, each sending M requests back to back and timing
 * every one with CLOCK_MONOTONIC. The request is encoded once (reads) or per request (writes:
 * set_provider of the thread's own provider, changing only its display name, so each write is
 * a small real change). Prints one JSON object to stdout:
 *   {"op", "endpoint", "threads", "requests", "errors", "timeouts", "elapsed_s", "rps",
 *    "p50_us", "p90_us", "p99_us", "mean_us", "min_us", "max_us", "reply_bytes"}
 * where requests counts the measured (non-warm-up) requests, rps is requests / wall time from
 * the common start to the last thread's end, and reply_bytes is the mean reply size.
 * A reply whose "ok" is not true counts as an error (checked on the first bytes only: the
 * contract fixes "ok" as the first key, so no decode cost lands on the client side).
 *
 * Usage: bench_client --endpoint EP [--threads N] [--requests M] [--warmup K]
 *                     [--max-seconds S] [--timeout-ms T] [--op OP] [--arg NAME=VALUE ...]
 *                     [--write PREFIX] [--url URL]
 * --write PREFIX switches to set_provider writes: thread t updates provider PREFIX<t>.
 * Exit status 0 when the JSON was printed (errors are reported in it), 1 on a setup failure,
 * 2 on a usage error.
 */
#include "pm_proto.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define CLIENT_MAX_THREADS 64
#define CLIENT_MAX_ARGS 8
#define CLIENT_MAX_REQUESTS 10000000L
#define CLIENT_DEFAULT_TIMEOUT_MS 60000

typedef struct {
    const char *endpoint;
    int threads;
    long requests; /* per thread */
    long warmup;   /* per thread, not measured */
    double max_seconds;
    int timeout_ms;
    const char *op;
    const char *arg_name[CLIENT_MAX_ARGS];
    const char *arg_value[CLIENT_MAX_ARGS];
    char *arg_text[CLIENT_MAX_ARGS]; /* owned copies the two arrays above point into */
    int arg_count;
    const char *write_prefix; /* NULL: reads */
    const char *url;
} client_args_t;

typedef struct {
    const client_args_t *args;
    void *ctx;
    int index;
    pthread_barrier_t *barrier;
    uint64_t *latency_ns; /* args->requests entries */
    long done;
    long errors;
    long timeouts;
    unsigned long long reply_bytes;
    struct timespec finished;
    int failed; /* setup failure: the thread did not reach the barrier normally */
} worker_t;

static void s_usage(void)
{
    fprintf(stderr, "usage: bench_client --endpoint EP [--threads N] [--requests M] "
                    "[--warmup K] [--max-seconds S] [--timeout-ms T] [--op OP] "
                    "[--arg NAME=VALUE ...] [--write PREFIX] [--url URL]\n");
}

static uint64_t s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t s_ts_ns(const struct timespec *ts)
{
    return (uint64_t)ts->tv_sec * 1000000000ULL + (uint64_t)ts->tv_nsec;
}

/* Parses a whole decimal number in [min, max]; 0 or -1. */
static int s_parse_long(const char *text, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < min || value > max)
        return -1;
    *out = value;
    return 0;
}

static void s_args_clear(client_args_t *args)
{
    for (int i = 0; i < args->arg_count; i++)
        free(args->arg_text[i]);
    args->arg_count = 0;
}

static int s_parse(client_args_t *args, int argc, char **argv)
{
    memset(args, 0, sizeof *args);
    args->threads = 1;
    args->requests = 1000;
    args->warmup = 10;
    args->timeout_ms = CLIENT_DEFAULT_TIMEOUT_MS;
    args->op = "get_api_for_model_string";
    args->url = "http://127.0.0.1:9/v1";
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_client: %s needs a value\n", flag);
            return -1;
        }
        const char *value = argv[++i];
        long number = 0;
        if (strcmp(flag, "--endpoint") == 0) {
            args->endpoint = value;
        } else if (strcmp(flag, "--threads") == 0) {
            if (s_parse_long(value, 1, CLIENT_MAX_THREADS, &number) < 0)
                goto bad_value;
            args->threads = (int)number;
        } else if (strcmp(flag, "--requests") == 0) {
            if (s_parse_long(value, 1, CLIENT_MAX_REQUESTS, &args->requests) < 0)
                goto bad_value;
        } else if (strcmp(flag, "--warmup") == 0) {
            if (s_parse_long(value, 0, CLIENT_MAX_REQUESTS, &args->warmup) < 0)
                goto bad_value;
        } else if (strcmp(flag, "--timeout-ms") == 0) {
            if (s_parse_long(value, 1, 3600000, &number) < 0)
                goto bad_value;
            args->timeout_ms = (int)number;
        } else if (strcmp(flag, "--max-seconds") == 0) {
            char *end = NULL;
            errno = 0;
            args->max_seconds = strtod(value, &end);
            if (errno != 0 || end == value || *end != '\0' || args->max_seconds < 0 ||
                args->max_seconds > 86400)
                goto bad_value;
        } else if (strcmp(flag, "--op") == 0) {
            args->op = value;
        } else if (strcmp(flag, "--write") == 0) {
            args->write_prefix = value;
        } else if (strcmp(flag, "--url") == 0) {
            args->url = value;
        } else if (strcmp(flag, "--arg") == 0) {
            if (args->arg_count >= CLIENT_MAX_ARGS) {
                fprintf(stderr, "bench_client: at most %d --arg\n", CLIENT_MAX_ARGS);
                return -1;
            }
            char *text = strdup(value);
            if (!text) {
                fprintf(stderr, "bench_client: out of memory\n");
                return -1;
            }
            int a = args->arg_count++;
            args->arg_text[a] = text;
            char *equals = strchr(text, '=');
            if (!equals) {
                fprintf(stderr, "bench_client: --arg wants NAME=VALUE\n");
                return -1;
            }
            *equals = '\0';
            args->arg_name[a] = text;
            args->arg_value[a] = equals + 1;
        } else {
            fprintf(stderr, "bench_client: unknown flag %s\n", flag);
            return -1;
        }
        continue;
    bad_value:
        fprintf(stderr, "bench_client: bad value for %s: %s\n", flag, value);
        return -1;
    }
    if (!args->endpoint) {
        fprintf(stderr, "bench_client: --endpoint is required\n");
        return -1;
    }
    if (args->write_prefix)
        args->op = "set_provider";
    return 0;
}

/* Encodes the read request {"op": op, "args": {name: value, ...}} into buf. 0 or -1. */
static int s_encode_read(const client_args_t *args, msgpack_sbuffer *buf)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    int rc = pm_request_begin(&pk, args->op, false, 0);
    rc |= msgpack_pack_map(&pk, (uint32_t)args->arg_count);
    for (int i = 0; i < args->arg_count; i++) {
        rc |= pm_pack_str(&pk, args->arg_name[i]);
        rc |= pm_pack_str(&pk, args->arg_value[i]);
    }
    return rc == 0 ? 0 : -1;
}

/* Encodes set_provider of PREFIX<index> with a display name that changes every request. */
static int s_encode_write(const client_args_t *args, int index, long sequence, msgpack_sbuffer *buf)
{
    char key[128], name[160];
    int kl = snprintf(key, sizeof key, "%s%d", args->write_prefix, index);
    int nl = snprintf(name, sizeof name, "Bench writer %d rev %ld", index, sequence);
    if (kl < 0 || (size_t)kl >= sizeof key || nl < 0 || (size_t)nl >= sizeof name)
        return -1;
    buf->size = 0;
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    int rc = pm_request_begin(&pk, "set_provider", false, 0);
    rc |= msgpack_pack_map(&pk, 3);
    rc |= pm_pack_str(&pk, "provider");
    rc |= pm_pack_strn(&pk, key, (size_t)kl);
    rc |= pm_pack_str(&pk, "name");
    rc |= pm_pack_strn(&pk, name, (size_t)nl);
    rc |= pm_pack_str(&pk, "base_api_url");
    rc |= pm_pack_str(&pk, args->url);
    return rc == 0 ? 0 : -1;
}

/* True when the reply starts {"ok": true (a fixmap, the key "ok", then true). */
static bool s_reply_ok(const unsigned char *data, size_t size)
{
    return size >= 5 && (data[0] & 0xf0) == 0x80 && data[1] == 0xa2 && data[2] == 'o' &&
           data[3] == 'k' && data[4] == 0xc3;
}

/* One request and its reply. 0; 1 on a timeout (the REQ socket is then unusable); -1 on a
 * socket error. *ok and *bytes describe the reply. */
static int s_round_trip(void *socket, const msgpack_sbuffer *req, bool *ok, size_t *bytes)
{
    while (zmq_send(socket, req->data, req->size, 0) < 0) {
        if (errno != EINTR)
            return errno == EAGAIN ? 1 : -1;
    }
    zmq_msg_t reply;
    zmq_msg_init(&reply);
    while (zmq_msg_recv(&reply, socket, 0) < 0) {
        if (errno != EINTR) {
            int timed_out = errno == EAGAIN;
            zmq_msg_close(&reply);
            return timed_out ? 1 : -1;
        }
    }
    *bytes = zmq_msg_size(&reply);
    *ok = s_reply_ok(zmq_msg_data(&reply), *bytes);
    zmq_msg_close(&reply);
    return 0;
}

static void *s_worker_main(void *arg)
{
    worker_t *w = arg;
    const client_args_t *args = w->args;
    msgpack_sbuffer req;
    msgpack_sbuffer_init(&req);
    void *socket = zmq_socket(w->ctx, ZMQ_REQ);
    int zero = 0;
    if (!socket || zmq_setsockopt(socket, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(socket, ZMQ_RCVTIMEO, &args->timeout_ms, sizeof args->timeout_ms) < 0 ||
        zmq_setsockopt(socket, ZMQ_SNDTIMEO, &args->timeout_ms, sizeof args->timeout_ms) < 0 ||
        zmq_connect(socket, args->endpoint) < 0) {
        fprintf(stderr, "bench_client: socket: %s\n", zmq_strerror(errno));
        w->failed = 1;
    } else if (!args->write_prefix && s_encode_read(args, &req) < 0) {
        fprintf(stderr, "bench_client: cannot encode the request\n");
        w->failed = 1;
    }

    /* Warm-up: connects the socket and faults in both sides' buffers. */
    long sequence = 0;
    for (long i = 0; !w->failed && i < args->warmup; i++) {
        bool ok = false;
        size_t bytes = 0;
        if (args->write_prefix && s_encode_write(args, w->index, sequence++, &req) < 0)
            w->failed = 1;
        else if (s_round_trip(socket, &req, &ok, &bytes) != 0) {
            fprintf(stderr, "bench_client: warm-up request %ld failed\n", i);
            w->failed = 1;
        }
    }

    pthread_barrier_wait(w->barrier);
    uint64_t started = s_now_ns();
    uint64_t deadline =
        args->max_seconds > 0 ? started + (uint64_t)(args->max_seconds * 1e9) : UINT64_MAX;
    for (long i = 0; !w->failed && i < args->requests; i++) {
        if (args->write_prefix && s_encode_write(args, w->index, sequence++, &req) < 0) {
            w->errors++;
            break;
        }
        bool ok = false;
        size_t bytes = 0;
        uint64_t t0 = s_now_ns();
        int rc = s_round_trip(socket, &req, &ok, &bytes);
        uint64_t t1 = s_now_ns();
        if (rc != 0) {
            if (rc > 0)
                w->timeouts++;
            else
                w->errors++;
            break; /* a REQ socket without its reply cannot send again */
        }
        w->latency_ns[w->done++] = t1 - t0;
        w->reply_bytes += bytes;
        if (!ok)
            w->errors++;
        if (t1 >= deadline)
            break;
    }
    clock_gettime(CLOCK_MONOTONIC, &w->finished);
    if (socket)
        zmq_close(socket);
    msgpack_sbuffer_destroy(&req);
    return NULL;
}

static int s_compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array (n > 0). */
static double s_percentile_us(const uint64_t *sorted, long n, double p)
{
    long rank = (long)(p / 100.0 * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)sorted[rank - 1] / 1000.0;
}

/* Prints s as a JSON string (the arguments here are plain ASCII; anything else is escaped). */
static void s_json_str(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20 || *p >= 0x7f)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void s_report(const client_args_t *args, worker_t *workers, uint64_t started)
{
    long total = 0, errors = 0, timeouts = 0;
    unsigned long long bytes = 0;
    uint64_t finished = started;
    for (int t = 0; t < args->threads; t++) {
        total += workers[t].done;
        errors += workers[t].errors;
        timeouts += workers[t].timeouts;
        bytes += workers[t].reply_bytes;
        uint64_t end = s_ts_ns(&workers[t].finished);
        if (end > finished)
            finished = end;
    }
    uint64_t *all = total > 0 ? malloc((size_t)total * sizeof *all) : NULL;
    long at = 0;
    double sum_us = 0;
    for (int t = 0; all && t < args->threads; t++) {
        for (long i = 0; i < workers[t].done; i++) {
            all[at++] = workers[t].latency_ns[i];
            sum_us += (double)workers[t].latency_ns[i] / 1000.0;
        }
    }
    double elapsed = (double)(finished - started) / 1e9;
    printf("{\"op\": ");
    s_json_str(args->op);
    printf(", \"endpoint\": ");
    s_json_str(args->endpoint);
    printf(", \"threads\": %d, \"requests\": %ld, \"errors\": %ld, \"timeouts\": %ld, "
           "\"elapsed_s\": %.6f, \"rps\": %.1f",
           args->threads, total, errors, timeouts, elapsed,
           elapsed > 0 ? (double)total / elapsed : 0.0);
    if (all && total > 0) {
        qsort(all, (size_t)total, sizeof *all, s_compare_u64);
        printf(", \"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, \"mean_us\": %.2f, "
               "\"min_us\": %.2f, \"max_us\": %.2f, \"reply_bytes\": %.1f",
               s_percentile_us(all, total, 50), s_percentile_us(all, total, 90),
               s_percentile_us(all, total, 99), sum_us / (double)total, (double)all[0] / 1000.0,
               (double)all[total - 1] / 1000.0, (double)bytes / (double)total);
    } else {
        printf(", \"p50_us\": null, \"p90_us\": null, \"p99_us\": null, \"mean_us\": null, "
               "\"min_us\": null, \"max_us\": null, \"reply_bytes\": null");
    }
    printf("}\n");
    fflush(stdout);
    free(all);
}

int main(int argc, char **argv)
{
    client_args_t args;
    if (s_parse(&args, argc, argv) < 0) {
        s_usage();
        s_args_clear(&args);
        return 2;
    }
    int status = 1;
    void *ctx = zmq_ctx_new();
    worker_t *workers = calloc((size_t)args.threads, sizeof *workers);
    pthread_t threads[CLIENT_MAX_THREADS];
    int started_threads = 0;
    pthread_barrier_t barrier;
    bool barrier_init = false;
    if (!ctx || !workers) {
        fprintf(stderr, "bench_client: out of memory\n");
        goto cleanup;
    }
    if (pthread_barrier_init(&barrier, NULL, (unsigned)args.threads + 1) != 0) {
        fprintf(stderr, "bench_client: cannot create a barrier\n");
        goto cleanup;
    }
    barrier_init = true;
    for (int t = 0; t < args.threads; t++) {
        workers[t].args = &args;
        workers[t].ctx = ctx;
        workers[t].index = t;
        workers[t].barrier = &barrier;
        workers[t].latency_ns = malloc((size_t)args.requests * sizeof(uint64_t));
        if (!workers[t].latency_ns) {
            fprintf(stderr, "bench_client: out of memory\n");
            goto cleanup;
        }
    }
    for (int t = 0; t < args.threads; t++) {
        if (pthread_create(&threads[t], NULL, s_worker_main, &workers[t]) != 0) {
            fprintf(stderr, "bench_client: cannot start thread %d\n", t);
            /* the barrier needs every party: the threads started so far would wait forever */
            abort();
        }
        started_threads++;
    }
    pthread_barrier_wait(&barrier);
    uint64_t started = s_now_ns();
    for (int t = 0; t < started_threads; t++)
        pthread_join(threads[t], NULL);
    started_threads = 0;
    bool failed = false;
    for (int t = 0; t < args.threads; t++)
        failed |= workers[t].failed != 0;
    if (failed) {
        fprintf(stderr, "bench_client: setup failed\n");
        goto cleanup;
    }
    s_report(&args, workers, started);
    status = 0;

cleanup:
    for (int t = 0; t < started_threads; t++)
        pthread_join(threads[t], NULL);
    if (barrier_init)
        pthread_barrier_destroy(&barrier);
    for (int t = 0; workers && t < args.threads; t++)
        free(workers[t].latency_ns);
    free(workers);
    if (ctx)
        zmq_ctx_term(ctx);
    s_args_clear(&args);
    return status;
}
