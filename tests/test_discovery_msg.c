/*
 * test_discovery_msg: the coordinator <-> worker codec over a real inproc PUSH/PULL pair:
 * jobs and results round-trip field by field, undecodable and half-valid jobs are told apart,
 * an empty frame is the coordinator's wake-up, garbage is EPROTO.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "discovery_msg.h"

#include <errno.h>
#include <msgpack.h>
#include <string.h>
#include <zmq.h>

typedef struct {
    void *ctx;
    void *push;
    void *pull;
} pipe_t;

static int setup(void **state)
{
    static int instance;
    pipe_t *p = calloc(1, sizeof *p);
    if (p == NULL)
        return -1;
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://test-msg-%d", ++instance);
    p->ctx = zmq_ctx_new();
    p->push = zmq_socket(p->ctx, ZMQ_PUSH);
    p->pull = zmq_socket(p->ctx, ZMQ_PULL);
    if (p->push == NULL || p->pull == NULL || zmq_bind(p->pull, ep) != 0 ||
        zmq_connect(p->push, ep) != 0)
        return -1;
    *state = p;
    return 0;
}

static int teardown(void **state)
{
    pipe_t *p = *state;
    int zero = 0;
    zmq_setsockopt(p->push, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(p->pull, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(p->push);
    zmq_close(p->pull);
    zmq_ctx_term(p->ctx);
    free(p);
    return 0;
}

/* Receives one raw message into buf; its size. */
static size_t s_recv_raw(pipe_t *p, char *buf, size_t size)
{
    int n = zmq_recv(p->pull, buf, size, 0);
    assert_true(n >= 0 && (size_t)n <= size);
    return (size_t)n;
}

static void test_job_round_trip(void **state)
{
    pipe_t *p = *state;
    discovery_job_t job = {.task = 42,
                           .req = 7,
                           .kind = DISCOVERY_KIND_PROBE,
                           .base_api_url = "http://x/v1",
                           .api_key = "sk-secret",
                           .model = "m-1"};
    assert_int_equal(discovery_job_send(p->push, &job), 0);
    char buf[4096];
    size_t n = s_recv_raw(p, buf, sizeof buf);
    discovery_job_msg_t got;
    assert_int_equal(discovery_job_decode(buf, n, &got), 0);
    assert_int_equal(got.task, 42);
    assert_int_equal(got.req, 7);
    assert_int_equal(got.kind, DISCOVERY_KIND_PROBE);
    assert_string_equal(got.base_api_url, "http://x/v1");
    assert_string_equal(got.api_key, "sk-secret");
    assert_string_equal(got.model, "m-1");
    discovery_job_msg_clear(&got);
    assert_null(got.api_key);

    /* A list has no model. */
    job.kind = DISCOVERY_KIND_LIST;
    job.model = NULL;
    assert_int_equal(discovery_job_send(p->push, &job), 0);
    n = s_recv_raw(p, buf, sizeof buf);
    assert_int_equal(discovery_job_decode(buf, n, &got), 0);
    assert_int_equal(got.kind, DISCOVERY_KIND_LIST);
    assert_null(got.model);
    discovery_job_msg_clear(&got);
}

static void test_job_bad(void **state)
{
    (void)state;
    discovery_job_msg_t got;
    /* Not msgpack at all / empty: cannot be answered. */
    assert_int_equal(discovery_job_decode("", 0, &got), -1);
    assert_int_equal(discovery_job_decode("\xc1", 1, &got), -1);
    /* Ids readable, but a probe without a model: answerable, strings NULL. */
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    msgpack_pack_str_with_body(&pk, "task", 4);
    msgpack_pack_uint64(&pk, 3);
    msgpack_pack_str_with_body(&pk, "req", 3);
    msgpack_pack_uint64(&pk, 9);
    msgpack_pack_str_with_body(&pk, "kind", 4);
    msgpack_pack_str_with_body(&pk, "probe", 5);
    msgpack_pack_str_with_body(&pk, "url", 3);
    msgpack_pack_str_with_body(&pk, "http://x", 8);
    msgpack_pack_str_with_body(&pk, "key", 3);
    msgpack_pack_str_with_body(&pk, "k", 1);
    assert_int_equal(discovery_job_decode(sbuf.data, sbuf.size, &got), 1);
    assert_int_equal(got.task, 3);
    assert_int_equal(got.req, 9);
    assert_int_equal(got.kind, DISCOVERY_KIND_PROBE);
    assert_null(got.api_key);
    assert_null(got.base_api_url);
    msgpack_sbuffer_destroy(&sbuf);
}

