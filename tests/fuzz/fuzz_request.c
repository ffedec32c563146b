/*
 * fuzz_request: libFuzzer target over the request decoder and the dispatcher, in process,
 * with the REAL front end and writer (front_run in a thread, the writer thread behind it, a
 * data dir on tmpfs), so that every byte goes the way a network request goes: ROUTER,
 * pm_request_decode, the read ops on the snapshot, or the writer's ops, group commit, persist,
 * events. Each input is up to FUZZ_MAX_REQUESTS requests separated by the byte 0xc1 (never
 * valid in msgpack, nor in the UTF-8 of a msgpack str, so no valid request needs it), sent in
 * order over an inproc DEALER with the empty delimiter, as a REQ client would.
 *
 * Oracles besides the sanitizers: every request gets exactly one reply (two frames: the
 * delimiter and the body) within FUZZ_REPLY_TIMEOUT_MS, and every reply is a well-formed reply
 * of the contract (pm_reply_decode). A missing or malformed reply aborts.
 *
 * Network: discovery could send HTTP anywhere a fuzzed base_api_url points, so the target
 * first moves itself into a new network namespace (no interface up, not even loopback; needs
 * root or CAP_SYS_ADMIN, as in CI). Where that is refused, discover_models requests are not
 * sent at all.
 *
 * State: the registry grows with the inputs; every FUZZ_CHECK_EVERY inputs the service is
 * restarted on an empty data dir when it holds more than FUZZ_MAX_PROVIDERS providers, so
 * persists stay cheap.
 */
#define _GNU_SOURCE /* unshare, CLONE_NEWNET */
#include "auth.h"
#include "config.h"
#include "front.h"
#include "log.h"
#include "pm_proto.h"
#include "registry.h"
#include "store.h"
#include "writer.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define FUZZ_MAX_REQUESTS 8
#define FUZZ_SEPARATOR 0xc1
#define FUZZ_REPLY_TIMEOUT_MS 20000
#define FUZZ_CHECK_EVERY 64
#define FUZZ_MAX_PROVIDERS 64
#define FUZZ_ENDPOINT "inproc://pm-fuzz-requests"
#define FUZZ_EVENTS_ENDPOINT "inproc://pm-fuzz-events"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void pm_fuzz_cleanup(void);

static struct {
    bool started;
    bool isolated; /* in a network namespace of our own */
    char dir[64];
    char config_path[128];
    void *ctx;
    config_t cfg;
    auth_t *auth;
    writer_t *writer;
    front_t *front;
    int stop_pipe[2];
    pthread_t thread;
    void *client;
    unsigned long inputs;
} s_fuzz;

static void s_die(const char *what)
{
    fprintf(stderr, "fuzz_request: %s\n", what);
    abort();
}

static const char *s_no_env(const char *name)
{
    (void)name;
    return NULL;
}

static void s_quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static void *s_front_thread(void *arg)
{
    (void)arg;
    if (front_run(s_fuzz.front, s_fuzz.stop_pipe[0]) != 0)
        s_die("front_run failed");
    return NULL;
}

/* Removes every file of the data dir (the providers file, a lock file). */
static void s_empty_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *entry;
    while ((entry = readdir(d))) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0 ||
            strcmp(entry->d_name, "fuzz-config.yaml") == 0)
            continue;
        char path[512];
        if (snprintf(path, sizeof path, "%s/%s", dir, entry->d_name) < (int)sizeof path)
            unlink(path);
    }
    closedir(d);
}

/* Writes the config file once: discovery gives up at once (no retries, short timeouts). */
static void s_write_config(void)
{
    snprintf(s_fuzz.config_path, sizeof s_fuzz.config_path, "%s/fuzz-config.yaml", s_fuzz.dir);
    FILE *f = fopen(s_fuzz.config_path, "w");
    if (!f)
        s_die("cannot write the config file");
    fputs("log_level: error\n"
          "discovery:\n"
          "  max_retries: 0\n"
          "  retry_budget_ms: 0\n"
          "  connect_timeout_ms: 200\n"
          "  request_timeout_ms: 500\n",
          f);
    if (fclose(f) != 0)
        s_die("cannot write the config file");
}

