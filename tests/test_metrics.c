/*
 * test_metrics: the metrics module's counting and its text rendering (format 0.0.4): exact
 * lines for known counts, cumulative histogram buckets, label escaping, the reply-outcome
 * reader on real packed replies, and the process families from /proc.
 */
#include "metrics.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static char *s_render(metrics_t *m, bool process)
{
    metrics_text_t text = {0};
    assert_int_equal(metrics_render(m, &text, process), 0);
    assert_false(text.failed);
    assert_non_null(text.data);
    assert_int_equal(strlen(text.data), text.len);
    return text.data;
}

/* True when text holds line as a whole line. */
static bool s_has_line(const char *text, const char *line)
{
    size_t len = strlen(line);
    for (const char *at = strstr(text, line); at; at = strstr(at + 1, line)) {
        if ((at == text || at[-1] == '\n') && at[len] == '\n')
            return true;
    }
    return false;
}

#define assert_line(text, line)                                                                    \
    do {                                                                                           \
        if (!s_has_line((text), (line)))                                                           \
            fail_msg("missing line: %s\n--- text:\n%s", (line), (text));                           \
    } while (0)

static void test_request_counts_exact(void **state)
{
    (void)state;
    metrics_t *m = metrics_new("1.2.3");
    assert_non_null(m);
    metrics_requests_t *front = metrics_requests(m, METRICS_SET_FRONT);
    metrics_requests_t *writer = metrics_requests(m, METRICS_SET_WRITER);
    assert_non_null(front);
    assert_non_null(writer);
    assert_ptr_not_equal(front, writer);
    for (int i = 0; i < 3; i++)
        metrics_request_observe(front, PM_OP_GET, PM_OK, 10000);                       /* 10 us */
    metrics_request_observe(front, PM_OP_GET, PM_ERR_BAD_REQUEST, 30000);              /* 30 us */
    metrics_request_observe(front, PM_OP_COUNT_, PM_ERR_UNKNOWN_OP, 1000);             /* 1 us */
    metrics_request_observe(writer, PM_OP_SET_PROVIDER, PM_OK, 2000000);               /* 2 ms */
    metrics_request_observe(writer, PM_OP_SET_PROVIDER, PM_ERR_INTERNAL, 5000000000u); /* 5 s */
    char *text = s_render(m, false);
    assert_line(text, "provider_manager_requests_total{op=\"get\",outcome=\"ok\"} 3");
    assert_line(text, "provider_manager_requests_total{op=\"get\",outcome=\"bad_request\"} 1");
    assert_line(text, "provider_manager_requests_total{op=\"unknown\",outcome=\"unknown_op\"} 1");
    assert_line(text, "provider_manager_requests_total{op=\"set_provider\",outcome=\"ok\"} 1");
    assert_line(text,
                "provider_manager_requests_total{op=\"set_provider\",outcome=\"internal\"} 1");
    /* Series appear once counted: no zero line for an op never seen. */
    assert_null(strstr(text, "op=\"keys\""));
    /* get: three at 10 us (<= 25 us), one at 30 us (<= 50 us); cumulative. */
    assert_line(text,
                "provider_manager_request_duration_seconds_bucket{op=\"get\",le=\"2.5e-05\"} 3");
    assert_line(text,
                "provider_manager_request_duration_seconds_bucket{op=\"get\",le=\"5e-05\"} 4");
    assert_line(text, "provider_manager_request_duration_seconds_bucket{op=\"get\",le=\"0.1\"} 4");
    assert_line(text, "provider_manager_request_duration_seconds_bucket{op=\"get\",le=\"+Inf\"} 4");
    assert_line(text, "provider_manager_request_duration_seconds_sum{op=\"get\"} 0.000060000");
    assert_line(text, "provider_manager_request_duration_seconds_count{op=\"get\"} 4");
    /* set_provider: 2 ms in le=0.0025, 5 s above every bound: only in +Inf. */
    assert_line(
        text,
        "provider_manager_request_duration_seconds_bucket{op=\"set_provider\",le=\"0.001\"} 0");
    assert_line(
        text,
        "provider_manager_request_duration_seconds_bucket{op=\"set_provider\",le=\"0.0025\"} 1");
    assert_line(
        text, "provider_manager_request_duration_seconds_bucket{op=\"set_provider\",le=\"0.1\"} 1");
    assert_line(
        text,
        "provider_manager_request_duration_seconds_bucket{op=\"set_provider\",le=\"+Inf\"} 2");
    assert_line(text,
                "provider_manager_request_duration_seconds_sum{op=\"set_provider\"} 5.002000000");
    assert_line(text, "# TYPE provider_manager_requests_total counter");
    assert_line(text, "# TYPE provider_manager_request_duration_seconds histogram");
    assert_line(text, "provider_manager_build_info{version=\"1.2.3\"} 1");
    free(text);
    metrics_destroy(&m);
    assert_null(m);
    metrics_destroy(&m);
}

