/*
 * test_discovery: the discovery coordinator end to end, with real worker threads, a real
 * registry and tests/fake_upstream.py. The test plays the writer: it polls
 * discovery_socket(), calls discovery_handle(), applies each update to a new sealed registry
 * and answers persist requests. Every wait has a bounded deadline; nothing asserts on time.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "discovery.h"
#include "discovery_worker.h"
#include "fake_upstream.h"
#include "pm_proto.h"
#include "registry.h"

#include <msgpack.h>
#include <stdint.h>
#include <zmq.h>

#define KEY "good-key"
#define DRIVE_DEADLINE_MS 30000
#define WORKERS 2
#define MAX_UPDATES 64

typedef struct {
    fake_upstream_t fake;
    void *ctx;
    discovery_t *disc;
    registry_t *reg;
    config_discovery_t settings;
    double now;
    bool persist_ok;
    int persist_calls;
    int update_calls;
    char updated[MAX_UPDATES][REGISTRY_MAX_KEY_LEN + 1]; /* keys, in the order applied */
} env_t;

static config_discovery_t s_settings(void)
{
    config_discovery_t settings = {
        .cache_duration_s = 3600,
        .max_tokens = 16,
        .per_provider_limit = 4,
        .connect_timeout_ms = 2000,
        .request_timeout_ms = 5000,
        .max_retries = 1,
        .retry_budget_ms = 2000,
        .interval_minutes = 0,
        .on_start = false,
        .list_max_bytes = 1024 * 1024,
        .probe_max_bytes = 64 * 1024,
    };
    return settings;
}

static int group_setup(void **state)
{
    env_t *e = calloc(1, sizeof *e);
    if (e == NULL)
        return -1;
    if (fake_upstream_start(&e->fake, "{}") != 0) {
        free(e);
        return -1;
    }
    e->ctx = zmq_ctx_new();
    *state = e;
    return e->ctx ? 0 : -1;
}

static int group_teardown(void **state)
{
    env_t *e = *state;
    fake_upstream_stop(&e->fake);
    zmq_ctx_term(e->ctx);
    free(e);
    return 0;
}

/* Per test: fresh coordinator and counters; the registry is built by each test. */
static void s_begin(env_t *e, const config_discovery_t *settings, const char *fake_config)
{
    assert_int_equal(fake_upstream_configure(&e->fake, fake_config), 0);
    e->settings = *settings;
    e->disc = discovery_new(e->ctx, settings, WORKERS);
    assert_non_null(e->disc);
    e->reg = registry_new();
    assert_non_null(e->reg);
    e->now = 1000.0;
    e->persist_ok = true;
    e->persist_calls = 0;
    e->update_calls = 0;
}

static void s_end(env_t *e)
{
    discovery_destroy(&e->disc);
    assert_null(e->disc);
    discovery_destroy(&e->disc); /* safe twice */
    registry_destroy(&e->reg);
}

/* Adds a provider whose base_api_url points at the fake's scenario. key NULL = no key. */
static void s_add_provider(env_t *e, const char *key, const char *scenario, const char *api_key,
                           const char *const *invalid, size_t invalid_count)
{
    char url[256];
    snprintf(url, sizeof url, "%s/%s/v1", e->fake.origin, scenario);
    provider_t *p = provider_new(key, key, url);
    assert_non_null(p);
    if (api_key != NULL)
        assert_int_equal(provider_set_api_key(p, api_key), 0);
    if (invalid_count > 0)
        assert_int_equal(provider_set_invalid_models(p, invalid, invalid_count), 0);
    assert_int_equal(registry_put(e->reg, &p), 0);
}

static void s_seal(env_t *e)
{
    assert_int_equal(registry_seal(e->reg), 0);
}

/* The writer's side of an update: one copy-on-write change. */
static void s_apply(env_t *e, const discovery_update_t *u)
{
    registry_t *next = registry_clone(e->reg);
    assert_non_null(next);
    provider_t *p = registry_edit(next, u->provider_key);
    assert_non_null(p);
    assert_int_equal(provider_merge_valid_models(p, (const char *const *)u->valid, u->valid_count),
                     0);
    assert_int_equal(
        provider_set_invalid_models(p, (const char *const *)u->invalid, u->invalid_count), 0);
    assert_int_equal(provider_set_cached_models(p, (const char *const *)u->cached, u->cached_count,
                                                u->cached_at),
                     0);
    assert_int_equal(registry_seal(next), 0);
    registry_destroy(&e->reg);
    e->reg = next;
    if (e->update_calls < MAX_UPDATES)
        snprintf(e->updated[e->update_calls], sizeof e->updated[0], "%s", u->provider_key);
    e->update_calls++;
}

/* One round of the writer's loop: wait up to timeout_ms, handle, apply, persist. */
static void s_round(env_t *e, long timeout_ms)
{
    zmq_pollitem_t item = {.socket = discovery_socket(e->disc), .events = ZMQ_POLLIN};
    int ready = zmq_poll(&item, 1, timeout_ms);
    assert_true(ready >= 0);
    if (ready == 0)
        return;
    discovery_outcome_t outcome;
    memset(&outcome, 0, sizeof outcome);
    assert_int_equal(discovery_handle(e->disc, e->reg, e->now, &outcome), 0);
    for (size_t i = 0; i < outcome.update_count; i++)
        s_apply(e, &outcome.updates[i]);
    for (size_t i = 0; i < outcome.persist_count; i++) {
        e->persist_calls++;
        discovery_job_persisted(e->disc, outcome.persists[i].job_id, e->persist_ok,
                                e->persist_ok ? NULL : "could not persist providers: disk full");
    }
    discovery_outcome_clear(&outcome);
}

/* Runs the writer's loop until no job is running (bounded). */
static void s_drive(env_t *e)
{
    for (int waited = 0; discovery_running(e->disc) > 0; waited += 20) {
        if (waited > DRIVE_DEADLINE_MS)
            fail_msg("discovery did not finish within %d ms", DRIVE_DEADLINE_MS);
        s_round(e, 20);
    }
    /* Drain what is left (late results of failed tasks, wake-ups). */
    s_round(e, 0);
}

static void s_start(env_t *e, const char *provider, bool force, bool persist, char *job_id)
{
    int code = -1;
    char err[256] = "";
    int rc = discovery_start(e->disc, e->reg, provider, force, persist, e->now, job_id, &code, err,
                             sizeof err);
    if (rc != 0)
        fail_msg("discovery_start failed: %s", err);
    assert_int_equal(code, PM_OK);
    assert_true(job_id[0] != '\0');
}

/* ------------------------------------------------------------------- job_status decoding */

typedef struct {
    msgpack_sbuffer sbuf;
    msgpack_unpacked unpacked;
    const msgpack_object *root;
} status_t;

static const msgpack_object *s_get(const msgpack_object *map, const char *key)
{
    assert_non_null(map);
    assert_int_equal(map->type, MSGPACK_OBJECT_MAP);
    size_t len = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == len &&
            memcmp(kv->key.via.str.ptr, key, len) == 0)
            return &kv->val;
    }
    return NULL;
}

static void s_assert_str(const msgpack_object *obj, const char *expected)
{
    assert_non_null(obj);
    assert_int_equal(obj->type, MSGPACK_OBJECT_STR);
    if (obj->via.str.size != strlen(expected) ||
        memcmp(obj->via.str.ptr, expected, obj->via.str.size) != 0)
        fail_msg("got '%.*s', expected '%s'", (int)obj->via.str.size, obj->via.str.ptr, expected);
}

