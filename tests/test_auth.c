/*
 * test_auth: the loopback rule (no non-local endpoint in clear without --allow-insecure) and
 * CURVE set-up: a wrong key file is refused, a good one with a clients directory works, and a
 * client whose key is not allowed gets no reply while an allowed one does. Roles (v1.1): the
 * key tables of the clients (admins) and readers directories, the ZAP user id (the key's
 * name) on every message, and a swap of the tables changing the role of a name at once.
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

/* Generates name's key pair in dir and moves its public file into sub (a directory). */
static void s_key_into(const char *dir, const char *name, const char *sub)
{
    char err[512], from[PATH_MAX], to[PATH_MAX + 64];
    assert_int_equal(pm_keyfile_generate(dir, name, err, sizeof err), 0);
    snprintf(from, sizeof from, "%s/%s.pub", dir, name);
    snprintf(to, sizeof to, "%s/%s.pub", sub, name);
    assert_int_equal(rename(from, to), 0);
}

static void s_copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

static void s_rm_rf(const char *dir)
{
    char command[PATH_MAX + 16];
    snprintf(command, sizeof command, "rm -rf '%s'", dir);
    assert_int_equal(system(command), 0);
}

static void test_role_tables(void **state)
{
    (void)state;
    char dir[] = "/tmp/pm-test-roles-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char admins[PATH_MAX], readers[PATH_MAX], other[PATH_MAX], err[512];
    snprintf(admins, sizeof admins, "%s/admins", dir);
    snprintf(readers, sizeof readers, "%s/readers", dir);
    snprintf(other, sizeof other, "%s/other", dir);
    assert_int_equal(mkdir(admins, 0700), 0);
    assert_int_equal(mkdir(readers, 0700), 0);
    assert_int_equal(mkdir(other, 0700), 0);
    s_key_into(dir, "alice", admins);
    s_key_into(dir, "rita", readers);
    s_key_into(dir, "bob", admins);
    /* bob's key is also in the readers directory (being moved): it counts once, as admin. */
    char from[PATH_MAX + 32], to[PATH_MAX + 32];
    snprintf(from, sizeof from, "%s/bob.pub", admins);
    snprintf(to, sizeof to, "%s/bob.pub", readers);
    s_copy_file(from, to);

    auth_keys_t *keys = auth_keys_load(admins, readers, err, sizeof err);
    assert_non_null(keys);
    assert_int_equal(auth_keys_count(keys, AUTH_ROLE_NONE), 3);
    assert_int_equal(auth_keys_count(keys, AUTH_ROLE_ADMIN), 2);
    assert_int_equal(auth_keys_count(keys, AUTH_ROLE_READER), 1);
    assert_int_equal(auth_keys_role(keys, "alice"), AUTH_ROLE_ADMIN);
    assert_int_equal(auth_keys_role(keys, "bob"), AUTH_ROLE_ADMIN);
    assert_int_equal(auth_keys_role(keys, "rita"), AUTH_ROLE_READER);
    assert_int_equal(auth_keys_role(keys, "mallory"), AUTH_ROLE_NONE);
    assert_int_equal(auth_keys_role(keys, ""), AUTH_ROLE_NONE);
    assert_int_equal(auth_keys_role(keys, NULL), AUTH_ROLE_NONE);
    auth_keys_destroy(&keys);
    assert_null(keys);

    /* A name that is not printable ASCII is skipped (it would go into logs and events). */
    char odd[PATH_MAX + 32];
    assert_int_equal(pm_keyfile_generate(dir, "odd", err, sizeof err), 0);
    snprintf(from, sizeof from, "%s/odd.pub", dir);
    snprintf(odd, sizeof odd, "%s/bad\tname.pub", readers);
    assert_int_equal(rename(from, odd), 0);
    keys = auth_keys_load(admins, readers, err, sizeof err);
    assert_non_null(keys);
    assert_int_equal(auth_keys_count(keys, AUTH_ROLE_NONE), 3);
    assert_int_equal(auth_keys_role(keys, "bad\tname"), AUTH_ROLE_NONE);
    auth_keys_destroy(&keys);
    assert_int_equal(unlink(odd), 0);

    /* Without a readers directory every key is an admin. */
    keys = auth_keys_load(admins, NULL, err, sizeof err);
    assert_non_null(keys);
    assert_int_equal(auth_keys_count(keys, AUTH_ROLE_READER), 0);
    assert_int_equal(auth_keys_role(keys, "rita"), AUTH_ROLE_NONE);
    auth_keys_destroy(&keys);

    /* A directory that cannot be read: refused, saying which. */
    snprintf(to, sizeof to, "%s/missing", dir);
    assert_null(auth_keys_load(admins, to, err, sizeof err));
    assert_non_null(strstr(err, "readers directory"));
    assert_null(auth_keys_load(to, readers, err, sizeof err));
    assert_non_null(strstr(err, "clients directory"));

    /* Two different keys under one name: the name would not say who the caller is. */
    s_key_into(other, "rita", other);
    snprintf(from, sizeof from, "%s/rita.pub", other);
    snprintf(to, sizeof to, "%s/rita.pub", admins);
    s_copy_file(from, to);
    assert_null(auth_keys_load(admins, readers, err, sizeof err));
    assert_non_null(strstr(err, "'rita'"));
    s_rm_rf(dir);
}

