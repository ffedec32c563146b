/*
 * bench_replica: in-process resolution through libpmclient's local replica
 * (client/pmclient_replica.h), the number issue 14 sets targets for: p50 <= 1 us and
 * >= 1,000,000 resolutions per second per reader thread, at 100,000 models.
 *
 * The replica syncs from a minimal primary inside this program (a ROUTER answering `snapshot`
 * and a PUB sending heartbeats and, with --changes-per-s, `changed` events of one small
 * provider), so the figure is the replica's alone, not the transport's. Each reader thread
 * resolves a fixed mix of model strings (half "provider/model", half bare names, spread over
 * every provider) with pmclient_replica_resolve: first timing each call (p50, p99), then
 * untimed for the throughput. Prints one JSON object:
 *   {"models", "providers", "sync_ms", "changes_per_s", "changes_applied", "rss_kib",
 *    "runs": [{"threads", "calls_per_thread", "p50_ns", "p99_ns", "rps_per_thread"}, ...]}
 *
 * Usage: bench_replica [--models N] [--providers P] [--calls C] [--threads T,T,...]
 *                      [--changes-per-s R] [--quick]
 */
#include "pmclient_replica.h"

#include <errno.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define MAX_THREADS 16
#define MIX 4096 /* model strings in the mix (a power of two) */

typedef struct {
    long models;
    long providers;
    long calls;
    int threads[MAX_THREADS];
    int runs;
    long changes_per_s;
} args_t;

static args_t s_args;
static msgpack_sbuffer s_snapshot_result; /* the packed result of `snapshot` */
static int64_t s_version;                 /* guarded by s_mutex with the PUB socket */
static pthread_mutex_t s_mutex = PTHREAD_MUTEX_INITIALIZER;
static atomic_bool s_stop;
static atomic_bool s_changes_on; /* set once the replica holds the snapshot */

