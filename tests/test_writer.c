/*
 * test_writer: the front end and the writer thread in process, over inproc endpoints, with a
 * real data directory: group commit of pipelined writes, one state_version and one event per
 * change in order, read-your-writes, a failed persist that changes nothing, and a clean stop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "config.h"
#include "front.h"
#include "pm_proto.h"
#include "store.h"
#include "writer.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define REQUEST_ENDPOINT "inproc://test-writer-requests"
#define EVENTS_ENDPOINT "inproc://test-writer-events"
#define PIPELINED 40
/* A hang detector, not a timed test: the 68 MB reply of the oversized test takes about 11 s
 * under ThreadSanitizer. */
#define RECV_TIMEOUT_MS 60000

typedef struct {
    char dir[PATH_MAX];
    config_t cfg;
    void *ctx;
    writer_t *writer;
    front_t *front;
    auth_t *auth;
    int stop_pipe[2];
    pthread_t thread;
    int front_rc;
    void *events; /* SUB, connected before any change */
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

/* Adds to the start-up registry, before the writer takes it (NULL: nothing). */
typedef void(extra_fn)(registry_t **reg_p);

static int s_setup_with(void **state, extra_fn *extra, const char *heartbeat_ms)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/pm-test-writer-XXXXXX");
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
                    "--heartbeat-ms",
                    (char *)heartbeat_ms,
                    NULL};
    char err[512];
    assert_int_equal(config_load(&f->cfg, 13, argv, s_no_env, err, sizeof err), 0);
    assert_int_equal(store_prepare_dir(f->cfg.data_dir, err, sizeof err), 0);
    registry_t *reg = NULL;
    assert_int_equal(config_build_registry(&f->cfg, s_no_env, &reg, NULL, NULL, err, sizeof err),
                     0);
    if (extra)
        extra(&reg);
    f->ctx = zmq_ctx_new();
    assert_non_null(f->ctx);
    f->auth = auth_new(f->ctx, &f->cfg, err, sizeof err);
    assert_non_null(f->auth);
    bool bind_failed = false;
    f->writer = writer_new(f->ctx, &f->cfg, f->auth, s_no_env, &reg, &bind_failed, err, sizeof err);
    assert_non_null(f->writer);
    f->events = zmq_socket(f->ctx, ZMQ_SUB);
    assert_int_equal(zmq_connect(f->events, EVENTS_ENDPOINT), 0);
    assert_int_equal(zmq_setsockopt(f->events, ZMQ_SUBSCRIBE, "providers", 9), 0);
    snapshot_t *first = writer_first_snapshot(f->writer);
    f->front = front_new(f->ctx, &f->cfg, f->auth, writer_endpoint(f->writer), &first, &bind_failed,
                         err, sizeof err);
    assert_non_null(f->front);
    assert_int_equal(pipe(f->stop_pipe), 0);
    assert_int_equal(pthread_create(&f->thread, NULL, s_front_thread, f), 0);
    *state = f;
    return 0;
}

static int s_setup(void **state)
{
    return s_setup_with(state, NULL, "1000");
}

#define HEARTBEAT_MS 50

static int s_setup_fast_heartbeat(void **state)
{
    return s_setup_with(state, NULL, "50");
}

/* A provider "big" whose ProviderConfig is over the 64 MiB reply limit: 34,000 models of
 * 1000-byte names (short name = long name) make about 68 MB. */
#define BIG_MODELS 34000
#define BIG_NAME_LEN 1000

static void s_big_name(char *out, int index)
{
    memset(out, 'x', BIG_NAME_LEN);
    char head[16];
    int len = snprintf(head, sizeof head, "m%05d-", index);
    memcpy(out, head, (size_t)len);
    out[BIG_NAME_LEN] = '\0';
}

static void s_add_big_provider(registry_t **reg_p)
{
    registry_t *reg = registry_clone(*reg_p);
    assert_non_null(reg);
    registry_destroy(reg_p);
    provider_t *big = provider_new("big", "Big", "http://127.0.0.1:9/v1");
    assert_non_null(big);
    char name[BIG_NAME_LEN + 1];
    for (int i = 0; i < BIG_MODELS; i++) {
        s_big_name(name, i);
        assert_int_equal(provider_put_model(big, name, NULL), 0);
    }
    assert_int_equal(registry_put(reg, &big), 0);
    assert_int_equal(registry_seal(reg), 0);
    *reg_p = reg;
}

