/*
 * test_front: the request front end in process, with the real writer thread behind it, over
 * inproc: REQ and DEALER callers, reads answered from the snapshot, a write forwarded to the
 * writer and its reply routed back, malformed requests, concurrent DEALER requests routed to
 * the right caller by their envelope, and the refusal of a read reply above the reply limit.
 * Read replica mode against a fake follower (a PAIR socket of the test that speaks the
 * writer's protocol): the refusals in their order, reads from the follower's snapshot,
 * forwarded ops routed both ways, and health's role, lag_versions and primary_seen_s.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "config.h"
#include "frames.h"
#include "front.h"
#include "pm_proto.h"
#include "store.h"
#include "writer.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define REQUEST_ENDPOINT "inproc://test-front-requests"
#define EVENTS_ENDPOINT "inproc://test-front-events"
#define RECV_TIMEOUT_MS 5000
#define CALLERS 4
#define PER_CALLER 25

typedef struct {
    char dir[PATH_MAX];
    config_t cfg;
    void *ctx;
    writer_t *writer;
    front_t *front;
    auth_t *auth;
    int stop_pipe[2];
    pthread_t thread;
    bool running;
    int front_rc;
    void *fake; /* replica mode: the test's end of the front's pipe (the fake follower) */
} fixture_t;

static const char *s_no_env(const char *name)
{
    (void)name;
    return NULL;
}

static void *s_front_thread(void *arg)
{
    fixture_t *f = arg;
    f->front_rc = front_run(f->front, f->stop_pipe[0]);
    return NULL;
}

/* Everything but the front's thread, so that a test can adjust the front before it runs. */
static int s_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/pm-test-front-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    char data_dir[PATH_MAX + 8];
    snprintf(data_dir, sizeof data_dir, "%s/data", f->dir);
    char *argv[] = {"provider-manager",
                    "--endpoint",
                    REQUEST_ENDPOINT,
                    "--events-endpoint",
                    EVENTS_ENDPOINT,
                    "--data-dir",
                    data_dir,
                    "--workers",
                    "1",
                    "--log-level",
                    "error",
                    NULL};
    char err[512];
    assert_int_equal(config_load(&f->cfg, 11, argv, s_no_env, err, sizeof err), 0);
    assert_int_equal(store_prepare_dir(f->cfg.data_dir, err, sizeof err), 0);
    registry_t *reg = NULL;
    assert_int_equal(config_build_registry(&f->cfg, s_no_env, &reg, NULL, NULL, err, sizeof err),
                     0);
    f->ctx = zmq_ctx_new();
    assert_non_null(f->ctx);
    f->auth = auth_new(f->ctx, &f->cfg, err, sizeof err);
    assert_non_null(f->auth);
    bool bind_failed = false;
    f->writer = writer_new(f->ctx, &f->cfg, f->auth, s_no_env, &reg, &bind_failed, err, sizeof err);
    assert_non_null(f->writer);
    snapshot_t *first = writer_first_snapshot(f->writer);
    f->front = front_new(f->ctx, &f->cfg, f->auth, writer_endpoint(f->writer), &first, &bind_failed,
                         err, sizeof err);
    assert_non_null(f->front);
    assert_null(first); /* the front took it */
    /* As the daemon runs it: blocking receives while no write is in hand. */
    front_set_handoffs(f->front, writer_handoffs(f->writer));
    assert_int_equal(pipe(f->stop_pipe), 0);
    *state = f;
    return 0;
}

#define PRIMARY_ENDPOINT "tcp://primary.test:5555"
#define FAKE_FOLLOWER_ENDPOINT "inproc://test-front-fake-follower"

/* What the fake follower tells health. */
static int64_t s_announced = 10, s_since_ms = 1500;

static void s_fake_seen(void *arg, int64_t *primary_version, int64_t *since_ms)
{
    (void)arg;
    *primary_version = s_announced;
    *since_ms = s_since_ms;
}