static int64_t s_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void s_str(msgpack_packer *pk, const char *s)
{
    size_t len = strlen(s);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

static void s_pack_provider(msgpack_packer *pk, const char *key, long first, long count)
{
    char text[64];
    msgpack_pack_map(pk, 6);
    s_str(pk, "provider");
    s_str(pk, key);
    s_str(pk, "name");
    s_str(pk, key);
    s_str(pk, "base_api_url");
    s_str(pk, "https://bench.invalid/v1");
    s_str(pk, "api_key");
    s_str(pk, "sk-bench-not-a-secret");
    s_str(pk, "valid_models");
    msgpack_pack_map(pk, (uint32_t)count);
    for (long m = first; m < first + count; m++) {
        snprintf(text, sizeof text, "model-%06ld", m);
        s_str(pk, text);
        s_str(pk, text);
    }
    s_str(pk, "invalid_models");
    msgpack_pack_array(pk, 0);
}

/* The snapshot's result: P providers "p000".."pNNN" sharing the models evenly, plus "churn". */
static void s_build_snapshot(void)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(&s_snapshot_result);
    msgpack_packer_init(&pk, &s_snapshot_result, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    s_str(&pk, "state_version");
    msgpack_pack_int64(&pk, 0);
    s_str(&pk, "status_version");
    msgpack_pack_int64(&pk, 0);
    s_str(&pk, "epoch");
    s_str(&pk, "bench");
    s_str(&pk, "providers");
    msgpack_pack_array(&pk, (uint32_t)s_args.providers + 1);
    long per = s_args.models / s_args.providers;
    char key[32];
    for (long p = 0; p < s_args.providers; p++) {
        snprintf(key, sizeof key, "p%03ld", p);
        s_pack_provider(&pk, key, p * per, per);
    }
    s_pack_provider(&pk, "churn", 10000000, 2);
}

static void s_send_pub(void *pub, msgpack_sbuffer *body)
{
    if (zmq_send(pub, "providers", 9, ZMQ_SNDMORE) != 9 ||
        zmq_send(pub, body->data, body->size, 0) != (int)body->size)
        fprintf(stderr, "bench_replica: publish failed: %s\n", zmq_strerror(errno));
}

static void s_publish(void *pub, bool change)
{
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    pthread_mutex_lock(&s_mutex);
    if (change)
        s_version++;
    msgpack_pack_map(&pk, change ? 5 : 3);
    s_str(&pk, "event");
    s_str(&pk, change ? "changed" : "heartbeat");
    s_str(&pk, "state_version");
    msgpack_pack_int64(&pk, s_version);
    s_str(&pk, "epoch");
    s_str(&pk, "bench");
    if (change) {
        s_str(&pk, "providers");
        msgpack_pack_array(&pk, 1);
        s_str(&pk, "churn");
        s_str(&pk, "configs");
        msgpack_pack_array(&pk, 1);
        s_pack_provider(&pk, "churn", 10000000 + s_version % 1000, 2);
    }
    s_send_pub(pub, &sbuf);
    pthread_mutex_unlock(&s_mutex);
    msgpack_sbuffer_destroy(&sbuf);
}

typedef struct {
    void *router;
    void *pub;
} primary_t;

static void *s_primary(void *arg)
{
    primary_t *p = arg;
    int64_t next_heartbeat = 0, next_change = s_now_ns();
    int64_t change_every = s_args.changes_per_s > 0 ? 1000000000 / s_args.changes_per_s : 0;
    while (!atomic_load(&s_stop)) {
        zmq_pollitem_t item = {.socket = p->router, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, 1) > 0) {
            zmq_msg_t parts[3];
            int count = 0, more = 1;
            while (more && count < 3) {
                zmq_msg_init(&parts[count]);
                if (zmq_msg_recv(&parts[count], p->router, 0) < 0)
                    break;
                more = zmq_msg_more(&parts[count]);
                count++;
            }
            if (count == 3) {
                /* Only `snapshot` is asked; the id is echoed (msgpack map "id" key). */
                msgpack_unpacked req;
                msgpack_unpacked_init(&req);
                size_t off = 0;
                msgpack_sbuffer sbuf;
                msgpack_sbuffer_init(&sbuf);
                msgpack_packer pk;
                msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
                msgpack_pack_map(&pk, 3);
                s_str(&pk, "id");
                msgpack_object id = {.type = MSGPACK_OBJECT_NIL};
                if (msgpack_unpack_next(&req, zmq_msg_data(&parts[2]), zmq_msg_size(&parts[2]),
                                        &off) == MSGPACK_UNPACK_SUCCESS &&
                    req.data.type == MSGPACK_OBJECT_MAP) {
                    for (uint32_t i = 0; i < req.data.via.map.size; i++) {
                        const msgpack_object_kv *kv = &req.data.via.map.ptr[i];
                        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 2 &&
                            memcmp(kv->key.via.str.ptr, "id", 2) == 0)
                            id = kv->val;
                    }
                }
                msgpack_pack_object(&pk, id);
                s_str(&pk, "ok");
                msgpack_pack_true(&pk);
                s_str(&pk, "result");
                msgpack_sbuffer_write(&sbuf, s_snapshot_result.data, s_snapshot_result.size);
                zmq_send(p->router, zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), ZMQ_SNDMORE);
                zmq_send(p->router, "", 0, ZMQ_SNDMORE);
                zmq_send(p->router, sbuf.data, sbuf.size, 0);
                msgpack_sbuffer_destroy(&sbuf);
                msgpack_unpacked_destroy(&req);
            }
            for (int i = 0; i < count; i++)
                zmq_msg_close(&parts[i]);
        }
        int64_t now = s_now_ns();
        if (now >= next_heartbeat) {
            s_publish(p->pub, false);
            next_heartbeat = now + 200000000; /* 200 ms */
        }
        /* The snapshot is fixed at version 0: changes start once the replica holds it. */
        if (!atomic_load(&s_changes_on))
            next_change = now;
        else if (change_every > 0 && now >= next_change) {
            s_publish(p->pub, true);
            next_change += change_every;
        }
    }
    return NULL;
}