static int s_setup_big(void **state)
{
    return s_setup_with(state, s_add_big_provider, "1000");
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    char byte = 1;
    assert_int_equal(write(f->stop_pipe[1], &byte, 1), 1);
    pthread_join(f->thread, NULL);
    assert_int_equal(f->front_rc, 0);
    zmq_close(f->events);
    front_destroy(&f->front);
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

/* Packs {"op": "set_provider", "id": id, "args": {provider, name, base_api_url, valid_models:
 * {model: key}}}. */
static void s_pack_set_provider_model(msgpack_sbuffer *buf, long long id, const char *key,
                                      const char *model)
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
    msgpack_pack_map(&pk, 1);
    pm_pack_str(&pk, model);
    pm_pack_str(&pk, key);
}

/* The same with the model "model". */
static void s_pack_set_provider(msgpack_sbuffer *buf, long long id, const char *key)
{
    s_pack_set_provider_model(buf, id, key, "model");
}

static void s_pack_op(msgpack_sbuffer *buf, const char *op, long long id)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, op, true, id);
    msgpack_pack_map(&pk, 0);
}

/* Receives one reply on a DEALER (empty delimiter, then the body) and decodes it. */
static void s_recv_reply(void *dealer, pm_reply_t *rep, zmq_msg_t *body)
{
    char delimiter[8];
    assert_int_equal(zmq_recv(dealer, delimiter, sizeof delimiter, 0), 0);
    zmq_msg_init(body);
    assert_true(zmq_msg_recv(body, dealer, 0) > 0);
    char err[256];
    assert_int_equal(pm_reply_decode(rep, zmq_msg_data(body), zmq_msg_size(body), err, sizeof err),
                     0);
}

static void *s_dealer(fixture_t *f)
{
    void *dealer = zmq_socket(f->ctx, ZMQ_DEALER);
    int timeout = RECV_TIMEOUT_MS, zero = 0;
    assert_int_equal(zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeout, sizeof timeout), 0);
    assert_int_equal(zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_connect(dealer, REQUEST_ENDPOINT), 0);
    return dealer;
}

static void s_send(void *dealer, const msgpack_sbuffer *buf)
{
    assert_int_equal(zmq_send(dealer, "", 0, ZMQ_SNDMORE), 0);
    assert_int_equal(zmq_send(dealer, buf->data, buf->size, 0), (int)buf->size);
}

static int64_t s_health_state_version(void *dealer)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_pack_op(&buf, "health", 999);
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);
    pm_reply_t rep;
    zmq_msg_t body;
    s_recv_reply(dealer, &rep, &body);
    assert_true(rep.ok);
    const msgpack_object *v = pm_map_get(rep.result, "state_version");
    assert_non_null(v);
    int64_t version = (int64_t)v->via.u64;
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    return version;
}

/* contains(key) over the front end: the registry that reads see now. */
static bool s_contains(void *dealer, const char *key)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, "contains", true, 998);
    msgpack_pack_map(&pk, 1);
    pm_pack_str(&pk, "provider_name");
    pm_pack_str(&pk, key);
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);
    pm_reply_t rep;
    zmq_msg_t body;
    s_recv_reply(dealer, &rep, &body);
    assert_true(rep.ok);
    assert_int_equal(rep.result->type, MSGPACK_OBJECT_BOOLEAN);
    bool found = rep.result->via.boolean;
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    return found;
}

/* True when the providers file lists key. */
static bool s_file_has(const fixture_t *f, const char *key)
{
    char path[PATH_MAX];
    assert_int_equal(store_path(f->cfg.data_dir, path, sizeof path), 0);
    store_layer_t layer = {0};
    char err[512];
    assert_int_equal(store_load(path, &layer, NULL, NULL, err, sizeof err), 0);
    bool found = false;
    for (size_t i = 0; i < layer.count; i++)
        found = found || strcmp(layer.specs[i].key, key) == 0;
    store_layer_clear(&layer);
    return found;
}

/* The next event on f->events, decoded into *up (its bytes in *msg; the caller destroys
 * both). Heartbeats are skipped unless heartbeats is true. Fails the test after the receive
 * timeout. */
static void s_recv_event(fixture_t *f, msgpack_unpacked *up, zmq_msg_t *msg, bool heartbeats)
{
    int timeout = RECV_TIMEOUT_MS;
    assert_int_equal(zmq_setsockopt(f->events, ZMQ_RCVTIMEO, &timeout, sizeof timeout), 0);
    for (;;) {
        char topic[16];
        assert_int_equal(zmq_recv(f->events, topic, sizeof topic, 0), 9);
        assert_memory_equal(topic, "providers", 9);
        zmq_msg_init(msg);
        assert_true(zmq_msg_recv(msg, f->events, 0) > 0);
        msgpack_unpacked_init(up);
        assert_int_equal(msgpack_unpack_next(up, zmq_msg_data(msg), zmq_msg_size(msg), NULL),
                         MSGPACK_UNPACK_SUCCESS);
        const msgpack_object *kind = pm_map_get(&up->data, "event");
        assert_non_null(kind);
        assert_int_equal(kind->type, MSGPACK_OBJECT_STR);
        if (heartbeats || kind->via.str.size != 9 || memcmp(kind->via.str.ptr, "heartbeat", 9))
            return;
        msgpack_unpacked_destroy(up);
        zmq_msg_close(msg);
    }
}

