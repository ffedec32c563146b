/*
 * test_auth: the loopback rule (no non-local endpoint in clear without --allow-insecure) and
 * CURVE set-up: a wrong key file is refused, a good one with a clients directory works, and a
 * client whose key is not allowed gets no reply while an allowed one does.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "auth.h"
#include "pm_keyfile.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

static void test_endpoint_is_local(void **state)
{
    (void)state;
    assert_true(auth_endpoint_is_local("tcp://127.0.0.1:5555"));
    assert_true(auth_endpoint_is_local("tcp://127.1.2.3:5555"));
    assert_true(auth_endpoint_is_local("tcp://localhost:5555"));
    assert_true(auth_endpoint_is_local("tcp://[::1]:5555"));
    assert_true(auth_endpoint_is_local("ipc:///tmp/pm.sock"));
    assert_true(auth_endpoint_is_local("inproc://pm"));
    assert_false(auth_endpoint_is_local("tcp://0.0.0.0:5555"));
    assert_false(auth_endpoint_is_local("tcp://*:5555"));
    assert_false(auth_endpoint_is_local("tcp://10.0.0.5:5555"));
    assert_false(auth_endpoint_is_local("tcp://localhost.evil.example:5555"));
    assert_false(auth_endpoint_is_local("tcp://127.evil.example:5555"));
    assert_false(auth_endpoint_is_local("tcp://127.0.0.1"));
}

static void test_check_config(void **state)
{
    (void)state;
    config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    char err[512];
    cfg.endpoint = "tcp://127.0.0.1:5555";
    cfg.events_endpoint = "tcp://127.0.0.1:5556";
    assert_int_equal(auth_check_config(&cfg, err, sizeof err), 0);
    cfg.events_endpoint = "tcp://0.0.0.0:5556";
    assert_int_equal(auth_check_config(&cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "tcp://0.0.0.0:5556"));
    assert_non_null(strstr(err, "--allow-insecure"));
    cfg.allow_insecure = true;
    assert_int_equal(auth_check_config(&cfg, err, sizeof err), 0);
    cfg.allow_insecure = false;
    cfg.curve_secret_key_file = "/some/key";
    assert_int_equal(auth_check_config(&cfg, err, sizeof err), 0);
}

static void test_curve_allows_only_listed_clients(void **state)
{
    (void)state;
    char dir[] = "/tmp/pm-test-auth-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char clients[PATH_MAX], server_key[PATH_MAX], path[PATH_MAX], err[512];
    snprintf(clients, sizeof clients, "%s/clients", dir);
    assert_int_equal(mkdir(clients, 0700), 0);
    assert_int_equal(pm_keyfile_generate(dir, "server", err, sizeof err), 0);
    assert_int_equal(pm_keyfile_generate(dir, "good", err, sizeof err), 0);
    assert_int_equal(pm_keyfile_generate(dir, "stranger", err, sizeof err), 0);
    char from[PATH_MAX + 32], to[PATH_MAX + 32];
    snprintf(from, sizeof from, "%s/good.pub", dir);
    snprintf(to, sizeof to, "%s/good.pub", clients);
    assert_int_equal(rename(from, to), 0);
    snprintf(server_key, sizeof server_key, "%s/server.key", dir);

    config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    void *ctx = zmq_ctx_new();

    /* A public file is not a secret key. */
    snprintf(path, sizeof path, "%s/server.pub", dir);
    cfg.curve_secret_key_file = path;
    cfg.curve_clients_dir = clients;
    assert_null(auth_new(ctx, &cfg, err, sizeof err));
    assert_non_null(strstr(err, "server key"));

    cfg.curve_secret_key_file = server_key;
    auth_t *auth = auth_new(ctx, &cfg, err, sizeof err);
    assert_non_null(auth);
    assert_int_equal(auth_client_count(auth), 1);

    void *rep = zmq_socket(ctx, ZMQ_REP);
    int zero = 0;
    zmq_setsockopt(rep, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(auth_apply(auth, rep), 0);
    assert_int_equal(zmq_bind(rep, "inproc://test-auth"), 0);
    /* inproc skips security handshakes; use tcp on loopback. */
    assert_int_equal(zmq_bind(rep, "tcp://127.0.0.1:*"), 0);
    char endpoint[64];
    size_t size = sizeof endpoint;
    assert_int_equal(zmq_getsockopt(rep, ZMQ_LAST_ENDPOINT, endpoint, &size), 0);

    char server_public[41], good_public[41], good_secret[41], other_public[41], other_secret[41];
    assert_int_equal(pm_keyfile_read(server_key, server_public, NULL, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/good.key", dir);
    assert_int_equal(pm_keyfile_read(path, good_public, good_secret, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/stranger.key", dir);
    assert_int_equal(pm_keyfile_read(path, other_public, other_secret, err, sizeof err), 0);

    /* An echo loop in this thread, served between the client attempts. */
    struct {
        const char *pub, *sec;
        bool expected;
    } cases[] = {
        {good_public, good_secret, true}, {other_public, other_secret, false}, {NULL, NULL, false}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        void *req = zmq_socket(ctx, ZMQ_REQ);
        int timeout = 500;
        zmq_setsockopt(req, ZMQ_LINGER, &zero, sizeof zero);
        zmq_setsockopt(req, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
        if (cases[i].pub) {
            zmq_setsockopt(req, ZMQ_CURVE_SERVERKEY, server_public, 40);
            zmq_setsockopt(req, ZMQ_CURVE_PUBLICKEY, cases[i].pub, 40);
            zmq_setsockopt(req, ZMQ_CURVE_SECRETKEY, cases[i].sec, 40);
        }
        assert_int_equal(zmq_connect(req, endpoint), 0);
        assert_int_equal(zmq_send(req, "ping", 4, 0), 4);
        zmq_pollitem_t item = {rep, 0, ZMQ_POLLIN, 0};
        bool arrived = zmq_poll(&item, 1, 500) == 1;
        assert_int_equal(arrived, cases[i].expected);
        if (arrived) {
            char buf[8];
            assert_int_equal(zmq_recv(rep, buf, sizeof buf, 0), 4);
            assert_int_equal(zmq_send(rep, buf, 4, 0), 4);
            char back[8];
            assert_int_equal(zmq_recv(req, back, sizeof back, 0), 4);
        }
        zmq_close(req);
    }
    zmq_close(rep);
    auth_destroy(&auth);
    assert_null(auth);
    zmq_ctx_term(ctx);
    char command[PATH_MAX + 16];
    snprintf(command, sizeof command, "rm -rf '%s'", dir);
    assert_int_equal(system(command), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoint_is_local),
        cmocka_unit_test(test_check_config),
        cmocka_unit_test(test_curve_allows_only_listed_clients),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