/* A front end in replica mode whose follower is the test's PAIR socket (f->fake). */
static int s_setup_replica(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/pm-test-front-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    char *argv[] = {"provider-manager", "--endpoint",  REQUEST_ENDPOINT, "--events-endpoint",
                    EVENTS_ENDPOINT,    "--log-level", "error",          NULL};
    char err[512];
    assert_int_equal(config_load(&f->cfg, 7, argv, s_no_env, err, sizeof err), 0);
    f->ctx = zmq_ctx_new();
    assert_non_null(f->ctx);
    f->auth = auth_new(f->ctx, &f->cfg, err, sizeof err);
    assert_non_null(f->auth);
    f->fake = zmq_socket(f->ctx, ZMQ_PAIR);
    assert_non_null(f->fake);
    int timeout = RECV_TIMEOUT_MS, zero = 0;
    assert_int_equal(zmq_setsockopt(f->fake, ZMQ_RCVTIMEO, &timeout, sizeof timeout), 0);
    assert_int_equal(zmq_setsockopt(f->fake, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_bind(f->fake, FAKE_FOLLOWER_ENDPOINT), 0);
    registry_t *empty = registry_new();
    assert_non_null(empty);
    assert_int_equal(registry_seal(empty), 0);
    snapshot_t *first = snapshot_new(empty, 0, 0);
    registry_destroy(&empty);
    bool bind_failed = false;
    f->front = front_new(f->ctx, &f->cfg, f->auth, FAKE_FOLLOWER_ENDPOINT, &first, &bind_failed,
                         err, sizeof err);
    assert_non_null(f->front);
    assert_int_equal(front_set_replica(f->front, PRIMARY_ENDPOINT, s_fake_seen, NULL), 0);
    assert_int_equal(pipe(f->stop_pipe), 0);
    *state = f;
    return 0;
}

static void s_start(fixture_t *f)
{
    assert_int_equal(pthread_create(&f->thread, NULL, s_front_thread, f), 0);
    f->running = true;
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    if (f->running) {
        char byte = 1;
        assert_int_equal(write(f->stop_pipe[1], &byte, 1), 1);
        if (f->fake) {
            /* The fake follower confirms the stop as the follower does. */
            char type = 0;
            do {
                zmq_msg_t part;
                zmq_msg_init(&part);
                assert_true(zmq_msg_recv(&part, f->fake, 0) >= 0);
                if (zmq_msg_size(&part) == 1)
                    type = *(const char *)zmq_msg_data(&part);
                zmq_msg_close(&part);
            } while (type != WRITER_MSG_STOP);
            assert_int_equal(zmq_send(f->fake, &type, 1, 0), 1);
        }
        pthread_join(f->thread, NULL);
        assert_int_equal(f->front_rc, 0);
    }
    front_destroy(&f->front);
    assert_null(f->front);
    if (f->fake)
        zmq_close(f->fake);
    writer_destroy(&f->writer);
    auth_destroy(&f->auth);
    assert_int_equal(zmq_ctx_term(f->ctx), 0);
    close(f->stop_pipe[0]);
    close(f->stop_pipe[1]);
    config_clear(&f->cfg);
    char command[PATH_MAX + 16];
    snprintf(command, sizeof command, "rm -rf '%s'", f->dir);
    assert_int_equal(system(command), 0);
    free(f);
    return 0;
}

/* ------------------------------------------------------------------------ helpers */

static void *s_socket(fixture_t *f, int type)
{
    void *socket = zmq_socket(f->ctx, type);
    assert_non_null(socket);
    int timeout = RECV_TIMEOUT_MS, zero = 0;
    assert_int_equal(zmq_setsockopt(socket, ZMQ_RCVTIMEO, &timeout, sizeof timeout), 0);
    assert_int_equal(zmq_setsockopt(socket, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_connect(socket, REQUEST_ENDPOINT), 0);
    return socket;
}

/* {"op": op, "id": id, "args": {}} */
static void s_pack_op(msgpack_sbuffer *buf, const char *op, long long id)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, op, true, id);
    msgpack_pack_map(&pk, 0);
}

