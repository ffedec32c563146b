/*
 * test_pmclient_replica_live: libpmclient's replica (pmclient_replica.h) against the REAL
 * daemon, through the public API only (pmclient.h, pmclient_replica.h). test_pmclient_replica
 * checks the same replica against an in-process fake primary; this suite checks what only the
 * real daemon can show (issue 14, "Tests"):
 *   1. convergence under loss: 4 writer threads make 10,000 random writes (set_provider with
 *      random model lists, set_short_name, remove_provider) on a small pool of keys while the
 *      replica's change callback stalls the replica's thread long enough for the SUB socket,
 *      the TCP buffers and the daemon's PUB queue (ZeroMQ's default high-water mark, 1,000
 *      messages each) to overflow, so that events are really dropped; at the end the replica
 *      equals the daemon exactly at the same state_version, and its counters show the gaps and
 *      the re-snapshots that repaired them;
 *   2. SIGKILL of the primary during writes: the replica keeps answering from its last state
 *      and turns stale after 3 x heartbeat_ms; the daemon restarted on the same data dir (a new
 *      epoch) is followed by the replica on its own; every write acknowledged before the kill
 *      is there, and nothing the daemon did not persist ever showed in the replica;
 *   3. a replica started before its primary answers "unavailable" until the primary comes up,
 *      then converges.
 * Each test starts its own daemon (tests/daemon_fixture) with --heartbeat-ms 100, its data dir
 * in /dev/shm when there is one (the writes then run at the daemon's speed, not at the disk's
 * fsync's: about 4 times faster on the CI machine). Waits are bounded with generous
 * deadlines; no sleep stands for a timing assertion. The writes are random but reproducible:
 * every thread's generator has a fixed seed.
 */
#define _XOPEN_SOURCE 700 /* POSIX: kill(), strdup(), nanosleep() */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "daemon_fixture.h"
#include "pmclient.h"
#include "pmclient_replica.h"

#include <limits.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HEARTBEAT_MS 100
#define HEARTBEAT_ARG "100"
#define WAIT_MS 30000          /* bounded waits: only a broken replica or daemon gets near */
#define CLIENT_TIMEOUT_MS 8000 /* generous under load: a timed-out write is ambiguous */
#define WRITERS 4
#define KEY_POOL 12 /* keys are reused: most writes replace or remove an existing provider */
#define MODEL_POOL 160
#define MAX_MODELS 128 /* per provider: events of several KiB, as configs with many models make */
#define MAX_INVALID 3
#define TOTAL_WRITES 10000
/* The loss test's stall: at its PAUSE_AT_CHANGE-th change the callback holds the replica's
 * thread (nothing is read from its SUB socket) until the writers have completed
 * PAUSE_UNTIL_WRITES writes (at most PAUSE_MAX_MS). Events then pile up in the SUB socket's
 * queue (ZMQ_RCVHWM, 1,000 messages by default), the kernel's TCP buffers and the daemon's
 * queue for this subscriber (ZMQ_SNDHWM, 1,000), and the PUB socket drops what does not fit.
 * Measured here, that held 2,200 to 4,000 events of this size (about 6,800 of events a
 * quarter as large: the TCP buffers hold bytes, the queues messages). So short stalls (300 ms
 * every 2,000 changes) lose nothing at the daemon's 300 to 1,500 writes per second; this stall
 * spans most of the run (a backlog of about 7,000 events, of which the runs lost about 5,000)
 * and counts writes, not time, to do so at any machine's speed. The writes after it make the
 * replica see the gap. */
#define PAUSE_AT_CHANGE 300
#define PAUSE_UNTIL_WRITES 8500
#define PAUSE_MAX_MS 60000
/* The kill test: the daemon is killed once the writers have this many acknowledged writes. */
#define KILL_AFTER_WRITES 300
#define KILL_TEST_KEYS (WRITERS * 3) /* each writer owns 3 keys: one writer per key */
#define MAX_OPS_PER_KEY 4096

/* An API key of the test family (tests/python/pmsecrets.py's TAIL, so that `make test`'s
 * check_secrets would catch it in any output): never printed. */
#define TEST_KEY_FORMAT "sk-test-live%d-Zq8/Wt+3Lm=9Xv"

typedef struct {
    char dir[PATH_MAX];
    daemon_fixture_t daemon; /* the running test's daemon; killed by the teardown */
} s_suite_t;

/* ------------------------------------------------------------------------ small helpers */

static uint64_t s_next_random(uint64_t *state)
{
    /* splitmix64: good enough spread for picking ops, keys and models, and reproducible */
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static size_t s_below(uint64_t *state, size_t n)
{
    return (size_t)(s_next_random(state) % n);
}

static double s_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void s_key_name(char *out, size_t size, size_t index)
{
    snprintf(out, size, "live-%02zu", index);
}

static void s_model_name(char *out, size_t size, size_t index)
{
    snprintf(out, size, "vendor-%02zu/family-%02zu/model-%03zu-instruct-%zuk-context-v%zu",
             index % 7, index % 11, index, (index % 4 + 1) * 32, index % 3 + 1);
}

static pmclient_t *s_client(const daemon_fixture_t *daemon)
{
    pmclient_t *client = pmclient_new(daemon->endpoint);
    if (client && pmclient_set_timeout(client, CLIENT_TIMEOUT_MS) != 0)
        pmclient_destroy(&client);
    return client;
}

static pm_health_t *s_health(pmclient_t *client)
{
    pm_health_t *health = NULL;
    if (pmclient_health(client, &health) != 0)
        fail_msg("health: %s: %s", pmclient_error_code(client), pmclient_error_message(client));
    return health;
}

static int64_t s_state_version(pmclient_t *client)
{
    pm_health_t *health = s_health(client);
    int64_t version = health->state_version;
    pm_health_free(&health);
    return version;
}

/* The daemon's epoch: pm_health_t does not carry it, so the raw reply is read. */
static void s_primary_epoch(pmclient_t *client, char *out, size_t size)
{
    void *reply = NULL;
    size_t reply_size = 0;
    assert_int_equal(pmclient_call_raw(client, "health", NULL, 0, &reply, &reply_size), 0);
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    size_t offset = 0;
    assert_int_equal(msgpack_unpack_next(&unpacked, reply, reply_size, &offset),
                     MSGPACK_UNPACK_SUCCESS);
    out[0] = '\0';
    const msgpack_object *root = &unpacked.data;
    assert_int_equal(root->type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < root->via.map.size; i++) {
        const msgpack_object *k = &root->via.map.ptr[i].key;
        const msgpack_object *v = &root->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size != 6 ||
            memcmp(k->via.str.ptr, "result", 6) != 0 || v->type != MSGPACK_OBJECT_MAP)
            continue;
        for (uint32_t j = 0; j < v->via.map.size; j++) {
            const msgpack_object *rk = &v->via.map.ptr[j].key;
            const msgpack_object *rv = &v->via.map.ptr[j].val;
            if (rk->type == MSGPACK_OBJECT_STR && rk->via.str.size == 5 &&
                memcmp(rk->via.str.ptr, "epoch", 5) == 0 && rv->type == MSGPACK_OBJECT_STR)
                snprintf(out, size, "%.*s", (int)rv->via.str.size, rv->via.str.ptr);
        }
    }
    msgpack_unpacked_destroy(&unpacked);
    free(reply);
    assert_true(strlen(out) == 16);
}

