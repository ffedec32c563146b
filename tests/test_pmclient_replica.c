/*
 * test_pmclient_replica: the local replica of libpmclient (client/pmclient_replica.h) against
 * an in-process fake primary that speaks protocol v1.1's "Snapshot and replicable events":
 * a ROUTER answering `snapshot` (a ROUTER rather than a REP so that the fake can play a
 * primary that does not answer) and a PUB sending `changed` events with their configs and
 * heartbeats, each with an epoch. The fake keeps its state in the registry core (pmregistry),
 * so the suite can compare the replica's answers with registry_resolve on the same data.
 *
 * Covered: snapshot + events applied; a gap re-snapshots (counted); silence of 3 x heartbeat_ms
 * marks the replica stale, it keeps answering, and it re-syncs when the primary is back; an
 * epoch change re-snapshots; CURVE; results identical to registry_resolve; readers on
 * several threads resolving while the replica applies 1,000 changes per second.
 */
#include "pmclient_replica.h"

#include "provider.h"
#include "registry.h"

#include <msgpack.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include <setjmp.h> /* cmocka needs these first */
#include <stddef.h>
#include <stdint.h>
/* clang-format off */
#include <cmocka.h>
/* clang-format on */

/* ---------------------------------------------------------------------- the fake primary */

typedef struct {
    void *ctx;
    void *router;
    void *pub;
    char router_ep[256];
    char pub_ep[256];
    pthread_mutex_t mutex; /* state and the PUB socket (used by the test and the thread) */
    registry_t *registry;  /* sealed */
    int64_t version;
    char epoch[32];
    int heartbeat_ms; /* 0: no heartbeats */
    bool answer;      /* false: requests are dropped (a primary that is away) */
    int snapshots_served;
    pthread_t thread;
    atomic_bool stop;
} fake_t;

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void s_pack_str(msgpack_packer *pk, const char *s)
{
    if (!s) {
        msgpack_pack_nil(pk);
        return;
    }
    size_t len = strlen(s);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

/* A ProviderConfig as protocol v1 defines it. */
static void s_pack_config(msgpack_packer *pk, const provider_t *p)
{
    msgpack_pack_map(pk, 6);
    s_pack_str(pk, "provider");
    s_pack_str(pk, provider_key(p));
    s_pack_str(pk, "name");
    s_pack_str(pk, provider_name(p));
    s_pack_str(pk, "base_api_url");
    s_pack_str(pk, provider_base_api_url(p));
    s_pack_str(pk, "api_key");
    s_pack_str(pk, provider_api_key(p));
    s_pack_str(pk, "valid_models");
    size_t n = provider_model_count(p);
    msgpack_pack_map(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        s_pack_str(pk, provider_model_long(p, i));
        s_pack_str(pk, provider_model_short(p, i));
    }
    s_pack_str(pk, "invalid_models");
    n = provider_invalid_count(p);
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        s_pack_str(pk, provider_invalid_at(p, i));
}

/* Also called on the fake's thread, where a cmocka assertion cannot jump: a failed send is
 * counted and checked by the test thread at the end. */
static atomic_int s_publish_failures;

static void s_publish(fake_t *fake, msgpack_sbuffer *body)
{
    if (zmq_send(fake->pub, "providers", 9, ZMQ_SNDMORE) != 9 ||
        zmq_send(fake->pub, body->data, body->size, 0) != (int)body->size)
        atomic_fetch_add(&s_publish_failures, 1);
}

/* Caller holds the mutex. */
static void s_heartbeat(fake_t *fake)
{
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    s_pack_str(&pk, "event");
    s_pack_str(&pk, "heartbeat");
    s_pack_str(&pk, "state_version");
    msgpack_pack_int64(&pk, fake->version);
    s_pack_str(&pk, "status_version");
    msgpack_pack_int64(&pk, 0);
    s_pack_str(&pk, "epoch");
    s_pack_str(&pk, fake->epoch);
    s_publish(fake, &sbuf);
    msgpack_sbuffer_destroy(&sbuf);
}

/* Answers one request (identity, empty, body) on the ROUTER. Caller holds the mutex. */
static void s_answer(fake_t *fake, zmq_msg_t *parts, int count)
{
    if (count != 3 || !fake->answer)
        return;
    msgpack_unpacked req;
    msgpack_unpacked_init(&req);
    size_t off = 0;
    const msgpack_object *id = NULL, *op = NULL;
    if (msgpack_unpack_next(&req, zmq_msg_data(&parts[2]), zmq_msg_size(&parts[2]), &off) ==
            MSGPACK_UNPACK_SUCCESS &&
        req.data.type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < req.data.via.map.size; i++) {
            const msgpack_object_kv *kv = &req.data.via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR)
                continue;
            if (kv->key.via.str.size == 2 && memcmp(kv->key.via.str.ptr, "id", 2) == 0)
                id = &kv->val;
            if (kv->key.via.str.size == 2 && memcmp(kv->key.via.str.ptr, "op", 2) == 0)
                op = &kv->val;
        }
    }
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    s_pack_str(&pk, "id");
    if (id)
        msgpack_pack_object(&pk, *id);
    else
        msgpack_pack_nil(&pk);
    bool snapshot = op && op->type == MSGPACK_OBJECT_STR && op->via.str.size == 8 &&
                    memcmp(op->via.str.ptr, "snapshot", 8) == 0;
    s_pack_str(&pk, "ok");
    if (snapshot) {
        msgpack_pack_true(&pk);
        s_pack_str(&pk, "result");
        msgpack_pack_map(&pk, 4);
        s_pack_str(&pk, "state_version");
        msgpack_pack_int64(&pk, fake->version);
        s_pack_str(&pk, "status_version");
        msgpack_pack_int64(&pk, 0);
        s_pack_str(&pk, "epoch");
        s_pack_str(&pk, fake->epoch);
        s_pack_str(&pk, "providers");
        size_t n = registry_count(fake->registry);
        msgpack_pack_array(&pk, (uint32_t)n);
        for (size_t i = 0; i < n; i++)
            s_pack_config(&pk, registry_at(fake->registry, i));
        fake->snapshots_served++;
    } else {
        msgpack_pack_false(&pk);
        s_pack_str(&pk, "error");
        msgpack_pack_map(&pk, 2);
        s_pack_str(&pk, "code");
        s_pack_str(&pk, "unknown_op");
        s_pack_str(&pk, "message");
        s_pack_str(&pk, "Unknown operation");
    }
    zmq_send(fake->router, zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), ZMQ_SNDMORE);
    zmq_send(fake->router, "", 0, ZMQ_SNDMORE);
    zmq_send(fake->router, sbuf.data, sbuf.size, 0);
    msgpack_sbuffer_destroy(&sbuf);
    msgpack_unpacked_destroy(&req);
}