/* Many writes sent without waiting: every one is answered ok, each is one change (versions
 * 1..N, events in order), each is readable once answered, and all are in the file. */
static void test_pipelined_writes_commit_in_order(void **state)
{
    fixture_t *f = *state;
    void *dealer = s_dealer(f);
    void *reader = s_dealer(f); /* reads on their own connection, between the replies */
    for (int i = 0; i < PIPELINED; i++) {
        char key[32];
        snprintf(key, sizeof key, "p%02d", i);
        msgpack_sbuffer buf;
        msgpack_sbuffer_init(&buf);
        s_pack_set_provider(&buf, i, key);
        s_send(dealer, &buf);
        msgpack_sbuffer_destroy(&buf);
    }
    bool seen[PIPELINED] = {false};
    for (int i = 0; i < PIPELINED; i++) {
        pm_reply_t rep;
        zmq_msg_t body;
        s_recv_reply(dealer, &rep, &body);
        assert_true(rep.ok);
        assert_non_null(rep.id);
        int64_t id = rep.id->via.i64;
        assert_true(id >= 0 && id < PIPELINED);
        assert_false(seen[id]);
        seen[id] = true;
        char key[32];
        snprintf(key, sizeof key, "p%02d", (int)id);
        const msgpack_object *provider = pm_map_get(rep.result, "provider");
        assert_non_null(provider);
        assert_int_equal(provider->via.str.size, strlen(key));
        assert_memory_equal(provider->via.str.ptr, key, strlen(key));
        pm_reply_clear(&rep);
        zmq_msg_close(&body);
        /* Readable once answered: a read sent after the reply finds the change. */
        assert_true(s_contains(reader, key));
    }
    assert_int_equal(s_health_state_version(dealer), PIPELINED);

    /* One event per change, versions 1..N in order, each naming the provider it changed. */
    for (int i = 0; i < PIPELINED; i++) {
        zmq_msg_t event;
        msgpack_unpacked up;
        s_recv_event(f, &up, &event, false);
        const msgpack_object *version = pm_map_get(&up.data, "state_version");
        const msgpack_object *keys = pm_map_get(&up.data, "providers");
        assert_non_null(version);
        assert_non_null(keys);
        assert_int_equal(version->via.u64, (uint64_t)i + 1);
        assert_int_equal(keys->via.array.size, 1);
        /* The writes were sent in order over one connection, so change i+1 is p<i>. */
        char key[32];
        snprintf(key, sizeof key, "p%02d", i);
        assert_int_equal(keys->via.array.ptr[0].type, MSGPACK_OBJECT_STR);
        assert_int_equal(keys->via.array.ptr[0].via.str.size, strlen(key));
        assert_memory_equal(keys->via.array.ptr[0].via.str.ptr, key, strlen(key));
        msgpack_unpacked_destroy(&up);
        zmq_msg_close(&event);
    }

    /* Persisted: the file lists every provider written. */
    char path[PATH_MAX];
    assert_int_equal(store_path(f->cfg.data_dir, path, sizeof path), 0);
    store_layer_t layer = {0};
    char err[512];
    assert_int_equal(store_load(path, &layer, NULL, NULL, err, sizeof err), 0);
    int found = 0;
    for (size_t i = 0; i < layer.count; i++)
        found += strncmp(layer.specs[i].key, "p", 1) == 0 && strlen(layer.specs[i].key) == 3;
    assert_int_equal(found, PIPELINED);
    store_layer_clear(&layer);
    zmq_close(reader);
    zmq_close(dealer);
}

/* A persist that fails (the file's path is a directory, so rename fails) answers internal,
 * bumps nothing and changes nothing in memory. */