static uint64_t s_uint(const msgpack_object *obj)
{
    assert_non_null(obj);
    assert_int_equal(obj->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    return obj->via.u64;
}

static void s_status(env_t *e, const char *job_id, status_t *st)
{
    msgpack_sbuffer_init(&st->sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &st->sbuf, msgpack_sbuffer_write);
    assert_int_equal(discovery_pack_status(e->disc, job_id, strlen(job_id), &pk), 0);
    msgpack_unpacked_init(&st->unpacked);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&st->unpacked, st->sbuf.data, st->sbuf.size, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, st->sbuf.size); /* exactly one object */
    st->root = &st->unpacked.data;
    assert_int_equal(st->root->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(st->root->via.map.size, 7);
    s_assert_str(s_get(st->root, "job"), job_id);
}

static void s_status_clear(status_t *st)
{
    msgpack_unpacked_destroy(&st->unpacked);
    msgpack_sbuffer_destroy(&st->sbuf);
}

static void s_assert_done(const status_t *st, bool success, bool persisted)
{
    s_assert_str(s_get(st->root, "state"), "done");
    const msgpack_object *ok = s_get(st->root, "success");
    assert_non_null(ok);
    assert_int_equal(ok->type, MSGPACK_OBJECT_BOOLEAN);
    assert_int_equal(ok->via.boolean, success);
    const msgpack_object *p = s_get(st->root, "persisted");
    assert_non_null(p);
    assert_int_equal(p->type, MSGPACK_OBJECT_BOOLEAN);
    assert_int_equal(p->via.boolean, persisted);
}

static void s_assert_messages(const status_t *st, const char *const *expected, size_t count)
{
    const msgpack_object *messages = s_get(st->root, "messages");
    assert_non_null(messages);
    assert_int_equal(messages->type, MSGPACK_OBJECT_ARRAY);
    if (messages->via.array.size != count) {
        for (uint32_t i = 0; i < messages->via.array.size; i++)
            print_message("message %u: %.*s\n", i, (int)messages->via.array.ptr[i].via.str.size,
                          messages->via.array.ptr[i].via.str.ptr);
        fail_msg("%u messages, expected %zu", messages->via.array.size, count);
    }
    for (size_t i = 0; i < count; i++)
        s_assert_str(&messages->via.array.ptr[i], expected[i]);
}

static void s_assert_provider(const status_t *st, const char *key, const char *state,
                              uint64_t discovered, uint64_t validated, uint64_t valid,
                              uint64_t invalid, const char *message)
{
    const msgpack_object *p = s_get(s_get(st->root, "providers"), key);
    if (p == NULL)
        fail_msg("provider %s missing from job_status", key);
    assert_int_equal(p->via.map.size, 6);
    s_assert_str(s_get(p, "state"), state);
    assert_int_equal(s_uint(s_get(p, "discovered")), discovered);
    assert_int_equal(s_uint(s_get(p, "validated")), validated);
    assert_int_equal(s_uint(s_get(p, "valid")), valid);
    assert_int_equal(s_uint(s_get(p, "invalid")), invalid);
    s_assert_str(s_get(p, "message"), message);
}

static uint32_t s_provider_count(const status_t *st)
{
    const msgpack_object *providers = s_get(st->root, "providers");
    assert_non_null(providers);
    assert_int_equal(providers->type, MSGPACK_OBJECT_MAP);
    return providers->via.map.size;
}

static const provider_t *s_provider(env_t *e, const char *key)
{
    const provider_t *p = registry_get(e->reg, key, strlen(key));
    assert_non_null(p);
    return p;
}

static void s_assert_models(const provider_t *p, const char *const *expected, size_t count)
{
    assert_int_equal(provider_model_count(p), count);
    for (size_t i = 0; i < count; i++)
        assert_string_equal(provider_model_long(p, i), expected[i]);
}

static void s_assert_invalid(const provider_t *p, const char *const *expected, size_t count)
{
    assert_int_equal(provider_invalid_count(p), count);
    for (size_t i = 0; i < count; i++)
        assert_string_equal(provider_invalid_at(p, i), expected[i]);
}

/* ================================================================================== tests */

#define ALPHA_CONFIG                                                                               \
    "{\"scenarios\":{\"alpha\":{\"models\":[\"m0\",\"m1\",\"m2\",\"m3\",\"m4\",\"m5\"],"           \
    "\"rules\":[{\"kind\":\"probe\",\"model\":\"m2\",\"status\":404},"                             \
    "{\"kind\":\"probe\",\"model\":\"m4\",\"status\":400,"                                         \
    "\"json\":{\"error\":{\"message\":\"The model {model} does not exist\"}}}]}}}"

static void test_success_path(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings, ALPHA_CONFIG);
    const char *known_invalid[] = {"m5"};
    s_add_provider(e, "alpha", "alpha", KEY, known_invalid, 1);
    s_seal(e);

    char job[DISCOVERY_JOB_ID_SIZE];
    s_start(e, NULL, false, true, job);
    assert_int_equal(discovery_running(e->disc), 1);
    status_t st;
    s_status(e, job, &st);
    s_assert_str(s_get(st.root, "state"), "running");
    assert_int_equal(s_get(st.root, "success")->type, MSGPACK_OBJECT_NIL);
    s_status_clear(&st);

    s_drive(e);
    assert_int_equal(e->update_calls, 1);
    assert_int_equal(e->persist_calls, 1);
    s_status(e, job, &st);
    s_assert_done(&st, true, true);
    const char *messages[] = {"Successfully discovered 3 valid and 3 invalid models for alpha",
                              "Provider configurations persisted to YAML"};
    s_assert_messages(&st, messages, 2);
    s_assert_provider(&st, "alpha", "ok", 6, 5, 3, 3, messages[0]);
    s_status_clear(&st);

    const provider_t *p = s_provider(e, "alpha");
    const char *valid[] = {"m0", "m1", "m3"};
    s_assert_models(p, valid, 3);
    const char *invalid[] = {"m2", "m4", "m5"}; /* listed order, the known one included */
    s_assert_invalid(p, invalid, 3);
    assert_int_equal(provider_cached_count(p), 6);
    assert_string_equal(provider_cached_at(p, 5), "m5");
    assert_true(provider_cache_fresh(p, e->now));

    json_t *stats = fake_upstream_scenario(&e->fake, "alpha");
    assert_int_equal(fake_stat_int(stats, "list"), 1);
    assert_int_equal(fake_stat_probes(stats, "m0"), 1);
    assert_int_equal(fake_stat_probes(stats, "m2"), 1);
    assert_int_equal(fake_stat_probes(stats, "m5"), 0); /* already invalid: never probed */
    json_decref(stats);

    /* Without persist_on_success the job is done as soon as its tasks are. */
    s_start(e, NULL, true, false, job);
    s_drive(e);
    assert_int_equal(e->persist_calls, 1);
    s_status(e, job, &st);
    s_assert_done(&st, true, false);
    const char *second[] = {"Successfully discovered 3 valid and 3 invalid models for alpha"};
    s_assert_messages(&st, second, 1);
    s_status_clear(&st);
    s_end(e);
}

