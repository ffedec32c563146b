/*
 * bench_registry: the daemon's registry-size-dependent costs measured in process, without the
 * transport, so that what grows with the registry can be told apart from ZeroMQ's noise.
 *
 * For each registry (M models spread over P providers, named exactly as tests/bench/run.py
 * names them: 8 empty writer providers bw-0..bw-7 first, then bp-000.. with
 * bench-pNNN-model-NNNNNN-instruct -> pNmN), it measures:
 *   resolve_bare_ns / resolve_prefixed_ns  registry_resolve() of the LAST provider's last model
 *   pack_api_ns, api_reply_bytes           packing the get_api_for_model_string reply
 *   seal_ms      registry_seal() of a fresh clone (the global index, rebuilt by every commit)
 *   commit_ms    clone + registry_edit() of one writer provider + seal: a write minus persist
 *   persist_ms   store_persist() into a temp dir (YAML emit, fsync, rename, dir fsync)
 *   load_ms      store_load() of that file (the YAML parse of start-up, without layering)
 * All registries are built first; then every round visits every registry in turn (sizes
 * interleaved, like run.py) and the medians over rounds are printed as one JSON object:
 *   {"rounds": R, "registries": [{"models", "providers", ...}, ...]}
 *
 * Usage: bench_registry [--rounds R] [--iterations N] MODELSxPROVIDERS ...
 */
#include "pm_proto.h"
#include "registry.h"
#include "store.h"
#include "wire.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BENCH_MAX_REGISTRIES 16
#define BENCH_MAX_ROUNDS 50
#define BENCH_WRITERS 8
#define BENCH_URL "http://127.0.0.1:9/v1"
#define BENCH_KEY "sk-bench-0123456789abcdef0123456789abcdef"

enum {
    M_RESOLVE_BARE,
    M_RESOLVE_PREFIXED,
    M_PACK_API,
    M_SEAL,
    M_COMMIT,
    M_PERSIST,
    M_LOAD,
    M_COUNT
};

typedef struct {
    long models;
    long providers;
    registry_t *registry; /* sealed */
    char bare[128];
    char prefixed[192];
    double build_ms;
    size_t api_reply_bytes;
    double samples[M_COUNT][BENCH_MAX_ROUNDS];
} bench_reg_t;

static double s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int s_compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double s_median(const double *values, int count)
{
    double sorted[BENCH_MAX_ROUNDS];
    memcpy(sorted, values, sizeof(double) * (size_t)count);
    qsort(sorted, (size_t)count, sizeof(double), s_compare_double);
    return count % 2 ? sorted[count / 2] : (sorted[count / 2 - 1] + sorted[count / 2]) / 2;
}

/* Appends a new provider with count models; 0 or -1. */
static int s_add_provider(registry_t *reg, const char *key, const char *name, const char *key_text,
                          long index, long count)
{
    provider_t *p = provider_new(key, name, BENCH_URL);
    if (!p || (key_text && provider_set_api_key(p, key_text) != 0))
        goto fail;
    for (long m = 0; m < count; m++) {
        char lng[96], shrt[48];
        snprintf(lng, sizeof lng, "bench-p%03ld-model-%06ld-instruct", index, m);
        snprintf(shrt, sizeof shrt, "p%ldm%ld", index, m);
        if (provider_put_model(p, lng, shrt) != 0)
            goto fail;
    }
    if (registry_put(reg, &p) != 0)
        goto fail;
    return 0;
fail:
    provider_destroy(&p);
    return -1;
}

static int s_build(bench_reg_t *b)
{
    double t0 = s_now_ns();
    registry_t *reg = registry_new();
    if (!reg)
        return -1;
    char key[32], name[64];
    for (int w = 0; w < BENCH_WRITERS; w++) {
        snprintf(key, sizeof key, "bw-%d", w);
        snprintf(name, sizeof name, "Bench writer %d", w);
        if (s_add_provider(reg, key, name, NULL, 0, 0) != 0)
            goto fail;
    }
    long per = b->models / b->providers;
    for (long p = 0; p < b->providers; p++) {
        snprintf(key, sizeof key, "bp-%03ld", p);
        snprintf(name, sizeof name, "Bench provider %03ld", p);
        if (s_add_provider(reg, key, name, BENCH_KEY, p, per) != 0)
            goto fail;
    }
    if (registry_seal(reg) != 0)
        goto fail;
    b->build_ms = (s_now_ns() - t0) / 1e6;
    b->registry = reg;
    snprintf(b->bare, sizeof b->bare, "bench-p%03ld-model-%06ld-instruct", b->providers - 1,
             per - 1);
    snprintf(b->prefixed, sizeof b->prefixed, "bp-%03ld/%s", b->providers - 1, b->bare);
    return 0;
fail:
    registry_destroy(&reg);
    return -1;
}

