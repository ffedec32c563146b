/*
 * bench_discovery: how close a full discovery comes to its ideal wall time (a benchmark, not
 * a test). It runs the real coordinator and worker threads in process against
 * tests/fake_upstream.py: 10 providers x 100 models, every request answered after 50 ms,
 * per_provider_limit 4, 4 workers. Each provider then needs one list plus 100 / 4 = 25 rounds
 * of probes, 26 x 50 ms = 1.3 s, all providers in parallel: the ideal. The ratio measured /
 * ideal shows what the coordinator, the workers and the fake add (target <= 1.3).
 *
 * --verify measures a verification job instead (protocol v1.1 verify_models, issue 11): the
 * same providers, each holding its 100 models in valid_models, and discovery_start_verify
 * with an observer whose verify_targets names the provider's valid_models (what the writer's
 * status table names for a registry whose models are all valid). Each provider is re-listed
 * and then every model probed, per_provider_limit in flight: the same ideal bound, 1.3 s;
 * target <= 1.1. The observer counts the probes and their verdicts, so a round that skipped
 * a model or got a failure is reported (jobs_succeeded, probes_ok).
 *
 * Usage: bench_discovery [--quick] [--verify] [--rounds N]
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
#include <sys/resource.h>
#include <time.h>
#include <zmq.h>

#define BENCH_MAX_ROUNDS 20
#define BENCH_DEADLINE_S 120.0
#define BENCH_TARGET_RATIO 1.3
#define BENCH_VERIFY_TARGET_RATIO 1.1
#define BENCH_VERIFY_ROUNDS 5

typedef struct {
    int providers;
    int models;
    int latency_ms;
    int limit;
    int workers;
    int rounds;
    int quick;  /* a smoke run: the numbers mean nothing, no verdict */
    int verify; /* verify jobs (discovery_start_verify) instead of discovery jobs */
} bench_config_t;

/* The verify observer: names each provider's valid_models as its targets (what the status
 * table names when every model is valid) and counts the probes it is told about. */
typedef struct {
    const registry_t *reg;
    long probes;
    long probes_ok;
} bench_observer_t;

static int s_verify_targets(void *ctx, const char *key, bool include_invalid,
                            const char *const *only, size_t only_count, char ***out,
                            size_t *out_count)
{
    (void)include_invalid; /* the bench's providers hold no invalid_models */
    (void)only;
    (void)only_count; /* the bench never restricts the job to named models */
    bench_observer_t *obs = ctx;
    *out = NULL;
    *out_count = 0;
    const provider_t *p = registry_get(obs->reg, key, strlen(key));
    if (p == NULL)
        return -1;
    size_t n = provider_model_count(p);
    if (n == 0)
        return 0;
    char **names = calloc(n, sizeof *names);
    if (names == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        names[i] = strdup(provider_model_long(p, i));
        if (names[i] == NULL) {
            for (size_t j = 0; j < i; j++)
                free(names[j]);
            free(names);
            return -1;
        }
    }
    *out = names;
    *out_count = n;
    return 0;
}

static void s_on_probe(void *ctx, const char *key, const char *model, discovery_verdict_t verdict,
                       long http_status, double latency_ms, const char *message, double now)
{
    (void)key;
    (void)model;
    (void)http_status;
    (void)latency_ms;
    (void)message;
    (void)now;
    bench_observer_t *obs = ctx;
    obs->probes++;
    if (verdict == DISCOVERY_VERDICT_VALID)
        obs->probes_ok++;
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU seconds a process has run, all its threads including those that have ended (the fake
 * runs a thread per request): utime + stime of /proc/<pid>/stat, in clock ticks. -1 when
 * unreadable. */
static double s_proc_cpu_s(pid_t pid)
{
    char path[64];
    char buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: the fields start after the last ')'. */
    const char *p = strrchr(buf, ')');
    unsigned long long utime = 0, stime = 0;
    if (p == NULL || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                            &stime) != 2)
        return -1;
    long ticks = sysconf(_SC_CLK_TCK);
    return ticks > 0 ? (double)(utime + stime) / (double)ticks : -1;
}