static void test_cache_and_invalid_models_not_reprobed(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings, ALPHA_CONFIG);
    s_add_provider(e, "alpha", "alpha", KEY, NULL, 0);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE];
    s_start(e, "alpha", false, false, job);
    s_drive(e);

    /* Second job, cache fresh, no force: no list request; m2 and m4 (now invalid) are not
     * probed again, the others are. */
    e->now += 10;
    s_start(e, "alpha", false, false, job);
    s_drive(e);
    json_t *stats = fake_upstream_scenario(&e->fake, "alpha");
    assert_int_equal(fake_stat_int(stats, "list"), 1);
    assert_int_equal(fake_stat_probes(stats, "m2"), 1);
    assert_int_equal(fake_stat_probes(stats, "m4"), 1);
    assert_int_equal(fake_stat_probes(stats, "m0"), 2);
    assert_int_equal(fake_stat_probes(stats, "m5"), 2);
    json_decref(stats);
    status_t st;
    s_status(e, job, &st);
    s_assert_done(&st, true, false);
    s_assert_provider(&st, "alpha", "ok", 6, 4, 4, 2,
                      "Successfully discovered 4 valid and 2 invalid models for alpha");
    s_status_clear(&st);
    /* The cache keeps its first timestamp, so that it expires in time. */
    assert_true(provider_cache_timestamp(s_provider(e, "alpha")) == 1000.0);

    /* force_refresh bypasses the cache. */
    s_start(e, "alpha", true, false, job);
    s_drive(e);
    stats = fake_upstream_scenario(&e->fake, "alpha");
    assert_int_equal(fake_stat_int(stats, "list"), 2);
    assert_int_equal(fake_stat_probes(stats, "m2"), 1);
    json_decref(stats);

    /* An expired cache is listed again. */
    e->now += 4000;
    s_start(e, "alpha", false, false, job);
    s_drive(e);
    stats = fake_upstream_scenario(&e->fake, "alpha");
    assert_int_equal(fake_stat_int(stats, "list"), 3);
    json_decref(stats);
    assert_true(provider_cache_timestamp(s_provider(e, "alpha")) == e->now);
    s_end(e);

    /* The cache lasts discovery.cache_duration, not the provider's default hour. */
    settings.cache_duration_s = 50;
    s_begin(e, &settings, ALPHA_CONFIG);
    s_add_provider(e, "alpha", "alpha", KEY, NULL, 0);
    s_seal(e);
    s_start(e, "alpha", false, false, job);
    s_drive(e);
    e->now += 40;
    s_start(e, "alpha", false, false, job);
    s_drive(e);
    stats = fake_upstream_scenario(&e->fake, "alpha");
    assert_int_equal(fake_stat_int(stats, "list"), 1);
    json_decref(stats);
    e->now += 20;
    assert_true(provider_cache_fresh(s_provider(e, "alpha"), e->now));
    s_start(e, "alpha", false, false, job);
    s_drive(e);
    stats = fake_upstream_scenario(&e->fake, "alpha");
    assert_int_equal(fake_stat_int(stats, "list"), 2);
    json_decref(stats);
    s_end(e);
}

static void test_provider_filter_and_not_found(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings,
            "{\"scenarios\":{\"a\":{\"models\":[\"x\"]},\"b\":{\"models\":[\"y\",\"z\"]}}}");
    s_add_provider(e, "pa", "a", KEY, NULL, 0);
    s_add_provider(e, "pb", "b", KEY, NULL, 0);
    s_seal(e);

    char job[DISCOVERY_JOB_ID_SIZE] = "";
    int code = 0;
    char err[128] = "";
    assert_int_equal(
        discovery_start(e->disc, e->reg, "nope", false, true, e->now, job, &code, err, sizeof err),
        -1);
    assert_int_equal(code, PM_ERR_NOT_FOUND);
    assert_string_equal(err, "Provider 'nope' not found");
    assert_int_equal(discovery_running(e->disc), 0);

    s_start(e, "pb", false, true, job);
    s_drive(e);
    status_t st;
    s_status(e, job, &st);
    assert_int_equal(s_provider_count(&st), 1);
    assert_null(s_get(s_get(st.root, "providers"), "pa"));
    s_assert_provider(&st, "pb", "ok", 2, 2, 2, 0,
                      "Successfully discovered 2 valid and 0 invalid models for pb");
    s_status_clear(&st);
    json_t *stats = fake_upstream_scenario(&e->fake, "a");
    assert_int_equal(fake_stat_int(stats, "requests"), 0);
    json_decref(stats);
    assert_int_equal(provider_model_count(s_provider(e, "pa")), 0);
    assert_int_equal(provider_model_count(s_provider(e, "pb")), 2);

    /* Unknown job ids. */
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    assert_int_equal(discovery_pack_status(e->disc, "j-none", 6, &pk), -1);
    assert_int_equal(sbuf.size, 0);
    /* A prefix of a real id is not that id (lengths are compared). */
    assert_int_equal(discovery_pack_status(e->disc, job, strlen(job) - 1, &pk), -1);
    msgpack_sbuffer_destroy(&sbuf);
    s_end(e);
}

static void test_failing_provider(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings,
            "{\"scenarios\":{\"good\":{\"models\":[\"g1\",\"g2\"]},"
            "\"locked\":{\"models\":[\"l1\"]},"
            "\"shaky\":{\"models\":[\"s0\",\"s1\",\"s2\"],"
            "\"rules\":[{\"kind\":\"probe\",\"model\":\"s1\",\"status\":500}]}}}");
    const char *old_invalid[] = {"old"};
    s_add_provider(e, "good", "good", KEY, NULL, 0);
    s_add_provider(e, "locked", "locked", "sk-wrong-secret", old_invalid, 1);
    s_add_provider(e, "shaky", "shaky", KEY, old_invalid, 1);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE];
    s_start(e, NULL, false, true, job);
    s_drive(e);

    assert_int_equal(e->persist_calls, 0); /* nothing persisted */
    assert_int_equal(e->update_calls, 1);  /* only good's result was applied */
    assert_string_equal(e->updated[0], "good");
    status_t st;
    s_status(e, job, &st);
    s_assert_done(&st, false, false);
    s_assert_provider(&st, "good", "ok", 2, 2, 2, 0,
                      "Successfully discovered 2 valid and 0 invalid models for good");
    s_assert_provider(&st, "locked", "error", 0, 0, 0, 0,
                      "Error discovering models for locked: authentication failed (HTTP 401)");
    /* How many of s0 and s2 ended before s1 failed depends on timing: not checked. */
    const msgpack_object *shaky_status = s_get(s_get(st.root, "providers"), "shaky");
    s_assert_str(s_get(shaky_status, "state"), "error");
    assert_int_equal(s_uint(s_get(shaky_status, "discovered")), 3);
    s_assert_str(s_get(shaky_status, "message"),
                 "Error discovering models for shaky: HTTP 500 after 2 attempts (model s1)");
    /* Every message is there once, in the order the tasks ended. */
    const msgpack_object *messages = s_get(st.root, "messages");
    assert_int_equal(messages->via.array.size, 3);
    for (uint32_t i = 0; i < 3; i++) {
        const msgpack_object *m = &messages->via.array.ptr[i];
        char text[512];
        snprintf(text, sizeof text, "%.*s", (int)m->via.str.size, m->via.str.ptr);
        assert_null(strstr(text, "sk-wrong-secret"));
    }
    s_status_clear(&st);

    /* The failed providers are exactly as they were. */
    const provider_t *locked = s_provider(e, "locked");
    s_assert_invalid(locked, old_invalid, 1);
    assert_int_equal(provider_model_count(locked), 0);
    assert_int_equal(provider_cached_count(locked), 0);
    const provider_t *shaky = s_provider(e, "shaky");
    s_assert_invalid(shaky, old_invalid, 1);
    assert_int_equal(provider_model_count(shaky), 0);
    assert_int_equal(provider_model_count(s_provider(e, "good")), 2);
    s_end(e);
}

static void test_per_provider_limit_and_parallel_providers(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings,
            "{\"scenarios\":{\"c1\":{\"model_count\":20,\"latency_ms\":50},"
            "\"c2\":{\"model_count\":20,\"latency_ms\":50}}}");
    s_add_provider(e, "c1", "c1", KEY, NULL, 0);
    s_add_provider(e, "c2", "c2", KEY, NULL, 0);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE];
    s_start(e, NULL, false, false, job);
    s_drive(e);
    status_t st;
    s_status(e, job, &st);
    s_assert_done(&st, true, false);
    s_assert_provider(&st, "c1", "ok", 20, 20, 20, 0,
                      "Successfully discovered 20 valid and 0 invalid models for c1");
    s_status_clear(&st);

    json_t *c1 = fake_upstream_scenario(&e->fake, "c1");
    json_t *c2 = fake_upstream_scenario(&e->fake, "c2");
    /* Never more than per_provider_limit in flight for one provider, but more than one. */
    assert_true(fake_stat_int(c1, "max_inflight") <= 4);
    assert_true(fake_stat_int(c2, "max_inflight") <= 4);
    assert_true(fake_stat_int(c1, "max_inflight") >= 2);
    assert_true(fake_stat_int(c2, "max_inflight") >= 2);
    assert_int_equal(fake_stat_int(c1, "requests"), 21);
    /* The two providers overlapped: each one's first probe came before the other's last. */
    double c1_first = fake_stat_arrival(c1, "probe:model-000", 0);
    double c1_last = fake_stat_arrival(c1, "probe:model-019", 0);
    double c2_first = fake_stat_arrival(c2, "probe:model-000", 0);
    double c2_last = fake_stat_arrival(c2, "probe:model-019", 0);
    assert_true(c1_first < c2_last);
    assert_true(c2_first < c1_last);
    json_decref(c1);
    json_decref(c2);
    s_end(e);
}