/* {"op": op, "id": id, "args": {name: value}} */
static void s_pack_op1(msgpack_sbuffer *buf, const char *op, long long id, const char *name,
                       const char *value)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, op, true, id);
    msgpack_pack_map(&pk, 1);
    pm_pack_str(&pk, name);
    pm_pack_str(&pk, value);
}

/* set_provider of key with `models` models named "<key>-model-<i>" (short "s<i>"). */
static void s_pack_set_provider(msgpack_sbuffer *buf, long long id, const char *key, int models)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, "set_provider", true, id);
    msgpack_pack_map(&pk, 4);
    pm_pack_str(&pk, "provider");
    pm_pack_str(&pk, key);
    pm_pack_str(&pk, "name");
    pm_pack_str(&pk, key);
    pm_pack_str(&pk, "base_api_url");
    pm_pack_str(&pk, "http://127.0.0.1:9/v1");
    pm_pack_str(&pk, "valid_models");
    msgpack_pack_map(&pk, (uint32_t)models);
    for (int i = 0; i < models; i++) {
        char lng[64], shrt[16];
        snprintf(lng, sizeof lng, "%s-model-%d", key, i);
        snprintf(shrt, sizeof shrt, "s%d", i);
        pm_pack_str(&pk, lng);
        pm_pack_str(&pk, shrt);
    }
}

/* Sends buf: on a DEALER behind an empty delimiter, on a REQ as is. */
static void s_send(void *socket, bool dealer, const void *data, size_t size)
{
    if (dealer)
        assert_int_equal(zmq_send(socket, "", 0, ZMQ_SNDMORE), 0);
    assert_int_equal(zmq_send(socket, data, size, 0), (int)size);
}

/* Receives and decodes one reply (body stays valid until zmq_msg_close). */
static void s_recv(void *socket, bool dealer, pm_reply_t *rep, zmq_msg_t *body)
{
    if (dealer) {
        char delimiter[8];
        assert_int_equal(zmq_recv(socket, delimiter, sizeof delimiter, 0), 0);
    }
    zmq_msg_init(body);
    assert_true(zmq_msg_recv(body, socket, 0) > 0);
    assert_false(zmq_msg_more(body));
    char err[256];
    assert_int_equal(pm_reply_decode(rep, zmq_msg_data(body), zmq_msg_size(body), err, sizeof err),
                     0);
}

/* One request/reply round trip of buf. */
static void s_call(void *socket, bool dealer, const msgpack_sbuffer *buf, pm_reply_t *rep,
                   zmq_msg_t *body)
{
    s_send(socket, dealer, buf->data, buf->size);
    s_recv(socket, dealer, rep, body);
}

static long long s_id(const pm_reply_t *rep)
{
    assert_non_null(rep->id);
    assert_true(rep->id->type == MSGPACK_OBJECT_POSITIVE_INTEGER);
    return (long long)rep->id->via.u64;
}

static void s_assert_message(const pm_reply_t *rep, pm_error_t code, const char *message)
{
    assert_false(rep->ok);
    assert_int_equal(rep->code, code);
    assert_int_equal(rep->message.len, strlen(message));
    assert_memory_equal(rep->message.ptr, message, rep->message.len);
}

/* ------------------------------------------------------------------------ tests */

/* A REQ caller: a read from the first snapshot, then a write that goes through the writer,
 * then a read that sees it (the snapshot arrives before the write's reply is routed). */
