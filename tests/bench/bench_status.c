/*
 * bench_status: what persisting model status costs next to persisting the providers file
 * (issue 11, "Benchmarks"), in process, with the real modules (pmstatus + pmcore).
 *
 * Set-up (not timed): a registry of MODELS models over PROVIDERS providers (each with a key,
 * named like bench_registry: bench-pNNN-model-NNNNNN-instruct -> pNmN), a model status table
 * synced with it (fail_threshold 1, so that one definitive failure is one transition), every
 * provider listed once with metadata and every model probed OK once (so that each record
 * carries what a verified record carries), and the journal opened in a temp data dir with
 * all of that appended (the first append is large and compacts at once).
 *
 * Then ROUNDS rounds, each measuring, side by side (their order alternates per round so that
 * drift favours neither):
 *   (a) a batch of BATCH changed records: BATCH model_status_probe calls of one provider's
 *       models with a definitive failure (valid -> failing, with last_error), its changes
 *       taken (one `models` event's worth), then what the writer does per batch and what is
 *       timed: model_status_take_dirty + status_store_append (one write + fdatasync).
 *       probe_ms (the probes themselves, in memory) is reported apart.
 *   (b) one store_persist of the providers YAML file of the same registry (emit, fsync,
 *       rename, directory fsync), into the same directory.
 * and the ratio (a) / (b) per round; target: the median under 5%. Then the disk's floor
 * (fsync_floor_ms): as many bytes as the batch frame, written and fdatasync'ed to a scratch
 * file in the same directory, so that (a) can be split into the journal's own work and the
 * sync it cannot avoid; the append's thread CPU time (append_cpu_ms: encoding, checksum,
 * syscalls); and status_store_crc32 over as many bytes (crc_ms).
 * After the rounds: status_store_compact (one snapshot of the whole table, atomic replace)
 * and the journal's load (status_store_open into an empty table: the replay of start-up),
 * each ROUNDS times, medians.
 *
 * Usage: bench_status [--quick] [--rounds R] [--models M] [--providers P] [--batch B]
 * Prints one JSON object on stdout. Exit 0 when everything ran (whatever the ratio), 1 when
 * a step failed, 2 on a usage error. Every file lives in a mkdtemp directory under $TMPDIR
 * (default /tmp), removed at the end.
 */
#include "model_status.h"
#include "registry.h"
#include "status_store.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BENCH_MAX_ROUNDS 50
#define BENCH_URL "http://127.0.0.1:9/v1"
#define BENCH_KEY "sk-bench-0123456789abcdef0123456789abcdef"
#define BENCH_TARGET_RATIO 0.05

typedef struct {
    long models;
    long providers;
    long batch;
    long rounds;
    bool quick;
} bench_config_t;

enum {
    M_PROBE,
    M_TAKE_DIRTY,
    M_APPEND,
    M_BATCH,
    M_PERSIST,
    M_RATIO,
    M_FSYNC_FLOOR,
    M_APPEND_CPU,
    M_CRC,
    M_COMPACT,
    M_LOAD,
    M_COUNT
};

static const char *const s_metric_names[M_COUNT] = {
    "probe_ms",       "take_dirty_ms", "append_ms", "batch_ms",   "persist_ms", "ratio",
    "fsync_floor_ms", "append_cpu_ms", "crc_ms",    "compact_ms", "load_ms"};

typedef struct {
    double samples[M_COUNT][BENCH_MAX_ROUNDS];
    long batch_bytes[BENCH_MAX_ROUNDS];
    int compactions_during_batches; /* an append that compacted would not be O(changed) */
} bench_result_t;

