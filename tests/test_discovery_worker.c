/*
 * test_discovery_worker: one real worker thread against tests/fake_upstream.py (list, probe,
 * retries, timeouts, caps, redirects, secrets). Timing is checked on the fake's own arrival
 * timestamps, never by timing the test itself.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "discovery_worker.h"
#include "fake_upstream.h"

#include <curl/curl.h>
#include <stdint.h>
#include <zmq.h>

#define KEY "good-key"
#define RESULT_TIMEOUT_MS 20000

/* ======================================================================== worker harness */

typedef struct {
    fake_upstream_t fake;
    void *ctx;
    void *jobs;
    void *results;
    discovery_worker_t *worker;
    config_discovery_t settings;
    char base[128]; /* origin of the fake */
    uint64_t next_req;
} harness_t;

static config_discovery_t s_default_settings(void)
{
    config_discovery_t settings = {
        .cache_duration_s = 3600,
        .max_tokens = 7,
        .per_provider_limit = 4,
        .connect_timeout_ms = 2000,
        .request_timeout_ms = 5000,
        .max_retries = 3,
        .retry_budget_ms = 10000,
        .interval_minutes = 0,
        .on_start = false,
        .list_max_bytes = 1024 * 1024,
        .probe_max_bytes = 64 * 1024,
    };
    return settings;
}

static int group_setup(void **state)
{
    harness_t *h = calloc(1, sizeof *h);
    if (h == NULL || fake_upstream_start(&h->fake, "{}") != 0) {
        free(h);
        return -1;
    }
    snprintf(h->base, sizeof h->base, "%s", h->fake.origin);
    h->ctx = zmq_ctx_new();
    *state = h;
    return h->ctx ? 0 : -1;
}

static int group_teardown(void **state)
{
    harness_t *h = *state;
    fake_upstream_stop(&h->fake);
    zmq_ctx_term(h->ctx);
    free(h);
    return 0;
}