static void *s_fake_run(void *arg)
{
    fake_t *fake = arg;
    int64_t next_heartbeat = s_now_ms();
    while (!atomic_load(&fake->stop)) {
        zmq_pollitem_t item = {.socket = fake->router, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, 5) > 0) {
            zmq_msg_t parts[4];
            int count = 0, more = 1;
            while (more) {
                zmq_msg_t msg;
                zmq_msg_init(&msg);
                if (zmq_msg_recv(&msg, fake->router, 0) < 0) {
                    zmq_msg_close(&msg);
                    break;
                }
                more = zmq_msg_more(&msg);
                if (count < 4)
                    parts[count++] = msg;
                else
                    zmq_msg_close(&msg);
            }
            pthread_mutex_lock(&fake->mutex);
            s_answer(fake, parts, count);
            pthread_mutex_unlock(&fake->mutex);
            for (int i = 0; i < count; i++)
                zmq_msg_close(&parts[i]);
        }
        pthread_mutex_lock(&fake->mutex);
        if (fake->heartbeat_ms > 0 && s_now_ms() >= next_heartbeat) {
            s_heartbeat(fake);
            next_heartbeat = s_now_ms() + fake->heartbeat_ms;
        }
        pthread_mutex_unlock(&fake->mutex);
    }
    return NULL;
}

static provider_t *s_provider(const char *key, const char *const *models, size_t n,
                              const char *const *shorts)
{
    char name[128];
    snprintf(name, sizeof name, "Provider %s", key);
    provider_t *p = provider_new(key, name, "https://example.invalid/v1");
    assert_non_null(p);
    assert_int_equal(provider_set_api_key(p, "sk-test-not-a-secret"), 0);
    assert_int_equal(provider_put_models(p, models, shorts, n), 0);
    return p;
}

/* Puts a provider (or removes key when models is NULL) as one change: version + 1 and, when
 * publish is true, its event (a false publish makes a gap on purpose). */
static void fake_change(fake_t *fake, const char *key, const char *const *models, size_t n,
                        const char *const *shorts, bool publish)
{
    pthread_mutex_lock(&fake->mutex);
    registry_t *next = registry_clone(fake->registry);
    assert_non_null(next);
    provider_t *p = NULL;
    if (models) {
        p = s_provider(key, models, n, shorts);
        assert_int_equal(registry_put(next, &p), 0);
    } else {
        registry_remove(next, key);
    }
    assert_int_equal(registry_seal(next), 0);
    registry_destroy(&fake->registry);
    fake->registry = next;
    fake->version++;
    if (publish) {
        msgpack_sbuffer sbuf;
        msgpack_sbuffer_init(&sbuf);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 5);
        s_pack_str(&pk, "event");
        s_pack_str(&pk, "changed");
        s_pack_str(&pk, "state_version");
        msgpack_pack_int64(&pk, fake->version);
        s_pack_str(&pk, "epoch");
        s_pack_str(&pk, fake->epoch);
        s_pack_str(&pk, "providers");
        msgpack_pack_array(&pk, 1);
        s_pack_str(&pk, key);
        s_pack_str(&pk, "configs");
        msgpack_pack_array(&pk, 1);
        const provider_t *now = registry_get(fake->registry, key, strlen(key));
        if (now)
            s_pack_config(&pk, now);
        else
            msgpack_pack_nil(&pk);
        s_publish(fake, &sbuf);
        msgpack_sbuffer_destroy(&sbuf);
    }
    pthread_mutex_unlock(&fake->mutex);
}

