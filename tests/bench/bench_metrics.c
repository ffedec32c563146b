/*
 * bench_metrics: what counting adds to one request, in process, without the noise of a shared
 * machine's scheduler: the two clock readings, the reply-outcome check and the counter stores
 * that the front end does per request with metrics on (metrics_request_observe), timed over
 * many iterations. Prints one JSON line: {"iterations": N, "ns_per_request": x,
 * "ns_per_error_reply": y}. run.py (table M) puts it beside the CPU a request costs.
 *
 * Usage: bench_metrics [ITERATIONS]
 */
#include "metrics.h"
#include "pm_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double s_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* ns per request: the front end's whole metrics work for one reply of reply/size. */
static double s_time(metrics_requests_t *set, const msgpack_sbuffer *reply, long iterations)
{
    double started = s_seconds();
    for (long i = 0; i < iterations; i++) {
        uint64_t received = metrics_now_ns();
        pm_error_t outcome = metrics_reply_outcome(reply->data, reply->size);
        metrics_request_observe(set, PM_OP_GET_API_FOR_MODEL_STRING, outcome,
                                metrics_now_ns() - received);
    }
    return (s_seconds() - started) * 1e9 / (double)iterations;
}

int main(int argc, char **argv)
{
    long iterations = argc > 1 ? strtol(argv[1], NULL, 10) : 5000000;
    if (iterations <= 0) {
        fprintf(stderr, "usage: bench_metrics [ITERATIONS]\n");
        return 2;
    }
    metrics_t *metrics = metrics_new("bench");
    if (!metrics) {
        fprintf(stderr, "bench_metrics: out of memory\n");
        return 1;
    }
    metrics_requests_t *set = metrics_requests(metrics, METRICS_SET_FRONT);
    msgpack_sbuffer ok, error;
    msgpack_sbuffer_init(&ok);
    msgpack_sbuffer_init(&error);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ok, msgpack_sbuffer_write);
    pm_reply_ok_begin(&pk, NULL);
    pm_pack_str(&pk, "gpt-4o");
    msgpack_packer_init(&pk, &error, msgpack_sbuffer_write);
    pm_reply_error(&pk, NULL, PM_ERR_INVALID_MODEL, "Invalid model: nope");
    s_time(set, &ok, iterations / 10); /* warm-up */
    double ok_ns = s_time(set, &ok, iterations);
    double error_ns = s_time(set, &error, iterations);
    printf("{\"iterations\": %ld, \"ns_per_request\": %.1f, \"ns_per_error_reply\": %.1f}\n",
           iterations, ok_ns, error_ns);
    msgpack_sbuffer_destroy(&ok);
    msgpack_sbuffer_destroy(&error);
    metrics_destroy(&metrics);
    return 0;
}