static void test_req_read_write_read(void **state)
{
    fixture_t *f = *state;
    s_start(f);
    void *req = s_socket(f, ZMQ_REQ);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    pm_reply_t rep;
    zmq_msg_t body;

    s_pack_op1(&buf, "contains", 1, "provider_name", "fronttest");
    s_call(req, false, &buf, &rep, &body);
    assert_true(rep.ok);
    assert_int_equal(s_id(&rep), 1);
    assert_true(rep.result->type == MSGPACK_OBJECT_BOOLEAN && !rep.result->via.boolean);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    buf.size = 0;
    s_pack_set_provider(&buf, 2, "fronttest", 3);
    s_call(req, false, &buf, &rep, &body);
    assert_true(rep.ok);
    assert_int_equal(s_id(&rep), 2);
    assert_non_null(pm_map_get(rep.result, "valid_models"));
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    buf.size = 0;
    s_pack_op1(&buf, "get_api_for_model_string", 3, "model_string", "fronttest/fronttest-model-1");
    s_call(req, false, &buf, &rep, &body);
    assert_true(rep.ok);
    assert_int_equal(s_id(&rep), 3);
    assert_true(rep.result->type == MSGPACK_OBJECT_ARRAY && rep.result->via.array.size == 2);
    const msgpack_object *cfg = &rep.result->via.array.ptr[0];
    const msgpack_object *key = pm_map_get(cfg, "provider");
    assert_non_null(key);
    assert_int_equal(key->via.str.size, strlen("fronttest"));
    assert_memory_equal(key->via.str.ptr, "fronttest", key->via.str.size);
    const msgpack_object *lng = &rep.result->via.array.ptr[1];
    assert_int_equal(lng->via.str.size, strlen("fronttest-model-1"));
    assert_memory_equal(lng->via.str.ptr, "fronttest-model-1", lng->via.str.size);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    /* An error from the read path keeps the id. */
    buf.size = 0;
    s_pack_op1(&buf, "validate_model", 4, "model_string", "fronttest/nosuch");
    s_call(req, false, &buf, &rep, &body);
    assert_int_equal(s_id(&rep), 4);
    s_assert_message(&rep, PM_ERR_INVALID_MODEL, "Invalid model for provider fronttest: nosuch");
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    msgpack_sbuffer_destroy(&buf);
    zmq_close(req);
}

/* Malformed requests: each is answered (or dropped) and the front goes on serving. */
static void test_malformed_requests(void **state)
{
    fixture_t *f = *state;
    s_start(f);
    void *dealer = s_socket(f, ZMQ_DEALER);
    pm_reply_t rep;
    zmq_msg_t body;

    static const unsigned char never_used[] = {0xc1};
    s_send(dealer, true, never_used, sizeof never_used);
    s_recv(dealer, true, &rep, &body);
    assert_null(rep.id);
    s_assert_message(&rep, PM_ERR_BAD_REQUEST,
                     "request is not valid msgpack: format byte 0xc1 (never used) at offset 0");
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    /* A bin inside args: refused, with the id (issue 13). */
    static const unsigned char bin_arg[] = {0x83, 0xa2, 'i',  'd', 0x2a, 0xa2, 'o', 'p',
                                            0xa3, 'g',  'e',  't', 0xa4, 'a',  'r', 'g',
                                            's',  0x81, 0xa1, 'k', 0xc4, 0x01, 'x'};
    s_send(dealer, true, bin_arg, sizeof bin_arg);
    s_recv(dealer, true, &rep, &body);
    assert_int_equal(s_id(&rep), 42);
    s_assert_message(&rep, PM_ERR_BAD_REQUEST,
                     "request is not valid msgpack: binary data where text was expected");
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    /* Two body frames, and none. */
    assert_int_equal(zmq_send(dealer, "", 0, ZMQ_SNDMORE), 0);
    assert_int_equal(zmq_send(dealer, "\x80", 1, ZMQ_SNDMORE), 1);
    assert_int_equal(zmq_send(dealer, "\x80", 1, 0), 1);
    s_recv(dealer, true, &rep, &body);
    s_assert_message(&rep, PM_ERR_BAD_REQUEST, "request must be one frame");
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    assert_int_equal(zmq_send(dealer, "", 0, 0), 0);
    s_recv(dealer, true, &rep, &body);
    s_assert_message(&rep, PM_ERR_BAD_REQUEST, "request is empty");
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    /* No delimiter: nothing to route a reply by, so it is dropped; the next request is
     * answered normally (and is the only reply that arrives). */
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_pack_op(&buf, "health", 7);
    assert_int_equal(zmq_send(dealer, buf.data, buf.size, 0), (int)buf.size);
    s_send(dealer, true, buf.data, buf.size);
    s_recv(dealer, true, &rep, &body);
    assert_true(rep.ok);
    assert_int_equal(s_id(&rep), 7);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    msgpack_sbuffer_destroy(&buf);
    zmq_pollitem_t item = {dealer, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&item, 1, 100), 0);

    zmq_close(dealer);
}