typedef struct {
    pmclient_replica_t *replica;
    char (*mix)[40];
    long calls;
    int64_t *latency;
    double rps;
    long failures;
    pthread_barrier_t *barrier;
} reader_t;

static void *s_reader(void *arg)
{
    reader_t *r = arg;
    pmclient_replica_target_t *target = malloc(sizeof *target);
    pmclient_replica_error_t err;
    if (!target)
        return NULL;
    pthread_barrier_wait(r->barrier);
    for (long i = 0; i < r->calls; i++) {
        int64_t t0 = s_now_ns();
        int rc = pmclient_replica_resolve(r->replica, r->mix[i & (MIX - 1)], target, &err);
        r->latency[i] = s_now_ns() - t0;
        r->failures += rc != 0;
    }
    int64_t start = s_now_ns();
    for (long i = 0; i < r->calls; i++)
        r->failures +=
            pmclient_replica_resolve(r->replica, r->mix[(i * 7) & (MIX - 1)], target, &err) != 0;
    r->rps = (double)r->calls / ((double)(s_now_ns() - start) / 1e9);
    free(target);
    return NULL;
}

static int s_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static long s_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            kib = strtol(line + 6, NULL, 10);
    }
    if (f)
        fclose(f);
    return kib;
}

static int s_usage(void)
{
    fputs("usage: bench_replica [--models N] [--providers P] [--calls C] [--threads T,T,...]\n"
          "                     [--changes-per-s R] [--quick]\n",
          stderr);
    return 2;
}

