/*
 * test_follower: the read replica's thread in process, over inproc, between a fake primary (a
 * ROUTER for requests and a PUB for events, driven by the test) and a fake front end (the
 * test's PAIR on the follower's pipe): the tagged snapshot request and its reply handed on as
 * an 'S', a changed event applied (another 'S') and re-published on the replica's own events
 * socket with the replica's heartbeats, a forwarded op answered by the primary and routed back
 * byte for byte, one the primary leaves unanswered getting `unavailable` after the timeout,
 * and the stop handshake answering what still waits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "config.h"
#include "follower.h"
#include "frames.h"
#include "log.h"
#include "pm_proto.h"
#include "wire.h"
#include "writer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define PRIMARY_REQ "inproc://test-follower-primary-req"
#define PRIMARY_EV "inproc://test-follower-primary-ev"
#define REPLICA_EV "inproc://test-follower-replica-ev"
#define RECV_TIMEOUT_MS 5000
#define EPOCH "00000000000000aa"

typedef struct {
    void *ctx;
    config_t cfg;
    auth_t *auth;
    void *router, *pub; /* the fake primary */
    void *front;        /* the fake front end */
    void *sub;          /* a subscriber of the replica */
    follower_t *follower;
} fixture_t;

static void *s_socket(void *ctx, int type)
{
    void *socket = zmq_socket(ctx, type);
    assert_non_null(socket);
    int timeout = RECV_TIMEOUT_MS, zero = 0;
    assert_int_equal(zmq_setsockopt(socket, ZMQ_RCVTIMEO, &timeout, sizeof timeout), 0);
    assert_int_equal(zmq_setsockopt(socket, ZMQ_LINGER, &zero, sizeof zero), 0);
    return socket;
}

static const char *s_no_env(const char *name)
{
    (void)name;
    return NULL;
}

static int s_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    char *argv[] = {"provider-manager",
                    "--endpoint",
                    "inproc://test-follower-unused",
                    "--events-endpoint",
                    REPLICA_EV,
                    "--heartbeat-ms",
                    "5000",
                    "--log-level",
                    "error",
                    NULL};
    char err[512];
    assert_int_equal(config_load(&f->cfg, 9, argv, s_no_env, err, sizeof err), 0);
    log_set_level(f->cfg.log_level);
    /* inproc endpoints are not accepted from a command line (no other process could reach
     * them); in process they are what the test needs. */
    f->cfg.replica_of = strdup(PRIMARY_REQ);
    f->cfg.replica_events = strdup(PRIMARY_EV);
    assert_non_null(f->cfg.replica_of);
    assert_non_null(f->cfg.replica_events);
    f->ctx = zmq_ctx_new();
    assert_non_null(f->ctx);
    f->auth = auth_new(f->ctx, &f->cfg, err, sizeof err);
    assert_non_null(f->auth);
    f->router = s_socket(f->ctx, ZMQ_ROUTER);
    assert_int_equal(zmq_bind(f->router, PRIMARY_REQ), 0);
    f->pub = s_socket(f->ctx, ZMQ_PUB);
    assert_int_equal(zmq_bind(f->pub, PRIMARY_EV), 0);
    bool bind_failed = false;
    f->follower = follower_new(f->ctx, &f->cfg, f->auth, &bind_failed, err, sizeof err);
    if (!f->follower)
        fail_msg("follower_new: %s", err);
    f->front = s_socket(f->ctx, ZMQ_PAIR);
    assert_int_equal(zmq_connect(f->front, follower_endpoint(f->follower)), 0);
    snapshot_t *first = follower_first_snapshot(f->follower);
    assert_non_null(first);
    assert_int_equal(registry_count(first->registry), 0);
    assert_string_equal(first->epoch, "");
    snapshot_destroy(&first);
    f->sub = s_socket(f->ctx, ZMQ_SUB);
    assert_int_equal(zmq_setsockopt(f->sub, ZMQ_SUBSCRIBE, "", 0), 0);
    assert_int_equal(zmq_connect(f->sub, REPLICA_EV), 0);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    follower_destroy(&f->follower);
    assert_null(f->follower);
    zmq_close(f->front);
    zmq_close(f->sub);
    zmq_close(f->router);
    zmq_close(f->pub);
    auth_destroy(&f->auth);
    assert_int_equal(zmq_ctx_term(f->ctx), 0);
    config_clear(&f->cfg);
    free(f);
    return 0;
}

/* ------------------------------------------------------------------------ helpers */

