/*
 * bench_discovery: how close a full discovery comes to its ideal wall time (a benchmark, not
 * a test). It runs the real coordinator and worker threads in process against
 * tests/fake_upstream.py: 10 providers x 100 models, every request answered after 50 ms,
 * per_provider_limit 4, 4 workers. Each provider then needs one list plus 100 / 4 = 25 rounds
 * of probes, 26 x 50 ms = 1.3 s, all providers in parallel: the ideal. The ratio measured /
 * ideal shows what the coordinator, the workers and the fake add (target <= 1.3).
 *
 * Usage: bench_discovery [--quick] [--rounds N]
 * Prints one JSON object on stdout. Needs PM_SOURCE_DIR (or the source tree next to this
 * file) for the fake and PM_PYTHON (default /usr/bin/python3). Exit 0 when every round
 * completed successfully (whatever the ratio), 1 otherwise.
 */
#include "discovery.h"
#include "fake_upstream.h"
#include "registry.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define BENCH_MAX_ROUNDS 20
#define BENCH_DEADLINE_S 120.0
#define BENCH_TARGET_RATIO 1.3

typedef struct {
    int providers;
    int models;
    int latency_ms;
    int limit;
    int workers;
    int rounds;
    int quick; /* a smoke run: the numbers mean nothing, no verdict */
} bench_config_t;

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int s_compare_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs one job over every provider and returns its wall time, or -1 on failure. */
static double s_round(discovery_t *disc, const registry_t *reg, int *ok)
{
    char job[DISCOVERY_JOB_ID_SIZE];
    int code = 0;
    char err[256];
    double start = s_now();
    if (discovery_start(disc, reg, NULL, true, false, NULL, start, job, &code, err, sizeof err) !=
        0) {
        fprintf(stderr, "discovery_start: %s\n", err);
        return -1;
    }
    zmq_pollitem_t item = {.socket = discovery_socket(disc), .events = ZMQ_POLLIN};
    while (discovery_running(disc) > 0) {
        if (s_now() - start > BENCH_DEADLINE_S) {
            fprintf(stderr, "discovery did not finish in %.0f s\n", BENCH_DEADLINE_S);
            return -1;
        }
        if (zmq_poll(&item, 1, 100) < 0)
            return -1;
        discovery_outcome_t outcome;
        memset(&outcome, 0, sizeof outcome);
        if (discovery_handle(disc, reg, s_now(), &outcome) != 0)
            return -1;
        for (size_t i = 0; i < outcome.persist_count; i++)
            discovery_job_persisted(disc, outcome.persists[i].job_id, true, NULL);
        discovery_outcome_clear(&outcome);
    }
    double wall = s_now() - start;
    /* The job must have succeeded: check through job_status like a client would. */
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    *ok = 0;
    if (discovery_pack_status(disc, job, strlen(job), &pk) == 0) {
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        if (msgpack_unpack_next(&up, sbuf.data, sbuf.size, &off) == MSGPACK_UNPACK_SUCCESS &&
            up.data.type == MSGPACK_OBJECT_MAP) {
            for (uint32_t i = 0; i < up.data.via.map.size; i++) {
                const msgpack_object_kv *kv = &up.data.via.map.ptr[i];
                if (kv->key.via.str.size == 7 && memcmp(kv->key.via.str.ptr, "success", 7) == 0)
                    *ok = kv->val.type == MSGPACK_OBJECT_BOOLEAN && kv->val.via.boolean;
            }
        }
        msgpack_unpacked_destroy(&up);
    }
    msgpack_sbuffer_destroy(&sbuf);
    return wall;
}