static void test_joining_running_task(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings,
            "{\"scenarios\":{\"slow\":{\"models\":[\"a\",\"b\"],\"latency_ms\":200},"
            "\"other\":{\"models\":[\"o\"]}}}");
    s_add_provider(e, "slow", "slow", KEY, NULL, 0);
    s_add_provider(e, "other", "other", KEY, NULL, 0);
    s_seal(e);
    char first[DISCOVERY_JOB_ID_SIZE];
    char second[DISCOVERY_JOB_ID_SIZE];
    s_start(e, NULL, false, true, first);
    /* Even force_refresh joins the running task rather than restarting it. */
    s_start(e, "slow", true, true, second);
    assert_string_not_equal(first, second);
    assert_int_equal(discovery_running(e->disc), 2);
    s_drive(e);
    assert_int_equal(e->update_calls, 2); /* slow once, other once */
    assert_int_equal(e->persist_calls, 2);

    json_t *stats = fake_upstream_scenario(&e->fake, "slow");
    assert_int_equal(fake_stat_int(stats, "list"), 1);
    assert_int_equal(fake_stat_probes(stats, "a"), 1);
    json_decref(stats);
    const char *line = "Successfully discovered 2 valid and 0 invalid models for slow";
    status_t st;
    s_status(e, second, &st);
    s_assert_done(&st, true, true);
    assert_int_equal(s_provider_count(&st), 1);
    s_assert_provider(&st, "slow", "ok", 2, 2, 2, 0, line);
    const char *second_messages[] = {line, "Provider configurations persisted to YAML"};
    s_assert_messages(&st, second_messages, 2);
    s_status_clear(&st);
    s_status(e, first, &st);
    s_assert_done(&st, true, true);
    s_assert_provider(&st, "slow", "ok", 2, 2, 2, 0, line);
    s_assert_provider(&st, "other", "ok", 1, 1, 1, 0,
                      "Successfully discovered 1 valid and 0 invalid models for other");
    s_status_clear(&st);
    s_end(e);
}

static void test_skipped_providers(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings, "{\"scenarios\":{\"any\":{\"models\":[\"m\"]}}}");
    s_add_provider(e, "nokey", "any", NULL, NULL, 0);
    s_add_provider(e, "blank", "any", " \t ", NULL, 0);
    s_add_provider(e, "crlf", "any", "abc\r\nX-Evil: 1", NULL, 0);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE];
    s_start(e, NULL, false, true, job);
    /* Nothing to wait for on the network, but the persist request comes through the
     * coordinator's socket like any other outcome. */
    s_drive(e);
    assert_int_equal(e->persist_calls, 1);
    assert_int_equal(e->update_calls, 0);
    status_t st;
    s_status(e, job, &st);
    s_assert_done(&st, true, true);
    const char *messages[] = {"Skipping nokey: No valid API key configured",
                              "Skipping blank: No valid API key configured",
                              "Skipping crlf: No valid API key configured",
                              "Provider configurations persisted to YAML"};
    s_assert_messages(&st, messages, 4);
    s_assert_provider(&st, "nokey", "skipped", 0, 0, 0, 0, messages[0]);
    s_assert_provider(&st, "blank", "skipped", 0, 0, 0, 0, messages[1]);
    s_status_clear(&st);
    json_t *stats = fake_upstream_scenario(&e->fake, "any");
    assert_int_equal(fake_stat_int(stats, "requests"), 0);
    json_decref(stats);

    /* A failed persist makes the job unsuccessful, with the writer's message last. */
    e->persist_ok = false;
    s_start(e, "nokey", false, true, job);
    s_drive(e);
    s_status(e, job, &st);
    s_assert_done(&st, false, false);
    const char *failed[] = {"Skipping nokey: No valid API key configured",
                            "could not persist providers: disk full"};
    s_assert_messages(&st, failed, 2);
    s_status_clear(&st);
    s_end(e);
}

static void test_cached_provider_with_nothing_to_probe(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings, "{\"scenarios\":{\"c\":{\"models\":[\"x\"]}}}");
    const char *invalid[] = {"x", "y"};
    s_add_provider(e, "c", "c", KEY, invalid, 2);
    provider_t *p = registry_edit(e->reg, "c");
    assert_non_null(p);
    assert_int_equal(provider_set_cached_models(p, invalid, 2, e->now - 5), 0);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE];
    /* Everything finishes inside discovery_start; the update still reaches the writer. */
    s_start(e, NULL, false, true, job);
    s_drive(e);
    assert_int_equal(e->update_calls, 1);
    assert_int_equal(e->persist_calls, 1);
    status_t st;
    s_status(e, job, &st);
    s_assert_done(&st, true, true);
    s_assert_provider(&st, "c", "ok", 2, 0, 0, 2,
                      "Successfully discovered 0 valid and 2 invalid models for c");
    s_status_clear(&st);
    json_t *stats = fake_upstream_scenario(&e->fake, "c");
    assert_int_equal(fake_stat_int(stats, "requests"), 0);
    json_decref(stats);
    s_end(e);
}

static void test_removed_provider_update_dropped(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings, "{\"scenarios\":{\"r\":{\"models\":[\"x\"],\"latency_ms\":100}}}");
    s_add_provider(e, "gone", "r", KEY, NULL, 0);
    s_add_provider(e, "kept", "r", KEY, NULL, 0);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE];
    s_start(e, NULL, false, false, job);
    /* The writer removes "gone" while its discovery runs. */
    registry_t *next = registry_clone(e->reg);
    assert_int_equal(registry_remove(next, "gone"), 1);
    assert_int_equal(registry_seal(next), 0);
    registry_destroy(&e->reg);
    e->reg = next;
    s_drive(e);
    assert_int_equal(e->update_calls, 1);
    assert_string_equal(e->updated[0], "kept");
    s_end(e);
}

static void test_job_history_bounded(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings, "{}");
    s_add_provider(e, "nokey", "none", NULL, NULL, 0);
    s_seal(e);
    enum { JOBS = DISCOVERY_MAX_JOBS_KEPT + 6 };
    char ids[JOBS][DISCOVERY_JOB_ID_SIZE];
    for (int i = 0; i < JOBS; i++) {
        s_start(e, NULL, false, false, ids[i]);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(ids[i], ids[j]);
    }
    assert_int_equal(discovery_running(e->disc), 0);
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    for (int i = 0; i < JOBS; i++) {
        int rc = discovery_pack_status(e->disc, ids[i], strlen(ids[i]), &pk);
        assert_int_equal(rc, i < JOBS - DISCOVERY_MAX_JOBS_KEPT ? -1 : 0);
    }
    msgpack_sbuffer_destroy(&sbuf);
    s_end(e);
}

static void test_periodic_and_on_start(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    settings.on_start = true;
    settings.interval_minutes = 2;
    s_begin(e, &settings, "{}");
    s_add_provider(e, "nokey", "none", NULL, NULL, 0);
    s_seal(e);
    assert_int_equal(discovery_next_timeout_ms(e->disc, e->now), 0);
    discovery_tick(e->disc, e->reg, e->now);
    assert_int_equal(discovery_running(e->disc), 1); /* waits for its persist */
    s_drive(e);
    assert_int_equal(e->persist_calls, 1);
    long ms = discovery_next_timeout_ms(e->disc, e->now);
    assert_true(ms > 119000 && ms <= 120001);
    /* Not yet due: nothing starts. */
    discovery_tick(e->disc, e->reg, e->now + 60);
    assert_int_equal(discovery_running(e->disc), 0);
    e->now += 120;
    assert_int_equal(discovery_next_timeout_ms(e->disc, e->now), 0);
    discovery_tick(e->disc, e->reg, e->now);
    assert_int_equal(discovery_running(e->disc), 1);
    s_drive(e);
    assert_int_equal(e->persist_calls, 2);
    ms = discovery_next_timeout_ms(e->disc, e->now);
    assert_true(ms > 119000 && ms <= 120001);

    /* Without a schedule: -1. */
    s_end(e);
    settings = s_settings();
    s_begin(e, &settings, "{}");
    assert_int_equal(discovery_next_timeout_ms(e->disc, e->now), -1);
    s_end(e);
}