/* ns per registry_resolve() of text, over iterations calls; -1 when it does not resolve. */
static double s_time_resolve(const registry_t *reg, const char *text, long iterations)
{
    size_t len = strlen(text);
    registry_resolution_t res;
    double t0 = s_now_ns();
    for (long i = 0; i < iterations; i++) {
        if (registry_resolve(reg, text, len, &res) != REGISTRY_RESOLVED)
            return -1;
    }
    return (s_now_ns() - t0) / (double)iterations;
}

/* ns per packing of the get_api_for_model_string reply (as service/front.c packs it). */
static double s_time_pack(const registry_t *reg, const char *text, long iterations,
                          msgpack_sbuffer *buf, size_t *bytes)
{
    registry_resolution_t res;
    if (registry_resolve(reg, text, strlen(text), &res) != REGISTRY_RESOLVED)
        return -1;
    double t0 = s_now_ns();
    for (long i = 0; i < iterations; i++) {
        buf->size = 0;
        msgpack_packer pk;
        msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
        pm_reply_ok_begin(&pk, NULL);
        msgpack_pack_array(&pk, 2);
        wire_pack_provider(&pk, res.provider);
        pm_pack_str(&pk, res.long_name);
    }
    *bytes = buf->size;
    return (s_now_ns() - t0) / (double)iterations;
}

/* ms of clone + seal (edit = false) or clone + edit one writer provider + seal. */
static double s_time_commit(const registry_t *reg, bool edit, long round)
{
    double t0 = s_now_ns();
    registry_t *next = registry_clone(reg);
    if (!next)
        return -1;
    if (edit) {
        char name[64];
        snprintf(name, sizeof name, "Bench writer 0 rev %ld", round);
        provider_t *p = registry_edit(next, "bw-0");
        if (!p || provider_set_name(p, name) != 0) {
            registry_destroy(&next);
            return -1;
        }
    }
    int rc = registry_seal(next);
    double ms = (s_now_ns() - t0) / 1e6;
    registry_destroy(&next);
    return rc == 0 ? ms : -1;
}

static double s_time_persist(const registry_t *reg, const char *path)
{
    char err[512];
    double t0 = s_now_ns();
    if (store_persist(reg, path, err, sizeof err) != 0) {
        fprintf(stderr, "bench_registry: persist: %s\n", err);
        return -1;
    }
    return (s_now_ns() - t0) / 1e6;
}

static double s_time_load(const char *path)
{
    char err[512];
    store_layer_t layer = {0};
    double t0 = s_now_ns();
    int rc = store_load(path, &layer, NULL, NULL, err, sizeof err);
    double ms = (s_now_ns() - t0) / 1e6;
    store_layer_clear(&layer);
    if (rc != 0) {
        fprintf(stderr, "bench_registry: load: %s\n", err);
        return -1;
    }
    return ms;
}

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