/* The seed-like start state: overlapping names across providers, explicit short names. */
static registry_t *s_start_registry(void)
{
    registry_t *r = registry_new();
    assert_non_null(r);
    const char *a[] = {"gpt-4o", "gpt-4o-mini", "shared-model", "org/nested"};
    const char *a_short[] = {"gpt-4o", "mini", "shared-model", "org/nested"};
    const char *b[] = {"claude-3", "shared-model", "mini", "llama/70b"};
    const char *c[] = {"Mixed-Case", "c-only"};
    provider_t *p = s_provider("openai", a, 4, a_short);
    assert_int_equal(registry_put(r, &p), 0);
    p = s_provider("anthropic", b, 4, NULL);
    assert_int_equal(registry_put(r, &p), 0);
    p = s_provider("local.c-1", c, 2, NULL);
    const char *invalid[] = {"broken"};
    assert_int_equal(provider_set_invalid_models(p, invalid, 1), 0);
    assert_int_equal(registry_put(r, &p), 0);
    assert_int_equal(registry_seal(r), 0);
    return r;
}

/* server_secret: the fake's CURVE secret key (Z85), or NULL for a plain fake. */
static fake_t *fake_new_curve(int heartbeat_ms, const char *server_secret);

static fake_t *fake_new(int heartbeat_ms)
{
    return fake_new_curve(heartbeat_ms, NULL);
}