static void test_failed_persist_changes_nothing(void **state)
{
    fixture_t *f = *state;
    char path[PATH_MAX];
    assert_int_equal(store_path(f->cfg.data_dir, path, sizeof path), 0);
    assert_int_equal(mkdir(path, 0700), 0);
    void *dealer = s_dealer(f);
    int64_t before = s_health_state_version(dealer);

    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_pack_set_provider(&buf, 1, "doomed");
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);
    pm_reply_t rep;
    zmq_msg_t body;
    s_recv_reply(dealer, &rep, &body);
    assert_false(rep.ok);
    assert_int_equal(rep.code, PM_ERR_INTERNAL);
    assert_true(rep.message.len > 27);
    assert_memory_equal(rep.message.ptr, "could not persist providers", 27);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    assert_int_equal(s_health_state_version(dealer), before);
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, "contains", true, 2);
    msgpack_pack_map(&pk, 1);
    pm_pack_str(&pk, "provider_name");
    pm_pack_str(&pk, "doomed");
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);
    s_recv_reply(dealer, &rep, &body);
    assert_true(rep.ok);
    assert_int_equal(rep.result->type, MSGPACK_OBJECT_BOOLEAN);
    assert_false(rep.result->via.boolean);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    assert_int_equal(rmdir(path), 0);
    zmq_close(dealer);
}

static int s_fsync_fails_for_dir(int fd, bool directory)
{
    if (directory) {
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}

/* The directory cannot be synced after the rename (injected): the file already holds the
 * change, so the state follows it: answered ok, state_version counts it, reads and the file
 * both have it. */
static void test_dir_fsync_failure_keeps_the_change(void **state)
{
    fixture_t *f = *state;
    void *dealer = s_dealer(f);
    int64_t before = s_health_state_version(dealer);
    store_set_fsync_hook(s_fsync_fails_for_dir);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_pack_set_provider(&buf, 1, "kept");
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);
    pm_reply_t rep;
    zmq_msg_t body;
    s_recv_reply(dealer, &rep, &body);
    store_set_fsync_hook(NULL);
    assert_true(rep.ok);
    const msgpack_object *provider = pm_map_get(rep.result, "provider");
    assert_non_null(provider);
    assert_int_equal(provider->via.str.size, 4);
    assert_memory_equal(provider->via.str.ptr, "kept", 4);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    assert_int_equal(s_health_state_version(dealer), before + 1);
    assert_true(s_contains(dealer, "kept"));
    assert_true(s_file_has(f, "kept"));
    zmq_close(dealer);
}

/* Injected allocation failure (writer_set_fault_hook) for the providers "doomed" and "kept".
 * The first call waits a little, so that the requests sent after it join the same batch. */
static atomic_int s_fault_calls;

static bool s_fail_doomed_and_kept(const char *key)
{
    if (strcmp(key, "doomed") != 0 && strcmp(key, "kept") != 0)
        return false;
    if (atomic_fetch_add(&s_fault_calls, 1) == 0)
        usleep(200 * 1000);
    return true;
}

/* A change that fails after it was applied to the batch (out of memory, injected) is rolled
 * back: it is answered internal, the other changes of the batch commit and alone count in
 * state_version, and the failed change is nowhere, neither in reads nor in the file. Covers a
 * new provider, an update of an existing one and a set_short_name. */