/* A request the fake primary received: [identity][tag][empty][body]. */
typedef struct {
    zmq_msg_t frames[4];
    int count;
} request_t;

static void s_primary_recv(fixture_t *f, request_t *req)
{
    bool overflow = false;
    req->count = frames_recv(f->router, 0, req->frames, 4, &overflow);
    assert_int_equal(req->count, 4);
    assert_false(overflow);
    assert_int_equal(zmq_msg_size(&req->frames[2]), 0);
}

static bool s_body_is(const zmq_msg_t *body, const void *data, size_t size)
{
    return zmq_msg_size((zmq_msg_t *)body) == size &&
           memcmp(zmq_msg_data((zmq_msg_t *)body), data, size) == 0;
}

/* Answers req with body (the envelope echoed, as the primary's ROUTER does). */
static void s_primary_answer(fixture_t *f, request_t *req, const void *body, size_t size)
{
    for (int i = 0; i < 3; i++)
        assert_true(zmq_msg_send(&req->frames[i], f->router, ZMQ_SNDMORE) >= 0);
    assert_int_equal(zmq_send(f->router, body, size, 0), (int)size);
    zmq_msg_close(&req->frames[3]);
}

static void s_request_close(request_t *req)
{
    frames_close(req->frames, (size_t)req->count);
}

/* One provider's ProviderConfig as the service packs it. */
static void s_pack_config(msgpack_packer *pk, const char *key, const char *name)
{
    provider_t *p = provider_new(key, name, "https://example.test/v1");
    assert_non_null(p);
    wire_pack_provider(pk, p);
    provider_destroy(&p);
}

static void s_snapshot_reply(msgpack_sbuffer *buf, uint64_t version)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    pm_reply_ok_begin(&pk, NULL);
    msgpack_pack_map(&pk, 4);
    pm_pack_str(&pk, "state_version");
    msgpack_pack_uint64(&pk, version);
    pm_pack_str(&pk, "status_version");
    msgpack_pack_uint64(&pk, 9);
    pm_pack_str(&pk, "epoch");
    pm_pack_str(&pk, EPOCH);
    pm_pack_str(&pk, "providers");
    msgpack_pack_array(&pk, 1);
    s_pack_config(&pk, "acme", "Acme");
}

/* The next 'S' from the follower (other messages are failures). Caller destroys it. */
static snapshot_t *s_front_snapshot(fixture_t *f)
{
    char type = 0;
    assert_int_equal(zmq_recv(f->front, &type, 1, 0), 1);
    assert_int_equal(type, WRITER_MSG_SNAPSHOT);
    snapshot_t *snap = NULL;
    assert_int_equal(zmq_recv(f->front, &snap, sizeof snap, 0), (int)sizeof snap);
    assert_non_null(snap);
    WRITER_TSAN_ACQUIRE(snap); /* as the front end does (writer.h) */
    return snap;
}

/* The replica is synchronised at version 5 with the one provider "acme". */
static void s_synchronise(fixture_t *f)
{
    request_t req;
    s_primary_recv(f, &req);
    uint8_t expected[] = {0x81, 0xa2, 'o', 'p', 0xa8, 's', 'n', 'a', 'p', 's', 'h', 'o', 't'};
    assert_true(s_body_is(&req.frames[3], expected, sizeof expected));
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_snapshot_reply(&buf, 5);
    s_primary_answer(f, &req, buf.data, buf.size);
    msgpack_sbuffer_destroy(&buf);
    snapshot_t *snap = s_front_snapshot(f);
    assert_int_equal(snap->state_version, 5);
    assert_int_equal(snap->status_version, 9);
    assert_string_equal(snap->epoch, EPOCH);
    assert_int_equal(registry_count(snap->registry), 1);
    assert_non_null(registry_get(snap->registry, "acme", 4));
    snapshot_destroy(&snap);
}

/* Sends a forwarded request of op with id to the follower, as the front end does. */
static void s_front_forward(fixture_t *f, const char *op, long long id, msgpack_sbuffer *body)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, body, msgpack_sbuffer_write);
    pm_request_begin(&pk, op, true, id);
    msgpack_pack_map(&pk, 0);
    char type = WRITER_MSG_REQUEST;
    assert_int_equal(zmq_send(f->front, &type, 1, ZMQ_SNDMORE), 1);
    assert_int_equal(zmq_send(f->front, "caller-1", 8, ZMQ_SNDMORE), 8);
    assert_int_equal(zmq_send(f->front, "", 0, ZMQ_SNDMORE), 0);
    assert_int_equal(zmq_send(f->front, body->data, body->size, 0), (int)body->size);
}