static void s_start(void)
{
    char err[1024];
    char *argv[] = {"fuzz_request",
                    "--config",
                    s_fuzz.config_path,
                    "--data-dir",
                    s_fuzz.dir,
                    "--endpoint",
                    FUZZ_ENDPOINT,
                    "--events-endpoint",
                    FUZZ_EVENTS_ENDPOINT,
                    "--workers",
                    "1",
                    NULL};
    if (config_load(&s_fuzz.cfg, 11, argv, s_no_env, err, sizeof err) != 0)
        s_die(err);
    log_set_level(s_fuzz.cfg.log_level);
    registry_t *registry = NULL;
    if (store_prepare_dir(s_fuzz.cfg.data_dir, err, sizeof err) != 0 ||
        config_build_registry(&s_fuzz.cfg, s_no_env, &registry, s_quiet, NULL, err, sizeof err) !=
            0)
        s_die(err);
    s_fuzz.ctx = zmq_ctx_new();
    if (!s_fuzz.ctx)
        s_die("zmq_ctx_new");
    s_fuzz.auth = auth_new(s_fuzz.ctx, &s_fuzz.cfg, err, sizeof err);
    if (!s_fuzz.auth)
        s_die(err);
    bool bind_failed = false;
    s_fuzz.writer = writer_new(s_fuzz.ctx, &s_fuzz.cfg, s_fuzz.auth, s_no_env, &registry,
                               &bind_failed, err, sizeof err);
    if (!s_fuzz.writer)
        s_die(err);
    snapshot_t *first = writer_first_snapshot(s_fuzz.writer);
    if (!first)
        s_die("no first snapshot");
    s_fuzz.front = front_new(s_fuzz.ctx, &s_fuzz.cfg, s_fuzz.auth, writer_endpoint(s_fuzz.writer),
                             &first, &bind_failed, err, sizeof err);
    if (!s_fuzz.front)
        s_die(err);
    if (pipe(s_fuzz.stop_pipe) != 0 ||
        pthread_create(&s_fuzz.thread, NULL, s_front_thread, NULL) != 0)
        s_die("cannot start the front thread");
    int zero = 0;
    s_fuzz.client = zmq_socket(s_fuzz.ctx, ZMQ_DEALER);
    if (!s_fuzz.client || zmq_setsockopt(s_fuzz.client, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_connect(s_fuzz.client, FUZZ_ENDPOINT) != 0)
        s_die("cannot connect the client");
    s_fuzz.started = true;
}

static void s_stop(void)
{
    if (!s_fuzz.started)
        return;
    zmq_close(s_fuzz.client);
    char byte = 1;
    if (write(s_fuzz.stop_pipe[1], &byte, 1) != 1)
        s_die("cannot stop the front thread");
    pthread_join(s_fuzz.thread, NULL);
    front_destroy(&s_fuzz.front);
    writer_destroy(&s_fuzz.writer);
    auth_destroy(&s_fuzz.auth);
    zmq_ctx_term(s_fuzz.ctx);
    close(s_fuzz.stop_pipe[0]);
    close(s_fuzz.stop_pipe[1]);
    config_clear(&s_fuzz.cfg);
    s_empty_dir(s_fuzz.dir);
    s_fuzz.started = false;
}

static void s_init(void)
{
    /* Before any thread exists: the namespace is the process's from here on. */
    s_fuzz.isolated = unshare(CLONE_NEWNET) == 0;
    if (!s_fuzz.isolated)
        fprintf(stderr,
                "fuzz_request: no network namespace (%s): discover_models requests "
                "are skipped\n",
                strerror(errno));
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(s_fuzz.dir, sizeof s_fuzz.dir, "%s/pm-fuzz-request-XXXXXX", base);
    if (!mkdtemp(s_fuzz.dir))
        s_die("mkdtemp");
    s_write_config();
    s_start();
    atexit(pm_fuzz_cleanup); /* libFuzzer ends with exit() */
}

void pm_fuzz_cleanup(void)
{
    s_stop();
    unlink(s_fuzz.config_path);
    rmdir(s_fuzz.dir);
}

/* Receives the reply to one request: exactly [empty delimiter, body]. Aborts when there is
 * none in time or it is malformed. */
static void s_expect_reply(void)
{
    zmq_pollitem_t item = {s_fuzz.client, 0, ZMQ_POLLIN, 0};
    int rc;
    do {
        rc = zmq_poll(&item, 1, FUZZ_REPLY_TIMEOUT_MS);
    } while (rc < 0 && errno == EINTR);
    if (rc <= 0)
        s_die("no reply within the timeout");
    zmq_msg_t frames[2];
    size_t count = 0;
    bool more = true;
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, s_fuzz.client, 0) < 0)
            s_die("cannot receive the reply");
        more = zmq_msg_more(&part);
        if (count == 2)
            s_die("reply has more than two frames");
        frames[count++] = part;
    }
    if (count != 2 || zmq_msg_size(&frames[0]) != 0)
        s_die("reply is not [delimiter, body]");
    pm_reply_t reply;
    char err[256];
    if (pm_reply_decode(&reply, zmq_msg_data(&frames[1]), zmq_msg_size(&frames[1]), err,
                        sizeof err) != 0)
        s_die(err);
    pm_reply_clear(&reply);
    zmq_msg_close(&frames[0]);
    zmq_msg_close(&frames[1]);
}