static void test_gauges_commits_jobs(void **state)
{
    (void)state;
    metrics_t *m = metrics_new("1.0.0");
    size_t counts[STATUS_STATE_COUNT] = {0};
    counts[STATUS_VALID] = 7;
    counts[STATUS_INVALID] = 2;
    counts[STATUS_UNVERIFIED] = 1;
    metrics_set_state(m, 42, 9, 4, counts);
    metrics_commit_observe(m, 0.0002);
    metrics_commit_observe(m, 0.003);
    metrics_commit_observe(m, 30.0);
    metrics_job_done(m, METRICS_JOB_DISCOVER, true);
    metrics_job_done(m, METRICS_JOB_DISCOVER, true);
    metrics_job_done(m, METRICS_JOB_VERIFY, false);
    metrics_set_auth_refusals(m, 5);
    char *text = s_render(m, false);
    assert_line(text, "provider_manager_state_version 42");
    assert_line(text, "provider_manager_status_version 9");
    assert_line(text, "provider_manager_providers 4");
    assert_line(text, "provider_manager_models{state=\"valid\"} 7");
    assert_line(text, "provider_manager_models{state=\"invalid\"} 2");
    assert_line(text, "provider_manager_models{state=\"unverified\"} 1");
    assert_line(text, "provider_manager_models{state=\"failing\"} 0");
    assert_line(text, "# TYPE provider_manager_models gauge");
    assert_line(text, "provider_manager_commits_total 3");
    assert_line(text, "provider_manager_commit_duration_seconds_bucket{le=\"0.00025\"} 1");
    assert_line(text, "provider_manager_commit_duration_seconds_bucket{le=\"0.005\"} 2");
    assert_line(text, "provider_manager_commit_duration_seconds_bucket{le=\"10\"} 2");
    assert_line(text, "provider_manager_commit_duration_seconds_bucket{le=\"+Inf\"} 3");
    assert_line(text, "provider_manager_commit_duration_seconds_sum 30.0032");
    assert_line(text, "provider_manager_commit_duration_seconds_count 3");
    assert_line(text, "provider_manager_jobs_total{kind=\"discover\",result=\"success\"} 2");
    assert_line(text, "provider_manager_jobs_total{kind=\"discover\",result=\"failure\"} 0");
    assert_line(text, "provider_manager_jobs_total{kind=\"verify\",result=\"failure\"} 1");
    assert_line(text, "provider_manager_auth_refusals_total 5");
    /* No process families when they are not asked for. */
    assert_null(strstr(text, "process_"));
    free(text);
    metrics_destroy(&m);
}