static void test_roles_of_connections_and_swap(void **state)
{
    (void)state;
    char dir[] = "/tmp/pm-test-roles-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char admins[PATH_MAX], readers[PATH_MAX], server_key[PATH_MAX], path[PATH_MAX], err[512];
    snprintf(admins, sizeof admins, "%s/admins", dir);
    snprintf(readers, sizeof readers, "%s/readers", dir);
    assert_int_equal(mkdir(admins, 0700), 0);
    assert_int_equal(mkdir(readers, 0700), 0);
    assert_int_equal(pm_keyfile_generate(dir, "server", err, sizeof err), 0);
    s_key_into(dir, "alice", admins);
    s_key_into(dir, "rita", readers);
    snprintf(server_key, sizeof server_key, "%s/server.key", dir);

    void *ctx = zmq_ctx_new();
    config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    /* CURVE off: every caller is an admin, whatever its name. */
    auth_t *plain = auth_new(ctx, &cfg, err, sizeof err);
    assert_non_null(plain);
    assert_false(auth_curve_on(plain));
    assert_int_equal(auth_role_of(plain, NULL), AUTH_ROLE_ADMIN);
    auth_destroy(&plain);

    cfg.curve_secret_key_file = server_key;
    cfg.curve_clients_dir = admins;
    cfg.curve_readers_dir = readers;
    auth_t *auth = auth_new(ctx, &cfg, err, sizeof err);
    assert_non_null(auth);
    assert_true(auth_curve_on(auth));
    assert_int_equal(auth_client_count(auth), 2);
    assert_int_equal(auth_role_of(auth, "alice"), AUTH_ROLE_ADMIN);
    assert_int_equal(auth_role_of(auth, "rita"), AUTH_ROLE_READER);
    assert_int_equal(auth_role_of(auth, NULL), AUTH_ROLE_NONE);

    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(auth_apply(auth, router), 0);
    assert_int_equal(zmq_bind(router, "tcp://127.0.0.1:*"), 0);
    char endpoint[64];
    size_t size = sizeof endpoint;
    assert_int_equal(zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, endpoint, &size), 0);
    char server_public[41], public[41], secret[41];
    assert_int_equal(pm_keyfile_read(server_key, server_public, NULL, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/rita.key", dir);
    assert_int_equal(pm_keyfile_read(path, public, secret, err, sizeof err), 0);

    /* The ZAP user id of rita's connection is her key's name, on every message. */
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(dealer, ZMQ_CURVE_SERVERKEY, server_public, 40);
    zmq_setsockopt(dealer, ZMQ_CURVE_PUBLICKEY, public, 40);
    zmq_setsockopt(dealer, ZMQ_CURVE_SECRETKEY, secret, 40);
    assert_int_equal(zmq_connect(dealer, endpoint), 0);
    for (int round = 0; round < 2; round++) {
        assert_int_equal(zmq_send(dealer, "hi", 2, 0), 2);
        zmq_pollitem_t item = {router, 0, ZMQ_POLLIN, 0};
        assert_int_equal(zmq_poll(&item, 1, 3000), 1);
        zmq_msg_t identity, body;
        zmq_msg_init(&identity);
        zmq_msg_init(&body);
        assert_true(zmq_msg_recv(&identity, router, 0) >= 0);
        assert_true(zmq_msg_recv(&body, router, 0) >= 0);
        const char *user = zmq_msg_gets(&body, "User-Id");
        assert_non_null(user);
        assert_string_equal(user, "rita");
        /* Round 0: a reader. Then the tables are swapped (rita moved to the admins, alice
         * removed): the same name has the new role at once. */
        assert_int_equal(auth_role_of(auth, user), round == 0 ? AUTH_ROLE_READER : AUTH_ROLE_ADMIN);
        zmq_msg_close(&identity);
        zmq_msg_close(&body);
        if (round == 0) {
            char from[PATH_MAX + 32], to[PATH_MAX + 32];
            snprintf(from, sizeof from, "%s/rita.pub", readers);
            snprintf(to, sizeof to, "%s/rita.pub", admins);
            assert_int_equal(rename(from, to), 0);
            snprintf(from, sizeof from, "%s/alice.pub", admins);
            assert_int_equal(unlink(from), 0);
            auth_keys_t *keys = auth_keys_load(admins, readers, err, sizeof err);
            assert_non_null(keys);
            auth_set_keys(auth, &keys);
            assert_null(keys);
            assert_int_equal(auth_role_of(auth, "alice"), AUTH_ROLE_NONE);
            assert_int_equal(auth_client_count(auth), 1);
        }
    }
    zmq_close(dealer);
    zmq_close(router);
    auth_destroy(&auth);
    zmq_ctx_term(ctx);
    s_rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoint_is_local),
        cmocka_unit_test(test_check_config),
        cmocka_unit_test(test_curve_allows_only_listed_clients),
        cmocka_unit_test(test_role_tables),
        cmocka_unit_test(test_roles_of_connections_and_swap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
