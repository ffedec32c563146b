/*
 * test_owner: the state owner's sockets (service/owner.*): all four open and usable (the front
 * end's pipe, the stop pipe, the events PUB), an events endpoint in use is a bind failure that
 * leaves nothing open, and close is safe twice.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "auth.h"
#include "config.h"
#include "log.h"
#include "owner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define EVENTS "inproc://test-owner-events"

typedef struct {
    config_t cfg;
    void *ctx;
    auth_t *auth;
} fixture_t;

static const char *s_no_env(const char *name)
{
    (void)name;
    return NULL;
}

static int s_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    char *argv[] = {"provider-manager", "--log-level", "error", NULL};
    char err[512];
    assert_int_equal(config_load(&f->cfg, 3, argv, s_no_env, err, sizeof err), 0);
    log_set_level(f->cfg.log_level);
    f->ctx = zmq_ctx_new();
    assert_non_null(f->ctx);
    f->auth = auth_new(f->ctx, &f->cfg, err, sizeof err);
    assert_non_null(f->auth);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    auth_destroy(&f->auth);
    assert_int_equal(zmq_ctx_term(f->ctx), 0);
    config_clear(&f->cfg);
    free(f);
    return 0;
}

static void s_roundtrip(void *from, void *to, const char *text)
{
    assert_int_equal(zmq_send(from, text, strlen(text), 0), (int)strlen(text));
    char buf[32];
    int n = zmq_recv(to, buf, sizeof buf, 0);
    assert_int_equal(n, (int)strlen(text));
    assert_memory_equal(buf, text, strlen(text));
}

static void test_open_use_close(void **state)
{
    fixture_t *f = *state;
    owner_sockets_t own;
    bool bind_failed = true;
    char err[256];
    assert_int_equal(owner_sockets_open(&own, f->ctx, "writer", f->auth, EVENTS, 1000, &bind_failed,
                                        err, sizeof err),
                     0);
    assert_false(bind_failed);
    char prefix[48];
    snprintf(prefix, sizeof prefix, "inproc://pm-writer-%ld-", (long)getpid());
    assert_int_equal(strncmp(own.endpoint, prefix, strlen(prefix)), 0);

    /* The front end's side of the pipe, both ways. */
    void *front = zmq_socket(f->ctx, ZMQ_PAIR);
    assert_non_null(front);
    assert_int_equal(zmq_connect(front, own.endpoint), 0);
    s_roundtrip(front, own.pipe, "W");
    s_roundtrip(own.pipe, front, "R");
    /* The stop pipe. */
    s_roundtrip(own.control, own.control_peer, "Q");
    /* The events: a subscriber gets what the PUB sends once its subscription is in. */
    void *sub = zmq_socket(f->ctx, ZMQ_SUB);
    assert_non_null(sub);
    int timeout = 2000, zero = 0;
    assert_int_equal(zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0), 0);
    assert_int_equal(zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout, sizeof timeout), 0);
    assert_int_equal(zmq_setsockopt(sub, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_setsockopt(front, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_connect(sub, EVENTS), 0);
    char buf[16];
    int got = -1;
    for (int i = 0; i < 200 && got < 0; i++) {
        assert_int_equal(zmq_send(own.pub, "ev", 2, 0), 2);
        got = zmq_recv(sub, buf, sizeof buf, ZMQ_DONTWAIT);
        if (got < 0)
            usleep(10000);
    }
    assert_int_equal(got, 2);
    zmq_close(sub);
    zmq_close(front);

    owner_sockets_close(&own);
    assert_null(own.pipe);
    assert_null(own.control);
    assert_null(own.control_peer);
    assert_null(own.pub);
    owner_sockets_close(&own); /* twice: nothing to do */
}

static void test_events_endpoint_in_use(void **state)
{
    fixture_t *f = *state;
    owner_sockets_t first, second;
    bool bind_failed = false;
    char err[256];
    assert_int_equal(owner_sockets_open(&first, f->ctx, "writer", f->auth, EVENTS, 1000,
                                        &bind_failed, err, sizeof err),
                     0);
    assert_int_equal(owner_sockets_open(&second, f->ctx, "follower", f->auth, EVENTS, 1000,
                                        &bind_failed, err, sizeof err),
                     -1);
    assert_true(bind_failed);
    assert_non_null(strstr(err, "cannot bind events endpoint " EVENTS));
    assert_null(second.pipe);
    assert_null(second.control);
    assert_null(second.control_peer);
    assert_null(second.pub);
    owner_sockets_close(&first);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_use_close, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_events_endpoint_in_use, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