/* Several DEALER callers pipeline reads and writes at once: every reply comes back to the
 * caller that sent the request, with its id, each exactly once. */
static void test_concurrent_dealers_are_routed(void **state)
{
    fixture_t *f = *state;
    s_start(f);
    void *dealers[CALLERS];
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    for (int c = 0; c < CALLERS; c++) {
        dealers[c] = s_socket(f, ZMQ_DEALER);
        for (int i = 0; i < PER_CALLER; i++) {
            long long id = c * 1000 + i;
            buf.size = 0;
            if (i % 5 == 4) {
                char key[32];
                snprintf(key, sizeof key, "caller%d", c);
                s_pack_set_provider(&buf, id, key, 1);
            } else {
                s_pack_op(&buf, i % 2 ? "keys" : "health", id);
            }
            s_send(dealers[c], true, buf.data, buf.size);
        }
    }
    for (int c = 0; c < CALLERS; c++) {
        bool seen[PER_CALLER] = {false};
        for (int i = 0; i < PER_CALLER; i++) {
            pm_reply_t rep;
            zmq_msg_t body;
            s_recv(dealers[c], true, &rep, &body);
            assert_true(rep.ok);
            long long id = s_id(&rep);
            assert_int_equal(id / 1000, c);
            assert_in_range(id % 1000, 0, PER_CALLER - 1);
            assert_false(seen[id % 1000]);
            seen[id % 1000] = true;
            pm_reply_clear(&rep);
            zmq_msg_close(&body);
        }
        zmq_pollitem_t item = {dealers[c], 0, ZMQ_POLLIN, 0};
        assert_int_equal(zmq_poll(&item, 1, 50), 0);
        zmq_close(dealers[c]);
    }
    msgpack_sbuffer_destroy(&buf);
}

/* A read reply above the reply limit is refused with `internal`, and the message says how big
 * it would have been; smaller replies, and the writer's replies, still go out. */
static void test_reply_over_the_limit_is_refused(void **state)
{
    fixture_t *f = *state;
    front_set_max_reply(f->front, 4000);
    s_start(f);
    void *req = s_socket(f, ZMQ_REQ);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    pm_reply_t rep;
    zmq_msg_t body;

    /* set_provider answers with the ProviderConfig: the same reply as getitem's, byte for
     * byte (same id width), but built by the writer, which the read limit does not cover. */
    s_pack_set_provider(&buf, 1, "big", 400);
    s_call(req, false, &buf, &rep, &body);
    assert_true(rep.ok);
    size_t full = zmq_msg_size(&body);
    assert_true(full > 4000);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    buf.size = 0;
    s_pack_op1(&buf, "getitem", 2, "provider_name", "big");
    s_call(req, false, &buf, &rep, &body);
    assert_int_equal(s_id(&rep), 2);
    char expected[128];
    snprintf(expected, sizeof expected, "Reply of %zu bytes exceeds the 4000-byte reply limit",
             full);
    s_assert_message(&rep, PM_ERR_INTERNAL, expected);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    /* A small read still passes. */
    buf.size = 0;
    s_pack_op1(&buf, "contains", 3, "provider_name", "big");
    s_call(req, false, &buf, &rep, &body);
    assert_true(rep.ok);
    assert_true(rep.result->via.boolean);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    msgpack_sbuffer_destroy(&buf);
    zmq_close(req);
}

/* The string value of key in map (asserts it is a str). */
static void s_assert_str(const msgpack_object *map, const char *key, const char *value)
{
    const msgpack_object *v = pm_map_get(map, key);
    assert_non_null(v);
    assert_int_equal(v->type, MSGPACK_OBJECT_STR);
    assert_int_equal(v->via.str.size, strlen(value));
    assert_memory_equal(v->via.str.ptr, value, v->via.str.size);
}