static void test_failed_change_is_rolled_back(void **state)
{
    fixture_t *f = *state;
    void *dealer = s_dealer(f);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_pack_set_provider(&buf, 1, "kept");
    s_send(dealer, &buf);
    pm_reply_t rep;
    zmq_msg_t body;
    s_recv_reply(dealer, &rep, &body);
    assert_true(rep.ok);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    int64_t before = s_health_state_version(dealer);

    atomic_store(&s_fault_calls, 0);
    writer_set_fault_hook(s_fail_doomed_and_kept);
    /* ids: 10 doomed (new), 11 a1, 12 kept (update), 13 kept short name, 14 a2 */
    buf.size = 0;
    s_pack_set_provider(&buf, 10, "doomed");
    s_send(dealer, &buf);
    buf.size = 0;
    s_pack_set_provider(&buf, 11, "a1");
    s_send(dealer, &buf);
    buf.size = 0;
    s_pack_set_provider_model(&buf, 12, "kept", "changed");
    s_send(dealer, &buf);
    buf.size = 0;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, "set_short_name", true, 13);
    msgpack_pack_map(&pk, 3);
    pm_pack_str(&pk, "provider");
    pm_pack_str(&pk, "kept");
    pm_pack_str(&pk, "long_name");
    pm_pack_str(&pk, "model");
    pm_pack_str(&pk, "short_name");
    pm_pack_str(&pk, "zz");
    s_send(dealer, &buf);
    buf.size = 0;
    s_pack_set_provider(&buf, 14, "a2");
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);

    for (int i = 0; i < 5; i++) {
        s_recv_reply(dealer, &rep, &body);
        int64_t id = rep.id->via.i64;
        if (id == 11 || id == 14) {
            assert_true(rep.ok);
        } else {
            assert_true(id == 10 || id == 12 || id == 13);
            assert_false(rep.ok);
            assert_int_equal(rep.code, PM_ERR_INTERNAL);
            assert_int_equal(rep.message.len, strlen("out of memory"));
            assert_memory_equal(rep.message.ptr, "out of memory", rep.message.len);
        }
        pm_reply_clear(&rep);
        zmq_msg_close(&body);
    }
    writer_set_fault_hook(NULL);
    assert_int_equal(atomic_load(&s_fault_calls), 3);

    assert_int_equal(s_health_state_version(dealer), before + 2);
    assert_false(s_contains(dealer, "doomed"));
    assert_true(s_contains(dealer, "a1"));
    assert_true(s_contains(dealer, "a2"));
    assert_false(s_file_has(f, "doomed"));
    assert_true(s_file_has(f, "a1"));

    /* kept as it was: its one model "model" with the short name "kept", in reads and file. */
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, "get_available_models", true, 20);
    msgpack_pack_map(&pk, 1);
    pm_pack_str(&pk, "filter_by_provider");
    pm_pack_str(&pk, "kept");
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);
    s_recv_reply(dealer, &rep, &body);
    assert_true(rep.ok);
    assert_int_equal(rep.result->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(rep.result->via.array.size, 1);
    assert_int_equal(rep.result->via.array.ptr[0].via.str.size, 5);
    assert_memory_equal(rep.result->via.array.ptr[0].via.str.ptr, "model", 5);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    char path[PATH_MAX];
    assert_int_equal(store_path(f->cfg.data_dir, path, sizeof path), 0);
    store_layer_t layer = {0};
    char err[512];
    assert_int_equal(store_load(path, &layer, NULL, NULL, err, sizeof err), 0);
    bool checked = false;
    for (size_t i = 0; i < layer.count; i++) {
        if (strcmp(layer.specs[i].key, "kept") != 0)
            continue;
        assert_int_equal(layer.specs[i].model_count, 1);
        assert_string_equal(layer.specs[i].model_long[0], "model");
        assert_string_equal(layer.specs[i].model_short[0], "kept");
        checked = true;
    }
    assert_true(checked);
    store_layer_clear(&layer);
    zmq_close(dealer);
}

/* A change whose reply (the ProviderConfig) would exceed the 64 MiB reply limit is refused
 * with internal "Reply of <n> bytes exceeds the 64 MiB reply limit" and changes nothing; the
 * writer goes on serving. */
static void test_oversized_reply_refused(void **state)
{
    fixture_t *f = *state;
    void *dealer = s_dealer(f);
    int64_t before = s_health_state_version(dealer);
    char long_name[BIG_NAME_LEN + 1];
    s_big_name(long_name, 7);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, "set_short_name", true, 5);
    msgpack_pack_map(&pk, 3);
    pm_pack_str(&pk, "provider");
    pm_pack_str(&pk, "big");
    pm_pack_str(&pk, "long_name");
    pm_pack_str(&pk, long_name);
    pm_pack_str(&pk, "short_name");
    pm_pack_str(&pk, "seven");
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);
    pm_reply_t rep;
    zmq_msg_t body;
    s_recv_reply(dealer, &rep, &body);
    assert_false(rep.ok);
    assert_int_equal(rep.code, PM_ERR_INTERNAL);
    char message[128];
    assert_true(rep.message.len < sizeof message);
    memcpy(message, rep.message.ptr, rep.message.len);
    message[rep.message.len] = '\0';
    unsigned long long size = 0;
    char tail[64];
    assert_int_equal(sscanf(message, "Reply of %llu bytes %63[^\n]", &size, tail), 2);
    assert_true(size > PM_PROTO_MAX_REPLY_SIZE);
    assert_string_equal(tail, "exceeds the 64 MiB reply limit");
    pm_reply_clear(&rep);
    zmq_msg_close(&body);

    /* Nothing changed: no version, no file; and the next write goes through. */
    assert_int_equal(s_health_state_version(dealer), before);
    char path[PATH_MAX];
    assert_int_equal(store_path(f->cfg.data_dir, path, sizeof path), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), -1);
    msgpack_sbuffer_init(&buf);
    s_pack_set_provider(&buf, 6, "small");
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);
    s_recv_reply(dealer, &rep, &body);
    assert_true(rep.ok);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    assert_int_equal(s_health_state_version(dealer), before + 1);
    /* The refused short name resolves nowhere. */
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, "validate_model", true, 7);
    msgpack_pack_map(&pk, 1);
    pm_pack_str(&pk, "model_string");
    pm_pack_str(&pk, "big/seven");
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);
    s_recv_reply(dealer, &rep, &body);
    assert_false(rep.ok);
    assert_int_equal(rep.code, PM_ERR_INVALID_MODEL);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    zmq_close(dealer);
}