/* The state of provider key in job_status right now. */
static bool s_provider_state_is(env_t *e, const char *job, const char *key, const char *want)
{
    status_t st;
    s_status(e, job, &st);
    const msgpack_object *task_state = s_get(s_get(s_get(st.root, "providers"), key), "state");
    bool is = task_state != NULL && task_state->type == MSGPACK_OBJECT_STR &&
              task_state->via.str.size == strlen(want) &&
              memcmp(task_state->via.str.ptr, want, strlen(want)) == 0;
    s_status_clear(&st);
    return is;
}

/* Destroying the coordinator while requests hang in the workers. */
static void test_destroy_while_running(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings,
            "{\"scenarios\":{\"h\":{\"model_count\":8,"
            "\"rules\":[{\"kind\":\"probe\",\"hang\":true}]}}}");
    s_add_provider(e, "h", "h", KEY, NULL, 0);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE];
    s_start(e, NULL, false, true, job);
    bool validating = false;
    for (int i = 0; i < 250 && !validating; i++) {
        s_round(e, 20);
        validating = s_provider_state_is(e, job, "h", "validating");
    }
    assert_true(validating);
    /* The probes really hang in the workers while the coordinator is destroyed. */
    long inflight = 0;
    for (int i = 0; i < 250 && inflight < 4; i++) {
        json_t *stats = fake_upstream_scenario(&e->fake, "h");
        inflight = fake_stat_int(stats, "inflight");
        json_decref(stats);
        if (inflight < 4)
            usleep(20000);
    }
    assert_int_equal(inflight, 4); /* per_provider_limit */
    assert_int_equal(discovery_running(e->disc), 1);
    s_end(e);
}

/* A provider whose task cannot get a worker slot yet is "queued" (regression: the state was
 * never produced), with an empty message, and starts when a slot frees. */
static void test_queued_until_a_slot_frees(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    /* One task's worth of transfer slots in the whole pool: the second provider must wait. */
    settings.per_provider_limit = WORKERS * DISCOVERY_MAX_TRANSFERS;
    s_begin(e, &settings,
            "{\"scenarios\":{\"q1\":{\"models\":[\"a\"],"
            "\"rules\":[{\"kind\":\"list\",\"delay_ms\":300}]},"
            "\"q2\":{\"models\":[\"b\"]}}}");
    s_add_provider(e, "q1", "q1", KEY, NULL, 0);
    s_add_provider(e, "q2", "q2", KEY, NULL, 0);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE];
    s_start(e, NULL, false, false, job);
    status_t st;
    s_status(e, job, &st);
    s_assert_provider(&st, "q1", "listing", 0, 0, 0, 0, "");
    s_assert_provider(&st, "q2", "queued", 0, 0, 0, 0, "");
    s_status_clear(&st);
    /* A second job for q2 joins the queued task (no second task, no second list). */
    char second[DISCOVERY_JOB_ID_SIZE];
    s_start(e, "q2", false, false, second);
    assert_true(s_provider_state_is(e, second, "q2", "queued"));
    s_drive(e);
    s_status(e, job, &st);
    s_assert_done(&st, true, false);
    s_assert_provider(&st, "q1", "ok", 1, 1, 1, 0,
                      "Successfully discovered 1 valid and 0 invalid models for q1");
    s_assert_provider(&st, "q2", "ok", 1, 1, 1, 0,
                      "Successfully discovered 1 valid and 0 invalid models for q2");
    s_status_clear(&st);
    json_t *q1 = fake_upstream_scenario(&e->fake, "q1");
    json_t *q2 = fake_upstream_scenario(&e->fake, "q2");
    assert_int_equal(fake_stat_int(q2, "list"), 1);
    /* q2 started only once q1 had ended: its list came after q1's probe. */
    assert_true(fake_stat_arrival(q2, "list", 0) > fake_stat_arrival(q1, "probe:a", 0));
    json_decref(q1);
    json_decref(q2);

    /* force_refresh joining a queued task: the task lists when it starts, although q2's
     * cache is fresh now. */
    s_start(e, "q1", true, false, job);
    s_start(e, "q2", false, false, job);
    assert_true(s_provider_state_is(e, job, "q2", "queued"));
    s_start(e, "q2", true, false, second);
    s_drive(e);
    q2 = fake_upstream_scenario(&e->fake, "q2");
    assert_int_equal(fake_stat_int(q2, "list"), 2);
    json_decref(q2);
    s_status(e, job, &st);
    s_assert_done(&st, true, false);
    s_status_clear(&st);
    s_end(e);
}

/* A force_refresh job that joins a task validating the cached list is not satisfied by the
 * cache (regression: it was): the task starts over from a fresh list. */
static void test_force_refresh_joining_cached_task(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings,
            "{\"scenarios\":{\"fr\":{\"models\":[\"a\",\"b\"],"
            "\"rules\":[{\"kind\":\"probe\",\"delay_ms\":300}]}}}");
    s_add_provider(e, "fr", "fr", KEY, NULL, 0);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE];
    s_start(e, NULL, false, false, job); /* lists and fills the cache */
    s_drive(e);
    json_t *stats = fake_upstream_scenario(&e->fake, "fr");
    assert_int_equal(fake_stat_int(stats, "list"), 1);
    json_decref(stats);

    e->now += 10;
    char cached[DISCOVERY_JOB_ID_SIZE];
    s_start(e, NULL, false, false, cached); /* validates the cached list */
    assert_true(s_provider_state_is(e, cached, "fr", "validating"));
    /* A plain join shares the cached run. */
    char plain[DISCOVERY_JOB_ID_SIZE];
    s_start(e, "fr", false, false, plain);
    stats = fake_upstream_scenario(&e->fake, "fr");
    assert_int_equal(fake_stat_int(stats, "list"), 1);
    json_decref(stats);
    /* A forced join restarts it from the provider's list. */
    char forced[DISCOVERY_JOB_ID_SIZE];
    s_start(e, "fr", true, false, forced);
    assert_true(s_provider_state_is(e, forced, "fr", "listing"));
    s_drive(e);
    stats = fake_upstream_scenario(&e->fake, "fr");
    assert_int_equal(fake_stat_int(stats, "list"), 2);
    json_decref(stats);
    const char *line = "Successfully discovered 2 valid and 0 invalid models for fr";
    const char *ids[] = {cached, plain, forced};
    for (size_t i = 0; i < 3; i++) {
        status_t st;
        s_status(e, ids[i], &st);
        s_assert_done(&st, true, false);
        s_assert_provider(&st, "fr", "ok", 2, 2, 2, 0, line);
        s_assert_messages(&st, &line, 1);
        s_status_clear(&st);
    }
    /* The cache now carries the fresh list's time. */
    assert_true(provider_cache_timestamp(s_provider(e, "fr")) == e->now);
    s_end(e);
}

/* ============================================================== observer and verify jobs */

#define REC_MAX 64

/* A test observer that records every call, and answers verify_targets / is_ignored from
 * what the test set. */