/* One call of op (no arguments) expecting the error code and message. */
static void s_expect_error(void *req, const char *op, long long id, pm_error_t code,
                           const char *message)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_pack_op(&buf, op, id);
    pm_reply_t rep;
    zmq_msg_t body;
    s_call(req, false, &buf, &rep, &body);
    assert_int_equal(s_id(&rep), id);
    s_assert_message(&rep, code, message);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    msgpack_sbuffer_destroy(&buf);
}

/* The fake follower hands the front a registry with one provider at state_version 7. */
static void s_fake_snapshot(fixture_t *f)
{
    registry_t *reg = registry_new();
    assert_non_null(reg);
    provider_t *p = provider_new("replicated", "Replicated", "https://replicated.test/v1");
    assert_non_null(p);
    assert_int_equal(registry_put(reg, &p), 0);
    assert_int_equal(registry_seal(reg), 0);
    snapshot_t *snap = snapshot_new(reg, 7, 0);
    registry_destroy(&reg);
    assert_non_null(snap);
    snap->status_version = 3;
    snprintf(snap->epoch, sizeof snap->epoch, "00000000000000ab");
    WRITER_TSAN_RELEASE(snap); /* as the follower does (writer.h) */
    char type = WRITER_MSG_SNAPSHOT;
    assert_int_equal(zmq_send(f->fake, &type, 1, ZMQ_SNDMORE), 1);
    assert_int_equal(zmq_send(f->fake, &snap, sizeof snap, 0), (int)sizeof snap);
}

/* A replica before its first snapshot: unavailable for every op but health (whose
 * primary_seen_s is nil), after bad_request and unknown_op; then reads from the snapshot,
 * read_only for writes and jobs, forwarded ops through the follower both ways. */