static void s_print(const bench_reg_t *regs, int count, int rounds)
{
    static const char *const names[M_COUNT] = {
        "resolve_bare_ns", "resolve_prefixed_ns", "pack_api_ns", "seal_ms",
        "commit_ms",       "persist_ms",          "load_ms"};
    printf("{\"rounds\": %d, \"registries\": [", rounds);
    for (int r = 0; r < count; r++) {
        const bench_reg_t *b = &regs[r];
        printf("%s\n {\"models\": %ld, \"providers\": %ld, \"build_ms\": %.3f, "
               "\"api_reply_bytes\": %zu",
               r ? "," : "", b->models, b->providers, b->build_ms, b->api_reply_bytes);
        for (int m = 0; m < M_COUNT; m++)
            printf(", \"%s\": %.3f", names[m], s_median(b->samples[m], rounds));
        printf("}");
    }
    printf("\n]}\n");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    bench_reg_t regs[BENCH_MAX_REGISTRIES];
    int count = 0;
    long rounds = 5, iterations = 20000;
    memset(regs, 0, sizeof regs);
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "--rounds") == 0 || strcmp(argv[i], "--iterations") == 0) &&
            i + 1 < argc) {
            bool is_rounds = strcmp(argv[i], "--rounds") == 0;
            if (s_parse_long(argv[i + 1], 1, is_rounds ? BENCH_MAX_ROUNDS : 100000000,
                             is_rounds ? &rounds : &iterations) < 0) {
                fprintf(stderr, "bench_registry: bad value for %s\n", argv[i]);
                return 2;
            }
            i++;
            continue;
        }
        char text[64];
        snprintf(text, sizeof text, "%s", argv[i]);
        char *x = strchr(text, 'x');
        if (!x || count >= BENCH_MAX_REGISTRIES) {
            fprintf(stderr, "usage: bench_registry [--rounds R] [--iterations N] "
                            "MODELSxPROVIDERS ...\n");
            return 2;
        }
        *x = '\0';
        bench_reg_t *b = &regs[count++];
        if (s_parse_long(text, 1, REGISTRY_MAX_MODELS, &b->models) < 0 ||
            s_parse_long(x + 1, 1, REGISTRY_MAX_PROVIDERS - BENCH_WRITERS, &b->providers) < 0 ||
            b->models % b->providers != 0) {
            fprintf(stderr, "bench_registry: bad registry %s (models must divide evenly)\n",
                    argv[i]);
            return 2;
        }
    }
    if (count == 0) {
        fprintf(stderr, "usage: bench_registry [--rounds R] [--iterations N] "
                        "MODELSxPROVIDERS ...\n");
        return 2;
    }

    int status = 1;
    char dir[] = "/tmp/pm-bench-registry-XXXXXX";
    char path[256] = "";
    bool dir_made = false;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    if (!mkdtemp(dir)) {
        perror("bench_registry: mkdtemp");
        goto cleanup;
    }
    dir_made = true;
    if (store_path(dir, path, sizeof path) != 0)
        goto cleanup;
    for (int r = 0; r < count; r++) {
        if (s_build(&regs[r]) != 0) {
            fprintf(stderr, "bench_registry: cannot build %ldx%ld\n", regs[r].models,
                    regs[r].providers);
            goto cleanup;
        }
    }
    for (long round = 0; round < rounds; round++) {
        for (int k = 0; k < count; k++) {
            /* alternate the direction so that drift favours no size */
            bench_reg_t *b = &regs[round % 2 ? count - 1 - k : k];
            double *s[M_COUNT];
            for (int m = 0; m < M_COUNT; m++)
                s[m] = &b->samples[m][round];
            /* resolution is cheap: scale the pack iterations down for big replies */
            long pack_iterations = iterations / (1 + b->models / b->providers / 10);
            *s[M_RESOLVE_BARE] = s_time_resolve(b->registry, b->bare, iterations);
            *s[M_RESOLVE_PREFIXED] = s_time_resolve(b->registry, b->prefixed, iterations);
            *s[M_PACK_API] =
                s_time_pack(b->registry, b->bare, pack_iterations + 1, &buf, &b->api_reply_bytes);
            *s[M_SEAL] = s_time_commit(b->registry, false, round);
            *s[M_COMMIT] = s_time_commit(b->registry, true, round);
            *s[M_PERSIST] = s_time_persist(b->registry, path);
            *s[M_LOAD] = s_time_load(path);
            for (int m = 0; m < M_COUNT; m++) {
                if (*s[m] < 0) {
                    fprintf(stderr, "bench_registry: measurement %d failed at %ldx%ld\n", m,
                            b->models, b->providers);
                    goto cleanup;
                }
            }
        }
    }
    s_print(regs, count, (int)rounds);
    status = 0;

cleanup:
    for (int r = 0; r < count; r++)
        registry_destroy(&regs[r].registry);
    msgpack_sbuffer_destroy(&buf);
    if (path[0])
        unlink(path);
    if (dir_made && rmdir(dir) != 0)
        perror("bench_registry: rmdir");
    return status;
}