/* A writer whose front end never started is stopped by writer_stop alone, promptly, also
 * after it has sent a snapshot nobody receives (the start-up discovery job). */
static void test_stop_without_front_end(void **state)
{
    (void)state;
    char dir[] = "/tmp/pm-test-writer-stop-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *argv[] = {"provider-manager",
                    "--endpoint",
                    "inproc://test-writer-stop-requests",
                    "--events-endpoint",
                    "inproc://test-writer-stop-events",
                    "--data-dir",
                    dir,
                    "--workers",
                    "1",
                    "--log-level",
                    "error",
                    NULL};
    config_t cfg;
    char err[512];
    assert_int_equal(config_load(&cfg, 11, argv, s_no_env, err, sizeof err), 0);
    registry_t *reg = NULL;
    assert_int_equal(config_build_registry(&cfg, s_no_env, &reg, NULL, NULL, err, sizeof err), 0);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    auth_t *auth = auth_new(ctx, &cfg, err, sizeof err);
    assert_non_null(auth);
    bool bind_failed = false;
    writer_t *writer = writer_new(ctx, &cfg, auth, s_no_env, &reg, &bind_failed, err, sizeof err);
    assert_non_null(writer);
    assert_null(reg);
    snapshot_t *first = writer_first_snapshot(writer);
    assert_non_null(first);
    snapshot_destroy(&first);

    struct timespec started, ended;
    clock_gettime(CLOCK_MONOTONIC, &started);
    writer_stop(writer);
    clock_gettime(CLOCK_MONOTONIC, &ended);
    double seconds =
        (double)(ended.tv_sec - started.tv_sec) + (double)(ended.tv_nsec - started.tv_nsec) / 1e9;
    assert_true(seconds < 10.0);
    writer_stop(writer); /* twice: harmless */
    writer_destroy(&writer);
    assert_null(writer);
    auth_destroy(&auth);
    assert_int_equal(zmq_ctx_term(ctx), 0);
    config_clear(&cfg);
    char command[PATH_MAX + 16];
    snprintf(command, sizeof command, "rm -rf '%s'", dir);
    assert_int_equal(system(command), 0);
}

/* ------------------------------------------------------------------------ v1.1 events */

/* obj packed again into buf (initialised here; the caller destroys it): two objects are equal
 * when their packed bytes are (the service packs maps in a fixed key order). */
static void s_repack(const msgpack_object *obj, msgpack_sbuffer *buf)
{
    msgpack_sbuffer_init(buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    assert_int_equal(msgpack_pack_object(&pk, *obj), 0);
}

static bool s_str_equal(const msgpack_object *obj, const char *text)
{
    return obj && obj->type == MSGPACK_OBJECT_STR && obj->via.str.size == strlen(text) &&
           memcmp(obj->via.str.ptr, text, obj->via.str.size) == 0;
}

/* The result of op (no args) over dealer, packed (caller destroys out). */
static void s_read_op(void *dealer, const char *op, msgpack_sbuffer *out)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_pack_op(&buf, op, 997);
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);
    pm_reply_t rep;
    zmq_msg_t body;
    s_recv_reply(dealer, &rep, &body);
    assert_true(rep.ok);
    s_repack(rep.result, out);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
}

/* A key of the map packed in buf, packed again (caller destroys out). */
static void s_map_value(const msgpack_sbuffer *map, const char *key, msgpack_sbuffer *out)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    assert_int_equal(msgpack_unpack_next(&up, map->data, map->size, NULL), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *value = pm_map_get(&up.data, key);
    assert_non_null(value);
    s_repack(value, out);
    msgpack_unpacked_destroy(&up);
}

static void s_assert_same(const msgpack_sbuffer *a, const msgpack_sbuffer *b)
{
    assert_int_equal(a->size, b->size);
    assert_memory_equal(a->data, b->data, a->size);
}

#define CHANGES 5

/* Every `changed` event carries, in "configs", the ProviderConfig its request's reply carried
 * (byte for byte, also when later requests of the same batch change the same provider again),
 * nil for a removal, and the epoch of this run; `snapshot` then equals `values` with the same
 * versions as `health`. */