/* CPU seconds of this process (the coordinator and the worker threads). */
static double s_self_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int s_compare_double(const void *a, const void *b)
{
    double x = *(const double *)a;
    double y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs one job (discovery, or verification when verify) over every provider and returns its
 * wall time, or -1 on failure. */
static double s_round(discovery_t *disc, const registry_t *reg, int verify, int *ok)
{
    char job[DISCOVERY_JOB_ID_SIZE];
    int code = 0;
    char err[256];
    double start = s_now();
    int rc = verify ? discovery_start_verify(disc, reg, NULL, NULL, 0, false, false, "bench", start,
                                             job, &code, err, sizeof err)
                    : discovery_start(disc, reg, NULL, true, false, NULL, start, job, &code, err,
                                      sizeof err);
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", verify ? "discovery_start_verify" : "discovery_start", err);
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
    int rounds_given = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            cfg.providers = 2;
            cfg.models = 8;
            cfg.latency_ms = 10;
            cfg.rounds = 1;
            cfg.quick = 1;
        } else if (strcmp(argv[i], "--verify") == 0) {
            cfg.verify = 1;
        } else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            char *end = NULL;
            long n = strtol(argv[++i], &end, 10);
            if (end == argv[i] || *end != '\0' || n < 1 || n > BENCH_MAX_ROUNDS) {
                fprintf(stderr, "--rounds: 1..%d\n", BENCH_MAX_ROUNDS);
                return 2;
            }
            cfg.rounds = (int)n;
            rounds_given = 1;
        } else {
            fprintf(stderr, "usage: bench_discovery [--quick] [--verify] [--rounds N]\n");
            return 2;
        }
    }
    if (cfg.verify && !cfg.quick && !rounds_given)
        cfg.rounds = BENCH_VERIFY_ROUNDS; /* a median of five: the verify target is tighter */
    double target_ratio = cfg.verify ? BENCH_VERIFY_TARGET_RATIO : BENCH_TARGET_RATIO;
    bench_observer_t observer = {0};
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
        if (provider == NULL || provider_set_api_key(provider, "good-key") != 0) {
            provider_destroy(&provider);
            goto cleanup;
        }
        /* Verification re-checks known models: the provider holds what the fake lists. */
        for (int m = 0; cfg.verify && m < cfg.models; m++) {
            char model[32];
            snprintf(model, sizeof model, "model-%03d", m);
            if (provider_put_model(provider, model, NULL) != 0) {
                provider_destroy(&provider);
                goto cleanup;
            }
        }
        if (registry_put(reg, &provider) != 0) {
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
    if (cfg.verify) {
        observer.reg = reg;
        discovery_observer_t hooks = {
            .ctx = &observer, .verify_targets = s_verify_targets, .on_probe = s_on_probe};
        discovery_set_observer(disc, &hooks);
    }
    /* The CPU the fake and this process spend per round: on a small shared machine a slow
     * round is often the fake (one Python process) waiting for a core, not the coordinator. */
    double fake_cpu0 = s_proc_cpu_s(fake.pid);
    double self_cpu0 = s_self_cpu_s();
    double load[3] = {-1, -1, -1};
    if (getloadavg(load, 3) < 1)
        load[0] = -1;
    for (int r = 0; r < cfg.rounds; r++) {
        int ok = 0;
        walls[r] = s_round(disc, reg, cfg.verify, &ok);
        if (walls[r] < 0)
            goto cleanup;
        succeeded += ok;
    }
    double fake_cpu1 = s_proc_cpu_s(fake.pid);
    double self_cpu1 = s_self_cpu_s();
    double fake_cpu_per_round =
        fake_cpu0 >= 0 && fake_cpu1 >= 0 ? (fake_cpu1 - fake_cpu0) / cfg.rounds : -1;
    double self_cpu_per_round =
        self_cpu0 >= 0 && self_cpu1 >= 0 ? (self_cpu1 - self_cpu0) / cfg.rounds : -1;
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
    printf("{\n  \"kind\": \"%s\",\n  \"providers\": %d,\n  \"models_per_provider\": %d,\n  "
           "\"latency_ms\": %d,\n"
           "  \"per_provider_limit\": %d,\n  \"workers\": %d,\n  \"requests\": %ld,\n"
           "  \"max_inflight_per_provider\": %ld,\n  \"rounds\": [",
           cfg.verify ? "verify" : "discover", cfg.providers, cfg.models, cfg.latency_ms, cfg.limit,
           cfg.workers, requests, max_inflight);
    for (int r = 0; r < cfg.rounds; r++)
        printf("%s%.3f", r ? ", " : "", walls[r]);
    printf("],\n  \"wall_s\": %.3f,\n  \"ideal_s\": %.3f,\n  \"ratio\": %.3f,\n"
           "  \"target_ratio\": %.1f,\n  \"verdict\": \"%s\",\n  \"jobs_succeeded\": %d,\n"
           "  \"fake_cpu_s_per_round\": %.3f,\n  \"bench_cpu_s_per_round\": %.3f,\n"
           "  \"loadavg_1min_at_start\": %.2f",
           median, ideal, ratio, target_ratio,
           cfg.quick               ? "n/a (quick)"
           : ratio <= target_ratio ? "PASS"
                                   : "MISS",
           succeeded, fake_cpu_per_round, self_cpu_per_round, load[0]);
    long expected_probes = (long)cfg.rounds * cfg.providers * cfg.models;
    if (cfg.verify)
        printf(",\n  \"probes\": %ld,\n  \"probes_ok\": %ld,\n  \"probes_expected\": %ld",
               observer.probes, observer.probes_ok, expected_probes);
    printf("\n}\n");
    status = succeeded == cfg.rounds ? 0 : 1;
    if (cfg.verify && observer.probes_ok != expected_probes)
        status = 1; /* a verification that skipped or failed a model measured something else */
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