/* Binds the pipeline ends and starts one worker with settings. */
static void s_start_worker(harness_t *h, const config_discovery_t *settings)
{
    static int instance;
    char jobs_ep[64];
    char results_ep[64];
    instance++;
    snprintf(jobs_ep, sizeof jobs_ep, "inproc://test-jobs-%d", instance);
    snprintf(results_ep, sizeof results_ep, "inproc://test-results-%d", instance);
    h->settings = *settings;
    h->jobs = zmq_socket(h->ctx, ZMQ_PUSH);
    h->results = zmq_socket(h->ctx, ZMQ_PULL);
    assert_non_null(h->jobs);
    assert_non_null(h->results);
    int zero = 0;
    assert_int_equal(zmq_setsockopt(h->jobs, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_setsockopt(h->results, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_bind(h->jobs, jobs_ep), 0);
    assert_int_equal(zmq_bind(h->results, results_ep), 0);
    h->worker = discovery_worker_new(h->ctx, settings, jobs_ep, results_ep);
    assert_non_null(h->worker);
}

static void s_stop_worker(harness_t *h)
{
    discovery_worker_destroy(&h->worker);
    assert_null(h->worker);
    discovery_worker_destroy(&h->worker); /* safe twice */
    zmq_close(h->jobs);
    zmq_close(h->results);
    h->jobs = h->results = NULL;
}

static void s_configure(harness_t *h, const char *config)
{
    assert_int_equal(fake_upstream_configure(&h->fake, config), 0);
}

static void s_url(harness_t *h, char *out, size_t size, const char *scenario)
{
    snprintf(out, size, "%s/%s/v1", h->base, scenario);
}

static uint64_t s_send(harness_t *h, discovery_kind_t kind, const char *scenario, const char *model,
                       const char *key)
{
    char url[256];
    s_url(h, url, sizeof url, scenario);
    discovery_job_t job = {.task = 7,
                           .req = ++h->next_req,
                           .kind = kind,
                           .base_api_url = url,
                           .api_key = key,
                           .model = model};
    assert_int_equal(discovery_job_send(h->jobs, &job), 0);
    return job.req;
}

static void s_recv(harness_t *h, discovery_result_t *result)
{
    zmq_pollitem_t item = {.socket = h->results, .events = ZMQ_POLLIN};
    int ready = zmq_poll(&item, 1, RESULT_TIMEOUT_MS);
    assert_int_equal(ready, 1);
    assert_int_equal(discovery_result_recv(h->results, result, ZMQ_DONTWAIT), 0);
    assert_int_equal(result->task, 7);
}

/* Runs one job and waits for its result. */
static void s_run(harness_t *h, discovery_kind_t kind, const char *scenario, const char *model,
                  const char *key, discovery_result_t *result)
{
    uint64_t req = s_send(h, kind, scenario, model, key);
    s_recv(h, result);
    assert_int_equal(result->req, req);
    assert_int_equal(result->kind, kind);
    if (result->error != NULL) {
        /* No secret in any error text, ever. */
        assert_null(strstr(result->error, key));
        assert_null(strstr(result->error, "Bearer"));
    }
}

/* ============================================================================ list tests */

static void test_list_ok_dedup_and_filters(void **state)
{
    harness_t *h = *state;
    char long_id[DISCOVERY_MAX_MODEL_ID_LEN + 2];
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0'; /* 1025 bytes: skipped */
    char max_id[DISCOVERY_MAX_MODEL_ID_LEN + 1];
    memset(max_id, 'y', sizeof max_id - 1);
    max_id[sizeof max_id - 1] = '\0'; /* 1024 bytes: kept */
    char config[8192];
    snprintf(config, sizeof config,
             "{\"scenarios\":{\"list\":{\"latency_ms\":20,\"rules\":[{\"kind\":\"list\","
             "\"json\":{\"object\":\"list\",\"data\":[{\"id\":\"b\"},{\"id\":5},{\"id\":\"a\"},"
             "{\"id\":\"b\"},{\"noid\":1},{\"id\":\"\"},\"junk\",{\"id\":\"%s\"},"
             "{\"id\":\"%s\"},{\"id\":\"c/d:e\"}]}}]}}}",
             long_id, max_id);
    s_configure(h, config);
    config_discovery_t settings = s_default_settings();
    s_start_worker(h, &settings);

    discovery_result_t r;
    s_run(h, DISCOVERY_KIND_LIST, "list", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_OK);
    assert_int_equal(r.http_status, 200);
    assert_int_equal(r.attempts, 1);
    assert_null(r.error);
    assert_int_equal(r.model_count, 4);
    assert_string_equal(r.models[0], "b");
    assert_string_equal(r.models[1], "a");
    assert_string_equal(r.models[2], max_id);
    assert_string_equal(r.models[3], "c/d:e");
    assert_int_equal(r.verdict, DISCOVERY_VERDICT_VALID);
    assert_true(r.latency_ms >= 20.0); /* the scenario's latency is part of it */
    /* Entries without metadata carry none. */
    assert_non_null(r.metas);
    for (size_t i = 0; i < r.model_count; i++)
        assert_true(model_meta_empty(&r.metas[i]));
    discovery_result_clear(&r);

    /* A trailing slash on base_api_url is not doubled. */
    char url[256];
    snprintf(url, sizeof url, "%s/list/v1/", h->base);
    discovery_job_t job = {.task = 7,
                           .req = 99,
                           .kind = DISCOVERY_KIND_LIST,
                           .base_api_url = url,
                           .api_key = KEY,
                           .model = NULL};
    assert_int_equal(discovery_job_send(h->jobs, &job), 0);
    s_recv(h, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_OK);
    discovery_result_clear(&r);
    s_stop_worker(h);

    json_t *stats = fake_upstream_scenario(&h->fake, "list");
    assert_int_equal(fake_stat_path(stats, "/list/v1/models"), 2);
    assert_int_equal(fake_stat_int(stats, "requests"), 2);
    const char *ua = json_string_value(json_array_get(json_object_get(stats, "user_agents"), 0));
    assert_non_null(ua);
    assert_string_equal(ua, "provider-manager/" PM_VERSION);
    json_decref(stats);
}

/* Per-model metadata from the entries, normalised (v1.1): OpenAI, OpenRouter-like and
 * Groq-like spellings, precedence, wrong types and nested fields ignored. */
static void test_list_metadata(void **state)
{
    harness_t *h = *state;
    s_configure(h, "{\"scenarios\":{\"meta\":{\"rules\":[{\"kind\":\"list\",\"json\":"
                   "{\"object\":\"list\",\"data\":["
                   "{\"id\":\"openai\",\"object\":\"model\",\"created\":1686935002,"
                   "\"owned_by\":\"openai\"},"
                   "{\"id\":\"router\",\"context_length\":128000,\"context_window\":5,"
                   "\"top_provider\":{\"max_completion_tokens\":999,\"context_length\":7}},"
                   "{\"id\":\"groq\",\"context_window\":131072,\"max_completion_tokens\":32768,"
                   "\"max_output_tokens\":1,\"owned_by\":\"Meta\",\"active\":true},"
                   "{\"id\":\"other\",\"max_context_length\":4096,\"max_output_tokens\":512},"
                   "{\"id\":\"wrong\",\"context_length\":\"128k\",\"created\":1.5,"
                   "\"owned_by\":42,\"max_completion_tokens\":-3},"
                   "{\"id\":\"openai\",\"owned_by\":\"duplicate\"}]}}]}}}");
    config_discovery_t settings = s_default_settings();
    s_start_worker(h, &settings);
    discovery_result_t r;
    s_run(h, DISCOVERY_KIND_LIST, "meta", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_OK);
    assert_int_equal(r.model_count, 5);
    assert_non_null(r.metas);
    const model_meta_t *m = &r.metas[0]; /* openai: the first entry of a duplicate wins */
    assert_string_equal(r.models[0], "openai");
    assert_true(m->has_created);
    assert_int_equal(m->created, 1686935002);
    assert_string_equal(m->owned_by, "openai");
    assert_false(m->has_context_length);
    assert_false(m->has_max_output_tokens);
    m = &r.metas[1]; /* router: context_length beats context_window; nested ignored */
    assert_true(m->has_context_length);
    assert_int_equal(m->context_length, 128000);
    assert_false(m->has_max_output_tokens);
    assert_null(m->owned_by);
    m = &r.metas[2]; /* groq */
    assert_int_equal(m->context_length, 131072);
    assert_true(m->has_max_output_tokens);
    assert_int_equal(m->max_output_tokens, 32768);
    assert_string_equal(m->owned_by, "Meta");
    assert_false(m->has_created);
    m = &r.metas[3];
    assert_int_equal(m->context_length, 4096);
    assert_int_equal(m->max_output_tokens, 512);
    assert_true(model_meta_empty(&r.metas[4])); /* every field of the wrong type */
    discovery_result_clear(&r);
    s_stop_worker(h);
}

static void test_list_errors(void **state)
{
    harness_t *h = *state;
    s_configure(h, "{\"scenarios\":{"
                   "\"malformed\":{\"rules\":[{\"kind\":\"list\",\"body\":\"{\\\"data\\\": [\"}]},"
                   "\"nodata\":{\"rules\":[{\"kind\":\"list\",\"json\":{\"models\":[]}}]},"
                   "\"gone\":{\"rules\":[{\"kind\":\"list\",\"status\":404}]},"
                   "\"teapot\":{\"rules\":[{\"kind\":\"list\",\"status\":418,"
                   "\"json\":{\"error\":{\"message\":\"short and stout, key={key}\"}}}]},"
                   "\"huge\":{\"rules\":[{\"kind\":\"list\",\"size\":300000,\"chunked\":true}]},"
                   "\"huge_cl\":{\"rules\":[{\"kind\":\"list\",\"size\":300000}]},"
                   "\"moved\":{\"rules\":[{\"kind\":\"list\",\"redirect\":\"/target/v1/models\"}]},"
                   "\"target\":{\"models\":[\"t\"]},"
                   "\"secure\":{\"models\":[\"a\"]}}}");
    config_discovery_t settings = s_default_settings();
    settings.list_max_bytes = 100000;
    s_start_worker(h, &settings);

    discovery_result_t r;
    s_run(h, DISCOVERY_KIND_LIST, "malformed", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_true(strncmp(r.error, "malformed model list: ", 22) == 0);
    assert_true(strlen(r.error) > 22);
    discovery_result_clear(&r);

    s_run(h, DISCOVERY_KIND_LIST, "nodata", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_string_equal(r.error, "malformed model list: no \"data\" array");
    assert_int_equal(r.verdict, DISCOVERY_VERDICT_ERROR);
    assert_null(r.models);
    discovery_result_clear(&r);

    /* For a list, "not found" is an error, not an invalid model. */
    s_run(h, DISCOVERY_KIND_LIST, "gone", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_int_equal(r.http_status, 404);
    assert_string_equal(r.error, "HTTP 404: fake error 404");
    assert_int_equal(r.verdict, DISCOVERY_VERDICT_ERROR);
    discovery_result_clear(&r);

    /* The upstream's message is quoted, with the key scrubbed out. */
    s_run(h, DISCOVERY_KIND_LIST, "teapot", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_string_equal(r.error, "HTTP 418: short and stout, key=***");
    discovery_result_clear(&r);

    s_run(h, DISCOVERY_KIND_LIST, "huge", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_string_equal(r.error, "response too large");
    discovery_result_clear(&r);

    s_run(h, DISCOVERY_KIND_LIST, "huge_cl", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_string_equal(r.error, "response too large");
    discovery_result_clear(&r);

    /* Redirects are not followed. */
    s_run(h, DISCOVERY_KIND_LIST, "moved", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_int_equal(r.http_status, 302);
    assert_true(strncmp(r.error, "HTTP 302", 8) == 0);
    discovery_result_clear(&r);

    /* A bad key fails with a fixed text, although the fake echoes the key it got. */
    s_run(h, DISCOVERY_KIND_LIST, "secure", NULL, "sk-secret-123456", &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_string_equal(r.error, "authentication failed (HTTP 401)");
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.verdict, DISCOVERY_VERDICT_AUTH);
    assert_int_equal(r.http_status, 401);
    discovery_result_clear(&r);
    s_stop_worker(h);

    json_t *target = fake_upstream_scenario(&h->fake, "target");
    assert_int_equal(fake_stat_int(target, "requests"), 0);
    json_decref(target);
    json_t *secure = fake_upstream_scenario(&h->fake, "secure");
    assert_int_equal(fake_stat_int(secure, "auth_failures"), 1);
    json_decref(secure);
}

/* ============================================================================ probe tests */

static void test_probe_verdicts(void **state)
{
    harness_t *h = *state;
    s_configure(h, "{\"scenarios\":{\"p\":{\"rules\":["
                   "{\"kind\":\"probe\",\"model\":\"gone\",\"status\":404},"
                   "{\"kind\":\"probe\",\"model\":\"nf\",\"status\":400,"
                   "\"json\":{\"error\":{\"message\":\"model {model} not found\"}}},"
                   "{\"kind\":\"probe\",\"model\":\"bad\",\"status\":400,"
                   "\"json\":{\"error\":{\"message\":\"max_tokens too big for {key}\"}}},"
                   "{\"kind\":\"probe\",\"model\":\"big\",\"size\":5000}"
                   "]}}}");
    config_discovery_t settings = s_default_settings();
    settings.probe_max_bytes = 4096;
    s_start_worker(h, &settings);

    discovery_result_t r;
    s_run(h, DISCOVERY_KIND_PROBE, "p", "works", KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_OK);
    assert_string_equal(r.model, "works");
    assert_null(r.error);
    assert_int_equal(r.verdict, DISCOVERY_VERDICT_VALID);
    assert_int_equal(r.http_status, 200);
    assert_true(r.latency_ms > 0.0);
    assert_null(r.metas);
    discovery_result_clear(&r);

    s_run(h, DISCOVERY_KIND_PROBE, "p", "gone", KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_INVALID);
    assert_int_equal(r.http_status, 404);
    assert_null(r.error);
    assert_int_equal(r.verdict, DISCOVERY_VERDICT_INVALID_MODEL);
    discovery_result_clear(&r);

    s_run(h, DISCOVERY_KIND_PROBE, "p", "nf", KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_INVALID);
    assert_int_equal(r.http_status, 400);
    discovery_result_clear(&r);

    s_run(h, DISCOVERY_KIND_PROBE, "p", "bad", KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_string_equal(r.error, "HTTP 400: max_tokens too big for ***");
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.verdict, DISCOVERY_VERDICT_ERROR);
    discovery_result_clear(&r);

    s_run(h, DISCOVERY_KIND_PROBE, "p", "big", KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_string_equal(r.error, "response too large");
    discovery_result_clear(&r);

    s_run(h, DISCOVERY_KIND_PROBE, "p", "works", "wrong-key", &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_string_equal(r.error, "authentication failed (HTTP 401)");
    assert_int_equal(r.verdict, DISCOVERY_VERDICT_AUTH);
    discovery_result_clear(&r);
    s_stop_worker(h);

    /* The probe is the seed's: one user "Hi", max_tokens from the settings. */
    json_t *stats = fake_upstream_scenario(&h->fake, "p");
    json_t *body = json_object_get(stats, "last_probe");
    assert_string_equal(json_string_value(json_object_get(body, "model")), "works");
    assert_int_equal(json_integer_value(json_object_get(body, "max_tokens")), 7);
    json_t *messages = json_object_get(body, "messages");
    assert_int_equal(json_array_size(messages), 1);
    json_t *message = json_array_get(messages, 0);
    assert_string_equal(json_string_value(json_object_get(message, "role")), "user");
    assert_string_equal(json_string_value(json_object_get(message, "content")), "Hi");
    assert_int_equal(fake_stat_path(stats, "/p/v1/chat/completions"), 6);
    json_decref(stats);
}

/* Many slow probes on ONE worker thread are in flight together. */
static void test_probe_concurrency_in_one_thread(void **state)
{
    harness_t *h = *state;
    s_configure(h, "{\"scenarios\":{\"slow\":{\"latency_ms\":300}}}");
    config_discovery_t settings = s_default_settings();
    s_start_worker(h, &settings);
    enum { N = 12 };
    char names[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "m%d", i);
        s_send(h, DISCOVERY_KIND_PROBE, "slow", names[i], KEY);
    }
    bool seen[N] = {false};
    for (int i = 0; i < N; i++) {
        discovery_result_t r;
        s_recv(h, &r);
        assert_int_equal(r.status, DISCOVERY_RESULT_OK);
        assert_true(r.req >= 1);
        seen[(r.req - 1) % N] = true;
        discovery_result_clear(&r);
    }
    for (int i = 0; i < N; i++)
        assert_true(seen[i]);
    s_stop_worker(h);
    json_t *stats = fake_upstream_scenario(&h->fake, "slow");
    assert_int_equal(fake_stat_int(stats, "requests"), N);
    /* All twelve overlapped at the fake: the thread never waited for one to finish. */
    assert_int_equal(fake_stat_int(stats, "max_inflight"), N);
    json_decref(stats);
}

/* ============================================================================ retry tests */

static void test_retry_after_honoured(void **state)
{
    harness_t *h = *state;
    s_configure(h, "{\"scenarios\":{\"busy\":{\"rules\":["
                   "{\"kind\":\"probe\",\"times\":1,\"status\":429,"
                   "\"headers\":{\"Retry-After\":\"1\"}}]}}}");
    config_discovery_t settings = s_default_settings();
    s_start_worker(h, &settings);
    discovery_result_t r;
    s_run(h, DISCOVERY_KIND_PROBE, "busy", "m", KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_OK);
    assert_int_equal(r.attempts, 2);
    discovery_result_clear(&r);
    s_stop_worker(h);
    json_t *stats = fake_upstream_scenario(&h->fake, "busy");
    assert_int_equal(fake_stat_probes(stats, "m"), 2);
    double first = fake_stat_arrival(stats, "probe:m", 0);
    double second = fake_stat_arrival(stats, "probe:m", 1);
    assert_true(first > 0 && second > 0);
    /* The second attempt came no sooner than the server asked. */
    assert_true(second - first >= 1.0);
    json_decref(stats);
}

static void test_retry_after_http_date(void **state)
{
    harness_t *h = *state;
    char date[64];
    time_t when = time(NULL) + 3;
    struct tm tm;
    gmtime_r(&when, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    char config[512];
    snprintf(config, sizeof config,
             "{\"scenarios\":{\"dated\":{\"rules\":[{\"kind\":\"list\",\"times\":1,"
             "\"status\":503,\"headers\":{\"Retry-After\":\"%s\"}}]}}}",
             date);
    s_configure(h, config);
    config_discovery_t settings = s_default_settings();
    s_start_worker(h, &settings);
    discovery_result_t r;
    s_run(h, DISCOVERY_KIND_LIST, "dated", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_OK);
    assert_int_equal(r.attempts, 2);
    discovery_result_clear(&r);
    s_stop_worker(h);
    json_t *stats = fake_upstream_scenario(&h->fake, "dated");
    double gap = fake_stat_arrival(stats, "list", 1) - fake_stat_arrival(stats, "list", 0);
    /* Whole seconds on the wire: at least two of the three remained when curl read it. */
    assert_true(gap >= 1.5);
    json_decref(stats);
}

static void test_retry_after_capped_by_budget(void **state)
{
    harness_t *h = *state;
    s_configure(h, "{\"scenarios\":{\"stingy\":{\"rules\":["
                   "{\"kind\":\"probe\",\"times\":1,\"status\":429,"
                   "\"headers\":{\"Retry-After\":\"3600\"}}]}}}");
    config_discovery_t settings = s_default_settings();
    settings.retry_budget_ms = 400;
    s_start_worker(h, &settings);
    discovery_result_t r;
    /* An hour-long Retry-After is cut to the 400 ms budget; the test's own deadline
     * (RESULT_TIMEOUT_MS) would fail it otherwise. */
    s_run(h, DISCOVERY_KIND_PROBE, "stingy", "m", KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_OK);
    assert_int_equal(r.attempts, 2);
    discovery_result_clear(&r);
    s_stop_worker(h);
    json_t *stats = fake_upstream_scenario(&h->fake, "stingy");
    assert_int_equal(fake_stat_probes(stats, "m"), 2);
    double gap = fake_stat_arrival(stats, "probe:m", 1) - fake_stat_arrival(stats, "probe:m", 0);
    assert_true(gap >= 0.3);
    json_decref(stats);
}

static void test_server_errors_retried(void **state)
{
    harness_t *h = *state;
    s_configure(h, "{\"scenarios\":{"
                   "\"down\":{\"rules\":[{\"kind\":\"any\",\"status\":500}]},"
                   "\"flaky\":{\"rules\":[{\"kind\":\"any\",\"times\":2,\"status\":502}]}}}");
    config_discovery_t settings = s_default_settings();
    settings.max_retries = 2;
    s_start_worker(h, &settings);
    discovery_result_t r;
    s_run(h, DISCOVERY_KIND_PROBE, "down", "m", KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_int_equal(r.attempts, 3);
    assert_string_equal(r.error, "HTTP 500 after 3 attempts");
    /* Retries exhausted: still an error result (v1), whose verdict says transient. */
    assert_int_equal(r.verdict, DISCOVERY_VERDICT_TRANSIENT);
    assert_int_equal(r.http_status, 500);
    discovery_result_clear(&r);

    s_run(h, DISCOVERY_KIND_LIST, "down", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_string_equal(r.error, "HTTP 500 after 3 attempts");
    assert_int_equal(r.verdict, DISCOVERY_VERDICT_TRANSIENT);
    discovery_result_clear(&r);

    s_run(h, DISCOVERY_KIND_PROBE, "flaky", "m", KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_OK);
    assert_int_equal(r.attempts, 3);
    assert_int_equal(r.verdict, DISCOVERY_VERDICT_VALID);
    assert_true(r.latency_ms > 0.0);
    discovery_result_clear(&r);
    s_stop_worker(h);

    json_t *stats = fake_upstream_scenario(&h->fake, "down");
    assert_int_equal(fake_stat_probes(stats, "m"), 3);
    assert_int_equal(fake_stat_int(stats, "list"), 3);
    json_decref(stats);
    stats = fake_upstream_scenario(&h->fake, "flaky");
    assert_int_equal(fake_stat_probes(stats, "m"), 3);
    json_decref(stats);
}

static void test_timeouts(void **state)
{
    harness_t *h = *state;
    s_configure(h, "{\"scenarios\":{"
                   "\"hang\":{\"rules\":[{\"kind\":\"any\",\"hang\":true}]},"
                   "\"drip\":{\"rules\":[{\"kind\":\"list\",\"drip_ms\":100}]}}}");
    config_discovery_t settings = s_default_settings();
    settings.request_timeout_ms = 300;
    settings.max_retries = 1;
    settings.retry_budget_ms = 2000;
    s_start_worker(h, &settings);
    discovery_result_t r;
    s_run(h, DISCOVERY_KIND_PROBE, "hang", "m", KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_int_equal(r.attempts, 2);
    assert_non_null(strstr(r.error, "timed out"));
    assert_non_null(strstr(r.error, "after 2 attempts"));
    discovery_result_clear(&r);

    s_run(h, DISCOVERY_KIND_LIST, "drip", NULL, KEY, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_non_null(strstr(r.error, "timed out"));
    discovery_result_clear(&r);
    s_stop_worker(h);
    json_t *stats = fake_upstream_scenario(&h->fake, "hang");
    assert_int_equal(fake_stat_probes(stats, "m"), 2);
    json_decref(stats);
}

static void test_connection_refused(void **state)
{
    harness_t *h = *state;
    config_discovery_t settings = s_default_settings();
    settings.max_retries = 1;
    s_start_worker(h, &settings);
    /* Port 1 on loopback: nobody listens there. */
    discovery_job_t job = {.task = 7,
                           .req = 1,
                           .kind = DISCOVERY_KIND_LIST,
                           .base_api_url = "http://127.0.0.1:1/v1",
                           .api_key = "sk-abcdef"};
    assert_int_equal(discovery_job_send(h->jobs, &job), 0);
    discovery_result_t r;
    s_recv(h, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_int_equal(r.attempts, 2);
    assert_int_equal(r.http_status, 0);
    assert_non_null(strstr(r.error, "after 2 attempts"));
    assert_null(strstr(r.error, "sk-abcdef"));
    discovery_result_clear(&r);

    /* Only http and https: anything else is refused before any I/O. */
    job.base_api_url = "file:///etc";
    job.req = 2;
    assert_int_equal(discovery_job_send(h->jobs, &job), 0);
    s_recv(h, &r);
    assert_int_equal(r.status, DISCOVERY_RESULT_ERROR);
    assert_int_equal(r.attempts, 1);
    discovery_result_clear(&r);
    s_stop_worker(h);
}

/* Destroying a worker with transfers hanging in flight returns promptly and frees all. */
static void test_destroy_with_transfers_in_flight(void **state)
{
    harness_t *h = *state;
    s_configure(h, "{\"scenarios\":{\"hang\":{\"rules\":[{\"kind\":\"any\",\"hang\":true}]}}}");
    config_discovery_t settings = s_default_settings();
    s_start_worker(h, &settings);
    for (int i = 0; i < 5; i++)
        s_send(h, DISCOVERY_KIND_PROBE, "hang", "m", KEY);
    /* Wait until the fake saw them all, so they really are in flight. */
    long seen = 0;
    long inflight = 0;
    for (int tries = 0; tries < 500; tries++) {
        json_t *stats = fake_upstream_scenario(&h->fake, "hang");
        seen = fake_stat_probes(stats, "m");
        inflight = fake_stat_int(stats, "inflight");
        json_decref(stats);
        if (seen == 5 && inflight == 5)
            break;
        usleep(20000);
    }
    /* Otherwise the destroy below would not be tested with anything in flight. */
    assert_int_equal(seen, 5);
    assert_int_equal(inflight, 5);
    s_stop_worker(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_ok_dedup_and_filters),
        cmocka_unit_test(test_list_metadata),
        cmocka_unit_test(test_list_errors),
        cmocka_unit_test(test_probe_verdicts),
        cmocka_unit_test(test_probe_concurrency_in_one_thread),
        cmocka_unit_test(test_retry_after_honoured),
        cmocka_unit_test(test_retry_after_http_date),
        cmocka_unit_test(test_retry_after_capped_by_budget),
        cmocka_unit_test(test_server_errors_retried),
        cmocka_unit_test(test_timeouts),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_destroy_with_transfers_in_flight),
    };
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    curl_global_cleanup();
    return failed;
}