static void test_result_round_trip(void **state)
{
    pipe_t *p = *state;
    char *ids[] = {"a", "b"};
    model_meta_t metas[2] = {{.has_context_length = true,
                              .context_length = 128000,
                              .owned_by = "acme",
                              .has_created = true,
                              .created = 1700000000},
                             {.has_max_output_tokens = true, .max_output_tokens = 4096}};
    discovery_result_t out = {.task = 5,
                              .req = 0,
                              .kind = DISCOVERY_KIND_LIST,
                              .status = DISCOVERY_RESULT_OK,
                              .verdict = DISCOVERY_VERDICT_VALID,
                              .http_status = 200,
                              .attempts = 2,
                              .latency_ms = 12.5,
                              .model_count = 2,
                              .models = ids,
                              .metas = metas};
    assert_int_equal(discovery_result_send(p->push, &out), 0);
    discovery_result_t in;
    assert_int_equal(discovery_result_recv(p->pull, &in, 0), 0);
    assert_int_equal(in.task, 5);
    assert_int_equal(in.kind, DISCOVERY_KIND_LIST);
    assert_int_equal(in.status, DISCOVERY_RESULT_OK);
    assert_int_equal(in.http_status, 200);
    assert_int_equal(in.attempts, 2);
    assert_int_equal(in.model_count, 2);
    assert_string_equal(in.models[0], "a");
    assert_string_equal(in.models[1], "b");
    assert_null(in.error);
    assert_int_equal(in.verdict, DISCOVERY_VERDICT_VALID);
    assert_true(in.latency_ms == 12.5);
    assert_non_null(in.metas);
    assert_true(model_meta_equal(&in.metas[0], &metas[0]));
    assert_true(model_meta_equal(&in.metas[1], &metas[1]));
    assert_false(in.metas[1].has_context_length);
    discovery_result_clear(&in);

    discovery_result_t err = {.task = 5,
                              .req = 3,
                              .kind = DISCOVERY_KIND_PROBE,
                              .status = DISCOVERY_RESULT_ERROR,
                              .verdict = DISCOVERY_VERDICT_TRANSIENT,
                              .http_status = 503,
                              .model = "m",
                              .error = "HTTP 503"};
    assert_int_equal(discovery_result_send(p->push, &err), 0);
    assert_int_equal(discovery_result_recv(p->pull, &in, 0), 0);
    assert_int_equal(in.req, 3);
    assert_int_equal(in.status, DISCOVERY_RESULT_ERROR);
    assert_string_equal(in.model, "m");
    assert_string_equal(in.error, "HTTP 503");
    assert_int_equal(in.verdict, DISCOVERY_VERDICT_TRANSIENT);
    assert_null(in.metas);
    discovery_result_clear(&in);
}

static void test_result_wake_and_garbage(void **state)
{
    pipe_t *p = *state;
    discovery_result_t in;
    assert_int_equal(zmq_send(p->push, "", 0, 0), 0);
    assert_int_equal(discovery_result_recv(p->pull, &in, 0), 1);
    assert_int_equal(zmq_send(p->push, "\x93\x01\x02\x03", 4, 0), 4);
    assert_int_equal(discovery_result_recv(p->pull, &in, 0), -1);
    assert_int_equal(errno, EPROTO);
    assert_int_equal(discovery_result_recv(p->pull, &in, ZMQ_DONTWAIT), -1);
    assert_int_equal(errno, EAGAIN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_round_trip),
        cmocka_unit_test(test_job_bad),
        cmocka_unit_test(test_result_round_trip),
        cmocka_unit_test(test_result_wake_and_garbage),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