static void test_upstream_and_escaping(void **state)
{
    (void)state;
    metrics_t *m = metrics_new("v\"1\\\n");
    metrics_upstream_observe(m, "openai", METRICS_UPSTREAM_LIST, METRICS_VERDICT_VALID, 0.2);
    metrics_upstream_observe(m, "openai", METRICS_UPSTREAM_PROBE, METRICS_VERDICT_VALID, 0.04);
    metrics_upstream_observe(m, "openai", METRICS_UPSTREAM_PROBE, METRICS_VERDICT_INVALID_MODEL,
                             3.0);
    metrics_upstream_observe(m, "openai", METRICS_UPSTREAM_PROBE, METRICS_VERDICT_AUTH, -1);
    metrics_upstream_observe(m, "we\"ird\\na\nme", METRICS_UPSTREAM_LIST, METRICS_VERDICT_TRANSIENT,
                             61.0);
    /* Out of range: ignored, never a crash. */
    metrics_upstream_observe(m, "openai", (metrics_upstream_kind_t)7, METRICS_VERDICT_VALID, 1);
    metrics_upstream_observe(m, "openai", METRICS_UPSTREAM_LIST, (metrics_verdict_t)9, 1);
    metrics_upstream_observe(m, NULL, METRICS_UPSTREAM_LIST, METRICS_VERDICT_VALID, 1);
    char *text = s_render(m, false);
    assert_line(text, "provider_manager_upstream_requests_total{provider=\"openai\",kind=\"list\","
                      "verdict=\"valid\"} 1");
    assert_line(text, "provider_manager_upstream_requests_total{provider=\"openai\",kind=\"probe\","
                      "verdict=\"valid\"} 1");
    assert_line(text, "provider_manager_upstream_requests_total{provider=\"openai\",kind=\"probe\","
                      "verdict=\"invalid_model\"} 1");
    assert_line(text, "provider_manager_upstream_requests_total{provider=\"openai\",kind=\"probe\","
                      "verdict=\"auth\"} 1");
    /* The auth probe had no latency: counted, not timed (count 2 of 3 probes). */
    assert_line(text, "provider_manager_upstream_duration_seconds_count{provider=\"openai\","
                      "kind=\"probe\"} 2");
    assert_line(text, "provider_manager_upstream_duration_seconds_bucket{provider=\"openai\","
                      "kind=\"probe\",le=\"0.05\"} 1");
    assert_line(text, "provider_manager_upstream_duration_seconds_bucket{provider=\"openai\","
                      "kind=\"probe\",le=\"2.5\"} 1");
    assert_line(text, "provider_manager_upstream_duration_seconds_bucket{provider=\"openai\","
                      "kind=\"probe\",le=\"5\"} 2");
    assert_line(text, "provider_manager_upstream_duration_seconds_sum{provider=\"openai\","
                      "kind=\"probe\"} 3.04");
    /* Escaping: backslash, quote and newline, in that spelling. */
    assert_line(text, "provider_manager_upstream_requests_total{provider=\"we\\\"ird\\\\na\\nme\","
                      "kind=\"list\",verdict=\"transient\"} 1");
    assert_line(text, "provider_manager_upstream_duration_seconds_bucket{provider=\"we\\\"ird\\\\na"
                      "\\nme\",kind=\"list\",le=\"60\"} 0");
    assert_line(text, "provider_manager_upstream_duration_seconds_bucket{provider=\"we\\\"ird\\\\na"
                      "\\nme\",kind=\"list\",le=\"+Inf\"} 1");
    assert_line(text, "provider_manager_build_info{version=\"v\\\"1\\\\\\n\"} 1");
    /* No raw newline inside any label: every line is a comment or name{...} value. */
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        assert_non_null(end);
        if (*line != '#')
            assert_true(strncmp(line, "provider_manager_", 17) == 0);
        line = end + 1;
    }
    free(text);
    metrics_destroy(&m);
}

static void test_upstream_provider_cap(void **state)
{
    (void)state;
    metrics_t *m = metrics_new("1");
    char name[32];
    for (int i = 0; i < METRICS_MAX_UPSTREAM_PROVIDERS + 10; i++) {
        snprintf(name, sizeof name, "p%d", i);
        metrics_upstream_observe(m, name, METRICS_UPSTREAM_LIST, METRICS_VERDICT_VALID, 0.1);
    }
    char *text = s_render(m, false);
    assert_line(text, "provider_manager_upstream_requests_total{provider=\"_other\",kind=\"list\","
                      "verdict=\"valid\"} 10");
    assert_null(strstr(text, "provider=\"p1030\""));
    free(text);
    metrics_destroy(&m);
}