int main(int argc, char **argv)
{
    bench_config_t cfg = {
        .providers = 10, .models = 100, .latency_ms = 50, .limit = 4, .workers = 4, .rounds = 3};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            cfg.providers = 2;
            cfg.models = 8;
            cfg.latency_ms = 10;
            cfg.rounds = 1;
            cfg.quick = 1;
        } else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            char *end = NULL;
            long n = strtol(argv[++i], &end, 10);
            if (end == argv[i] || *end != '\0' || n < 1 || n > BENCH_MAX_ROUNDS) {
                fprintf(stderr, "--rounds: 1..%d\n", BENCH_MAX_ROUNDS);
                return 2;
            }
            cfg.rounds = (int)n;
        } else {
            fprintf(stderr, "usage: bench_discovery [--quick] [--rounds N]\n");
            return 2;
        }
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int status = 1;
    fake_upstream_t fake;
    void *ctx = NULL;
    discovery_t *disc = NULL;
    registry_t *reg = NULL;
    double walls[BENCH_MAX_ROUNDS];
    int succeeded = 0;

    char config[4096];
    int used = snprintf(config, sizeof config, "{\"scenarios\":{");
    for (int p = 0; p < cfg.providers; p++)
        used += snprintf(config + used, sizeof config - (size_t)used,
                         "%s\"s%d\":{\"model_count\":%d,\"latency_ms\":%d}", p ? "," : "", p,
                         cfg.models, cfg.latency_ms);
    snprintf(config + used, sizeof config - (size_t)used, "}}");
    if (fake_upstream_start(&fake, config) != 0) {
        fprintf(stderr, "could not start tests/fake_upstream.py\n");
        goto cleanup_curl;
    }
    reg = registry_new();
    if (reg == NULL)
        goto cleanup;
    for (int p = 0; p < cfg.providers; p++) {
        char key[32];
        char url[128];
        snprintf(key, sizeof key, "p%d", p);
        snprintf(url, sizeof url, "%s/s%d/v1", fake.origin, p);
        provider_t *provider = provider_new(key, key, url);
        if (provider == NULL || provider_set_api_key(provider, "good-key") != 0 ||
            registry_put(reg, &provider) != 0) {
            provider_destroy(&provider);
            goto cleanup;
        }
    }
    if (registry_seal(reg) != 0)
        goto cleanup;
    config_discovery_t settings = {
        .cache_duration_s = 3600,
        .max_tokens = 16,
        .per_provider_limit = cfg.limit,
        .connect_timeout_ms = 5000,
        .request_timeout_ms = 30000,
        .max_retries = 3,
        .retry_budget_ms = 30000,
        .list_max_bytes = 16L * 1024 * 1024,
        .probe_max_bytes = 64L * 1024,
    };
    ctx = zmq_ctx_new();
    if (ctx == NULL)
        goto cleanup;
    disc = discovery_new(ctx, &settings, cfg.workers);
    if (disc == NULL)
        goto cleanup;
    for (int r = 0; r < cfg.rounds; r++) {
        int ok = 0;
        walls[r] = s_round(disc, reg, &ok);
        if (walls[r] < 0)
            goto cleanup;
        succeeded += ok;
    }
    json_t *stats = fake_upstream_call(&fake, "/_stats", NULL);
    long max_inflight = 0;
    long requests = 0;
    const char *name;
    json_t *scenario;
    json_object_foreach(json_object_get(stats, "scenarios"), name, scenario)
    {
        long m = (long)json_integer_value(json_object_get(scenario, "max_inflight"));
        if (m > max_inflight)
            max_inflight = m;
        requests += (long)json_integer_value(json_object_get(scenario, "requests"));
    }
    json_decref(stats);

    double sorted[BENCH_MAX_ROUNDS];
    memcpy(sorted, walls, sizeof(double) * (size_t)cfg.rounds);
    qsort(sorted, (size_t)cfg.rounds, sizeof(double), s_compare_double);
    double median = sorted[cfg.rounds / 2];
    int rounds_per_provider = 1 + (cfg.models + cfg.limit - 1) / cfg.limit;
    double ideal = rounds_per_provider * cfg.latency_ms / 1000.0;
    double ratio = median / ideal;
    printf("{\n  \"providers\": %d,\n  \"models_per_provider\": %d,\n  \"latency_ms\": %d,\n"
           "  \"per_provider_limit\": %d,\n  \"workers\": %d,\n  \"requests\": %ld,\n"
           "  \"max_inflight_per_provider\": %ld,\n  \"rounds\": [",
           cfg.providers, cfg.models, cfg.latency_ms, cfg.limit, cfg.workers, requests,
           max_inflight);
    for (int r = 0; r < cfg.rounds; r++)
        printf("%s%.3f", r ? ", " : "", walls[r]);
    printf("],\n  \"wall_s\": %.3f,\n  \"ideal_s\": %.3f,\n  \"ratio\": %.3f,\n"
           "  \"target_ratio\": %.1f,\n  \"verdict\": \"%s\",\n  \"jobs_succeeded\": %d\n}\n",
           median, ideal, ratio, BENCH_TARGET_RATIO,
           cfg.quick                     ? "n/a (quick)"
           : ratio <= BENCH_TARGET_RATIO ? "PASS"
                                         : "MISS",
           succeeded);
    status = succeeded == cfg.rounds ? 0 : 1;
cleanup:
    discovery_destroy(&disc);
    if (ctx != NULL)
        zmq_ctx_term(ctx);
    registry_destroy(&reg);
    fake_upstream_stop(&fake);
cleanup_curl:
    curl_global_cleanup();
    return status;
}