static int s_parse(int argc, char **argv)
{
    s_args = (args_t){.models = 100000, .providers = 100, .calls = 2000000, .runs = 2};
    s_args.threads[0] = 1;
    s_args.threads[1] = 2;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--quick") == 0) {
            s_args.models = 2000;
            s_args.providers = 10;
            s_args.calls = 20000;
            continue;
        }
        if (i + 1 >= argc)
            return -1;
        const char *value = argv[++i];
        char *end;
        errno = 0;
        long n = strtol(value, &end, 10);
        if (strcmp(opt, "--threads") == 0) {
            s_args.runs = 0;
            for (const char *v = value; *v && s_args.runs < MAX_THREADS;) {
                long t = strtol(v, &end, 10);
                if (end == v || t < 1 || t > 64)
                    return -1;
                s_args.threads[s_args.runs++] = (int)t;
                v = *end == ',' ? end + 1 : end;
                if (*end && *end != ',')
                    return -1;
            }
            continue;
        }
        if (errno || *end || n < 0)
            return -1;
        if (strcmp(opt, "--models") == 0 && n >= 1)
            s_args.models = n;
        else if (strcmp(opt, "--providers") == 0 && n >= 1)
            s_args.providers = n;
        else if (strcmp(opt, "--calls") == 0 && n >= 1)
            s_args.calls = n;
        else if (strcmp(opt, "--changes-per-s") == 0 && n <= 100000)
            s_args.changes_per_s = n;
        else
            return -1;
    }
    return s_args.providers <= s_args.models ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (s_parse(argc, argv) != 0)
        return s_usage();
    s_build_snapshot();
    void *ctx = zmq_ctx_new();
    primary_t primary = {zmq_socket(ctx, ZMQ_ROUTER), zmq_socket(ctx, ZMQ_PUB)};
    char router_ep[256], pub_ep[256];
    size_t len = sizeof router_ep;
    int linger = 0;
    if (!primary.router || !primary.pub ||
        zmq_setsockopt(primary.router, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(primary.pub, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(primary.router, "tcp://127.0.0.1:*") != 0 ||
        zmq_bind(primary.pub, "tcp://127.0.0.1:*") != 0 ||
        zmq_getsockopt(primary.router, ZMQ_LAST_ENDPOINT, router_ep, &len) != 0) {
        fprintf(stderr, "bench_replica: cannot set up the primary: %s\n", zmq_strerror(errno));
        return 1;
    }
    len = sizeof pub_ep;
    if (zmq_getsockopt(primary.pub, ZMQ_LAST_ENDPOINT, pub_ep, &len) != 0)
        return 1;
    pthread_t primary_thread;
    if (pthread_create(&primary_thread, NULL, s_primary, &primary) != 0)
        return 1;

    int64_t t0 = s_now_ns();
    pmclient_replica_options_t options = {.timeout_ms = 30000, .heartbeat_ms = 200};
    pmclient_replica_t *replica = pmclient_replica_new(router_ep, pub_ep, &options);
    if (!replica || pmclient_replica_wait(replica, 0, 60000) != 0) {
        fprintf(stderr, "bench_replica: the replica did not sync\n");
        return 1;
    }
    double sync_ms = (double)(s_now_ns() - t0) / 1e6;
    atomic_store(&s_changes_on, true);

    /* The mix: half "pNNN/model-M", half bare "model-M", over every provider's models. */
    char(*mix)[40] = malloc(sizeof(*mix) * MIX);
    if (!mix)
        return 1;
    long per = s_args.models / s_args.providers;
    uint64_t rng = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < MIX; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        long m = (long)(rng % (uint64_t)(per * s_args.providers));
        if (i & 1)
            snprintf(mix[i], sizeof mix[i], "p%03ld/model-%06ld", m / per, m);
        else
            snprintf(mix[i], sizeof mix[i], "model-%06ld", m);
    }

    printf("{\"models\": %ld, \"providers\": %ld, \"sync_ms\": %.1f, \"changes_per_s\": %ld, "
           "\"runs\": [",
           per * s_args.providers, s_args.providers, sync_ms, s_args.changes_per_s);
    long failures = 0;
    for (int run = 0; run < s_args.runs; run++) {
        int n = s_args.threads[run];
        reader_t readers[64];
        pthread_t threads[64];
        pthread_barrier_t barrier;
        pthread_barrier_init(&barrier, NULL, (unsigned)n);
        for (int t = 0; t < n; t++) {
            readers[t] = (reader_t){.replica = replica,
                                    .mix = mix,
                                    .calls = s_args.calls,
                                    .latency = malloc(sizeof(int64_t) * (size_t)s_args.calls),
                                    .barrier = &barrier};
            if (!readers[t].latency ||
                pthread_create(&threads[t], NULL, s_reader, &readers[t]) != 0)
                return 1;
        }
        double rps = 0;
        int64_t *all = malloc(sizeof(int64_t) * (size_t)s_args.calls * (size_t)n);
        if (!all)
            return 1;
        for (int t = 0; t < n; t++) {
            pthread_join(threads[t], NULL);
            rps += readers[t].rps / n;
            failures += readers[t].failures;
            memcpy(all + (size_t)t * (size_t)s_args.calls, readers[t].latency,
                   sizeof(int64_t) * (size_t)s_args.calls);
            free(readers[t].latency);
        }
        pthread_barrier_destroy(&barrier);
        size_t total = (size_t)s_args.calls * (size_t)n;
        qsort(all, total, sizeof *all, s_cmp);
        printf("%s{\"threads\": %d, \"calls_per_thread\": %ld, \"p50_ns\": %lld, "
               "\"p99_ns\": %lld, \"rps_per_thread\": %.0f}",
               run ? ", " : "", n, s_args.calls, (long long)all[total / 2],
               (long long)all[total * 99 / 100], rps);
        free(all);
    }
    pmclient_replica_stats_t stats;
    pmclient_replica_stats(replica, &stats);
    printf("], \"changes_applied\": %llu, \"resnapshots\": %llu, \"failures\": %ld, "
           "\"rss_kib\": %ld}\n",
           (unsigned long long)stats.events_applied, (unsigned long long)stats.resnapshots,
           failures, s_rss_kib());
    atomic_store(&s_stop, true);
    pthread_join(primary_thread, NULL);
    pmclient_replica_destroy(&replica);
    zmq_close(primary.router);
    zmq_close(primary.pub);
    zmq_ctx_term(ctx);
    msgpack_sbuffer_destroy(&s_snapshot_result);
    free(mix);
    return failures ? 1 : 0;
}