static void test_replica_mode(void **state)
{
    fixture_t *f = *state;
    s_start(f);
    void *req = s_socket(f, ZMQ_REQ);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    pm_reply_t rep;
    zmq_msg_t body;
    const char *not_synced = "Replica not yet synchronised with " PRIMARY_ENDPOINT;
    const char *read_only = "Read-only replica; send writes to " PRIMARY_ENDPOINT;

    s_since_ms = -1;
    s_announced = -1;
    s_expect_error(req, "keys", 1, PM_ERR_UNAVAILABLE, not_synced);
    s_expect_error(req, "set_provider", 2, PM_ERR_UNAVAILABLE, not_synced);
    s_expect_error(req, "model_status", 3, PM_ERR_UNAVAILABLE, not_synced);
    s_expect_error(req, "no_such_op", 4, PM_ERR_UNKNOWN_OP, "Unknown op 'no_such_op'");
    s_pack_op(&buf, "health", 5);
    s_call(req, false, &buf, &rep, &body);
    assert_true(rep.ok);
    assert_int_equal(rep.result->via.map.size, 15);
    s_assert_str(rep.result, "role", "replica");
    assert_int_equal(pm_map_get(rep.result, "primary_seen_s")->type, MSGPACK_OBJECT_NIL);
    assert_int_equal(pm_map_get(rep.result, "lag_versions")->via.u64, 0);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    s_fake_snapshot(f);
    s_since_ms = 1500;
    s_announced = 10;
    /* The snapshot is applied before the next request is read (the pipe comes first), but
     * the pipe may still be in flight: wait for it. */
    for (int i = 0; i < 200; i++) {
        buf.size = 0;
        s_pack_op1(&buf, "contains", 6, "provider_name", "replicated");
        s_call(req, false, &buf, &rep, &body);
        bool done = rep.ok;
        if (done)
            assert_true(rep.result->via.boolean);
        pm_reply_clear(&rep);
        zmq_msg_close(&body);
        if (done)
            break;
        assert_true(i < 199);
        usleep(5000);
    }
    buf.size = 0;
    s_pack_op(&buf, "health", 7);
    s_call(req, false, &buf, &rep, &body);
    assert_true(rep.ok);
    s_assert_str(rep.result, "role", "replica");
    s_assert_str(rep.result, "epoch", "00000000000000ab");
    assert_int_equal(pm_map_get(rep.result, "state_version")->via.u64, 7);
    assert_int_equal(pm_map_get(rep.result, "status_version")->via.u64, 3);
    assert_int_equal(pm_map_get(rep.result, "lag_versions")->via.u64, 3);
    const msgpack_object *seen = pm_map_get(rep.result, "primary_seen_s");
    assert_int_equal(seen->type, MSGPACK_OBJECT_FLOAT64);
    assert_true(seen->via.f64 > 1.49 && seen->via.f64 < 1.51);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    static const char *const refused[] = {"set_provider",    "remove_provider",
                                          "set_short_name",  "persist_provider_configs",
                                          "discover_models", "verify_models"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        s_expect_error(req, refused[i], 10 + (long long)i, PM_ERR_READ_ONLY, read_only);

    /* A forwarded op reaches the follower as a request ('W'), and its reply is routed back
     * as it is. */
    static const char *const forwarded[] = {"model_status", "provider_status", "job_status"};
    for (size_t i = 0; i < 3; i++) {
        buf.size = 0;
        s_pack_op(&buf, forwarded[i], 20 + (long long)i);
        s_send(req, false, buf.data, buf.size);
        zmq_msg_t frames[8];
        bool overflow = false;
        int n = frames_recv(f->fake, 0, frames, 8, &overflow);
        assert_true(n >= 3);
        assert_false(overflow);
        assert_int_equal(*(const char *)zmq_msg_data(&frames[0]), WRITER_MSG_REQUEST);
        assert_int_equal(zmq_msg_size(&frames[n - 1]), buf.size);
        assert_memory_equal(zmq_msg_data(&frames[n - 1]), buf.data, buf.size);
        msgpack_sbuffer answer;
        msgpack_sbuffer_init(&answer);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &answer, msgpack_sbuffer_write);
        msgpack_object id = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = 20 + (uint64_t)i};
        pm_reply_ok_begin(&pk, &id);
        pm_pack_str(&pk, forwarded[i]);
        char type = WRITER_MSG_REPLY;
        assert_int_equal(zmq_send(f->fake, &type, 1, ZMQ_SNDMORE), 1);
        for (int k = 1; k < n - 1; k++)
            assert_true(zmq_msg_send(&frames[k], f->fake, ZMQ_SNDMORE) >= 0);
        assert_int_equal(zmq_send(f->fake, answer.data, answer.size, 0), (int)answer.size);
        zmq_msg_close(&frames[0]);
        zmq_msg_close(&frames[n - 1]);
        s_recv(req, false, &rep, &body);
        assert_true(rep.ok);
        assert_int_equal(s_id(&rep), 20 + (long long)i);
        assert_int_equal(rep.result->via.str.size, strlen(forwarded[i]));
        pm_reply_clear(&rep);
        zmq_msg_close(&body);
        msgpack_sbuffer_destroy(&answer);
    }
    msgpack_sbuffer_destroy(&buf);
    zmq_close(req);
}

/* A primary's health: the v1.1 keys plus role "primary", nothing of a replica's. */
static void test_primary_health_role(void **state)
{
    fixture_t *f = *state;
    s_start(f);
    void *req = s_socket(f, ZMQ_REQ);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    pm_reply_t rep;
    zmq_msg_t body;
    s_pack_op(&buf, "health", 1);
    s_call(req, false, &buf, &rep, &body);
    assert_true(rep.ok);
    assert_int_equal(rep.result->via.map.size, 13);
    s_assert_str(rep.result, "role", "primary");
    assert_null(pm_map_get(rep.result, "lag_versions"));
    assert_null(pm_map_get(rep.result, "primary_seen_s"));
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    msgpack_sbuffer_destroy(&buf);
    zmq_close(req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_req_read_write_read, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_requests, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_dealers_are_routed, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_reply_over_the_limit_is_refused, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_replica_mode, s_setup_replica, s_teardown),
        cmocka_unit_test_setup_teardown(test_primary_health_role, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