static void test_events_carry_configs(void **state)
{
    fixture_t *f = *state;
    void *dealer = s_dealer(f);
    int64_t base = s_health_state_version(dealer);

    /* Pipelined on one connection: they are applied in this order, most likely in one batch. */
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_pack_set_provider_model(&buf, 0, "cfg-a", "m1");
    s_send(dealer, &buf);
    buf.size = 0;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, "set_short_name", true, 1);
    msgpack_pack_map(&pk, 3);
    pm_pack_str(&pk, "provider");
    pm_pack_str(&pk, "cfg-a");
    pm_pack_str(&pk, "long_name");
    pm_pack_str(&pk, "m1");
    pm_pack_str(&pk, "short_name");
    pm_pack_str(&pk, "s1");
    s_send(dealer, &buf);
    buf.size = 0;
    s_pack_set_provider_model(&buf, 2, "cfg-a", "m2");
    s_send(dealer, &buf);
    buf.size = 0;
    s_pack_set_provider_model(&buf, 3, "cfg-b", "x");
    s_send(dealer, &buf);
    buf.size = 0;
    pm_request_begin(&pk, "remove_provider", true, 4);
    msgpack_pack_map(&pk, 1);
    pm_pack_str(&pk, "provider");
    pm_pack_str(&pk, "cfg-a");
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);

    static const char *const keys[CHANGES] = {"cfg-a", "cfg-a", "cfg-a", "cfg-b", "cfg-a"};
    msgpack_sbuffer results[CHANGES];
    for (int i = 0; i < CHANGES; i++) {
        pm_reply_t rep;
        zmq_msg_t body;
        s_recv_reply(dealer, &rep, &body);
        assert_true(rep.ok);
        assert_int_equal(rep.id->via.i64, i); /* one connection: answered in order */
        s_repack(rep.result, &results[i]);
        pm_reply_clear(&rep);
        zmq_msg_close(&body);
    }
    /* The three configs of cfg-a really differ, so equality below means something. */
    assert_true(results[0].size != results[1].size ||
                memcmp(results[0].data, results[1].data, results[0].size) != 0);
    assert_true(results[1].size != results[2].size ||
                memcmp(results[1].data, results[2].data, results[1].size) != 0);

    const char *epoch = writer_epoch(f->writer);
    assert_int_equal(strlen(epoch), 16);
    assert_int_equal(strspn(epoch, "0123456789abcdef"), 16);
    for (int i = 0; i < CHANGES; i++) {
        zmq_msg_t msg;
        msgpack_unpacked up;
        s_recv_event(f, &up, &msg, false);
        assert_true(s_str_equal(pm_map_get(&up.data, "event"), "changed"));
        const msgpack_object *version = pm_map_get(&up.data, "state_version");
        assert_non_null(version);
        assert_int_equal(version->via.u64, (uint64_t)(base + i + 1));
        const msgpack_object *providers = pm_map_get(&up.data, "providers");
        const msgpack_object *configs = pm_map_get(&up.data, "configs");
        assert_non_null(providers);
        assert_non_null(configs);
        assert_int_equal(providers->type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(configs->type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(providers->via.array.size, 1);
        assert_int_equal(configs->via.array.size, 1);
        assert_true(s_str_equal(&providers->via.array.ptr[0], keys[i]));
        if (i == CHANGES - 1) {
            /* the removal: nil, and its reply was true */
            assert_int_equal(configs->via.array.ptr[0].type, MSGPACK_OBJECT_NIL);
            assert_int_equal(results[i].size, 1);
            assert_int_equal((unsigned char)results[i].data[0], 0xc3);
        } else {
            msgpack_sbuffer config;
            s_repack(&configs->via.array.ptr[0], &config);
            s_assert_same(&config, &results[i]);
            msgpack_sbuffer_destroy(&config);
        }
        assert_true(s_str_equal(pm_map_get(&up.data, "epoch"), epoch));
        msgpack_unpacked_destroy(&up);
        zmq_msg_close(&msg);
    }
    for (int i = 0; i < CHANGES; i++)
        msgpack_sbuffer_destroy(&results[i]);

    /* snapshot: the versions of health, this run's epoch, and the providers of values. */
    msgpack_sbuffer snapshot, health, values, part, other;
    s_read_op(dealer, "snapshot", &snapshot);
    s_read_op(dealer, "health", &health);
    s_read_op(dealer, "values", &values);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    assert_int_equal(msgpack_unpack_next(&up, snapshot.data, snapshot.size, NULL),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(up.data.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(up.data.via.map.size, 4);
    msgpack_unpacked_destroy(&up);
    s_map_value(&snapshot, "providers", &part);
    s_assert_same(&part, &values);
    msgpack_sbuffer_destroy(&part);
    static const char *const same[] = {"state_version", "status_version", "epoch"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        s_map_value(&snapshot, same[i], &part);
        s_map_value(&health, same[i], &other);
        s_assert_same(&part, &other);
        msgpack_sbuffer_destroy(&part);
        msgpack_sbuffer_destroy(&other);
    }
    s_map_value(&snapshot, "state_version", &part);
    assert_int_equal((unsigned char)part.data[0], (unsigned)(base + CHANGES)); /* fixint */
    msgpack_sbuffer_destroy(&part);
    msgpack_sbuffer_destroy(&snapshot);
    msgpack_sbuffer_destroy(&health);
    msgpack_sbuffer_destroy(&values);
    zmq_close(dealer);
}

static double s_monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads a heartbeat's or changed event's unsigned field. */
static uint64_t s_u64(const msgpack_unpacked *up, const char *key)
{
    const msgpack_object *value = pm_map_get(&up->data, key);
    assert_non_null(value);
    assert_int_equal(value->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    return value->via.u64;
}

#define HEARTBEATS 12

/* Heartbeats come every heartbeat_ms with the current versions and the epoch, on the same
 * socket as the changes and in order with them: every heartbeat after a change's event
 * carries that change's state_version, every one before it the version before. */
static void test_heartbeats(void **state)
{
    fixture_t *f = *state;
    void *dealer = s_dealer(f);
    int64_t base = s_health_state_version(dealer);
    msgpack_sbuffer health, status;
    s_read_op(dealer, "health", &health);
    s_map_value(&health, "status_version", &status);
    msgpack_sbuffer_destroy(&health);
    const char *epoch = writer_epoch(f->writer);

    /* The first one may have been on its way before the subscription: timing starts at the
     * first heartbeat received. */
    double first = 0, last = 0;
    for (int i = 0; i < HEARTBEATS; i++) {
        zmq_msg_t msg;
        msgpack_unpacked up;
        s_recv_event(f, &up, &msg, true);
        last = s_monotonic_s();
        if (i == 0)
            first = last;
        assert_true(s_str_equal(pm_map_get(&up.data, "event"), "heartbeat"));
        assert_int_equal(up.data.via.map.size, 4);
        assert_int_equal(s_u64(&up, "state_version"), (uint64_t)base);
        msgpack_sbuffer mine;
        s_repack(pm_map_get(&up.data, "status_version"), &mine);
        s_assert_same(&mine, &status);
        msgpack_sbuffer_destroy(&mine);
        assert_true(s_str_equal(pm_map_get(&up.data, "epoch"), epoch));
        msgpack_unpacked_destroy(&up);
        zmq_msg_close(&msg);
    }
    msgpack_sbuffer_destroy(&status);
    /* The writer keeps the schedule (a late one does not shift the next ones), so the mean
     * period is heartbeat_ms; generous bounds for a loaded machine, but neither a burst nor
     * a stalled timer passes. */
    double mean_ms = (last - first) * 1000.0 / (HEARTBEATS - 1);
    if (mean_ms < HEARTBEAT_MS * 0.8 || mean_ms > HEARTBEAT_MS * 3.0)
        fail_msg("mean heartbeat period %.1f ms, configured %d ms", mean_ms, HEARTBEAT_MS);

    /* A change: its event comes before any heartbeat that carries its version. */
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_pack_set_provider(&buf, 1, "beat");
    s_send(dealer, &buf);
    msgpack_sbuffer_destroy(&buf);
    pm_reply_t rep;
    zmq_msg_t body;
    s_recv_reply(dealer, &rep, &body);
    assert_true(rep.ok);
    pm_reply_clear(&rep);
    zmq_msg_close(&body);
    bool changed = false;
    int after = 0;
    while (after < 3) {
        zmq_msg_t msg;
        msgpack_unpacked up;
        s_recv_event(f, &up, &msg, true);
        bool heartbeat = s_str_equal(pm_map_get(&up.data, "event"), "heartbeat");
        uint64_t version = s_u64(&up, "state_version");
        if (!heartbeat) {
            assert_false(changed);
            assert_int_equal(version, (uint64_t)base + 1);
            changed = true;
        } else if (changed) {
            assert_int_equal(version, (uint64_t)base + 1);
            after++;
        } else {
            assert_int_equal(version, (uint64_t)base);
        }
        msgpack_unpacked_destroy(&up);
        zmq_msg_close(&msg);
    }
    zmq_close(dealer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pipelined_writes_commit_in_order, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_failed_persist_changes_nothing, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_dir_fsync_failure_keeps_the_change, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_failed_change_is_rolled_back, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_events_carry_configs, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_heartbeats, s_setup_fast_heartbeat, s_teardown),
        cmocka_unit_test_setup_teardown(test_oversized_reply_refused, s_setup_big, s_teardown),
        cmocka_unit_test(test_stop_without_front_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