/* The next 'R' for "caller-1"; its body goes into reply (caller closes it). */
static void s_front_reply(fixture_t *f, zmq_msg_t *reply)
{
    zmq_msg_t frames[5];
    bool overflow = false;
    int n = frames_recv(f->front, 0, frames, 5, &overflow);
    assert_int_equal(n, 4);
    assert_int_equal(*(const char *)zmq_msg_data(&frames[0]), WRITER_MSG_REPLY);
    assert_true(s_body_is(&frames[1], "caller-1", 8));
    assert_int_equal(zmq_msg_size(&frames[2]), 0);
    *reply = frames[3];
    frames_close(frames, 3);
}

static int64_t s_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The follower's hand-off count reaches expected (it is counted just after each send). */
static void s_assert_handoffs(fixture_t *f, uint64_t expected)
{
    const atomic_uint_fast64_t *handoffs = follower_handoffs(f->follower);
    for (int i = 0; i < 200 && atomic_load(handoffs) != expected; i++) {
        struct timespec pause = {0, 5 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    assert_int_equal(atomic_load(handoffs), expected);
}

/* ------------------------------------------------------------------------ tests */

/* Snapshot, then a changed event: applied ('S' at 6 with the new provider), re-published as it
 * came, and the replica's own heartbeats at its version with the primary's epoch. */
static void test_snapshot_event_republish_heartbeat(void **state)
{
    fixture_t *f = *state;
    int64_t announced = 0, since = 0;
    follower_seen(f->follower, &announced, &since);
    assert_int_equal(since, -1);
    s_synchronise(f);
    follower_seen(f->follower, &announced, &since);
    assert_true(since >= 0 && since < 1000);

    /* The replica's first heartbeat (sent at once after the snapshot) also proves the test's
     * subscription is live. heartbeat_ms is long (5 s) so that the fake primary's silence
     * (no heartbeats of its own) does not start a re-snapshot during a test. */
    zmq_msg_t frames[2];
    bool overflow;
    int n = frames_recv(f->sub, 0, frames, 2, &overflow);
    assert_int_equal(n, 2);
    assert_true(s_body_is(&frames[0], "providers", 9));
    msgpack_unpacked heartbeat;
    msgpack_unpacked_init(&heartbeat);
    assert_int_equal(
        msgpack_unpack_next(&heartbeat, zmq_msg_data(&frames[1]), zmq_msg_size(&frames[1]), NULL),
        MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *event = pm_map_get(&heartbeat.data, "event");
    assert_non_null(event);
    assert_int_equal(event->via.str.size, 9);
    assert_memory_equal(event->via.str.ptr, "heartbeat", 9);
    assert_int_equal(pm_map_get(&heartbeat.data, "state_version")->via.u64, 5);
    assert_int_equal(pm_map_get(&heartbeat.data, "status_version")->via.u64, 9);
    const msgpack_object *epoch = pm_map_get(&heartbeat.data, "epoch");
    assert_int_equal(epoch->via.str.size, strlen(EPOCH));
    assert_memory_equal(epoch->via.str.ptr, EPOCH, strlen(EPOCH));
    msgpack_unpacked_destroy(&heartbeat);
    frames_close(frames, 2);

    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    pm_pack_str(&pk, "event");
    pm_pack_str(&pk, "changed");
    pm_pack_str(&pk, "state_version");
    msgpack_pack_uint64(&pk, 6);
    pm_pack_str(&pk, "providers");
    msgpack_pack_array(&pk, 1);
    pm_pack_str(&pk, "newco");
    pm_pack_str(&pk, "configs");
    msgpack_pack_array(&pk, 1);
    s_pack_config(&pk, "newco", "New Co");
    pm_pack_str(&pk, "epoch");
    pm_pack_str(&pk, EPOCH);
    assert_int_equal(zmq_send(f->pub, "providers", 9, ZMQ_SNDMORE), 9);
    assert_int_equal(zmq_send(f->pub, buf.data, buf.size, 0), (int)buf.size);
    snapshot_t *snap = s_front_snapshot(f);
    assert_int_equal(snap->state_version, 6);
    assert_int_equal(registry_count(snap->registry), 2);
    assert_non_null(registry_get(snap->registry, "newco", 5));
    snapshot_destroy(&snap);
    follower_seen(f->follower, &announced, &since);
    assert_int_equal(announced, 6);

    /* Re-published byte for byte (heartbeats may come first). */
    for (;;) {
        n = frames_recv(f->sub, 0, frames, 2, &overflow);
        assert_int_equal(n, 2);
        bool same = s_body_is(&frames[1], buf.data, buf.size);
        frames_close(frames, 2);
        if (same)
            break;
    }
    msgpack_sbuffer_destroy(&buf);
}

/* A forwarded op: the primary gets the caller's body as it is, behind the follower's tag; its
 * answer reaches the caller byte for byte. One it leaves unanswered gets `unavailable` after
 * FOLLOWER_FORWARD_TIMEOUT_MS, with the caller's id. */
static void test_forwarded_ops(void **state)
{
    fixture_t *f = *state;
    s_synchronise(f);
    msgpack_sbuffer body;
    msgpack_sbuffer_init(&body);
    s_front_forward(f, "model_status", 41, &body);
    request_t req;
    s_primary_recv(f, &req);
    assert_int_equal(zmq_msg_size(&req.frames[1]), 8); /* the tag */
    assert_true(s_body_is(&req.frames[3], body.data, body.size));
    const char answer[] = "\x83\xa2ok\xc3\xa2id\x29\xa6result\x90"; /* ok, id 41, [] */
    s_primary_answer(f, &req, answer, sizeof answer - 1);
    zmq_msg_t reply;
    s_front_reply(f, &reply);
    assert_true(s_body_is(&reply, answer, sizeof answer - 1));
    zmq_msg_close(&reply);
    s_assert_handoffs(f, 2); /* the snapshot and this reply */

    /* Unanswered. */
    body.size = 0;
    int64_t t0 = s_ms();
    s_front_forward(f, "provider_status", 42, &body);
    request_t late;
    s_primary_recv(f, &late);
    s_front_reply(f, &reply);
    int64_t waited = s_ms() - t0;
    assert_true(waited >= FOLLOWER_FORWARD_TIMEOUT_MS - 50);
    assert_true(waited < FOLLOWER_FORWARD_TIMEOUT_MS + 3000);
    pm_reply_t rep;
    char err[128];
    assert_int_equal(
        pm_reply_decode(&rep, zmq_msg_data(&reply), zmq_msg_size(&reply), err, sizeof err), 0);
    assert_false(rep.ok);
    assert_int_equal(rep.code, PM_ERR_UNAVAILABLE);
    const char *message = "Primary " PRIMARY_REQ " did not answer";
    assert_int_equal(rep.message.len, strlen(message));
    assert_memory_equal(rep.message.ptr, message, rep.message.len);
    assert_non_null(rep.id);
    assert_int_equal(rep.id->via.u64, 42);
    pm_reply_clear(&rep);
    zmq_msg_close(&reply);
    s_assert_handoffs(f, 3);

    /* A late answer to it is dropped (the next 'R' below is job_status's); the stop handshake
     * answers what still waits. */
    s_primary_answer(f, &late, answer, sizeof answer - 1);
    body.size = 0;
    s_front_forward(f, "job_status", 43, &body);
    s_primary_recv(f, &req);
    s_request_close(&req);
    char type = WRITER_MSG_STOP;
    assert_int_equal(zmq_send(f->front, &type, 1, 0), 1);
    s_front_reply(f, &reply);
    assert_int_equal(
        pm_reply_decode(&rep, zmq_msg_data(&reply), zmq_msg_size(&reply), err, sizeof err), 0);
    assert_int_equal(rep.code, PM_ERR_UNAVAILABLE);
    assert_int_equal(rep.id->via.u64, 43);
    pm_reply_clear(&rep);
    zmq_msg_close(&reply);
    assert_int_equal(zmq_recv(f->front, &type, 1, 0), 1);
    assert_int_equal(type, WRITER_MSG_STOP);
    msgpack_sbuffer_destroy(&body);
}

/* A snapshot reply that is an error (e.g. the primary is itself a replica not yet
 * synchronised) is no snapshot: nothing reaches the front end, and the request is sent again
 * after the backoff. */
static void test_failed_snapshot_is_retried(void **state)
{
    fixture_t *f = *state;
    request_t req;
    s_primary_recv(f, &req);
    const char refusal[] = "\x82\xa2ok\xc2\xa5"
                           "error\x82\xa4"
                           "code\xabunavailable\xa7"
                           "message\xa4"
                           "busy";
    s_primary_answer(f, &req, refusal, sizeof refusal - 1);
    s_synchronise(f); /* the next request, answered */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_snapshot_event_republish_heartbeat, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_forwarded_ops, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_failed_snapshot_is_retried, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