typedef struct {
    int list_ok;
    char list_ok_key[REC_MAX][32];
    size_t list_ok_n[REC_MAX];
    model_meta_t first_meta[REC_MAX]; /* copy of metas[0] */
    char first_model[REC_MAX][32];
    int list_failed;
    discovery_verdict_t list_failed_verdict[REC_MAX];
    long list_failed_status[REC_MAX];
    char list_failed_message[REC_MAX][256];
    int probes;
    char probe_model[REC_MAX][32];
    discovery_verdict_t probe_verdict[REC_MAX];
    long probe_status[REC_MAX];
    double probe_latency[REC_MAX];
    int targets_calls;
    bool targets_include_invalid;
    size_t targets_only_count;
    const char *targets[8]; /* the provider's "valid" set for verify_targets */
    size_t target_count;
    const char *invalid_targets[8]; /* added with include_invalid */
    size_t invalid_target_count;
    const char *ignored; /* one ignored model name, or NULL */
    int ignored_calls;
    int parts;
    char part_key[REC_MAX][32];
    char part_job[REC_MAX][DISCOVERY_JOB_ID_SIZE];
    int part_kind[REC_MAX];
    char part_by[REC_MAX][32]; /* "" when NULL */
} recorder_t;

static void r_list_ok(void *ctx, const char *key, size_t n, const char *const *models,
                      const model_meta_t *metas, double now)
{
    (void)now;
    recorder_t *r = ctx;
    assert_true(r->list_ok < REC_MAX);
    snprintf(r->list_ok_key[r->list_ok], 32, "%s", key);
    r->list_ok_n[r->list_ok] = n;
    assert_non_null(metas);
    if (n > 0) {
        snprintf(r->first_model[r->list_ok], 32, "%s", models[0]);
        assert_int_equal(model_meta_copy(&r->first_meta[r->list_ok], &metas[0]), 0);
    }
    r->list_ok++;
}

static void r_list_failed(void *ctx, const char *key, discovery_verdict_t verdict, long http_status,
                          const char *message, double now)
{
    (void)key;
    (void)now;
    recorder_t *r = ctx;
    assert_true(r->list_failed < REC_MAX);
    r->list_failed_verdict[r->list_failed] = verdict;
    r->list_failed_status[r->list_failed] = http_status;
    snprintf(r->list_failed_message[r->list_failed], 256, "%s", message);
    r->list_failed++;
}

static void r_probe(void *ctx, const char *key, const char *model, discovery_verdict_t verdict,
                    long http_status, double latency_ms, const char *message, double now)
{
    (void)key;
    (void)now;
    recorder_t *r = ctx;
    assert_non_null(message);
    assert_null(strstr(message, KEY));
    assert_true(r->probes < REC_MAX);
    snprintf(r->probe_model[r->probes], 32, "%s", model);
    r->probe_verdict[r->probes] = verdict;
    r->probe_status[r->probes] = http_status;
    r->probe_latency[r->probes] = latency_ms;
    r->probes++;
}

static bool s_named(const char *const *only, size_t only_count, const char *name)
{
    if (only_count == 0)
        return true;
    for (size_t i = 0; i < only_count; i++)
        if (strcmp(only[i], name) == 0)
            return true;
    return false;
}

static int r_targets(void *ctx, const char *key, bool include_invalid, const char *const *only,
                     size_t only_count, char ***out, size_t *out_count)
{
    (void)key;
    recorder_t *r = ctx;
    r->targets_calls++;
    r->targets_include_invalid = include_invalid;
    r->targets_only_count = only_count;
    char **names = calloc(16, sizeof *names);
    assert_non_null(names);
    size_t n = 0;
    for (size_t i = 0; i < r->target_count; i++)
        if (s_named(only, only_count, r->targets[i]))
            names[n++] = strdup(r->targets[i]);
    for (size_t i = 0; include_invalid && i < r->invalid_target_count; i++)
        if (s_named(only, only_count, r->invalid_targets[i]))
            names[n++] = strdup(r->invalid_targets[i]);
    *out = names;
    *out_count = n;
    return 0;
}

static bool r_ignored(void *ctx, const char *key, const char *model)
{
    (void)key;
    recorder_t *r = ctx;
    r->ignored_calls++;
    return r->ignored != NULL && strcmp(r->ignored, model) == 0;
}

static void r_part_done(void *ctx, const char *key, const char *job_id, int job_kind,
                        const char *by)
{
    recorder_t *r = ctx;
    assert_true(r->parts < REC_MAX);
    snprintf(r->part_key[r->parts], 32, "%s", key);
    snprintf(r->part_job[r->parts], DISCOVERY_JOB_ID_SIZE, "%s", job_id);
    r->part_kind[r->parts] = job_kind;
    snprintf(r->part_by[r->parts], 32, "%s", by ? by : "");
    r->parts++;
}

static void s_observe(env_t *e, recorder_t *r)
{
    discovery_observer_t observer = {.ctx = r,
                                     .on_list_ok = r_list_ok,
                                     .on_list_failed = r_list_failed,
                                     .on_probe = r_probe,
                                     .verify_targets = r_targets,
                                     .is_ignored = r_ignored,
                                     .on_part_done = r_part_done};
    discovery_set_observer(e->disc, &observer);
}

static void s_recorder_clear(recorder_t *r)
{
    for (int i = 0; i < r->list_ok; i++)
        model_meta_clear(&r->first_meta[i]);
}

/* The index of model's probe record, or fails. */
static int s_probe_index(const recorder_t *r, const char *model)
{
    int found = -1;
    for (int i = 0; i < r->probes; i++)
        if (strcmp(r->probe_model[i], model) == 0) {
            if (found >= 0)
                fail_msg("model %s probed twice", model);
            found = i;
        }
    if (found < 0)
        fail_msg("model %s never probed", model);
    return found;
}

static void s_start_verify(env_t *e, const char *provider, const char *const *models,
                           size_t model_count, bool include_invalid, bool persist, char *job_id)
{
    int code = -1;
    char err[256] = "";
    if (discovery_start_verify(e->disc, e->reg, provider, models, model_count, include_invalid,
                               persist, "alice", e->now, job_id, &code, err, sizeof err) != 0)
        fail_msg("discovery_start_verify failed: %s", err);
    assert_int_equal(code, PM_OK);
}

static void s_assert_verify_provider(const status_t *st, const char *key, const char *state,
                                     uint64_t discovered, uint64_t checked, uint64_t ok,
                                     uint64_t failed, uint64_t transient, const char *message)
{
    s_assert_str(s_get(st->root, "kind"), "verify");
    const msgpack_object *p = s_get(s_get(st->root, "providers"), key);
    if (p == NULL)
        fail_msg("provider %s missing from job_status", key);
    assert_int_equal(p->via.map.size, 7);
    s_assert_str(s_get(p, "state"), state);
    assert_int_equal(s_uint(s_get(p, "discovered")), discovered);
    assert_int_equal(s_uint(s_get(p, "checked")), checked);
    assert_int_equal(s_uint(s_get(p, "ok")), ok);
    assert_int_equal(s_uint(s_get(p, "failed")), failed);
    assert_int_equal(s_uint(s_get(p, "transient")), transient);
    assert_null(s_get(p, "validated"));
    if (message != NULL)
        s_assert_str(s_get(p, "message"), message);
}

/* Discovery calls the hooks: the provider's list with normalised metadata (not a cached
 * one), each probe's verdict and latency, ignored models never probed nor counted, and one
 * part-done per job and provider. */
