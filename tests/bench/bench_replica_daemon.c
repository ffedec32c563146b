/*
 * bench_replica_daemon: libpmclient's replica (client/pmclient_replica.h) against a REAL
 * provider-manager process, for the figures of issue 14 that bench_replica (its own fake
 * primary inside) cannot give: what the daemon's snapshot, events and heartbeats cost a replica
 * and what the replicas cost the daemon. run.py starts the daemon and runs one of three modes:
 *
 *   --mode resolve: one replica in this process (nothing else in it: its RSS is the replica's
 *     with libzmq and libc, the figure the 48 MiB target is about). Syncs, reads VmRSS and
 *     VmHWM, then times --calls calls of pmclient_replica_get_api_for_model_string (the wire
 *     op's result: the whole ProviderConfig, allocated; the free is not timed) and of
 *     pmclient_replica_resolve (no allocation), each result checked against --expect-provider
 *     and --expect-model. Prints {"mode", "sync_ms", "state_version", "providers", "models",
 *     "rss_sync_kib", "hwm_sync_kib", "get_p50_ns", "get_p99_ns", "resolve_p50_ns",
 *     "resolve_p99_ns", "resolve_rps", "rss_end_kib", "hwm_end_kib"}.
 *
 *   --mode visibility: --writers W threads (one pmclient each) write set_provider of their
 *     own small provider "vis-<t>" (one model, alternating between two names, the write's
 *     sequence number in the display name) paced together at --rate writes per second, and a
 *     replica in this process records, in its on_change callback, the time each write's
 *     sequence number becomes visible to its readers. Visibility of a write = that time minus
 *     the time its writer got the reply. The callback reads the sequence number back from the
 *     replica (pmclient_replica_get), so a write applied by a re-snapshot is still matched.
 *     Prints {"mode", "writers", "rate", "writes", "achieved_rate", "late_sends",
 *     "write_p50_us", "write_p99_us", "vis_p50_us", "vis_p99_us", "vis_max_us", "negative",
 *     "most_negative_us", "missing", "by_snapshot", "events_applied", "resnapshots", ...}.
 *
 *   --mode hold: --replicas N replicas in this process (N may be 0), all synced before it
 *     prints {"ready": true, ...}; then, until SIGTERM or SIGINT, one writer at --rate writes
 *     per second (0: none) on provider --write-key, of the daemon at --endpoint and, with
 *     --also-write EP, the same writes to a second daemon (so that a bench can move the
 *     replicas between two daemons while both keep the same write load). At the end it checks
 *     every replica caught up with the daemon's last state_version and prints the totals.
 *
 * Common: --endpoint EP --events EP (the daemon's), --heartbeat-ms MS (the daemon's).
 * Exit status 0 when the JSON was printed and nothing failed, 1 otherwise, 2 on usage.
 */
#include "pmclient.h"
#include "pmclient_replica.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_WRITERS 16
#define MAX_REPLICAS 1000
#define SYNC_TIMEOUT_MS 120000
#define CATCH_UP_TIMEOUT_MS 10000
#define WRITE_TIMEOUT_MS 10000

typedef struct {
    const char *mode;
    const char *endpoint;
    const char *events;
    int heartbeat_ms;
    /* resolve */
    const char *model_string;
    const char *expect_provider;
    const char *expect_model;
    long calls;
    /* visibility */
    int writers;
    long rate;
    long writes; /* measured, all writers together */
    long warmup; /* per writer, paced like the rest, not measured */
    /* hold */
    int replicas;
    const char *write_key;
    const char *also_write; /* a second daemon that gets the same writes; NULL: none */
} args_t;

static args_t s_args;
static volatile sig_atomic_t s_interrupted;

static void s_on_signal(int signum)
{
    (void)signum;
    s_interrupted = 1;
}

static int64_t s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Sleeps until the CLOCK_MONOTONIC time at_ns (at once when it has passed). */
static void s_sleep_until(int64_t at_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(at_ns / 1000000000), .tv_nsec = at_ns % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !s_interrupted)
        ;
}

static long s_status_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t len = strlen(field);
    long kib = -1;
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, field, len) == 0 && line[len] == ':')
            kib = strtol(line + len + 1, NULL, 10);
    }
    if (f)
        fclose(f);
    return kib;
}