/* Packs a reply the way the daemon does and returns its outcome. */
static pm_error_t s_outcome_of(bool ok, pm_error_t code, bool with_id)
{
    msgpack_sbuffer buffer;
    msgpack_sbuffer_init(&buffer);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buffer, msgpack_sbuffer_write);
    /* An id that holds the very bytes the reader looks for, nested. */
    msgpack_zone zone;
    msgpack_zone_init(&zone, 256);
    msgpack_object id;
    const char tricky[] = "\x82\xa4"
                          "code\xa9not_found\xa5"
                          "error\x91\xc3";
    size_t off = 0;
    assert_int_equal(msgpack_unpack(tricky, sizeof tricky - 1, &off, &zone, &id),
                     MSGPACK_UNPACK_SUCCESS);
    if (ok) {
        pm_reply_ok_begin(&pk, with_id ? &id : NULL);
        msgpack_pack_array(&pk, 2);
        pm_pack_str(&pk, "a");
        msgpack_pack_nil(&pk);
    } else {
        pm_reply_error(&pk, with_id ? &id : NULL, code, "some \"message\"");
    }
    pm_error_t outcome = metrics_reply_outcome(buffer.data, buffer.size);
    /* Every cut of the bytes is refused cleanly (never read past the end). */
    for (size_t cut = 0; cut < buffer.size; cut++) {
        pm_error_t partial = metrics_reply_outcome(buffer.data, cut);
        if (partial != PM_OK)
            assert_true(partial > PM_OK && partial < PM_ERR_COUNT_);
    }
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&buffer);
    return outcome;
}

static void test_reply_outcome(void **state)
{
    (void)state;
    assert_int_equal(s_outcome_of(true, PM_OK, false), PM_OK);
    assert_int_equal(s_outcome_of(true, PM_OK, true), PM_OK);
    for (pm_error_t code = PM_ERR_BAD_REQUEST; code < PM_ERR_COUNT_; code++) {
        assert_int_equal(s_outcome_of(false, code, false), code);
        assert_int_equal(s_outcome_of(false, code, true), code);
    }
    assert_int_equal(metrics_reply_outcome(NULL, 0), PM_ERR_INTERNAL);
    assert_int_equal(metrics_reply_outcome("\xc0", 1), PM_ERR_INTERNAL);
    /* A map of 15 pairs that claims more than it has. */
    assert_int_equal(metrics_reply_outcome("\x8f\xa2ok", 4), PM_ERR_INTERNAL);
}

static void test_serving(void **state)
{
    (void)state;
    metrics_t *m = metrics_new("1");
    char reason[64] = "";
    assert_false(metrics_serving(m, reason, sizeof reason));
    assert_string_equal(reason, "starting");
    metrics_set_serving(m, true, NULL);
    assert_true(metrics_serving(m, reason, sizeof reason));
    metrics_set_serving(m, false, "stopping");
    assert_false(metrics_serving(m, reason, sizeof reason));
    assert_string_equal(reason, "stopping");
    metrics_destroy(&m);
}

static void test_process_families(void **state)
{
    (void)state;
    metrics_t *m = metrics_new("1");
    char *text = s_render(m, true);
    assert_line(text, "# TYPE process_cpu_seconds_total counter");
    assert_line(text, "# TYPE process_resident_memory_bytes gauge");
    assert_line(text, "# TYPE process_open_fds gauge");
    assert_line(text, "# TYPE process_start_time_seconds gauge");
    const char *rss = strstr(text, "\nprocess_resident_memory_bytes ");
    assert_non_null(rss);
    assert_true(strtoll(rss + 31, NULL, 10) > 1024 * 1024); /* a process has at least 1 MiB */
    const char *fds = strstr(text, "\nprocess_open_fds ");
    assert_non_null(fds);
    assert_true(strtol(fds + 18, NULL, 10) >= 3); /* stdin, stdout, stderr */
    free(text);
    metrics_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_counts_exact),  cmocka_unit_test(test_gauges_commits_jobs),
        cmocka_unit_test(test_upstream_and_escaping), cmocka_unit_test(test_upstream_provider_cap),
        cmocka_unit_test(test_reply_outcome),         cmocka_unit_test(test_serving),
        cmocka_unit_test(test_process_families),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