static pmclient_replica_stats_t s_stats(pmclient_replica_t *replica)
{
    pmclient_replica_stats_t stats;
    assert_int_equal(pmclient_replica_stats(replica, &stats), 0);
    return stats;
}

static void s_print_stats(const char *when, const pmclient_replica_stats_t *s)
{
    print_message("%s: version %lld (primary %lld), epoch %s, stale %d, snapshots %llu, "
                  "resnapshots %llu (gaps %llu, epoch changes %llu, backwards %llu, heartbeats "
                  "ahead %llu, silences %llu), snapshot failures %llu, events applied %llu, "
                  "heartbeats %llu\n",
                  when, (long long)s->state_version, (long long)s->primary_version, s->epoch,
                  (int)s->stale, (unsigned long long)s->snapshots,
                  (unsigned long long)s->resnapshots, (unsigned long long)s->gaps,
                  (unsigned long long)s->epoch_changes, (unsigned long long)s->backwards,
                  (unsigned long long)s->heartbeats_ahead, (unsigned long long)s->silences,
                  (unsigned long long)s->snapshot_failures, (unsigned long long)s->events_applied,
                  (unsigned long long)s->heartbeats);
}

static bool s_same_string(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Every ProviderConfig field equal; the first difference fails the test, naming it. */
static void s_assert_same_provider(const pm_provider_t *want, const pm_provider_t *got)
{
    assert_non_null(want);
    assert_non_null(got);
    assert_string_equal(got->provider, want->provider);
    assert_string_equal(got->name, want->name);
    assert_string_equal(got->base_api_url, want->base_api_url);
    if (!s_same_string(want->api_key, got->api_key))
        fail_msg("%s: api_key differs (%s vs %s)", want->provider, want->api_key ? "set" : "nil",
                 got->api_key ? "set" : "nil");
    assert_int_equal(got->model_count, want->model_count);
    for (size_t i = 0; i < want->model_count; i++) {
        assert_string_equal(got->model_long[i], want->model_long[i]);
        assert_string_equal(got->model_short[i], want->model_short[i]);
    }
    assert_int_equal(got->invalid_count, want->invalid_count);
    for (size_t i = 0; i < want->invalid_count; i++)
        assert_string_equal(got->invalid_models[i], want->invalid_models[i]);
}

/* One resolution asked of both: the same outcome, the same error word for word, the same
 * provider and long name. */
static void s_assert_same_resolution(pmclient_t *client, pmclient_replica_t *replica,
                                     const char *model_string)
{
    pm_provider_t *wire_provider = NULL, *local_provider = NULL;
    char *wire_long = NULL, *local_long = NULL;
    pmclient_replica_error_t err;
    int wire_rc = pmclient_resolve(client, model_string, &wire_provider, &wire_long);
    int local_rc = pmclient_replica_get_api_for_model_string(replica, model_string, &local_provider,
                                                             &local_long, &err);
    if (wire_rc != local_rc)
        fail_msg("'%s': the daemon says %d (%s), the replica %d (%s)", model_string, wire_rc,
                 pmclient_error_message(client), local_rc, local_rc ? err.message : "ok");
    if (wire_rc == 0) {
        assert_string_equal(local_long, wire_long);
        s_assert_same_provider(wire_provider, local_provider);
    } else {
        assert_string_equal(err.code, pmclient_error_code(client));
        assert_string_equal(err.message, pmclient_error_message(client));
    }
    pm_provider_free(&wire_provider);
    pm_provider_free(&local_provider);
    free(wire_long);
    free(local_long);
}

/* ------------------------------------------------------- the daemon's `snapshot`, raw */

/* The value of key in a msgpack map, or NULL. */
static const msgpack_object *s_map_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t len = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == len &&
            memcmp(k->via.str.ptr, key, len) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* obj is the string text (NULL text: obj is nil). */
static void s_assert_msgpack_str(const msgpack_object *obj, const char *text)
{
    assert_non_null(obj);
    if (!text) {
        assert_int_equal(obj->type, MSGPACK_OBJECT_NIL);
        return;
    }
    assert_int_equal(obj->type, MSGPACK_OBJECT_STR);
    assert_int_equal(obj->via.str.size, strlen(text));
    assert_memory_equal(obj->via.str.ptr, text, obj->via.str.size);
}

/* The daemon's `snapshot` (through pmclient_call_raw: pmclient has no typed call for it) is
 * at version, and every ProviderConfig in it, in order, is the replica's. The one answer
 * carries both the version and the providers, taken atomically by the daemon. */
static void s_assert_replica_equals_snapshot(pmclient_t *client, pmclient_replica_t *replica,
                                             int64_t version, const char *epoch)
{
    void *reply = NULL;
    size_t reply_size = 0;
    assert_int_equal(pmclient_call_raw(client, "snapshot", NULL, 0, &reply, &reply_size), 0);
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    size_t offset = 0;
    assert_int_equal(msgpack_unpack_next(&unpacked, reply, reply_size, &offset),
                     MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *result = s_map_get(&unpacked.data, "result");
    const msgpack_object *at = s_map_get(result, "state_version");
    assert_non_null(at);
    assert_int_equal(at->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal((int64_t)at->via.u64, version);
    s_assert_msgpack_str(s_map_get(result, "epoch"), epoch);
    const msgpack_object *providers = s_map_get(result, "providers");
    assert_non_null(providers);
    assert_int_equal(providers->type, MSGPACK_OBJECT_ARRAY);

    pm_strings_t *keys = NULL;
    pmclient_replica_error_t err;
    assert_int_equal(pmclient_replica_keys(replica, &keys, &err), 0);
    assert_int_equal(keys->count, providers->via.array.size);
    for (uint32_t i = 0; i < providers->via.array.size; i++) {
        const msgpack_object *config = &providers->via.array.ptr[i];
        pm_provider_t *p = NULL;
        assert_int_equal(pmclient_replica_get(replica, keys->items[i], &p, &err), 0);
        assert_non_null(p);
        s_assert_msgpack_str(s_map_get(config, "provider"), p->provider);
        s_assert_msgpack_str(s_map_get(config, "name"), p->name);
        s_assert_msgpack_str(s_map_get(config, "base_api_url"), p->base_api_url);
        s_assert_msgpack_str(s_map_get(config, "api_key"), p->api_key);
        const msgpack_object *models = s_map_get(config, "valid_models");
        assert_non_null(models);
        assert_int_equal(models->type, MSGPACK_OBJECT_MAP);
        assert_int_equal(models->via.map.size, p->model_count);
        for (uint32_t m = 0; m < models->via.map.size; m++) {
            s_assert_msgpack_str(&models->via.map.ptr[m].key, p->model_long[m]);
            s_assert_msgpack_str(&models->via.map.ptr[m].val, p->model_short[m]);
        }
        const msgpack_object *invalid = s_map_get(config, "invalid_models");
        assert_non_null(invalid);
        assert_int_equal(invalid->type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(invalid->via.array.size, p->invalid_count);
        for (uint32_t m = 0; m < invalid->via.array.size; m++)
            s_assert_msgpack_str(&invalid->via.array.ptr[m], p->invalid_models[m]);
        pm_provider_free(&p);
    }
    pm_strings_free(&keys);
    msgpack_unpacked_destroy(&unpacked);
    free(reply);
}

/* The replica holds exactly the daemon's state: the daemon's version is read before and after
 * its items (nothing else writes meanwhile, and it must not move), the replica is at that
 * version and epoch, and keys, every ProviderConfig, the counts and a set of resolutions
 * (each model long and short, bare and prefixed, and unknown ones) are equal; so is the
 * daemon's own `snapshot` at that version. */
static void s_assert_replica_equals_primary(pmclient_t *client, pmclient_replica_t *replica)
{
    char epoch[64];
    s_primary_epoch(client, epoch, sizeof epoch);
    pm_health_t *before = s_health(client);
    int64_t version = before->state_version;

    /* The replica follows on its own: a missed last event is noticed by the next heartbeat. */
    pmclient_replica_stats_t stats;
    double deadline = s_now_s() + WAIT_MS / 1000.0;
    for (;;) {
        /* wait() counts in the replica's current epoch: a state of the previous run may be
         * at a higher version than the new run, hence the epoch check and the short sleep */
        bool reached = pmclient_replica_wait(replica, version, 100) == 0;
        stats = s_stats(replica);
        if (reached && stats.synced && strcmp(stats.epoch, epoch) == 0 &&
            stats.state_version >= version)
            break;
        if (s_now_s() > deadline) {
            s_print_stats("replica", &stats);
            fail_msg("the replica did not reach version %lld of epoch %s", (long long)version,
                     epoch);
        }
        if (reached)
            daemon_fixture_sleep_ms(10);
    }
    assert_int_equal(stats.state_version, version);

    pm_strings_t *keys = NULL, *local_keys = NULL;
    pm_provider_list_t *items = NULL;
    pmclient_replica_error_t err;
    assert_int_equal(pmclient_keys(client, &keys), 0);
    assert_int_equal(pmclient_items(client, &items), 0);
    assert_int_equal(pmclient_replica_keys(replica, &local_keys, &err), 0);
    assert_int_equal(local_keys->count, keys->count);
    for (size_t i = 0; i < keys->count; i++)
        assert_string_equal(local_keys->items[i], keys->items[i]);
    assert_int_equal(items->count, keys->count);
    for (size_t i = 0; i < items->count; i++) {
        pm_provider_t *local = NULL;
        assert_string_equal(items->providers[i]->provider, keys->items[i]);
        assert_int_equal(pmclient_replica_get(replica, keys->items[i], &local, &err), 0);
        s_assert_same_provider(items->providers[i], local);
        pm_provider_free(&local);
    }

    for (size_t i = 0; i < items->count; i++) {
        const pm_provider_t *p = items->providers[i];
        char text[2200];
        for (size_t m = 0; m < p->model_count; m++) {
            snprintf(text, sizeof text, "%s/%s", p->provider, p->model_long[m]);
            s_assert_same_resolution(client, replica, text);
            snprintf(text, sizeof text, "%s/%s", p->provider, p->model_short[m]);
            s_assert_same_resolution(client, replica, text);
            s_assert_same_resolution(client, replica, p->model_long[m]);
        }
        snprintf(text, sizeof text, "%s/no-such-model", p->provider);
        s_assert_same_resolution(client, replica, text);
    }
    for (size_t m = 0; m < MODEL_POOL; m += 5) {
        char name[128];
        s_model_name(name, sizeof name, m);
        s_assert_same_resolution(client, replica, name);
    }
    s_assert_same_resolution(client, replica, "nobody/none");

    s_assert_replica_equals_snapshot(client, replica, version, epoch);

    pm_health_t *after = s_health(client);
    assert_int_equal(after->state_version, version); /* the comparison saw one state */
    stats = s_stats(replica);
    assert_int_equal(stats.state_version, version);
    assert_string_equal(stats.epoch, epoch);
    assert_int_equal((int64_t)stats.providers, after->providers);
    assert_int_equal((int64_t)stats.models, after->models);
    pm_health_free(&before);
    pm_health_free(&after);
    pm_strings_free(&keys);
    pm_strings_free(&local_keys);
    pm_provider_list_free(&items);
}

static pmclient_replica_t *s_replica(const daemon_fixture_t *daemon,
                                     pmclient_replica_change_fn *on_change, void *arg)
{
    pmclient_replica_options_t options = {
        .timeout_ms = 2000,
        .heartbeat_ms = HEARTBEAT_MS,
        .backoff_max_ms = 300,
        .on_change = on_change,
        .on_change_arg = arg,
    };
    return pmclient_replica_new(daemon->endpoint, daemon->events_endpoint, &options);
}

/* ------------------------------------------------------------------- what writers send */

/* The storage of one set_provider's arguments. */
typedef struct {
    char key[32];
    char name[64];
    char url[96];
    char api_key[64];
    char longs[MAX_MODELS][128];
    char shorts[MAX_MODELS][64];
    const char *long_ptr[MAX_MODELS];
    const char *short_ptr[MAX_MODELS];
    char invalid[MAX_INVALID][64];
    const char *invalid_ptr[MAX_INVALID];
    pm_provider_spec_t spec;
} s_spec_t;

/* Fills spec with a whole ProviderConfig drawn from random: distinct models from the pool in
 * random order, some without a short form (NULL: the long name), a key or nil, 0 to
 * MAX_INVALID invalid models. tag goes into the name, so that a config says which write made
 * it. */
static void s_random_spec(s_spec_t *s, uint64_t *random, size_t key_index, const char *tag)
{
    memset(s, 0, sizeof *s);
    s_key_name(s->key, sizeof s->key, key_index);
    snprintf(s->name, sizeof s->name, "Live %s", tag);
    snprintf(s->url, sizeof s->url, "http://127.0.0.1:9/%s/v1", tag);
    bool has_key = s_below(random, 3) != 0;
    if (has_key)
        snprintf(s->api_key, sizeof s->api_key, TEST_KEY_FORMAT, (int)key_index);
    size_t count = 1 + s_below(random, MAX_MODELS);
    bool used[MODEL_POOL] = {false};
    for (size_t i = 0; i < count; i++) {
        size_t m = s_below(random, MODEL_POOL);
        while (used[m])
            m = (m + 1) % MODEL_POOL;
        used[m] = true;
        s_model_name(s->longs[i], sizeof s->longs[i], m);
        s->long_ptr[i] = s->longs[i];
        if (s_below(random, 3) == 0) {
            s->short_ptr[i] = NULL;
        } else {
            snprintf(s->shorts[i], sizeof s->shorts[i], "m%zu-%s", m, tag);
            s->short_ptr[i] = s->shorts[i];
        }
    }
    size_t invalid = s_below(random, MAX_INVALID + 1);
    for (size_t i = 0; i < invalid; i++) {
        snprintf(s->invalid[i], sizeof s->invalid[i], "retired-%zu-%zu", key_index, i);
        s->invalid_ptr[i] = s->invalid[i];
    }
    s->spec = (pm_provider_spec_t){
        .provider = s->key,
        .name = s->name,
        .base_api_url = s->url,
        .has_api_key = true,
        .api_key = has_key ? s->api_key : NULL,
        .has_valid_models = true,
        .model_count = count,
        .model_long = s->long_ptr,
        .model_short = s->short_ptr,
        .has_invalid_models = true,
        .invalid_count = invalid,
        .invalid_models = s->invalid_ptr,
    };
}

/* The ProviderConfig a set_provider of s leaves (every field is given, so it is known). */
static void s_assert_provider_is_spec(const pm_provider_t *p, const s_spec_t *s)
{
    assert_non_null(p);
    assert_string_equal(p->provider, s->key);
    assert_string_equal(p->name, s->name);
    assert_string_equal(p->base_api_url, s->url);
    assert_true(s_same_string(p->api_key, s->spec.api_key));
    assert_int_equal(p->model_count, s->spec.model_count);
    for (size_t i = 0; i < s->spec.model_count; i++) {
        assert_string_equal(p->model_long[i], s->longs[i]);
        assert_string_equal(p->model_short[i], s->short_ptr[i] ? s->shorts[i] : s->longs[i]);
    }
    assert_int_equal(p->invalid_count, s->spec.invalid_count);
    for (size_t i = 0; i < s->spec.invalid_count; i++)
        assert_string_equal(p->invalid_models[i], s->invalid[i]);
}

/* ------------------------------------------------------ 1. convergence under event loss */

typedef struct {
    const daemon_fixture_t *daemon;
    int index;
    size_t writes; /* this thread's share */
    atomic_size_t *completed;
    /* Outcomes, read by the main thread after the join. */
    size_t ok;
    size_t refused; /* an answer saying no that the random ops make normal */
    size_t failed;  /* anything else: fails the test */
    char first_failure[256];
} s_loss_writer_t;

typedef struct {
    atomic_size_t completed; /* writes answered, all writers */
    atomic_bool writers_done;
    size_t changes; /* seen by the callback (the replica's thread only) */
    size_t pauses;
    double paused_s;
} s_loss_t;

static void s_note_failure(s_loss_writer_t *w, pmclient_t *client, const char *op)
{
    const char *code = pmclient_error_code(client);
    /* set_short_name on a provider or model another write just removed: the service's no */
    if (strcmp(op, "set_short_name") == 0 &&
        (strcmp(code, "not_found") == 0 || strcmp(code, "invalid_model") == 0)) {
        w->refused++;
        return;
    }
    if (w->failed++ == 0)
        snprintf(w->first_failure, sizeof w->first_failure, "%s: %s: %s", op, code,
                 pmclient_error_message(client));
}

static void *s_loss_writer(void *arg)
{
    s_loss_writer_t *w = arg;
    uint64_t random = 0x5eed0000u + (uint64_t)w->index;
    pmclient_t *client = s_client(w->daemon);
    s_spec_t *spec = malloc(sizeof *spec);
    if (!client || !spec) {
        w->failed = w->writes;
        snprintf(w->first_failure, sizeof w->first_failure, "no client");
        pmclient_destroy(&client);
        free(spec);
        return NULL;
    }
    for (size_t n = 0; n < w->writes; n++) {
        size_t key = s_below(&random, KEY_POOL);
        size_t op = s_below(&random, 100);
        char tag[48];
        snprintf(tag, sizeof tag, "w%d-%zu", w->index, n);
        if (op < 55) {
            s_random_spec(spec, &random, key, tag);
            if (pmclient_set_provider(client, &spec->spec, NULL) == 0)
                w->ok++;
            else
                s_note_failure(w, client, "set_provider");
        } else if (op < 70) {
            /* an update of the name and URL only: the models are kept */
            s_random_spec(spec, &random, key, tag);
            pm_provider_spec_t partial = {
                .provider = spec->key, .name = spec->name, .base_api_url = spec->url};
            if (pmclient_set_provider(client, &partial, NULL) == 0)
                w->ok++;
            else
                s_note_failure(w, client, "set_provider");
        } else if (op < 88) {
            char long_name[128], short_name[64];
            s_model_name(long_name, sizeof long_name, s_below(&random, MODEL_POOL));
            snprintf(short_name, sizeof short_name, "short-%s", tag);
            char name[32];
            s_key_name(name, sizeof name, key);
            if (pmclient_set_short_name(client, name, long_name, short_name, NULL) == 0)
                w->ok++;
            else
                s_note_failure(w, client, "set_short_name");
        } else {
            char name[32];
            bool removed = false;
            s_key_name(name, sizeof name, key);
            if (pmclient_remove_provider(client, name, &removed) == 0)
                w->ok++;
            else
                s_note_failure(w, client, "remove_provider");
        }
        atomic_fetch_add(w->completed, 1);
    }
    free(spec);
    pmclient_destroy(&client);
    return NULL;
}

/* The replica's change callback: at the PAUSE_AT_CHANGE-th change it holds the replica's
 * thread until the writers have made PAUSE_UNTIL_WRITES writes. */
static void s_loss_on_change(const pmclient_replica_change_t *change, void *arg)
{
    s_loss_t *loss = arg;
    if (change->full)
        return;
    if (++loss->changes != PAUSE_AT_CHANGE)
        return;
    size_t start = atomic_load(&loss->completed);
    double began = s_now_s();
    while (!atomic_load(&loss->writers_done) &&
           atomic_load(&loss->completed) < PAUSE_UNTIL_WRITES &&
           s_now_s() - began < PAUSE_MAX_MS / 1000.0)
        daemon_fixture_sleep_ms(10);
    loss->pauses++;
    loss->paused_s += s_now_s() - began;
    print_message("stalled at version %lld for %.2f s, while %zu writes were made\n",
                  (long long)change->state_version, loss->paused_s,
                  atomic_load(&loss->completed) - start);
}

static void test_convergence_under_event_loss(void **state)
{
    s_suite_t *suite = *state;
    const char *extra[] = {"--heartbeat-ms", HEARTBEAT_ARG, NULL};
    assert_int_equal(daemon_fixture_start(&suite->daemon, suite->dir, "loss", extra), 0);
    pmclient_t *client = s_client(&suite->daemon);
    assert_non_null(client);

    s_loss_t *loss = calloc(1, sizeof *loss);
    assert_non_null(loss);
    atomic_init(&loss->completed, 0);
    atomic_init(&loss->writers_done, false);
    pmclient_replica_t *replica = s_replica(&suite->daemon, s_loss_on_change, loss);
    assert_non_null(replica);
    assert_int_equal(pmclient_replica_wait(replica, 0, WAIT_MS), 0);

    s_loss_writer_t writers[WRITERS];
    pthread_t threads[WRITERS];
    double began = s_now_s();
    for (int i = 0; i < WRITERS; i++) {
        writers[i] = (s_loss_writer_t){.daemon = &suite->daemon,
                                       .index = i,
                                       .writes = TOTAL_WRITES / WRITERS,
                                       .completed = &loss->completed};
        assert_int_equal(pthread_create(&threads[i], NULL, s_loss_writer, &writers[i]), 0);
    }
    size_t ok = 0, refused = 0;
    for (int i = 0; i < WRITERS; i++) {
        assert_int_equal(pthread_join(threads[i], NULL), 0);
        ok += writers[i].ok;
        refused += writers[i].refused;
    }
    atomic_store(&loss->writers_done, true);
    double elapsed = s_now_s() - began;
    print_message("%d writes in %.2f s (%.0f/s): %zu ok, %zu refused as expected\n", TOTAL_WRITES,
                  elapsed, TOTAL_WRITES / elapsed, ok, refused);
    for (int i = 0; i < WRITERS; i++) {
        if (writers[i].failed)
            fail_msg("writer %d: %zu failed writes, the first: %s", i, writers[i].failed,
                     writers[i].first_failure);
    }
    assert_int_equal(ok + refused, TOTAL_WRITES);

    s_assert_replica_equals_primary(client, replica);
    pmclient_replica_stats_t stats = s_stats(replica);
    s_print_stats("after the writes", &stats);
    print_message("the callback saw %zu changes and stalled the replica %zu times (%.2f s)\n",
                  loss->changes, loss->pauses, loss->paused_s);
    /* The loss really happened and was repaired by re-snapshots. */
    assert_true(stats.gaps > 0);
    assert_true(stats.resnapshots > 0);
    assert_true(stats.snapshots >= 2);
    assert_true(stats.events_applied < (uint64_t)stats.state_version);

    pmclient_replica_destroy(&replica);
    free(loss);
    pmclient_destroy(&client);
    assert_int_equal(daemon_fixture_stop(&suite->daemon), 0);
}

/* ------------------------------------------------------- 2. SIGKILL of the primary */

/* One key's writes, by one writer only (so they are ordered): op i is a set_provider of a
 * spec drawn from the key's own generator, or a remove. `sent` ops were sent; the first
 * `acked` of them got an ok reply. A sent op without reply (the kill) may or may not have been
 * persisted. */
typedef struct {
    size_t index;
    size_t sent;
    size_t acked;
    bool is_remove[MAX_OPS_PER_KEY];
} s_key_log_t;

typedef struct {
    const daemon_fixture_t *daemon;
    int index;
    s_key_log_t *logs; /* all of them; this writer owns those with index % WRITERS == index */
    atomic_size_t *acked;
    atomic_bool *stop;
    char first_failure[256];
} s_kill_writer_t;

/* The spec of op n of a key: drawn again from the same seed on demand, so a config read back
 * can be checked against the write that made it. */
static void s_kill_spec(s_spec_t *spec, size_t key, size_t n)
{
    uint64_t random = 0xc0ffee00u + key * 1000003u + n * 7919u;
    char tag[48];
    snprintf(tag, sizeof tag, "k%zu-op%zu", key, n);
    s_random_spec(spec, &random, key, tag);
}

/* The op number a config of the kill test came from (its name "Live k<key>-op<n>"). */
static size_t s_kill_op_of(const pm_provider_t *p)
{
    const char *op = strstr(p->name, "-op");
    assert_non_null(op);
    char *end = NULL;
    unsigned long n = strtoul(op + 3, &end, 10);
    assert_true(end && *end == '\0');
    return (size_t)n;
}

static void *s_kill_writer(void *arg)
{
    s_kill_writer_t *w = arg;
    pmclient_t *client = pmclient_new(w->daemon->endpoint);
    s_spec_t *spec = malloc(sizeof *spec);
    /* A short timeout: after the kill a write waits for it before the writer stops. */
    if (!client || !spec || pmclient_set_timeout(client, 2000) != 0) {
        snprintf(w->first_failure, sizeof w->first_failure, "no client");
        pmclient_destroy(&client);
        free(spec);
        return NULL;
    }
    uint64_t random = 0xdead0000u + (uint64_t)w->index;
    while (!atomic_load(w->stop)) {
        s_key_log_t *log =
            &w->logs[(size_t)w->index + WRITERS * s_below(&random, KILL_TEST_KEYS / WRITERS)];
        if (log->sent >= MAX_OPS_PER_KEY)
            break;
        size_t n = log->sent;
        /* a remove now and then, never as a key's first op (it would change nothing) */
        log->is_remove[n] = n > 0 && s_below(&random, 5) == 0;
        log->sent++;
        int rc;
        if (log->is_remove[n]) {
            char name[32];
            bool removed = false;
            s_key_name(name, sizeof name, log->index);
            rc = pmclient_remove_provider(client, name, &removed);
        } else {
            s_kill_spec(spec, log->index, n);
            rc = pmclient_set_provider(client, &spec->spec, NULL);
        }
        if (rc != 0) {
            /* The kill: no reply. The op stays sent but not acknowledged. */
            snprintf(w->first_failure, sizeof w->first_failure, "%s: %s",
                     pmclient_error_code(client), pmclient_error_message(client));
            break;
        }
        log->acked = log->sent;
        atomic_fetch_add(w->acked, 1);
    }
    free(spec);
    pmclient_destroy(&client);
    return NULL;
}

/* The state of a key after its ops 0..n-1 (n == 0: never written, absent): -1 when absent,
 * else the op whose config it holds. */
static long s_state_after(const s_key_log_t *log, size_t n)
{
    if (n == 0 || log->is_remove[n - 1])
        return -1;
    return (long)(n - 1);
}

static void test_sigkill_of_the_primary_during_writes(void **state)
{
    s_suite_t *suite = *state;
    const char *extra[] = {"--heartbeat-ms", HEARTBEAT_ARG, NULL};
    assert_int_equal(daemon_fixture_start(&suite->daemon, suite->dir, "kill", extra), 0);
    pmclient_replica_t *replica = s_replica(&suite->daemon, NULL, NULL);
    assert_non_null(replica);
    assert_int_equal(pmclient_replica_wait(replica, 0, WAIT_MS), 0);
    char old_epoch[PMCLIENT_REPLICA_MAX_EPOCH_LEN + 1];
    pmclient_replica_stats_t stats = s_stats(replica);
    snprintf(old_epoch, sizeof old_epoch, "%s", stats.epoch);

    s_key_log_t *logs = calloc(KILL_TEST_KEYS, sizeof *logs);
    assert_non_null(logs);
    for (size_t k = 0; k < KILL_TEST_KEYS; k++)
        logs[k].index = k;
    atomic_size_t acked;
    atomic_bool stop;
    atomic_init(&acked, 0);
    atomic_init(&stop, false);
    s_kill_writer_t writers[WRITERS];
    pthread_t threads[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        writers[i] = (s_kill_writer_t){
            .daemon = &suite->daemon, .index = i, .logs = logs, .acked = &acked, .stop = &stop};
        assert_int_equal(pthread_create(&threads[i], NULL, s_kill_writer, &writers[i]), 0);
    }
    /* Kill in the middle of the writes; the replica is live just before (bounded wait). */
    double deadline = s_now_s() + WAIT_MS / 1000.0;
    while (atomic_load(&acked) < KILL_AFTER_WRITES && s_now_s() < deadline)
        daemon_fixture_sleep_ms(5);
    assert_true(atomic_load(&acked) >= KILL_AFTER_WRITES);
    assert_int_equal(daemon_fixture_kill(&suite->daemon), 0);
    atomic_store(&stop, true); /* no new write; the ones in flight time out */
    double killed_at = s_now_s();
    size_t acked_at_kill = atomic_load(&acked);

    /* Stale after 3 x heartbeat_ms of silence (bounded wait, generous deadline). */
    deadline = s_now_s() + WAIT_MS / 1000.0;
    do {
        stats = s_stats(replica);
        if (stats.stale)
            break;
        daemon_fixture_sleep_ms(10);
    } while (s_now_s() < deadline);
    assert_true(stats.stale);
    assert_true(stats.synced);
    assert_true(stats.since_contact_s >= 3 * HEARTBEAT_MS / 1000.0);
    print_message("stale %.2f s after the kill (since contact %.2f s)\n", s_now_s() - killed_at,
                  stats.since_contact_s);
    s_print_stats("primary down", &stats);
    /* The writers still waiting for replies that will not come give up after their timeout. */
    for (int i = 0; i < WRITERS; i++)
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    size_t sent = 0, in_flight = 0;
    for (size_t k = 0; k < KILL_TEST_KEYS; k++) {
        sent += logs[k].sent;
        in_flight += logs[k].sent - logs[k].acked;
    }
    print_message("killed after %zu acknowledged writes; %zu sent, %zu without reply\n",
                  acked_at_kill, sent, in_flight);

    /* It keeps answering from its last state: every key it has, every model resolves, and
     * what it holds came from writes, never from one the daemon had not persisted (checked
     * after the restart). */
    pmclient_replica_error_t err;
    pm_strings_t *keys = NULL;
    assert_int_equal(pmclient_replica_keys(replica, &keys, &err), 0);
    int64_t down_version = stats.state_version;
    long seen_op[KILL_TEST_KEYS];
    for (size_t k = 0; k < KILL_TEST_KEYS; k++)
        seen_op[k] = -1;
    size_t resolved = 0;
    for (size_t i = 0; i < keys->count; i++) {
        pm_provider_t *p = NULL;
        assert_int_equal(pmclient_replica_get(replica, keys->items[i], &p, &err), 0);
        assert_non_null(p);
        unsigned long k;
        if (sscanf(keys->items[i], "live-%lu", &k) == 1) {
            assert_true(k < KILL_TEST_KEYS);
            size_t op = s_kill_op_of(p);
            assert_true(op < logs[k].sent);
            assert_false(logs[k].is_remove[op]);
            s_spec_t *spec = malloc(sizeof *spec);
            assert_non_null(spec);
            s_kill_spec(spec, k, op);
            s_assert_provider_is_spec(p, spec);
            free(spec);
            seen_op[k] = (long)op;
        }
        for (size_t m = 0; m < p->model_count; m++) {
            char text[2200];
            pmclient_replica_target_t target;
            snprintf(text, sizeof text, "%s/%s", p->provider, p->model_long[m]);
            assert_int_equal(pmclient_replica_resolve(replica, text, &target, &err), 0);
            assert_string_equal(target.provider, p->provider);
            assert_string_equal(target.long_name, p->model_long[m]);
            assert_int_equal(target.state_version, down_version);
            resolved++;
        }
        pm_provider_free(&p);
    }
    assert_true(resolved > 0);
    pm_strings_free(&keys);

    /* The same daemon again on the same data dir and ports: a new epoch. */
    assert_int_equal(daemon_fixture_restart(&suite->daemon, extra), 0);
    pmclient_t *client = s_client(&suite->daemon);
    assert_non_null(client);
    char new_epoch[64];
    s_primary_epoch(client, new_epoch, sizeof new_epoch);
    assert_string_not_equal(new_epoch, old_epoch);
    s_assert_replica_equals_primary(client, replica);
    stats = s_stats(replica);
    s_print_stats("after the restart", &stats);
    assert_string_equal(stats.epoch, new_epoch);
    deadline = s_now_s() + WAIT_MS / 1000.0;
    while (stats.stale && s_now_s() < deadline) { /* heartbeats flow again */
        daemon_fixture_sleep_ms(10);
        stats = s_stats(replica);
    }
    assert_false(stats.stale);
    /* Re-synced by itself: the silence (or, when the restart beat it, the epoch change) asked
     * for the snapshot of the new run, after failed attempts while the daemon was down. */
    assert_true(stats.silences + stats.epoch_changes > 0);
    assert_true(stats.snapshots >= 2);

    /* Every acknowledged write is in it, and nothing more than the one unanswered write per
     * key that the daemon may have persisted before dying. */
    for (size_t k = 0; k < KILL_TEST_KEYS; k++) {
        const s_key_log_t *log = &logs[k];
        char name[32];
        pm_provider_t *p = NULL;
        s_key_name(name, sizeof name, k);
        assert_int_equal(pmclient_replica_get(replica, name, &p, &err), 0);
        long acked_state = s_state_after(log, log->acked);
        long sent_state = s_state_after(log, log->sent);
        long now = p ? (long)s_kill_op_of(p) : -1;
        if (now != acked_state && !(log->sent > log->acked && now == sent_state))
            fail_msg("%s holds op %ld; acknowledged: %ld, unanswered: %ld", name, now, acked_state,
                     log->sent > log->acked ? sent_state : -2);
        if (p) {
            s_spec_t *spec = malloc(sizeof *spec);
            assert_non_null(spec);
            s_kill_spec(spec, k, (size_t)now);
            s_assert_provider_is_spec(p, spec);
            free(spec);
        }
        /* What the replica showed while the daemon was down was persisted: never newer than
         * what the restarted daemon loaded from its file. */
        long persisted_op = now;
        if (now < 0)
            persisted_op = log->sent > log->acked && log->is_remove[log->sent - 1]
                               ? (long)log->sent - 1
                               : (long)log->acked - 1;
        if (seen_op[k] > persisted_op)
            fail_msg("%s: the replica showed op %ld, the daemon persisted up to op %ld", name,
                     seen_op[k], persisted_op);
        pm_provider_free(&p);
    }

    pmclient_replica_destroy(&replica);
    pmclient_destroy(&client);
    free(logs);
    assert_int_equal(daemon_fixture_stop(&suite->daemon), 0);
}

/* ------------------------------------------------- 3. a replica before its primary */

static void test_replica_started_before_its_primary(void **state)
{
    s_suite_t *suite = *state;
    int port, events_port;
    assert_int_equal(daemon_fixture_free_ports(&port, &events_port), 0);
    char endpoint[64], events_endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    snprintf(events_endpoint, sizeof events_endpoint, "tcp://127.0.0.1:%d", events_port);
    pmclient_replica_options_t options = {
        .timeout_ms = 500, .heartbeat_ms = HEARTBEAT_MS, .backoff_max_ms = 300};
    pmclient_replica_t *replica = pmclient_replica_new(endpoint, events_endpoint, &options);
    assert_non_null(replica);

    /* Unavailable, for every read, until a snapshot came; it keeps trying meanwhile. */
    char expected[128];
    snprintf(expected, sizeof expected, "Replica not yet synchronised with %s", endpoint);
    double deadline = s_now_s() + WAIT_MS / 1000.0;
    pmclient_replica_stats_t stats;
    do {
        stats = s_stats(replica);
        if (stats.snapshot_failures >= 2)
            break;
        daemon_fixture_sleep_ms(20);
    } while (s_now_s() < deadline);
    assert_true(stats.snapshot_failures >= 2);
    assert_false(stats.synced);
    assert_true(stats.stale);
    assert_int_equal(stats.state_version, -1);
    assert_string_equal(stats.epoch, "");
    pmclient_replica_error_t err;
    pm_strings_t *keys = NULL;
    pm_provider_t *provider = NULL;
    char *long_name = NULL;
    pmclient_replica_target_t target;
    bool contains = true;
    assert_int_equal(pmclient_replica_keys(replica, &keys, &err), -1);
    assert_null(keys);
    assert_string_equal(err.code, "unavailable");
    assert_string_equal(err.message, expected);
    assert_int_equal(pmclient_replica_get(replica, "openai", &provider, &err), -1);
    assert_string_equal(err.code, "unavailable");
    assert_int_equal(pmclient_replica_contains(replica, "openai", &contains, &err), -1);
    assert_string_equal(err.code, "unavailable");
    assert_int_equal(pmclient_replica_resolve(replica, "openai/gpt-4o", &target, &err), -1);
    assert_string_equal(err.code, "unavailable");
    assert_string_equal(err.message, expected);
    assert_int_equal(pmclient_replica_validate_model(replica, "gpt-4o", &long_name, &err), -1);
    assert_string_equal(err.code, "unavailable");
    assert_null(long_name);
    assert_int_equal(pmclient_replica_wait(replica, 0, 0), -1);

    /* The primary comes up where the replica looks: it converges. */
    const char *extra[] = {"--heartbeat-ms", HEARTBEAT_ARG, NULL};
    assert_int_equal(
        daemon_fixture_start_on(&suite->daemon, suite->dir, "late", port, events_port, extra), 0);
    assert_int_equal(pmclient_replica_wait(replica, 0, WAIT_MS), 0);
    pmclient_t *client = s_client(&suite->daemon);
    assert_non_null(client);
    s_assert_replica_equals_primary(client, replica);

    /* And follows: once a heartbeat proved the subscription live (the replica may have taken
     * its snapshot before its SUB socket reconnected), a write shows up through its event. */
    deadline = s_now_s() + WAIT_MS / 1000.0;
    do {
        stats = s_stats(replica);
        if (stats.heartbeats > 0)
            break;
        daemon_fixture_sleep_ms(10);
    } while (s_now_s() < deadline);
    assert_true(stats.heartbeats > 0);
    uint64_t events_before = stats.events_applied;
    s_spec_t *spec = malloc(sizeof *spec);
    assert_non_null(spec);
    uint64_t random = 42;
    s_random_spec(spec, &random, 1, "late");
    pm_provider_t *written = NULL;
    assert_int_equal(pmclient_set_provider(client, &spec->spec, &written), 0);
    int64_t version = s_state_version(client);
    assert_int_equal(pmclient_replica_wait(replica, version, WAIT_MS), 0);
    assert_int_equal(pmclient_replica_get(replica, spec->key, &provider, &err), 0);
    s_assert_provider_is_spec(provider, spec);
    s_assert_same_provider(written, provider);
    pm_provider_free(&provider);
    pm_provider_free(&written);
    free(spec);
    s_assert_replica_equals_primary(client, replica);
    stats = s_stats(replica);
    s_print_stats("late primary", &stats);
    assert_true(stats.events_applied > events_before);

    pmclient_replica_destroy(&replica);
    pmclient_destroy(&client);
    assert_int_equal(daemon_fixture_stop(&suite->daemon), 0);
}

/* -------------------------------------------------------------------------- the suite */

static int s_setup(void **state)
{
    s_suite_t *suite = calloc(1, sizeof *suite);
    if (!suite)
        return -1;
    suite->daemon.pid = -1;
    if (daemon_fixture_make_dir(suite->dir, sizeof suite->dir, "pmreplica-live", true) != 0) {
        free(suite);
        return -1;
    }
    *state = suite;
    return 0;
}

/* After each test: its daemon is gone even when the test failed half way. */
static int s_after_test(void **state)
{
    s_suite_t *suite = *state;
    daemon_fixture_kill(&suite->daemon);
    return 0;
}

static int s_teardown(void **state)
{
    s_suite_t *suite = *state;
    if (!suite)
        return 0;
    daemon_fixture_kill(&suite->daemon);
    daemon_fixture_remove_dir(suite->dir);
    free(suite);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_replica_started_before_its_primary, s_after_test),
        cmocka_unit_test_teardown(test_sigkill_of_the_primary_during_writes, s_after_test),
        cmocka_unit_test_teardown(test_convergence_under_event_loss, s_after_test),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