static int s_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The q-th quantile (0..1) of n sorted values; 0 when n is 0. */
static int64_t s_quantile(const int64_t *sorted, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

static pmclient_replica_t *s_replica_new(pmclient_replica_change_fn *on_change, void *arg)
{
    pmclient_replica_options_t options = {.timeout_ms = 30000,
                                          .heartbeat_ms = s_args.heartbeat_ms,
                                          .on_change = on_change,
                                          .on_change_arg = arg};
    return pmclient_replica_new(s_args.endpoint, s_args.events, &options);
}

/* ------------------------------------------------------------------------------ resolve */

static int s_resolve(void)
{
    int64_t t0 = s_now_ns();
    pmclient_replica_t *replica = s_replica_new(NULL, NULL);
    if (!replica || pmclient_replica_wait(replica, 0, SYNC_TIMEOUT_MS) != 0) {
        fprintf(stderr, "bench_replica_daemon: the replica did not sync with %s\n",
                s_args.endpoint);
        pmclient_replica_destroy(&replica);
        return 1;
    }
    double sync_ms = (double)(s_now_ns() - t0) / 1e6;
    /* Read before anything else is allocated here: the replica's own footprint. */
    long rss_sync = s_status_kib("VmRSS"), hwm_sync = s_status_kib("VmHWM");
    pmclient_replica_stats_t stats;
    if (pmclient_replica_stats(replica, &stats) != 0) {
        pmclient_replica_destroy(&replica);
        return 1;
    }

    size_t calls = (size_t)s_args.calls;
    int64_t *get_ns = malloc(sizeof(int64_t) * calls);
    int64_t *resolve_ns = malloc(sizeof(int64_t) * calls);
    pmclient_replica_target_t *target = malloc(sizeof *target);
    long failures = 0;
    pmclient_replica_error_t err = {{0}, {0}};
    if (!get_ns || !resolve_ns || !target) {
        free(get_ns);
        free(resolve_ns);
        free(target);
        pmclient_replica_destroy(&replica);
        return 1;
    }
    for (size_t i = 0; i < calls; i++) {
        pm_provider_t *provider = NULL;
        char *long_name = NULL;
        int64_t c0 = s_now_ns();
        int rc = pmclient_replica_get_api_for_model_string(replica, s_args.model_string, &provider,
                                                           &long_name, &err);
        get_ns[i] = s_now_ns() - c0;
        if (rc != 0 || strcmp(provider->provider, s_args.expect_provider) != 0 ||
            strcmp(long_name, s_args.expect_model) != 0)
            failures++;
        pm_provider_free(&provider);
        free(long_name);
    }
    for (size_t i = 0; i < calls; i++) {
        int64_t c0 = s_now_ns();
        int rc = pmclient_replica_resolve(replica, s_args.model_string, target, &err);
        resolve_ns[i] = s_now_ns() - c0;
        if (rc != 0 || strcmp(target->provider, s_args.expect_provider) != 0 ||
            strcmp(target->long_name, s_args.expect_model) != 0)
            failures++;
    }
    /* Throughput untimed per call (the clock reads would be a third of it). */
    int64_t start = s_now_ns();
    for (size_t i = 0; i < calls; i++)
        failures += pmclient_replica_resolve(replica, s_args.model_string, target, &err) != 0;
    double resolve_rps = (double)calls / ((double)(s_now_ns() - start) / 1e9);
    qsort(get_ns, calls, sizeof *get_ns, s_cmp);
    qsort(resolve_ns, calls, sizeof *resolve_ns, s_cmp);
    if (failures)
        fprintf(stderr, "bench_replica_daemon: %ld resolutions failed or differed (%s: %s)\n",
                failures, err.code, err.message);
    printf("{\"mode\": \"resolve\", \"sync_ms\": %.1f, \"state_version\": %lld, "
           "\"providers\": %zu, \"models\": %zu, \"rss_sync_kib\": %ld, \"hwm_sync_kib\": %ld, "
           "\"calls\": %zu, \"get_p50_ns\": %lld, \"get_p99_ns\": %lld, "
           "\"resolve_p50_ns\": %lld, \"resolve_p99_ns\": %lld, \"resolve_rps\": %.0f, "
           "\"failures\": %ld, \"rss_end_kib\": %ld, \"hwm_end_kib\": %ld}\n",
           sync_ms, (long long)stats.state_version, stats.providers, stats.models, rss_sync,
           hwm_sync, calls, (long long)s_quantile(get_ns, calls, 0.5),
           (long long)s_quantile(get_ns, calls, 0.99),
           (long long)s_quantile(resolve_ns, calls, 0.5),
           (long long)s_quantile(resolve_ns, calls, 0.99), resolve_rps, failures,
           s_status_kib("VmRSS"), s_status_kib("VmHWM"));
    free(get_ns);
    free(resolve_ns);
    free(target);
    pmclient_replica_destroy(&replica);
    return failures ? 1 : 0;
}

/* --------------------------------------------------------------------------- visibility */

typedef struct {
    long count;        /* writes of this writer, warm-up included: sequence numbers 1..count */
    int64_t *sent_ns;  /* [seq], when the request was sent */
    int64_t *reply_ns; /* [seq], when its reply came back */
    int64_t *due_ns;   /* [seq], when the pacing wanted it sent */
    /* Written by the replica's thread (the callback) only; read after the writers finished
     * and last_seen reached count. */
    int64_t *applied_ns; /* [seq], when the replica made it visible; 0: not yet */
    bool *by_snapshot;   /* [seq], made visible by a whole snapshot, not an event */
    atomic_long last_seen;
    long errors;
    char error[256];
} writer_t;

typedef struct {
    pmclient_replica_t *replica; /* read by the callback once armed is set (release/acquire) */
    atomic_bool armed;
    writer_t writers[MAX_WRITERS];
    int count;
    int64_t t0_ns;
    atomic_long callbacks;
    atomic_long read_failures;
} visibility_t;

static visibility_t s_vis;

static void s_vis_key(char *out, size_t size, int writer)
{
    snprintf(out, size, "vis-%d", writer);
}

/* The sequence number in a writer's display name ("Visibility writer <t> write <seq>"). */
static long s_vis_seq(const pm_provider_t *provider)
{
    const char *space = provider && provider->name ? strrchr(provider->name, ' ') : NULL;
    if (!space)
        return -1;
    char *end;
    long seq = strtol(space + 1, &end, 10);
    return *end == '\0' ? seq : -1;
}

/* Reads writer t's provider back from the replica and stamps every sequence number up to it. */
static void s_vis_mark(int t, int64_t now, bool full)
{
    writer_t *w = &s_vis.writers[t];
    char key[32];
    s_vis_key(key, sizeof key, t);
    pm_provider_t *provider = NULL;
    pmclient_replica_error_t err;
    if (pmclient_replica_get(s_vis.replica, key, &provider, &err) != 0) {
        atomic_fetch_add(&s_vis.read_failures, 1);
        return;
    }
    long seq = s_vis_seq(provider);
    pm_provider_free(&provider);
    if (seq < 0) { /* not a name this bench wrote: nothing can be matched */
        atomic_fetch_add(&s_vis.read_failures, 1);
        return;
    }
    long last = atomic_load(&w->last_seen);
    if (seq > w->count)
        seq = w->count;
    for (long k = last + 1; k <= seq; k++) {
        w->applied_ns[k] = now;
        w->by_snapshot[k] = full;
    }
    if (seq > last)
        atomic_store(&w->last_seen, seq);
}

static void s_vis_on_change(const pmclient_replica_change_t *change, void *arg)
{
    (void)arg;
    int64_t now = s_now_ns(); /* first: the change is visible to readers from here */
    atomic_fetch_add(&s_vis.callbacks, 1);
    if (!atomic_load(&s_vis.armed))
        return; /* the first snapshot, before the writes */
    if (change->full) {
        for (int t = 0; t < s_vis.count; t++)
            s_vis_mark(t, now, true);
        return;
    }
    for (size_t i = 0; i < change->key_count; i++) {
        char *end;
        const char *key = change->keys[i];
        if (strncmp(key, "vis-", 4) != 0)
            continue;
        long t = strtol(key + 4, &end, 10);
        if (*end == '\0' && t >= 0 && t < s_vis.count)
            s_vis_mark((int)t, now, false);
    }
}

static int s_vis_write(pmclient_t *client, int t, long seq, char *error, size_t error_size)
{
    char key[32], name[64], model[32];
    s_vis_key(key, sizeof key, t);
    snprintf(name, sizeof name, "Visibility writer %d write %ld", t, seq);
    /* Alternating models: every write changes valid_models too, as a real edit would. */
    snprintf(model, sizeof model, "vis-model-%s", seq % 2 ? "odd" : "even");
    const char *longs[1] = {model};
    pm_provider_spec_t spec = {.provider = key,
                               .name = name,
                               .base_api_url = "http://127.0.0.1:9/v1",
                               .has_valid_models = true,
                               .model_count = 1,
                               .model_long = longs,
                               .model_short = NULL};
    if (pmclient_set_provider(client, &spec, NULL) == 0)
        return 0;
    snprintf(error, error_size, "%s: %s", pmclient_error_code(client),
             pmclient_error_message(client));
    return -1;
}

typedef struct {
    int index;
    pmclient_t *client;
} writer_arg_t;

static void *s_vis_writer(void *arg)
{
    writer_arg_t *a = arg;
    writer_t *w = &s_vis.writers[a->index];
    double every_ns = 1e9 / (double)s_args.rate;
    for (long seq = 1; seq <= w->count && !s_interrupted; seq++) {
        /* The writers share one schedule: write seq of writer t is slot (seq-1)*W + t. */
        int64_t due =
            s_vis.t0_ns + (int64_t)((double)((seq - 1) * s_vis.count + a->index) * every_ns);
        s_sleep_until(due);
        w->due_ns[seq] = due;
        w->sent_ns[seq] = s_now_ns();
        int rc = s_vis_write(a->client, a->index, seq, w->error, sizeof w->error);
        w->reply_ns[seq] = s_now_ns();
        if (rc != 0) {
            w->errors++;
            break; /* the sequence must stay gap-free for the matching */
        }
    }
    return NULL;
}

static int s_visibility(void)
{
    int W = s_args.writers;
    long per_writer = s_args.writes / W + s_args.warmup;
    pmclient_t *clients[MAX_WRITERS] = {NULL};
    pmclient_replica_t *replica = NULL;
    int status = 1;
    s_vis.count = W;
    for (int t = 0; t < W; t++) {
        writer_t *w = &s_vis.writers[t];
        w->count = per_writer;
        size_t n = (size_t)per_writer + 1;
        w->sent_ns = calloc(n, sizeof(int64_t));
        w->reply_ns = calloc(n, sizeof(int64_t));
        w->due_ns = calloc(n, sizeof(int64_t));
        w->applied_ns = calloc(n, sizeof(int64_t));
        w->by_snapshot = calloc(n, sizeof(bool));
        atomic_init(&w->last_seen, 0);
        clients[t] = pmclient_new(s_args.endpoint);
        if (!w->sent_ns || !w->reply_ns || !w->due_ns || !w->applied_ns || !w->by_snapshot ||
            !clients[t] || pmclient_set_timeout(clients[t], WRITE_TIMEOUT_MS) != 0)
            goto done;
        /* Sequence 0 creates the provider before the replica's snapshot. */
        if (s_vis_write(clients[t], t, 0, w->error, sizeof w->error) != 0) {
            fprintf(stderr, "bench_replica_daemon: set_provider failed: %s\n", w->error);
            goto done;
        }
    }
    replica = s_replica_new(s_vis_on_change, NULL);
    if (!replica || pmclient_replica_wait(replica, 0, SYNC_TIMEOUT_MS) != 0) {
        fprintf(stderr, "bench_replica_daemon: the replica did not sync with %s\n",
                s_args.endpoint);
        goto stop;
    }
    s_vis.replica = replica;
    atomic_store(&s_vis.armed, true);

    /* No barrier: the writers share a schedule that starts 20 ms from now, time enough for
     * every thread to reach its first slot (one that starts late catches up: late_sends). */
    pthread_t threads[MAX_WRITERS];
    writer_arg_t wargs[MAX_WRITERS];
    s_vis.t0_ns = s_now_ns() + 20000000;
    int started = 0;
    for (int t = 0; t < W; t++) {
        wargs[t] = (writer_arg_t){.index = t, .client = clients[t]};
        if (pthread_create(&threads[t], NULL, s_vis_writer, &wargs[t]) != 0)
            break;
        started++;
    }
    if (started < W)
        s_interrupted = 1; /* the started writers stop at their next write */
    for (int t = 0; t < started; t++)
        pthread_join(threads[t], NULL);
    if (started < W) {
        fprintf(stderr, "bench_replica_daemon: cannot start the writers\n");
        goto stop;
    }

    /* Wait for the replica to show every write (or give up: the rest count as missing). */
    int64_t give_up = s_now_ns() + (int64_t)CATCH_UP_TIMEOUT_MS * 1000000;
    for (;;) {
        bool all = true;
        for (int t = 0; t < W; t++)
            all = all && atomic_load(&s_vis.writers[t].last_seen) >= s_vis.writers[t].count;
        if (all || s_now_ns() > give_up)
            break;
        s_sleep_until(s_now_ns() + 1000000);
    }

    size_t cap = (size_t)per_writer * (size_t)W;
    int64_t *vis = malloc(sizeof(int64_t) * cap);
    int64_t *lat = malloc(sizeof(int64_t) * cap);
    if (!vis || !lat) {
        free(vis);
        free(lat);
        goto stop;
    }
    size_t n = 0, nlat = 0;
    long negative = 0, missing = 0, by_snapshot = 0, late = 0, errors = 0;
    int64_t most_negative = 0, first_sent = INT64_MAX, last_reply = 0;
    for (int t = 0; t < W; t++) {
        writer_t *w = &s_vis.writers[t];
        errors += w->errors;
        if (w->errors)
            fprintf(stderr, "bench_replica_daemon: writer %d: %s\n", t, w->error);
        for (long k = s_args.warmup + 1; k <= w->count; k++) {
            if (!w->reply_ns[k])
                continue; /* not written (the writer stopped on an error) */
            if (w->sent_ns[k] < first_sent)
                first_sent = w->sent_ns[k];
            if (w->reply_ns[k] > last_reply)
                last_reply = w->reply_ns[k];
            late += w->sent_ns[k] - w->due_ns[k] > 1000000; /* more than 1 ms behind */
            lat[nlat++] = w->reply_ns[k] - w->sent_ns[k];
            if (!w->applied_ns[k]) {
                missing++;
                continue;
            }
            by_snapshot += w->by_snapshot[k];
            int64_t d = w->applied_ns[k] - w->reply_ns[k];
            if (d < 0) {
                negative++;
                if (d < most_negative)
                    most_negative = d;
                d = 0;
            }
            vis[n++] = d;
        }
    }
    qsort(vis, n, sizeof *vis, s_cmp);
    qsort(lat, nlat, sizeof *lat, s_cmp);
    pmclient_replica_stats_t stats;
    if (pmclient_replica_stats(replica, &stats) != 0)
        memset(&stats, 0, sizeof stats);
    double achieved =
        last_reply > first_sent ? (double)nlat / ((double)(last_reply - first_sent) / 1e9) : 0.0;
    printf("{\"mode\": \"visibility\", \"writers\": %d, \"rate\": %ld, \"writes\": %zu, "
           "\"errors\": %ld, \"achieved_rate\": %.1f, \"late_sends\": %ld, "
           "\"write_p50_us\": %.1f, \"write_p99_us\": %.1f, \"visible\": %zu, "
           "\"vis_p50_us\": %.1f, \"vis_p99_us\": %.1f, \"vis_max_us\": %.1f, "
           "\"negative\": %ld, \"most_negative_us\": %.1f, \"missing\": %ld, "
           "\"by_snapshot\": %ld, \"events_applied\": %llu, \"resnapshots\": %llu, "
           "\"gaps\": %llu, \"read_failures\": %ld}\n",
           W, s_args.rate, nlat, errors, achieved, late, (double)s_quantile(lat, nlat, 0.5) / 1e3,
           (double)s_quantile(lat, nlat, 0.99) / 1e3, n, (double)s_quantile(vis, n, 0.5) / 1e3,
           (double)s_quantile(vis, n, 0.99) / 1e3, n ? (double)vis[n - 1] / 1e3 : 0.0, negative,
           (double)most_negative / 1e3, missing, by_snapshot,
           (unsigned long long)stats.events_applied, (unsigned long long)stats.resnapshots,
           (unsigned long long)stats.gaps, atomic_load(&s_vis.read_failures));
    free(vis);
    free(lat);
    status = errors || missing || atomic_load(&s_vis.read_failures) ? 1 : 0;
stop:
    /* destroy joins the replica's thread first: no callback runs once it returns */
    atomic_store(&s_vis.armed, false);
    pmclient_replica_destroy(&replica);
done:
    for (int t = 0; t < W; t++) {
        writer_t *w = &s_vis.writers[t];
        pmclient_destroy(&clients[t]);
        free(w->sent_ns);
        free(w->reply_ns);
        free(w->due_ns);
        free(w->applied_ns);
        free(w->by_snapshot);
    }
    return status;
}

/* --------------------------------------------------------------------------------- hold */

static int s_hold(void)
{
    int N = s_args.replicas;
    pmclient_replica_t **replicas = calloc((size_t)(N > 0 ? N : 1), sizeof *replicas);
    pmclient_t *client = pmclient_new(s_args.endpoint);
    pmclient_t *also = s_args.also_write ? pmclient_new(s_args.also_write) : NULL;
    int status = 1;
    if (!replicas || !client || pmclient_set_timeout(client, WRITE_TIMEOUT_MS) != 0 ||
        (s_args.also_write && (!also || pmclient_set_timeout(also, WRITE_TIMEOUT_MS) != 0)))
        goto done;
    int64_t t0 = s_now_ns();
    for (int i = 0; i < N; i++) {
        if (!(replicas[i] = s_replica_new(NULL, NULL))) {
            fprintf(stderr, "bench_replica_daemon: replica %d did not start\n", i);
            goto done;
        }
    }
    for (int i = 0; i < N; i++) {
        if (pmclient_replica_wait(replicas[i], 0, SYNC_TIMEOUT_MS) != 0) {
            fprintf(stderr, "bench_replica_daemon: replica %d did not sync\n", i);
            goto done;
        }
    }
    printf("{\"ready\": true, \"replicas\": %d, \"sync_all_ms\": %.1f, \"rss_kib\": %ld}\n", N,
           (double)(s_now_ns() - t0) / 1e6, s_status_kib("VmRSS"));
    fflush(stdout);

    long writes = 0, errors = 0;
    char key_model[2][32] = {"hold-model-even", "hold-model-odd"};
    int64_t next = s_now_ns();
    int64_t every = s_args.rate > 0 ? 1000000000 / s_args.rate : 0;
    while (!s_interrupted) {
        if (every == 0) {
            s_sleep_until(s_now_ns() + 50000000);
            continue;
        }
        s_sleep_until(next);
        if (s_interrupted)
            break;
        next += every;
        const char *longs[1] = {key_model[writes % 2]};
        pm_provider_spec_t spec = {.provider = s_args.write_key,
                                   .name = "Fan-out writer",
                                   .base_api_url = "http://127.0.0.1:9/v1",
                                   .has_valid_models = true,
                                   .model_count = 1,
                                   .model_long = longs};
        if (pmclient_set_provider(client, &spec, NULL) != 0)
            errors++;
        if (also && pmclient_set_provider(also, &spec, NULL) != 0)
            errors++;
        writes++;
    }

    /* Every replica must have caught up with the daemon's last version. */
    pm_health_t *health = NULL;
    long caught_up = 0;
    unsigned long long events = 0, resnapshots = 0;
    if (pmclient_health(client, &health) != 0) {
        fprintf(stderr, "bench_replica_daemon: health failed: %s\n",
                pmclient_error_message(client));
        goto done;
    }
    for (int i = 0; i < N; i++) {
        pmclient_replica_stats_t stats;
        caught_up +=
            pmclient_replica_wait(replicas[i], health->state_version, CATCH_UP_TIMEOUT_MS) == 0;
        if (pmclient_replica_stats(replicas[i], &stats) == 0) {
            events += stats.events_applied;
            resnapshots += stats.resnapshots;
        }
    }
    printf("{\"replicas\": %d, \"writes\": %ld, \"write_errors\": %ld, \"state_version\": %lld, "
           "\"caught_up\": %ld, \"events_applied\": %llu, \"resnapshots\": %llu, "
           "\"rss_kib\": %ld}\n",
           N, writes, errors, (long long)health->state_version, caught_up, events, resnapshots,
           s_status_kib("VmRSS"));
    pm_health_free(&health);
    status = errors || caught_up < N ? 1 : 0;
done:
    for (int i = 0; replicas && i < N; i++)
        pmclient_replica_destroy(&replicas[i]);
    free(replicas);
    pmclient_destroy(&client);
    pmclient_destroy(&also);
    return status;
}

/* --------------------------------------------------------------------------------- main */

static int s_usage(void)
{
    fputs("usage: bench_replica_daemon --mode resolve|visibility|hold --endpoint EP --events EP\n"
          "         [--heartbeat-ms MS]\n"
          "  resolve:    --model-string S --expect-provider K --expect-model M [--calls N]\n"
          "  visibility: [--writers W] [--rate R] [--writes N] [--warmup K]\n"
          "  hold:       [--replicas N] [--rate R] [--write-key KEY] [--also-write EP]\n",
          stderr);
    return 2;
}

static int s_number(const char *text, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long n = strtol(text, &end, 10);
    if (errno || end == text || *end || n < min || n > max)
        return -1;
    *out = n;
    return 0;
}

static int s_parse(int argc, char **argv)
{
    s_args = (args_t){.heartbeat_ms = PMCLIENT_REPLICA_DEFAULT_HEARTBEAT_MS,
                      .calls = 1000000,
                      .writers = 1,
                      .rate = 1000,
                      .writes = 5000,
                      .warmup = 50,
                      .write_key = "fan-writer"};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *opt = argv[i], *value = argv[i + 1];
        long n = 0;
        if (strcmp(opt, "--mode") == 0)
            s_args.mode = value;
        else if (strcmp(opt, "--endpoint") == 0)
            s_args.endpoint = value;
        else if (strcmp(opt, "--events") == 0)
            s_args.events = value;
        else if (strcmp(opt, "--model-string") == 0)
            s_args.model_string = value;
        else if (strcmp(opt, "--expect-provider") == 0)
            s_args.expect_provider = value;
        else if (strcmp(opt, "--expect-model") == 0)
            s_args.expect_model = value;
        else if (strcmp(opt, "--write-key") == 0)
            s_args.write_key = value;
        else if (strcmp(opt, "--also-write") == 0)
            s_args.also_write = value;
        else if (strcmp(opt, "--heartbeat-ms") == 0 && s_number(value, 10, 60000, &n) == 0)
            s_args.heartbeat_ms = (int)n;
        else if (strcmp(opt, "--calls") == 0 && s_number(value, 1, 100000000, &n) == 0)
            s_args.calls = n;
        else if (strcmp(opt, "--writers") == 0 && s_number(value, 1, MAX_WRITERS, &n) == 0)
            s_args.writers = (int)n;
        else if (strcmp(opt, "--rate") == 0 && s_number(value, 0, 1000000, &n) == 0)
            s_args.rate = n;
        else if (strcmp(opt, "--writes") == 0 && s_number(value, 1, 10000000, &n) == 0)
            s_args.writes = n;
        else if (strcmp(opt, "--warmup") == 0 && s_number(value, 0, 100000, &n) == 0)
            s_args.warmup = n;
        else if (strcmp(opt, "--replicas") == 0 && s_number(value, 0, MAX_REPLICAS, &n) == 0)
            s_args.replicas = (int)n;
        else
            return -1;
    }
    if (argc % 2 != 1 || !s_args.mode || !s_args.endpoint || !s_args.events)
        return -1;
    if (strcmp(s_args.mode, "resolve") == 0)
        return s_args.model_string && s_args.expect_provider && s_args.expect_model ? 0 : -1;
    if (strcmp(s_args.mode, "visibility") == 0)
        return s_args.rate > 0 ? 0 : -1;
    return strcmp(s_args.mode, "hold") == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (s_parse(argc, argv) != 0)
        return s_usage();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    if (sigemptyset(&sa.sa_mask) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 ||
        sigaction(SIGINT, &sa, NULL) != 0)
        return 1;
    if (strcmp(s_args.mode, "resolve") == 0)
        return s_resolve();
    if (strcmp(s_args.mode, "visibility") == 0)
        return s_visibility();
    return s_hold();
}
