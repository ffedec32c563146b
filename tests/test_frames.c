/*
 * test_frames: frames_recv over a real inproc PAIR: a whole message kept frame by frame, the
 * frames past max received and dropped (overflow) without leaking into the next message, a
 * message of exactly max frames, and an empty socket with ZMQ_DONTWAIT (0, nothing kept).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "frames.h"
#include "inproc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    void *ctx;
    void *sender;
    void *receiver;
} fixture_t;

static int s_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->ctx = zmq_ctx_new();
    assert_non_null(f->ctx);
    char endpoint[64];
    inproc_endpoint(endpoint, sizeof endpoint, "test-frames");
    f->receiver = zmq_socket(f->ctx, ZMQ_PAIR);
    f->sender = zmq_socket(f->ctx, ZMQ_PAIR);
    assert_non_null(f->receiver);
    assert_non_null(f->sender);
    int zero = 0, timeout = 5000;
    assert_int_equal(zmq_setsockopt(f->receiver, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_setsockopt(f->sender, ZMQ_LINGER, &zero, sizeof zero), 0);
    /* A blocking receive that would wait for ever fails the test instead. */
    assert_int_equal(zmq_setsockopt(f->receiver, ZMQ_RCVTIMEO, &timeout, sizeof timeout), 0);
    assert_int_equal(zmq_bind(f->receiver, endpoint), 0);
    assert_int_equal(zmq_connect(f->sender, endpoint), 0);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    zmq_close(f->sender);
    zmq_close(f->receiver);
    assert_int_equal(zmq_ctx_term(f->ctx), 0);
    free(f);
    return 0;
}

/* Sends count frames "f0", "f1", ... as one message. */
static void s_send_frames(void *socket, int count)
{
    for (int i = 0; i < count; i++) {
        char text[16];
        int len = snprintf(text, sizeof text, "f%d", i);
        assert_int_equal(zmq_send(socket, text, (size_t)len, i + 1 < count ? ZMQ_SNDMORE : 0), len);
    }
}

static void s_assert_frame(zmq_msg_t *frame, int index)
{
    char text[16];
    int len = snprintf(text, sizeof text, "f%d", index);
    assert_int_equal(zmq_msg_size(frame), (size_t)len);
    assert_memory_equal(zmq_msg_data(frame), text, (size_t)len);
}

static void test_whole_message_kept(void **state)
{
    fixture_t *f = *state;
    s_send_frames(f->sender, 3);
    zmq_msg_t frames[8];
    bool overflow = true;
    assert_int_equal(frames_recv(f->receiver, 0, frames, 8, &overflow), 3);
    assert_false(overflow);
    for (int i = 0; i < 3; i++)
        s_assert_frame(&frames[i], i);
    frames_close(frames, 3);
}

/* Exactly max frames: all kept, no overflow. */
static void test_exactly_max_frames(void **state)
{
    fixture_t *f = *state;
    s_send_frames(f->sender, 4);
    zmq_msg_t frames[4];
    bool overflow = true;
    assert_int_equal(frames_recv(f->receiver, 0, frames, 4, &overflow), 4);
    assert_false(overflow);
    for (int i = 0; i < 4; i++)
        s_assert_frame(&frames[i], i);
    frames_close(frames, 4);
}

/* More than max: the first max kept, the rest received and dropped, overflow set; the next
 * message starts clean (no dropped frame leaks into it). */
static void test_overflow_drops_the_rest(void **state)
{
    fixture_t *f = *state;
    s_send_frames(f->sender, 7);
    s_send_frames(f->sender, 2);
    zmq_msg_t frames[3];
    bool overflow = false;
    assert_int_equal(frames_recv(f->receiver, 0, frames, 3, &overflow), 3);
    assert_true(overflow);
    for (int i = 0; i < 3; i++)
        s_assert_frame(&frames[i], i);
    frames_close(frames, 3);

    assert_int_equal(frames_recv(f->receiver, 0, frames, 3, &overflow), 2);
    assert_false(overflow);
    s_assert_frame(&frames[0], 0);
    s_assert_frame(&frames[1], 1);
    frames_close(frames, 2);
}

/* Nothing waiting with ZMQ_DONTWAIT: 0 (not an error), nothing kept; a message sent afterwards
 * is then received whole. */
static void test_dontwait_on_empty_socket(void **state)
{
    fixture_t *f = *state;
    zmq_msg_t frames[4];
    bool overflow = true;
    errno = 0;
    assert_int_equal(frames_recv(f->receiver, ZMQ_DONTWAIT, frames, 4, &overflow), 0);
    assert_false(overflow);
    assert_int_equal(errno, EAGAIN);

    s_send_frames(f->sender, 2);
    assert_int_equal(frames_recv(f->receiver, 0, frames, 4, &overflow), 2);
    frames_close(frames, 2);
}

/* Only a real failure is -1. */
static void test_error_is_minus_one(void **state)
{
    fixture_t *f = *state;
    int timeout = 10;
    assert_int_equal(zmq_setsockopt(f->receiver, ZMQ_RCVTIMEO, &timeout, sizeof timeout), 0);
    zmq_msg_t frames[4];
    bool overflow = true;
    /* A receive timeout (ZMQ_RCVTIMEO) is "no message" too: 0. A failure of the socket itself
     * (its context shut down) is -1 with errno. */
    assert_int_equal(frames_recv(f->receiver, 0, frames, 4, &overflow), 0);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *lonely = zmq_socket(ctx, ZMQ_PULL);
    assert_non_null(lonely);
    assert_int_equal(zmq_ctx_shutdown(ctx), 0);
    errno = 0;
    assert_int_equal(frames_recv(lonely, 0, frames, 4, &overflow), -1);
    assert_int_equal(errno, ETERM);
    zmq_close(lonely);
    assert_int_equal(zmq_ctx_term(ctx), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_whole_message_kept, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_exactly_max_frames, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_overflow_drops_the_rest, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_dontwait_on_empty_socket, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_error_is_minus_one, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
