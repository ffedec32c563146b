/*
 * test_inproc: endpoint names that never repeat in a process, also across threads, in the
 * documented form "inproc://pm-<what>-<pid>-<n>", and usable: a name given after a socket
 * bound to an earlier one was closed binds at once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "inproc.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define PER_THREAD 500
#define THREADS 4

static void test_form_and_return_value(void **state)
{
    (void)state;
    char out[64];
    assert_ptr_equal(inproc_endpoint(out, sizeof out, "writer"), out);
    char prefix[48];
    snprintf(prefix, sizeof prefix, "inproc://pm-writer-%ld-", (long)getpid());
    assert_int_equal(strncmp(out, prefix, strlen(prefix)), 0);
    const char *n = out + strlen(prefix);
    assert_true(*n != '\0');
    assert_int_equal(strspn(n, "0123456789"), strlen(n));
}

static void test_consecutive_names_differ(void **state)
{
    (void)state;
    char a[64], b[64];
    inproc_endpoint(a, sizeof a, "same");
    inproc_endpoint(b, sizeof b, "same");
    assert_string_not_equal(a, b);
}

typedef struct {
    char names[PER_THREAD][64];
} batch_t;

static void *s_take_names(void *arg)
{
    batch_t *batch = arg;
    for (int i = 0; i < PER_THREAD; i++)
        inproc_endpoint(batch->names[i], sizeof batch->names[i], "thread");
    return NULL;
}

static int s_compare(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Names taken at the same time from several threads are all different. */
static void test_unique_across_threads(void **state)
{
    (void)state;
    batch_t *batches = calloc(THREADS, sizeof *batches);
    assert_non_null(batches);
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&threads[t], NULL, s_take_names, &batches[t]), 0);
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_join(threads[t], NULL), 0);
    const char **all = calloc(THREADS * PER_THREAD, sizeof *all);
    assert_non_null(all);
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < PER_THREAD; i++)
            all[t * PER_THREAD + i] = batches[t].names[i];
    qsort(all, THREADS * PER_THREAD, sizeof *all, s_compare);
    for (int i = 1; i < THREADS * PER_THREAD; i++)
        assert_string_not_equal(all[i - 1], all[i]);
    free(all);
    free(batches);
}

/* The reason for the counter: bind, close, and bind the next name at once, many times; an
 * endpoint still being unbound is never handed out again. */
static void test_fresh_name_binds_after_close(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    for (int i = 0; i < 200; i++) {
        char endpoint[64];
        inproc_endpoint(endpoint, sizeof endpoint, "rebind");
        void *socket = zmq_socket(ctx, ZMQ_PAIR);
        assert_non_null(socket);
        int zero = 0;
        assert_int_equal(zmq_setsockopt(socket, ZMQ_LINGER, &zero, sizeof zero), 0);
        assert_int_equal(zmq_bind(socket, endpoint), 0);
        assert_int_equal(zmq_close(socket), 0);
    }
    assert_int_equal(zmq_ctx_term(ctx), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_form_and_return_value),
        cmocka_unit_test(test_consecutive_names_differ),
        cmocka_unit_test(test_unique_across_threads),
        cmocka_unit_test(test_fresh_name_binds_after_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