static fake_t *fake_new_curve(int heartbeat_ms, const char *server_secret)
{
    fake_t *fake = calloc(1, sizeof *fake);
    assert_non_null(fake);
    pthread_mutex_init(&fake->mutex, NULL);
    fake->registry = s_start_registry();
    snprintf(fake->epoch, sizeof fake->epoch, "epoch-A");
    fake->heartbeat_ms = heartbeat_ms;
    fake->answer = true;
    fake->ctx = zmq_ctx_new();
    fake->router = zmq_socket(fake->ctx, ZMQ_ROUTER);
    fake->pub = zmq_socket(fake->ctx, ZMQ_PUB);
    assert_non_null(fake->router);
    assert_non_null(fake->pub);
    int linger = 0;
    zmq_setsockopt(fake->router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(fake->pub, ZMQ_LINGER, &linger, sizeof linger);
    if (server_secret) {
        int on = 1;
        void *sockets[] = {fake->router, fake->pub};
        for (int i = 0; i < 2; i++) {
            assert_int_equal(zmq_setsockopt(sockets[i], ZMQ_CURVE_SERVER, &on, sizeof on), 0);
            assert_int_equal(zmq_setsockopt(sockets[i], ZMQ_CURVE_SECRETKEY, server_secret, 41), 0);
        }
    }
    assert_int_equal(zmq_bind(fake->router, "tcp://127.0.0.1:*"), 0);
    assert_int_equal(zmq_bind(fake->pub, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof fake->router_ep;
    assert_int_equal(zmq_getsockopt(fake->router, ZMQ_LAST_ENDPOINT, fake->router_ep, &len), 0);
    len = sizeof fake->pub_ep;
    assert_int_equal(zmq_getsockopt(fake->pub, ZMQ_LAST_ENDPOINT, fake->pub_ep, &len), 0);
    atomic_init(&fake->stop, false);
    assert_int_equal(pthread_create(&fake->thread, NULL, s_fake_run, fake), 0);
    return fake;
}

static void fake_destroy(fake_t **fake_p)
{
    fake_t *fake = *fake_p;
    atomic_store(&fake->stop, true);
    pthread_join(fake->thread, NULL);
    assert_int_equal(atomic_load(&s_publish_failures), 0);
    zmq_close(fake->router);
    zmq_close(fake->pub);
    zmq_ctx_term(fake->ctx);
    registry_destroy(&fake->registry);
    pthread_mutex_destroy(&fake->mutex);
    free(fake);
    *fake_p = NULL;
}

/* A primary restart: a new epoch, state_version from 0, and (here) other data. */
static void fake_restart(fake_t *fake, const char *epoch)
{
    pthread_mutex_lock(&fake->mutex);
    registry_t *r = registry_new();
    assert_non_null(r);
    const char *models[] = {"after-restart"};
    provider_t *p = s_provider("reborn", models, 1, NULL);
    assert_int_equal(registry_put(r, &p), 0);
    assert_int_equal(registry_seal(r), 0);
    registry_destroy(&fake->registry);
    fake->registry = r;
    fake->version = 0;
    snprintf(fake->epoch, sizeof fake->epoch, "%s", epoch);
    pthread_mutex_unlock(&fake->mutex);
}

static void fake_set_heartbeat(fake_t *fake, int heartbeat_ms, bool answer)
{
    pthread_mutex_lock(&fake->mutex);
    fake->heartbeat_ms = heartbeat_ms;
    fake->answer = answer;
    pthread_mutex_unlock(&fake->mutex);
}

/* ------------------------------------------------------------------------------- helpers */

/* What the change callback saw (it runs on the replica's thread: no assertions there). */
typedef struct {
    atomic_int calls;
    atomic_int full;
    atomic_int malformed; /* an event change without its keys */
    atomic_llong last_version;
} changes_t;

static void s_on_change(const pmclient_replica_change_t *change, void *arg)
{
    changes_t *changes = arg;
    atomic_fetch_add(&changes->calls, 1);
    if (change->full)
        atomic_fetch_add(&changes->full, 1);
    else if (change->key_count == 0 || !change->keys || !change->keys[0])
        atomic_fetch_add(&changes->malformed, 1);
    atomic_store(&changes->last_version, change->state_version);
}

static pmclient_replica_t *s_replica(fake_t *fake, int heartbeat_ms, changes_t *changes)
{
    pmclient_replica_options_t options = {.timeout_ms = 300,
                                          .heartbeat_ms = heartbeat_ms,
                                          .backoff_max_ms = 200,
                                          .on_change = changes ? s_on_change : NULL,
                                          .on_change_arg = changes};
    pmclient_replica_t *replica = pmclient_replica_new(fake->router_ep, fake->pub_ep, &options);
    assert_non_null(replica);
    return replica;
}

static pmclient_replica_stats_t s_stats(pmclient_replica_t *replica)
{
    pmclient_replica_stats_t stats;
    assert_int_equal(pmclient_replica_stats(replica, &stats), 0);
    return stats;
}

/* Waits until the replica has seen a heartbeat (its subscription is then live, so that the
 * events the test publishes next reach it rather than being repaired by a re-snapshot). */
static void s_wait_subscribed(pmclient_replica_t *replica)
{
    int64_t deadline = s_now_ms() + 10000;
    while (s_stats(replica).heartbeats == 0 && s_now_ms() < deadline)
        s_sleep_ms(5);
    assert_true(s_stats(replica).heartbeats > 0);
}

/* Polls cond on the replica's stats until true or 10 s. */
#define WAIT_UNTIL(replica, cond)                                                                  \
    do {                                                                                           \
        int64_t until_ = s_now_ms() + 10000;                                                       \
        pmclient_replica_stats_t st;                                                               \
        for (;;) {                                                                                 \
            st = s_stats(replica);                                                                 \
            if ((cond) || s_now_ms() > until_)                                                     \
                break;                                                                             \
            s_sleep_ms(5);                                                                         \
        }                                                                                          \
        assert_true(cond);                                                                         \
    } while (0)

/* The replica's provider equals the fake's, field by field. */
static void s_assert_same_provider(const pm_provider_t *got, const provider_t *want)
{
    assert_non_null(got);
    assert_string_equal(got->provider, provider_key(want));
    assert_string_equal(got->name, provider_name(want));
    assert_string_equal(got->base_api_url, provider_base_api_url(want));
    assert_string_equal(got->api_key, provider_api_key(want));
    assert_int_equal(got->model_count, provider_model_count(want));
    for (size_t i = 0; i < got->model_count; i++) {
        assert_string_equal(got->model_long[i], provider_model_long(want, i));
        assert_string_equal(got->model_short[i], provider_model_short(want, i));
    }
    assert_int_equal(got->invalid_count, provider_invalid_count(want));
    for (size_t i = 0; i < got->invalid_count; i++)
        assert_string_equal(got->invalid_models[i], provider_invalid_at(want, i));
}

/* The replica holds exactly the fake's registry (keys in order, every config). */
static void s_assert_same_state(pmclient_replica_t *replica, fake_t *fake)
{
    pthread_mutex_lock(&fake->mutex);
    pmclient_replica_error_t err;
    pm_strings_t *keys = NULL;
    assert_int_equal(pmclient_replica_keys(replica, &keys, &err), 0);
    assert_int_equal(keys->count, registry_count(fake->registry));
    for (size_t i = 0; i < keys->count; i++) {
        const provider_t *want = registry_at(fake->registry, i);
        assert_string_equal(keys->items[i], provider_key(want));
        pm_provider_t *got = NULL;
        assert_int_equal(pmclient_replica_get(replica, keys->items[i], &got, &err), 0);
        s_assert_same_provider(got, want);
        pm_provider_free(&got);
    }
    pm_strings_free(&keys);
    assert_int_equal(s_stats(replica).state_version, fake->version);
    pthread_mutex_unlock(&fake->mutex);
}

/* --------------------------------------------------------------------------------- tests */

static void test_before_sync_unavailable(void **state)
{
    (void)state;
    /* Nothing listens there: the replica never syncs, says so, and is stale. */
    pmclient_replica_options_t options = {.timeout_ms = 100, .heartbeat_ms = 100};
    pmclient_replica_t *replica =
        pmclient_replica_new("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", &options);
    assert_non_null(replica);
    pmclient_replica_error_t err;
    char *name = NULL;
    assert_int_equal(pmclient_replica_validate_model(replica, "gpt-4o", &name, &err), -1);
    assert_null(name);
    assert_string_equal(err.code, "unavailable");
    assert_string_equal(err.message, "Replica not yet synchronised with tcp://127.0.0.1:1");
    pmclient_replica_stats_t stats = s_stats(replica);
    assert_false(stats.synced);
    assert_true(stats.stale);
    assert_int_equal(stats.state_version, -1);
    assert_int_equal(pmclient_replica_wait(replica, 0, 50), -1);
    pmclient_replica_destroy(&replica);
    assert_null(replica);
    pmclient_replica_destroy(&replica);

    /* Invalid options are refused. */
    pmclient_replica_options_t bad = {.server_public_z85 = "short"};
    assert_null(pmclient_replica_new(NULL, NULL, &bad));
    pmclient_replica_options_t negative = {.heartbeat_ms = -1};
    assert_null(pmclient_replica_new(NULL, NULL, &negative));
    assert_null(pmclient_replica_new(NULL, "not-an-endpoint", NULL));
}

static void test_snapshot_then_events(void **state)
{
    (void)state;
    fake_t *fake = fake_new(100);
    changes_t changes = {0};
    pmclient_replica_t *replica = s_replica(fake, 200, &changes);
    assert_int_equal(pmclient_replica_wait(replica, 0, 10000), 0);
    s_wait_subscribed(replica);
    s_assert_same_state(replica, fake);
    assert_int_equal(atomic_load(&changes.full), 1);

    const char *m1[] = {"new-1", "new-2"};
    fake_change(fake, "added", m1, 2, NULL, true); /* v1: appended */
    const char *m2[] = {"gpt-5"};
    fake_change(fake, "openai", m2, 1, NULL, true);      /* v2: replaced in place */
    fake_change(fake, "anthropic", NULL, 0, NULL, true); /* v3: removed */
    assert_int_equal(pmclient_replica_wait(replica, 3, 10000), 0);
    s_assert_same_state(replica, fake);

    pmclient_replica_error_t err;
    char *name = NULL;
    assert_int_equal(pmclient_replica_validate_model(replica, "added/new-2", &name, &err), 0);
    assert_string_equal(name, "new-2");
    free(name);
    assert_int_equal(pmclient_replica_validate_model(replica, "claude-3", &name, &err), -1);
    assert_string_equal(err.code, "invalid_model");
    assert_string_equal(err.message, "Invalid model: claude-3");
    bool has = true;
    assert_int_equal(pmclient_replica_contains(replica, "anthropic", &has, &err), 0);
    assert_false(has);

    pmclient_replica_stats_t stats = s_stats(replica);
    assert_true(stats.synced);
    assert_false(stats.stale);
    assert_int_equal(stats.state_version, 3);
    assert_int_equal(stats.versions_behind, 0);
    assert_string_equal(stats.epoch, "epoch-A");
    assert_int_equal(stats.events_applied, 3);
    assert_int_equal(stats.gaps, 0);
    assert_int_equal(stats.providers, 3);
    assert_true(stats.since_contact_s >= 0.0 && stats.since_contact_s < 1.0);
    /* The callback saw the snapshot and each change, the last at version 3 (it runs just
     * after a change becomes visible, so it may still be running for the last one). */
    int64_t until = s_now_ms() + 10000;
    while ((atomic_load(&changes.calls) < 4 || atomic_load(&changes.last_version) != 3) &&
           s_now_ms() < until)
        s_sleep_ms(5);
    assert_true(atomic_load(&changes.calls) >= 4);
    assert_int_equal(atomic_load(&changes.last_version), 3);
    assert_int_equal(atomic_load(&changes.malformed), 0);

    pmclient_replica_destroy(&replica);
    fake_destroy(&fake);
}

static void test_gap_resnapshots(void **state)
{
    (void)state;
    fake_t *fake = fake_new(100);
    pmclient_replica_t *replica = s_replica(fake, 200, NULL);
    assert_int_equal(pmclient_replica_wait(replica, 0, 10000), 0);
    s_wait_subscribed(replica);
    uint64_t snapshots = s_stats(replica).snapshots;

    const char *m1[] = {"lost-model"};
    fake_change(fake, "lost", m1, 1, NULL, false); /* v1: its event is never sent */
    const char *m2[] = {"seen-model"};
    fake_change(fake, "seen", m2, 1, NULL, true); /* v2: a gap after v0 */
    assert_int_equal(pmclient_replica_wait(replica, 2, 10000), 0);
    s_assert_same_state(replica, fake);
    pmclient_replica_stats_t stats = s_stats(replica);
    assert_true(stats.gaps >= 1);
    assert_true(stats.resnapshots >= 1);
    assert_true(stats.snapshots > snapshots);

    /* A change missed at the end shows in the next heartbeat: re-snapshot too. */
    fake_change(fake, "lost", NULL, 0, NULL, false); /* v3, no event */
    assert_int_equal(pmclient_replica_wait(replica, 3, 10000), 0);
    s_assert_same_state(replica, fake);
    assert_true(s_stats(replica).heartbeats_ahead >= 1);

    pmclient_replica_destroy(&replica);
    fake_destroy(&fake);
}

static void test_silence_marks_stale_and_resyncs(void **state)
{
    (void)state;
    fake_t *fake = fake_new(50);
    pmclient_replica_t *replica = s_replica(fake, 100, NULL);
    assert_int_equal(pmclient_replica_wait(replica, 0, 10000), 0);
    s_wait_subscribed(replica);
    WAIT_UNTIL(replica, !st.stale);

    /* The primary goes away: no heartbeats, no answers. */
    fake_set_heartbeat(fake, 0, false);
    int64_t quiet_since = s_now_ms();
    WAIT_UNTIL(replica, st.stale);
    assert_true(s_now_ms() - quiet_since >= 300 - 20); /* not before 3 x heartbeat_ms */
    pmclient_replica_stats_t stats = s_stats(replica);
    assert_true(stats.since_contact_s >= 0.28);
    assert_true(stats.synced);
    /* It keeps answering from the last state. */
    pmclient_replica_error_t err;
    char *name = NULL;
    assert_int_equal(pmclient_replica_validate_model(replica, "openai/mini", &name, &err), 0);
    assert_string_equal(name, "gpt-4o-mini");
    free(name);
    WAIT_UNTIL(replica, st.silences >= 1 && st.snapshot_failures >= 1);

    /* Back, with a change made meanwhile (its event lost: nobody answered then). */
    const char *m[] = {"while-away"};
    fake_change(fake, "openai", m, 1, NULL, false);
    fake_set_heartbeat(fake, 50, true);
    assert_int_equal(pmclient_replica_wait(replica, 1, 10000), 0);
    WAIT_UNTIL(replica, !st.stale);
    s_assert_same_state(replica, fake);

    pmclient_replica_destroy(&replica);
    fake_destroy(&fake);
}

static void test_epoch_change_resnapshots(void **state)
{
    (void)state;
    fake_t *fake = fake_new(50);
    pmclient_replica_t *replica = s_replica(fake, 200, NULL);
    assert_int_equal(pmclient_replica_wait(replica, 0, 10000), 0);
    s_wait_subscribed(replica);
    const char *m[] = {"x"};
    fake_change(fake, "one", m, 1, NULL, true);
    fake_change(fake, "two", m, 1, NULL, true);
    assert_int_equal(pmclient_replica_wait(replica, 2, 10000), 0);

    /* The primary restarts: version 0 again, another epoch, other data. */
    fake_restart(fake, "epoch-B");
    WAIT_UNTIL(replica, strcmp(st.epoch, "epoch-B") == 0);
    pmclient_replica_stats_t stats = s_stats(replica);
    assert_true(stats.epoch_changes >= 1);
    assert_int_equal(stats.state_version, 0);
    s_assert_same_state(replica, fake);
    pmclient_replica_error_t err;
    char *name = NULL;
    assert_int_equal(pmclient_replica_validate_model(replica, "after-restart", &name, &err), 0);
    free(name);
    assert_int_equal(pmclient_replica_validate_model(replica, "gpt-4o", &name, &err), -1);

    /* Events of the new epoch apply normally. */
    s_sleep_ms(120); /* a heartbeat of epoch-B confirms the snapshot */
    fake_change(fake, "three", m, 1, NULL, true);
    assert_int_equal(pmclient_replica_wait(replica, 1, 10000), 0);
    s_assert_same_state(replica, fake);

    pmclient_replica_destroy(&replica);
    fake_destroy(&fake);
}

/* CURVE: with the service's key the replica syncs and follows events; with another server
 * key the handshake fails and it never syncs (and says so). */
static void test_curve(void **state)
{
    (void)state;
    char server_public[41], server_secret[41], client_public[41], client_secret[41];
    char other_public[41], other_secret[41];
    assert_int_equal(zmq_curve_keypair(server_public, server_secret), 0);
    assert_int_equal(zmq_curve_keypair(client_public, client_secret), 0);
    assert_int_equal(zmq_curve_keypair(other_public, other_secret), 0);
    fake_t *fake = fake_new_curve(100, server_secret);
    pmclient_replica_options_t options = {.timeout_ms = 300,
                                          .heartbeat_ms = 200,
                                          .backoff_max_ms = 200,
                                          .server_public_z85 = server_public,
                                          .client_public_z85 = client_public,
                                          .client_secret_z85 = client_secret};
    pmclient_replica_t *replica = pmclient_replica_new(fake->router_ep, fake->pub_ep, &options);
    assert_non_null(replica);
    assert_int_equal(pmclient_replica_wait(replica, 0, 10000), 0);
    s_wait_subscribed(replica);
    const char *m[] = {"over-curve"};
    fake_change(fake, "secure", m, 1, NULL, true);
    assert_int_equal(pmclient_replica_wait(replica, 1, 10000), 0);
    s_assert_same_state(replica, fake);
    assert_int_equal(s_stats(replica).events_applied, 1);
    pmclient_replica_destroy(&replica);

    options.server_public_z85 = other_public;
    replica = pmclient_replica_new(fake->router_ep, fake->pub_ep, &options);
    assert_non_null(replica);
    assert_int_equal(pmclient_replica_wait(replica, 0, 1000), -1);
    pmclient_replica_stats_t stats = s_stats(replica);
    assert_false(stats.synced);
    assert_true(stats.stale);
    assert_int_equal(stats.heartbeats, 0);
    pmclient_replica_destroy(&replica);

    /* Keys are all given or none. */
    pmclient_replica_options_t partial = {.server_public_z85 = server_public};
    assert_null(pmclient_replica_new(fake->router_ep, fake->pub_ep, &partial));
    fake_destroy(&fake);
}

/* Every answer equals what the service builds from registry_resolve on the same data. */
static void test_results_equal_registry_resolve(void **state)
{
    (void)state;
    fake_t *fake = fake_new(100);
    pmclient_replica_t *replica = s_replica(fake, 200, NULL);
    assert_int_equal(pmclient_replica_wait(replica, 0, 10000), 0);
    registry_t *reg = registry_ref(fake->registry); /* nothing changes it during the test */
    const char *inputs[] = {"gpt-4o",
                            "mini",
                            "openai/mini",
                            "OpenAI/gpt-4o-mini",
                            "anthropic/mini",
                            "shared-model",
                            "anthropic/shared-model",
                            "org/nested",
                            "openai/org/nested",
                            "llama/70b",
                            "x/llama/70b",
                            "unknown",
                            "openai/unknown",
                            "nope/gpt-4o",
                            "Mixed-Case",
                            "mixed-case",
                            "local.c-1/c-only",
                            "LOCAL.C-1/c-only",
                            "broken",
                            "",
                            "/",
                            "openai/",
                            "/gpt-4o",
                            "claude-3"};
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        const char *in = inputs[i];
        registry_resolution_t res;
        registry_status_t want = registry_resolve(reg, in, strlen(in), &res);
        pm_provider_t *provider = NULL;
        char *name = NULL;
        pmclient_replica_error_t err;
        int rc = pmclient_replica_get_api_for_model_string(replica, in, &provider, &name, &err);
        if (want == REGISTRY_RESOLVED) {
            assert_int_equal(rc, 0);
            assert_string_equal(name, res.long_name);
            s_assert_same_provider(provider, res.provider);
        } else {
            char message[600];
            if (want == REGISTRY_INVALID_FOR_PROVIDER)
                snprintf(message, sizeof message, "Invalid model for provider %s: %.*s", res.prefix,
                         (int)res.model_len, res.model);
            else
                snprintf(message, sizeof message, "Invalid model: %.*s", (int)res.model_len,
                         res.model);
            assert_int_equal(rc, -1);
            assert_null(provider);
            assert_null(name);
            assert_string_equal(err.code, "invalid_model");
            assert_string_equal(err.message, message);
        }
        pm_provider_free(&provider);
        free(name);

        /* The allocation-free form answers the same. */
        pmclient_replica_target_t *target = calloc(1, sizeof *target);
        assert_non_null(target);
        pmclient_replica_error_t err2;
        rc = pmclient_replica_resolve(replica, in, target, &err2);
        if (want == REGISTRY_RESOLVED) {
            assert_int_equal(rc, 0);
            assert_string_equal(target->long_name, res.long_name);
            assert_string_equal(target->provider, provider_key(res.provider));
            assert_string_equal(target->base_api_url, provider_base_api_url(res.provider));
            assert_true(target->has_api_key);
            assert_string_equal(target->api_key, provider_api_key(res.provider));
            assert_int_equal(target->state_version, 0);
        } else {
            assert_int_equal(rc, -1);
            assert_string_equal(err2.code, err.code);
            assert_string_equal(err2.message, err.message);
        }
        free(target);

        /* find_model: the providers whose find_model knows the name, in order. */
        pm_matches_t *matches = NULL;
        assert_int_equal(pmclient_replica_find_model(replica, in, &matches, &err), 0);
        size_t hits = 0;
        for (size_t p = 0; p < registry_count(reg); p++) {
            const provider_t *prov = registry_at(reg, p);
            const char *lng = provider_find_model(prov, in, strlen(in));
            if (!lng)
                continue;
            assert_true(hits < matches->count);
            assert_string_equal(matches->model_long[hits], lng);
            s_assert_same_provider(matches->providers[hits], prov);
            hits++;
        }
        assert_int_equal(matches->count, hits);
        pm_matches_free(&matches);
    }
    /* available_models, whole and filtered; an unknown filter is an empty list. */
    pm_strings_t *all = NULL;
    pmclient_replica_error_t err;
    assert_int_equal(pmclient_replica_available_models(replica, NULL, &all, &err), 0);
    assert_int_equal(all->count, registry_model_count(reg));
    assert_string_equal(all->items[0], "gpt-4o");
    assert_string_equal(all->items[all->count - 1], "c-only");
    pm_strings_free(&all);
    assert_int_equal(pmclient_replica_available_models(replica, "anthropic", &all, &err), 0);
    assert_int_equal(all->count, 4);
    assert_string_equal(all->items[3], "llama/70b");
    pm_strings_free(&all);
    assert_int_equal(pmclient_replica_available_models(replica, "zzz", &all, &err), 0);
    assert_int_equal(all->count, 0);
    pm_strings_free(&all);
    pm_provider_t *none = NULL;
    assert_int_equal(pmclient_replica_get(replica, "zzz", &none, &err), 0);
    assert_null(none);
    /* The service's limit on model_string, and its message. */
    char *long_string = malloc(2050);
    assert_non_null(long_string);
    memset(long_string, 'a', 2049);
    long_string[2049] = '\0';
    char *name = NULL;
    assert_int_equal(pmclient_replica_validate_model(replica, long_string, &name, &err), -1);
    assert_string_equal(err.code, "bad_request");
    assert_string_equal(err.message, "argument 'model_string' is longer than 2048 bytes");
    free(long_string);

    registry_destroy(&reg);
    pmclient_replica_destroy(&replica);
    fake_destroy(&fake);
}

/* ---------------------------------------------- readers while 1,000 changes per second */

typedef struct {
    pmclient_replica_t *replica;
    atomic_bool *stop;
    long reads;
    long failures;
    pmclient_replica_target_t target;
} reader_t;

static void *s_reader(void *arg)
{
    reader_t *r = arg;
    pmclient_replica_error_t err;
    while (!atomic_load(r->stop)) {
        char *name = NULL;
        pm_provider_t *provider = NULL;
        /* openai keeps its models; "churn" changes all the time. */
        if (pmclient_replica_get_api_for_model_string(r->replica, "openai/mini", &provider, &name,
                                                      &err) != 0 ||
            strcmp(name, "gpt-4o-mini") != 0 || strcmp(provider->provider, "openai") != 0)
            r->failures++;
        pm_provider_free(&provider);
        free(name);
        name = NULL;
        int rc = pmclient_replica_validate_model(r->replica, "churn/stable", &name, &err);
        if (rc != 0 || strcmp(name, "stable") != 0)
            r->failures++;
        free(name);
        rc = pmclient_replica_resolve(r->replica, "stable", &r->target, &err);
        if (rc != 0 || strcmp(r->target.provider, "churn") != 0)
            r->failures++;
        r->reads += 3;
    }
    return NULL;
}

static void test_readers_during_changes(void **state)
{
    (void)state;
    fake_t *fake = fake_new(100);
    const char *first[] = {"stable", "v-0"};
    fake_change(fake, "churn", first, 2, NULL, false); /* in the first snapshot */
    pmclient_replica_t *replica = s_replica(fake, 200, NULL);
    assert_int_equal(pmclient_replica_wait(replica, 1, 10000), 0);
    s_wait_subscribed(replica);

    enum { READERS = 3 };
    atomic_bool stop;
    atomic_init(&stop, false);
    reader_t readers[READERS];
    pthread_t threads[READERS];
    for (int i = 0; i < READERS; i++) {
        readers[i] = (reader_t){.replica = replica, .stop = &stop};
        assert_int_equal(pthread_create(&threads[i], NULL, s_reader, &readers[i]), 0);
    }
    /* 1,000 changes at 1,000 per second (1 ms apart). */
    int64_t start = s_now_ms();
    for (int v = 1; v <= 1000; v++) {
        char model[32];
        snprintf(model, sizeof model, "v-%d", v);
        const char *models[] = {"stable", model};
        fake_change(fake, "churn", models, 2, NULL, true);
        int64_t due = start + v;
        int64_t now = s_now_ms();
        if (due > now)
            s_sleep_ms((int)(due - now));
    }
    assert_int_equal(pmclient_replica_wait(replica, 1001, 20000), 0);
    atomic_store(&stop, true);
    long reads = 0;
    for (int i = 0; i < READERS; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(readers[i].failures, 0);
        assert_true(readers[i].reads > 0);
        reads += readers[i].reads;
    }
    s_assert_same_state(replica, fake);
    pmclient_replica_error_t err;
    char *name = NULL;
    assert_int_equal(pmclient_replica_validate_model(replica, "v-1000", &name, &err), 0);
    free(name);
    pmclient_replica_stats_t stats = s_stats(replica);
    print_message("readers: %ld reads while 1000 changes applied (%llu as events, %llu "
                  "snapshots)\n",
                  reads, (unsigned long long)stats.events_applied,
                  (unsigned long long)stats.snapshots);
    pmclient_replica_destroy(&replica);
    fake_destroy(&fake);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_before_sync_unavailable),
        cmocka_unit_test(test_snapshot_then_events),
        cmocka_unit_test(test_gap_resnapshots),
        cmocka_unit_test(test_silence_marks_stale_and_resyncs),
        cmocka_unit_test(test_epoch_change_resnapshots),
        cmocka_unit_test(test_curve),
        cmocka_unit_test(test_results_equal_registry_resolve),
        cmocka_unit_test(test_readers_during_changes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