static double s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* CPU time of this thread: the part of an append that is encoding and checksumming (and
 * the syscalls' own CPU), as opposed to waiting for the disk. */
static double s_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int s_compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median, min and max of count values. */
static void s_stats(const double *values, long count, double *med, double *min, double *max)
{
    double sorted[BENCH_MAX_ROUNDS];
    memcpy(sorted, values, sizeof(double) * (size_t)count);
    qsort(sorted, (size_t)count, sizeof(double), s_compare_double);
    *med = count % 2 ? sorted[count / 2] : (sorted[count / 2 - 1] + sorted[count / 2]) / 2;
    *min = sorted[0];
    *max = sorted[count - 1];
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

static void s_model_name(char *out, size_t size, long provider, long model)
{
    snprintf(out, size, "bench-p%03ld-model-%06ld-instruct", provider, model);
}

static registry_t *s_build_registry(const bench_config_t *cfg)
{
    registry_t *reg = registry_new();
    if (!reg)
        return NULL;
    long per = cfg->models / cfg->providers;
    for (long p = 0; p < cfg->providers; p++) {
        char key[32], name[64];
        snprintf(key, sizeof key, "bp-%03ld", p);
        snprintf(name, sizeof name, "Bench provider %03ld", p);
        provider_t *prov = provider_new(key, name, BENCH_URL);
        if (!prov || provider_set_api_key(prov, BENCH_KEY) != 0)
            goto fail;
        for (long m = 0; m < per; m++) {
            char lng[96], shrt[48];
            s_model_name(lng, sizeof lng, p, m);
            snprintf(shrt, sizeof shrt, "p%ldm%ld", p, m);
            if (provider_put_model(prov, lng, shrt) != 0)
                goto fail;
        }
        if (registry_put(reg, &prov) != 0)
            goto fail;
        continue;
    fail:
        provider_destroy(&prov);
        registry_destroy(&reg);
        return NULL;
    }
    if (registry_seal(reg) != 0)
        registry_destroy(&reg);
    return reg;
}

/* Drops every queued transition (the writer would publish them as `models` events). */
static int s_take_changes(model_status_t *st, long providers)
{
    for (long p = 0; p < providers; p++) {
        char key[32];
        snprintf(key, sizeof key, "bp-%03ld", p);
        status_changes_t c;
        if (model_status_take_changes(st, key, &c) != 0)
            return -1;
        status_changes_clear(&c);
    }
    return 0;
}

/* take_dirty + append; *dirty_ms is the take alone. -1 on failure (message on stderr). */
static int s_commit(model_status_t *st, status_store_t *store, double *dirty_ms, double *append_ms,
                    double *append_cpu_ms)
{
    char err[512] = "";
    status_dirty_t dirty;
    double t0 = s_now_ms();
    if (model_status_take_dirty(st, &dirty) != 0) {
        fprintf(stderr, "bench_status: take_dirty failed\n");
        return -1;
    }
    double t1 = s_now_ms();
    double c1 = s_cpu_ms();
    int rc = status_store_append(store, st, &dirty, err, sizeof err);
    double t2 = s_now_ms();
    double c2 = s_cpu_ms();
    status_dirty_clear(&dirty);
    if (rc != 0) {
        fprintf(stderr, "bench_status: append: %s\n", err);
        return -1;
    }
    if (dirty_ms)
        *dirty_ms = t1 - t0;
    if (append_ms)
        *append_ms = t2 - t1;
    if (append_cpu_ms)
        *append_cpu_ms = c2 - c1;
    return 0;
}

/* The verified table: every provider listed (with metadata), every model probed OK once. */
static int s_populate(const bench_config_t *cfg, model_status_t *st, status_store_t *store)
{
    long per = cfg->models / cfg->providers;
    char **names = calloc((size_t)per, sizeof *names);
    model_meta_t *metas = calloc((size_t)per, sizeof *metas);
    int rc = -1;
    if (!names || !metas)
        goto done;
    for (long m = 0; m < per; m++) {
        names[m] = malloc(96);
        if (!names[m])
            goto done;
        metas[m].has_context_length = true;
        metas[m].context_length = 131072;
        metas[m].has_created = true;
        metas[m].created = 1760000000 + m;
        metas[m].owned_by = (char *)"bench";
    }
    double now = 1800000000.0;
    for (long p = 0; p < cfg->providers; p++) {
        char key[32];
        snprintf(key, sizeof key, "bp-%03ld", p);
        for (long m = 0; m < per; m++)
            s_model_name(names[m], 96, p, m);
        if (model_status_list_ok(st, key, (size_t)per, (const char *const *)names, metas, now) != 0)
            goto done;
        for (long m = 0; m < per; m++) {
            if (model_status_probe(st, key, names[m], STATUS_PROBE_OK, 200, 180.0 + (double)m, NULL,
                                   now + 1) != 0)
                goto done;
        }
    }
    if (s_take_changes(st, cfg->providers) != 0 || s_commit(st, store, NULL, NULL, NULL) != 0)
        goto done;
    rc = 0;
done:
    for (long m = 0; names && m < per; m++)
        free(names[m]);
    free(names);
    free(metas); /* owned_by points at a literal: nothing else to free */
    return rc;
}

/* (a): one provider's batch of changed records. */
static int s_batch(const bench_config_t *cfg, model_status_t *st, status_store_t *store, long round,
                   bench_result_t *res)
{
    long provider = round % cfg->providers;
    char key[32], model[96], message[160];
    snprintf(key, sizeof key, "bp-%03ld", provider);
    double now = 1800001000.0 + (double)round;
    uint64_t before = status_store_size(store);
    double t0 = s_now_ms();
    for (long m = 0; m < cfg->batch; m++) {
        s_model_name(model, sizeof model, provider, m);
        snprintf(message, sizeof message, "The model `%s` does not exist", model);
        /* A record already failing (a provider seen twice in a long run) recovers instead:
         * either way the state changes. */
        const status_record_t *rec = model_status_record(st, key, model);
        bool failing = rec && rec->state == STATUS_FAILING;
        if (model_status_probe(st, key, model, failing ? STATUS_PROBE_OK : STATUS_PROBE_MODEL_FAIL,
                               failing ? 200 : 404, 150.0, failing ? NULL : message, now) != 0) {
            fprintf(stderr, "bench_status: probe of %s/%s failed\n", key, model);
            return -1;
        }
    }
    res->samples[M_PROBE][round] = s_now_ms() - t0;
    if (model_status_pending_changes(st, key) != (size_t)cfg->batch) {
        fprintf(stderr, "bench_status: %zu transitions queued, expected %ld\n",
                model_status_pending_changes(st, key), cfg->batch);
        return -1;
    }
    status_changes_t changes;
    if (model_status_take_changes(st, key, &changes) != 0)
        return -1;
    status_changes_clear(&changes);
    if (s_commit(st, store, &res->samples[M_TAKE_DIRTY][round], &res->samples[M_APPEND][round],
                 &res->samples[M_APPEND_CPU][round]) != 0)
        return -1;
    res->samples[M_BATCH][round] =
        res->samples[M_TAKE_DIRTY][round] + res->samples[M_APPEND][round];
    uint64_t after = status_store_size(store);
    if (after < before)
        res->compactions_during_batches++;
    res->batch_bytes[round] = after >= before ? (long)(after - before) : -1;
    return 0;
}

/* (b): one providers-file persist. */
static int s_persist(const registry_t *reg, const char *path, double *ms)
{
    char err[512] = "";
    double t0 = s_now_ms();
    if (store_persist(reg, path, err, sizeof err) != 0) {
        fprintf(stderr, "bench_status: persist: %s\n", err);
        return -1;
    }
    *ms = s_now_ms() - t0;
    return 0;
}

/* The disk's floor under an append: the same number of bytes as the round's batch frame,
 * appended to a scratch file in the same directory with one write + fdatasync, and nothing
 * else. (a) minus this is what the journal itself adds; on a shared machine the floor is also
 * what other processes' disk traffic inflates. */
static int s_fsync_floor(const char *dir, long bytes, double *ms, double *crc_ms)
{
    char path[600];
    snprintf(path, sizeof path, "%s/fsync-floor", dir);
    size_t size = bytes > 0 ? (size_t)bytes : 0;
    char *buf = calloc(1, size + 1);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, S_IRUSR | S_IWUSR);
    int rc = -1;
    if (buf && crc_ms) {
        /* The frame's CRC-32 over as many bytes (the journal computes one per frame). */
        double c0 = s_now_ms();
        volatile uint32_t crc = status_store_crc32(buf, size);
        (void)crc;
        *crc_ms = s_now_ms() - c0;
    }
    if (buf && fd >= 0) {
        double t0 = s_now_ms();
        ssize_t n = write(fd, buf, size);
        if (n >= 0 && (size_t)n == size && fdatasync(fd) == 0) {
            *ms = s_now_ms() - t0;
            rc = 0;
        }
    }
    if (rc != 0)
        perror("bench_status: fsync floor");
    if (fd >= 0)
        close(fd);
    unlink(path);
    free(buf);
    return rc;
}

/* The journal's replay into an empty table, as at start-up; checks the record count. */
static int s_load(const char *dir, size_t expected, double *ms)
{
    char err[512] = "";
    model_status_t *st = model_status_new(NULL);
    if (!st)
        return -1;
    double t0 = s_now_ms();
    status_store_t *store = status_store_open(dir, st, err, sizeof err);
    *ms = s_now_ms() - t0;
    int rc = 0;
    if (!store) {
        fprintf(stderr, "bench_status: open: %s\n", err);
        rc = -1;
    } else if (model_status_record_count(st) != expected) {
        fprintf(stderr, "bench_status: loaded %zu records, expected %zu\n",
                model_status_record_count(st), expected);
        rc = -1;
    }
    status_store_destroy(&store);
    model_status_destroy(&st);
    return rc;
}

static void s_print(const bench_config_t *cfg, const bench_result_t *res, long yaml_bytes,
                    long snapshot_bytes, const char *dir_parent)
{
    double med[M_COUNT], min[M_COUNT], max[M_COUNT];
    for (int m = 0; m < M_COUNT; m++)
        s_stats(res->samples[m], cfg->rounds, &med[m], &min[m], &max[m]);
    double bytes[BENCH_MAX_ROUNDS];
    for (long r = 0; r < cfg->rounds; r++)
        bytes[r] = (double)res->batch_bytes[r];
    double bytes_med, bytes_min, bytes_max;
    s_stats(bytes, cfg->rounds, &bytes_med, &bytes_min, &bytes_max);
    printf("{\n  \"models\": %ld,\n  \"providers\": %ld,\n  \"batch_records\": %ld,\n"
           "  \"rounds\": %ld,\n  \"data_dir_parent\": \"%s\",\n",
           cfg->models, cfg->providers, cfg->batch, cfg->rounds, dir_parent);
    for (int m = 0; m < M_COUNT; m++) {
        printf("  \"%s\": {\"median\": %.4f, \"min\": %.4f, \"max\": %.4f, \"rounds\": [",
               s_metric_names[m], med[m], min[m], max[m]);
        for (long r = 0; r < cfg->rounds; r++)
            printf("%s%.4f", r ? ", " : "", res->samples[m][r]);
        printf("]},\n");
    }
    printf("  \"batch_bytes\": %.0f,\n  \"yaml_bytes\": %ld,\n  \"snapshot_bytes\": %ld,\n"
           "  \"compactions_during_batches\": %d,\n  \"target_ratio\": %.2f,\n"
           "  \"verdict\": \"%s\"\n}\n",
           bytes_med, yaml_bytes, snapshot_bytes, res->compactions_during_batches,
           BENCH_TARGET_RATIO,
           cfg->quick                          ? "n/a (quick)"
           : med[M_RATIO] < BENCH_TARGET_RATIO ? "PASS"
                                               : "MISS");
    fflush(stdout);
}

static int s_usage(void)
{
    fprintf(stderr, "usage: bench_status [--quick] [--rounds R] [--models M] [--providers P] "
                    "[--batch B]\n");
    return 2;
}

int main(int argc, char **argv)
{
    bench_config_t cfg = {.models = 100000, .providers = 100, .batch = 1000, .rounds = 9};
    for (int i = 1; i < argc; i++) {
        long *target = NULL;
        long min = 1, max = 0;
        if (strcmp(argv[i], "--quick") == 0) {
            cfg.models = 2000;
            cfg.providers = 4;
            cfg.batch = 100;
            cfg.rounds = 3;
            cfg.quick = true;
            continue;
        }
        if (strcmp(argv[i], "--rounds") == 0) {
            target = &cfg.rounds;
            max = BENCH_MAX_ROUNDS;
        } else if (strcmp(argv[i], "--models") == 0) {
            target = &cfg.models;
            max = REGISTRY_MAX_MODELS;
        } else if (strcmp(argv[i], "--providers") == 0) {
            target = &cfg.providers;
            max = REGISTRY_MAX_PROVIDERS;
        } else if (strcmp(argv[i], "--batch") == 0) {
            target = &cfg.batch;
            max = REGISTRY_MAX_MODELS;
        }
        if (!target || i + 1 >= argc || s_parse_long(argv[i + 1], min, max, target) != 0)
            return s_usage();
        i++;
    }
    if (cfg.models % cfg.providers != 0 || cfg.batch > cfg.models / cfg.providers) {
        fprintf(stderr, "bench_status: models must divide evenly over providers, and a batch "
                        "is at most one provider's models\n");
        return 2;
    }

    int status = 1;
    bench_result_t *res = calloc(1, sizeof *res);
    registry_t *reg = NULL;
    model_status_t *st = NULL;
    status_store_t *store = NULL;
    const char *tmp = getenv("TMPDIR");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/pm-bench-status-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    bool dir_made = false;
    char yaml[600] = "";
    char err[512] = "";
    if (!res)
        return 1;
    if (!mkdtemp(dir)) {
        perror("bench_status: mkdtemp");
        goto cleanup;
    }
    dir_made = true;
    if (store_path(dir, yaml, sizeof yaml) != 0)
        goto cleanup;
    reg = s_build_registry(&cfg);
    model_status_settings_t settings;
    model_status_settings_init(&settings);
    settings.fail_threshold = 1; /* one definitive failure = one transition */
    st = model_status_new(&settings);
    if (!reg || !st) {
        fprintf(stderr, "bench_status: out of memory building %ldx%ld\n", cfg.models,
                cfg.providers);
        goto cleanup;
    }
    store = status_store_open(dir, st, err, sizeof err);
    if (!store) {
        fprintf(stderr, "bench_status: open: %s\n", err);
        goto cleanup;
    }
    if (model_status_sync(st, reg, 1800000000.0) != 0 || s_populate(&cfg, st, store) != 0) {
        fprintf(stderr, "bench_status: populating the table failed\n");
        goto cleanup;
    }
    if (model_status_record_count(st) != (size_t)cfg.models) {
        fprintf(stderr, "bench_status: %zu records, expected %ld\n", model_status_record_count(st),
                cfg.models);
        goto cleanup;
    }
    /* A snapshot of the populated table first, so that every round starts from the same
     * journal shape (one snapshot plus the rounds' batches, below the compaction limit). */
    if (status_store_compact(store, st, err, sizeof err) != 0) {
        fprintf(stderr, "bench_status: compact: %s\n", err);
        goto cleanup;
    }
    double warm_ms;
    if (s_persist(reg, yaml, &warm_ms) != 0) /* warm the page cache and the allocator */
        goto cleanup;
    for (long r = 0; r < cfg.rounds; r++) {
        bool batch_first = r % 2 == 0;
        for (int step = 0; step < 2; step++) {
            if ((step == 0) == batch_first) {
                if (s_batch(&cfg, st, store, r, res) != 0)
                    goto cleanup;
            } else if (s_persist(reg, yaml, &res->samples[M_PERSIST][r]) != 0) {
                goto cleanup;
            }
        }
        res->samples[M_RATIO][r] = res->samples[M_BATCH][r] / res->samples[M_PERSIST][r];
        if (s_fsync_floor(dir, res->batch_bytes[r], &res->samples[M_FSYNC_FLOOR][r],
                          &res->samples[M_CRC][r]) != 0)
            goto cleanup;
    }
    struct stat sb;
    long yaml_bytes = stat(yaml, &sb) == 0 ? (long)sb.st_size : -1;
    for (long r = 0; r < cfg.rounds; r++) {
        double t0 = s_now_ms();
        if (status_store_compact(store, st, err, sizeof err) != 0) {
            fprintf(stderr, "bench_status: compact: %s\n", err);
            goto cleanup;
        }
        res->samples[M_COMPACT][r] = s_now_ms() - t0;
        if (s_load(dir, (size_t)cfg.models, &res->samples[M_LOAD][r]) != 0)
            goto cleanup;
    }
    s_print(&cfg, res, yaml_bytes, (long)status_store_snapshot_size(store),
            tmp && tmp[0] ? tmp : "/tmp");
    status = 0;

cleanup:
    if (status != 0 && err[0])
        fprintf(stderr, "bench_status: %s\n", err);
    if (store) {
        char path[600];
        snprintf(path, sizeof path, "%s", status_store_path(store));
        status_store_destroy(&store);
        unlink(path);
    }
    model_status_destroy(&st);
    registry_destroy(&reg);
    if (yaml[0])
        unlink(yaml);
    if (dir_made && rmdir(dir) != 0)
        perror("bench_status: rmdir");
    free(res);
    return status;
}