/* True when the request must not be sent: discovery outside a network namespace. */
static bool s_skip(const uint8_t *data, size_t size)
{
    if (s_fuzz.isolated)
        return false;
    pm_request_t req;
    char err[256];
    pm_error_t code = pm_request_decode(&req, data, size, err, sizeof err);
    bool skip = code == PM_OK && req.op == PM_OP_DISCOVER_MODELS;
    pm_request_clear(&req);
    return skip;
}

static void s_send(const uint8_t *data, size_t size)
{
    if (s_skip(data, size))
        return;
    if (zmq_send(s_fuzz.client, "", 0, ZMQ_SNDMORE) != 0 ||
        zmq_send(s_fuzz.client, data, size, 0) != (int)size)
        s_die("cannot send a request");
    s_expect_reply();
}

/* Restarts the service on an empty data dir when the registry has grown large. */
static void s_maybe_reset(void)
{
    static const uint8_t health[] = {0x81, 0xa2, 'o', 'p', 0xa6, 'h', 'e', 'a', 'l', 't', 'h'};
    if (++s_fuzz.inputs % FUZZ_CHECK_EVERY != 0)
        return;
    if (zmq_send(s_fuzz.client, "", 0, ZMQ_SNDMORE) != 0 ||
        zmq_send(s_fuzz.client, health, sizeof health, 0) != (int)sizeof health)
        s_die("cannot send health");
    zmq_pollitem_t item = {s_fuzz.client, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, FUZZ_REPLY_TIMEOUT_MS) <= 0)
        s_die("no health reply");
    zmq_msg_t delimiter, body;
    zmq_msg_init(&delimiter);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&delimiter, s_fuzz.client, 0) < 0 || zmq_msg_recv(&body, s_fuzz.client, 0) < 0)
        s_die("cannot receive health");
    pm_reply_t reply;
    char err[256];
    if (pm_reply_decode(&reply, zmq_msg_data(&body), zmq_msg_size(&body), err, sizeof err) != 0 ||
        !reply.ok)
        s_die("bad health reply");
    const msgpack_object *providers = pm_map_get(reply.result, "providers");
    bool reset = providers && providers->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                 providers->via.u64 > FUZZ_MAX_PROVIDERS;
    pm_reply_clear(&reply);
    zmq_msg_close(&delimiter);
    zmq_msg_close(&body);
    if (reset) {
        s_stop();
        s_start();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!s_fuzz.dir[0])
        s_init();
    size_t start = 0;
    int sent = 0;
    for (size_t i = 0; i <= size && sent < FUZZ_MAX_REQUESTS; i++) {
        if (i < size && data[i] != FUZZ_SEPARATOR)
            continue;
        s_send(data + start, i - start);
        sent++;
        start = i + 1;
    }
    s_maybe_reset();
    return 0;
}