static void test_observer_sees_discovery(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings,
            "{\"scenarios\":{\"obs\":{\"rules\":["
            "{\"kind\":\"list\",\"json\":{\"object\":\"list\",\"data\":["
            "{\"id\":\"m0\",\"context_window\":8192,\"owned_by\":\"acme\",\"created\":1700000000},"
            "{\"id\":\"m1\"},{\"id\":\"emb\"}]}},"
            "{\"kind\":\"probe\",\"model\":\"m1\",\"status\":404}]},"
            "\"locked\":{\"models\":[\"x\"]}}}");
    recorder_t r = {.ignored = "emb"};
    s_observe(e, &r);
    s_add_provider(e, "obs", "obs", KEY, NULL, 0);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE];
    s_start(e, NULL, false, true, job);
    s_drive(e);

    assert_int_equal(r.list_ok, 1);
    assert_string_equal(r.list_ok_key[0], "obs");
    assert_int_equal(r.list_ok_n[0], 3); /* every entry, the ignored one too */
    assert_string_equal(r.first_model[0], "m0");
    assert_true(r.first_meta[0].has_context_length);
    assert_int_equal(r.first_meta[0].context_length, 8192);
    assert_string_equal(r.first_meta[0].owned_by, "acme");
    assert_int_equal(r.first_meta[0].created, 1700000000);
    assert_int_equal(r.probes, 2);
    int m0 = s_probe_index(&r, "m0");
    int m1 = s_probe_index(&r, "m1");
    assert_int_equal(r.probe_verdict[m0], DISCOVERY_VERDICT_VALID);
    assert_int_equal(r.probe_status[m0], 200);
    assert_true(r.probe_latency[m0] > 0.0);
    assert_int_equal(r.probe_verdict[m1], DISCOVERY_VERDICT_INVALID_MODEL);
    assert_int_equal(r.probe_status[m1], 404);
    assert_int_equal(r.parts, 1);
    assert_string_equal(r.part_key[0], "obs");
    assert_string_equal(r.part_job[0], job);
    assert_int_equal(r.part_kind[0], DISCOVERY_JOB_DISCOVER);
    assert_int_equal(r.list_failed, 0);

    status_t st;
    s_status(e, job, &st);
    s_assert_str(s_get(st.root, "kind"), "discover");
    s_assert_provider(&st, "obs", "ok", 2, 2, 1, 1,
                      "Successfully discovered 1 valid and 1 invalid models for obs");
    s_status_clear(&st);
    const provider_t *p = s_provider(e, "obs");
    const char *valid[] = {"m0"};
    s_assert_models(p, valid, 1);
    const char *invalid[] = {"m1"};
    s_assert_invalid(p, invalid, 1);
    json_t *stats = fake_upstream_scenario(&e->fake, "obs");
    assert_int_equal(fake_stat_probes(stats, "emb"), 0);
    json_decref(stats);

    /* From the cache: no list hook; the probes still report. */
    s_start(e, "obs", false, false, job);
    s_drive(e);
    assert_int_equal(r.list_ok, 1);
    assert_int_equal(r.probes, 3); /* m0 again; m1 is invalid now */
    assert_int_equal(r.parts, 2);
    s_end(e);

    /* A refused list. */
    recorder_t r2 = {0};
    s_begin(e, &settings, "{\"scenarios\":{\"locked\":{\"models\":[\"x\"]}}}");
    s_observe(e, &r2);
    s_add_provider(e, "locked", "locked", "sk-wrong-secret", NULL, 0);
    s_seal(e);
    s_start(e, NULL, false, true, job);
    s_drive(e);
    assert_int_equal(r2.list_failed, 1);
    assert_int_equal(r2.list_failed_verdict[0], DISCOVERY_VERDICT_AUTH);
    assert_int_equal(r2.list_failed_status[0], 401);
    assert_string_equal(r2.list_failed_message[0], "authentication failed (HTTP 401)");
    assert_int_equal(r2.list_ok, 0);
    assert_int_equal(r2.parts, 1);
    s_end(e);
    s_recorder_clear(&r);
    s_recorder_clear(&r2);
}

#define VERIFY_CONFIG                                                                              \
    "{\"scenarios\":{\"v\":{\"models\":[\"a\",\"b\",\"c\",\"x\",\"new\"],\"rules\":["              \
    "{\"kind\":\"probe\",\"model\":\"b\",\"status\":404},"                                         \
    "{\"kind\":\"probe\",\"model\":\"c\",\"status\":503}]}}}"

/* Adds provider "v" (scenario v) with valid_models a, b, c and invalid_models x. */
static void s_add_verify_provider(env_t *e)
{
    char url[256];
    snprintf(url, sizeof url, "%s/v/v1", e->fake.origin);
    provider_t *p = provider_new("v", "v", url);
    assert_non_null(p);
    assert_int_equal(provider_set_api_key(p, KEY), 0);
    const char *valid[] = {"a", "b", "c"};
    assert_int_equal(provider_merge_valid_models(p, valid, 3), 0);
    const char *invalid[] = {"x"};
    assert_int_equal(provider_set_invalid_models(p, invalid, 1), 0);
    assert_int_equal(registry_put(e->reg, &p), 0);
}

/* verify_models: re-list (bypassing a fresh cache), probe the observer's targets; counts;
 * transient does not fail the job; include_invalid returns an answering invalid model. */
static void test_verify_job(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings, VERIFY_CONFIG);
    recorder_t r = {.targets = {"a", "b", "c"},
                    .target_count = 3,
                    .invalid_targets = {"x"},
                    .invalid_target_count = 1};
    s_observe(e, &r);
    s_add_verify_provider(e);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE];
    /* A discovery first, so that the cache is fresh: verify must list anyway. */
    s_start(e, "v", false, false, job);
    s_drive(e);
    int lists_before = r.list_ok;
    int probes_before = r.probes;
    int updates_before = e->update_calls;
    int parts_before = r.parts;

    s_start_verify(e, NULL, NULL, 0, false, true, job);
    s_drive(e);
    assert_int_equal(r.list_ok, lists_before + 1);
    assert_int_equal(r.list_ok_n[lists_before], 5);
    assert_int_equal(r.targets_calls, 1);
    assert_false(r.targets_include_invalid);
    assert_int_equal(r.targets_only_count, 0);
    assert_int_equal(r.probes, probes_before + 3);
    json_t *stats = fake_upstream_scenario(&e->fake, "v");
    assert_int_equal(fake_stat_int(stats, "list"), 2);
    assert_int_equal(fake_stat_probes(stats, "c"), 2 * 2); /* 2 attempts, twice */
    json_decref(stats);
    status_t st;
    s_status(e, job, &st);
    s_assert_done(&st, true, true); /* transient does not fail a verify job */
    s_assert_verify_provider(&st, "v", "ok", 5, 3, 1, 1, 1,
                             "Successfully verified 3 models for v: 1 ok, 1 failed, 1 transient");
    s_status_clear(&st);
    assert_int_equal(e->update_calls, updates_before); /* no model changed */
    assert_int_equal(r.parts, parts_before + 1);
    assert_string_equal(r.part_job[parts_before], job);
    assert_int_equal(r.part_kind[parts_before], DISCOVERY_JOB_VERIFY);
    assert_string_equal(r.part_by[parts_before], "alice");
    int c = -1;
    for (int i = probes_before; i < r.probes; i++)
        if (strcmp(r.probe_model[i], "c") == 0)
            c = i;
    assert_true(c >= 0);
    assert_int_equal(r.probe_verdict[c], DISCOVERY_VERDICT_TRANSIENT);
    assert_int_equal(r.probe_status[c], 503);

    /* include_invalid, restricted to named models: x answers and returns; the job persists
     * although persist_on_success is false, because it changed valid_models. */
    int persists_before = e->persist_calls;
    const char *named[] = {"x", "nope"};
    s_start_verify(e, "v", named, 2, true, false, job);
    s_drive(e);
    assert_true(r.targets_include_invalid);
    assert_int_equal(r.targets_only_count, 2);
    assert_int_equal(e->update_calls, updates_before + 1);
    assert_int_equal(e->persist_calls, persists_before + 1);
    s_status(e, job, &st);
    s_assert_done(&st, true, true);
    s_assert_verify_provider(&st, "v", "ok", 5, 1, 1, 0, 0,
                             "Successfully verified 1 models for v: 1 ok, 0 failed, 0 transient");
    s_status_clear(&st);
    const provider_t *p = s_provider(e, "v");
    const char *valid[] = {"a", "b", "c", "x"}; /* a returning model goes to the end */
    s_assert_models(p, valid, 4);
    assert_int_equal(provider_invalid_count(p), 0);
    s_end(e);
    s_recorder_clear(&r);
}

/* Reading 6: a 401 list or a 401 probe fails the job and changes nothing; providers without a
 * key are skipped; unknown provider: not_found. Without an observer the targets are
 * valid_models. */
static void test_verify_failures_and_defaults(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    s_begin(e, &settings,
            "{\"scenarios\":{\"v\":{\"models\":[\"a\",\"b\",\"c\",\"x\"]},"
            "\"pa\":{\"models\":[\"a\",\"b\"],"
            "\"rules\":[{\"kind\":\"probe\",\"model\":\"a\",\"status\":401}]}}}");
    recorder_t r = {.targets = {"a", "b"}, .target_count = 2};
    s_observe(e, &r);
    s_add_provider(e, "locked", "v", "sk-wrong-secret", NULL, 0);
    s_add_provider(e, "pa", "pa", KEY, NULL, 0);
    s_add_provider(e, "nokey", "v", NULL, NULL, 0);
    s_seal(e);
    char job[DISCOVERY_JOB_ID_SIZE] = "";
    int code = 0;
    char err[128] = "";
    assert_int_equal(discovery_start_verify(e->disc, e->reg, "nope", NULL, 0, false, true, NULL,
                                            e->now, job, &code, err, sizeof err),
                     -1);
    assert_int_equal(code, PM_ERR_NOT_FOUND);
    assert_string_equal(err, "Provider 'nope' not found");

    s_start_verify(e, NULL, NULL, 0, false, true, job);
    s_drive(e);
    assert_int_equal(e->update_calls, 0);
    assert_int_equal(e->persist_calls, 0);
    status_t st;
    s_status(e, job, &st);
    s_assert_done(&st, false, false);
    s_assert_verify_provider(&st, "locked", "error", 0, 0, 0, 0, 0,
                             "Error verifying models for locked: authentication failed (HTTP 401)");
    /* A probe's 401 is no failed list: it counts in checked, changes no model and the other
     * probes go on (a 403 is often one model the key may not use). */
    s_assert_verify_provider(&st, "pa", "ok", 2, 2, 1, 0, 0,
                             "Successfully verified 2 models for pa: 1 ok, 0 failed, 0 transient");
    s_assert_verify_provider(&st, "nokey", "skipped", 0, 0, 0, 0, 0,
                             "Skipping nokey: No valid API key configured");
    s_status_clear(&st);
    assert_int_equal(r.list_failed, 1);
    assert_int_equal(r.list_failed_verdict[0], DISCOVERY_VERDICT_AUTH);
    int a = s_probe_index(&r, "a");
    assert_int_equal(r.probe_verdict[a], DISCOVERY_VERDICT_AUTH);
    assert_int_equal(r.probe_status[a], 401);
    assert_int_equal(r.parts, 3); /* locked, pa, nokey: each part ended once */
    assert_int_equal(provider_model_count(s_provider(e, "pa")), 0);
    s_end(e);
    s_recorder_clear(&r);

    /* No observer: valid_models are the targets (invalid ones only with include_invalid). */
    s_begin(e, &settings, VERIFY_CONFIG);
    s_add_verify_provider(e);
    s_seal(e);
    s_start_verify(e, "v", NULL, 0, false, false, job);
    s_drive(e);
    s_status(e, job, &st);
    s_assert_done(&st, true, false);
    s_assert_verify_provider(&st, "v", "ok", 5, 3, 1, 1, 1, NULL);
    s_status_clear(&st);
    json_t *stats = fake_upstream_scenario(&e->fake, "v");
    assert_int_equal(fake_stat_probes(stats, "x"), 0);
    assert_int_equal(fake_stat_probes(stats, "new"), 0);
    json_decref(stats);
    s_end(e);
}

/* v1.1 schedules: a list run (verify kind, no probe) one interval after start, by
 * "scheduler"; a run is skipped while the previous one runs; a verify run probes. */
static void test_scheduled_runs(void **state)
{
    env_t *e = *state;
    config_discovery_t settings = s_settings();
    settings.list_interval_minutes = 0.5; /* 30 s of the test's clock */
    s_begin(e, &settings,
            "{\"scenarios\":{\"v\":{\"models\":[\"a\",\"b\",\"c\",\"x\",\"new\"],"
            "\"rules\":[{\"kind\":\"list\",\"times\":1,\"delay_ms\":400}]}}}");
    recorder_t r = {.targets = {"a"}, .target_count = 1};
    s_observe(e, &r);
    s_add_verify_provider(e);
    s_seal(e);
    assert_int_equal(discovery_next_timeout_ms(e->disc, e->now), 30001);
    discovery_tick(e->disc, e->reg, e->now); /* arms, starts nothing */
    assert_int_equal(discovery_running(e->disc), 0);
    e->now += 30;
    assert_int_equal(discovery_next_timeout_ms(e->disc, e->now), 0);
    discovery_tick(e->disc, e->reg, e->now);
    assert_int_equal(discovery_running(e->disc), 1);
    /* Due again while the first (slow list) still runs: skipped. */
    e->now += 30;
    discovery_tick(e->disc, e->reg, e->now);
    assert_int_equal(discovery_running(e->disc), 1);
    s_drive(e);
    assert_int_equal(r.parts, 1);
    assert_int_equal(r.part_kind[0], DISCOVERY_JOB_VERIFY);
    assert_string_equal(r.part_by[0], "scheduler");
    assert_int_equal(r.list_ok, 1);
    assert_int_equal(r.targets_calls, 0); /* a list-only run probes nothing */
    assert_int_equal(r.probes, 0);
    status_t st;
    s_status(e, r.part_job[0], &st);
    s_assert_done(&st, true, false);
    s_assert_verify_provider(&st, "v", "ok", 5, 0, 0, 0, 0, "Successfully listed 5 models for v");
    s_status_clear(&st);
    /* The next run comes one interval later. */
    e->now += 30;
    discovery_tick(e->disc, e->reg, e->now);
    s_drive(e);
    assert_int_equal(r.parts, 2);
    json_t *stats = fake_upstream_scenario(&e->fake, "v");
    assert_int_equal(fake_stat_int(stats, "list"), 2);
    assert_int_equal(fake_stat_int(stats, "requests"), 2);
    json_decref(stats);
    s_end(e);
    s_recorder_clear(&r);

    /* A verify schedule probes; fractions of a minute are fine. */
    settings = s_settings();
    settings.verify_interval_minutes = 0.05;
    s_begin(e, &settings, VERIFY_CONFIG);
    recorder_t rv = {.targets = {"a"}, .target_count = 1};
    s_observe(e, &rv);
    s_add_verify_provider(e);
    s_seal(e);
    assert_int_equal(discovery_next_timeout_ms(e->disc, e->now), 3001);
    e->now += 3;
    discovery_tick(e->disc, e->reg, e->now);
    s_drive(e);
    assert_int_equal(rv.parts, 1);
    assert_string_equal(rv.part_by[0], "scheduler");
    assert_int_equal(rv.probes, 1);
    assert_int_equal(rv.probe_verdict[0], DISCOVERY_VERDICT_VALID);
    s_end(e);
    s_recorder_clear(&rv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_success_path),
        cmocka_unit_test(test_cache_and_invalid_models_not_reprobed),
        cmocka_unit_test(test_provider_filter_and_not_found),
        cmocka_unit_test(test_failing_provider),
        cmocka_unit_test(test_per_provider_limit_and_parallel_providers),
        cmocka_unit_test(test_joining_running_task),
        cmocka_unit_test(test_skipped_providers),
        cmocka_unit_test(test_cached_provider_with_nothing_to_probe),
        cmocka_unit_test(test_removed_provider_update_dropped),
        cmocka_unit_test(test_job_history_bounded),
        cmocka_unit_test(test_periodic_and_on_start),
        cmocka_unit_test(test_destroy_while_running),
        cmocka_unit_test(test_queued_until_a_slot_frees),
        cmocka_unit_test(test_force_refresh_joining_cached_task),
        cmocka_unit_test(test_observer_sees_discovery),
        cmocka_unit_test(test_verify_job),
        cmocka_unit_test(test_verify_failures_and_defaults),
        cmocka_unit_test(test_scheduled_runs),
    };
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    curl_global_cleanup();
    return failed;
}
