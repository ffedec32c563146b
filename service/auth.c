/*
 * auth: CURVE server keys, the ZAP handler thread and the loopback rule. See auth.h.
 */
#include "auth.h"

#include "frames.h"
#include "inproc.h"
#include "log.h"
#include "pm_keyfile.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <zmq.h>

#define AUTH_KEY_SIZE 32
#define AUTH_ZAP_ENDPOINT "inproc://zeromq.zap.01" /* fixed by RFC 27 */
#define AUTH_ZAP_FRAMES 7                          /* version .. mechanism, credentials */
#define AUTH_MAX_MONITORS 4 /* CURVE sockets watched: the request and the events socket */
/* Handshakes that fail before ZAP is asked: a client without CURVE, or one that holds a wrong
 * server key. Only a socket monitor sees those (ZAP refusals are logged by the handler). A
 * client without CURVE that sees the mismatch first and hangs up shows as "no detail". */
#define AUTH_MONITOR_EVENTS                                                                        \
    (ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
/* A refused client reconnects every 100 ms by default, and many may: at most this many
 * refusal lines per window, so that refusals cannot fill the disk with log lines. */
#define AUTH_LOG_BURST 20
#define AUTH_LOG_WINDOW_S 10

struct auth_t {
    bool curve;
    char public_z85[PM_KEYFILE_Z85_LEN + 1];
    char secret_z85[PM_KEYFILE_Z85_LEN + 1];
    uint8_t (*clients)[AUTH_KEY_SIZE]; /* sorted, for bsearch */
    size_t client_count;
    void *ctx;
    void *zap;     /* REP, owned by the thread once it runs */
    void *control; /* PAIR: the main thread's end: "" stops the thread, else a monitor */
    void *control_peer;
    void *monitors[AUTH_MAX_MONITORS]; /* PAIR, connected and owned by the thread */
    size_t monitor_count;
    time_t log_window_start; /* refusal log limit; the thread's own */
    size_t log_window_lines;
    size_t log_suppressed;
    pthread_t thread;
    bool thread_started;
    char control_endpoint[64];
    _Atomic unsigned long long refusals; /* written by the thread, read by the metrics */
};

bool auth_endpoint_is_local(const char *endpoint)
{
    if (strncmp(endpoint, "ipc://", 6) == 0 || strncmp(endpoint, "inproc://", 9) == 0)
        return true;
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return false;
    const char *host = endpoint + 6;
    const char *colon = strrchr(host, ':');
    if (!colon)
        return false;
    size_t len = (size_t)(colon - host);
    if ((len == 9 && strncmp(host, "localhost", 9) == 0) ||
        (len == 5 && strncmp(host, "[::1]", 5) == 0))
        return true;
    /* 127.0.0.0/8 written as a dotted quad; "127.example.com" is a name, not loopback. */
    if (len < 4 || strncmp(host, "127.", 4) != 0)
        return false;
    for (size_t i = 4; i < len; i++) {
        if (!(host[i] == '.' || (host[i] >= '0' && host[i] <= '9')))
            return false;
    }
    return true;
}

int auth_check_config(const config_t *cfg, char *err, size_t err_size)
{
    bool curve = cfg->curve_secret_key_file && *cfg->curve_secret_key_file;
    if (curve)
        return 0;
    const char *endpoints[2] = {cfg->endpoint, cfg->events_endpoint};
    for (int i = 0; i < 2; i++) {
        if (!auth_endpoint_is_local(endpoints[i]) && cfg->allow_insecure) {
            log_warn("auth: serving %s without CURVE (--allow-insecure): anyone who can reach "
                     "it can read and change every provider and API key",
                     endpoints[i]);
        } else if (!auth_endpoint_is_local(endpoints[i])) {
            snprintf(err, err_size,
                     "refusing to bind %s without CURVE: other machines could reach it and "
                     "read API keys; configure a server key (--curve-secret-key-file and "
                     "--curve-clients-dir) or pass --allow-insecure on a trusted network",
                     endpoints[i]);
            return -1;
        }
    }
    return 0;
}

static int s_key_compare(const void *a, const void *b)
{
    return memcmp(a, b, AUTH_KEY_SIZE);
}

/* Reads every "*.pub" file of dir as an allowed client key. */
static int s_load_clients(auth_t *self, const char *dir, char *err, size_t err_size)
{
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, err_size, "cannot open the clients directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int rc = -1;
    size_t cap = 16;
    self->clients = malloc(cap * AUTH_KEY_SIZE);
    if (!self->clients) {
        snprintf(err, err_size, "out of memory");
        goto done;
    }
    struct dirent *entry;
    while ((entry = readdir(d))) {
        size_t len = strlen(entry->d_name);
        if (len < 5 || strcmp(entry->d_name + len - 4, ".pub") != 0)
            continue;
        char path[4096], public_z85[PM_KEYFILE_Z85_LEN + 1], reason[512];
        if (snprintf(path, sizeof path, "%s/%s", dir, entry->d_name) >= (int)sizeof path)
            continue;
        if (pm_keyfile_read(path, public_z85, NULL, reason, sizeof reason) < 0) {
            log_warn("auth: skipping %s: %s", path, reason);
            continue;
        }
        if (self->client_count == AUTH_MAX_CLIENTS) {
            snprintf(err, err_size, "more than %d client keys in %s", AUTH_MAX_CLIENTS, dir);
            goto done;
        }
        if (self->client_count == cap) {
            cap *= 2;
            void *grown = realloc(self->clients, cap * AUTH_KEY_SIZE);
            if (!grown) {
                snprintf(err, err_size, "out of memory");
                goto done;
            }
            self->clients = grown;
        }
        if (!zmq_z85_decode(self->clients[self->client_count], public_z85)) {
            log_warn("auth: skipping %s: not a Z85 key", path);
            continue;
        }
        self->client_count++;
    }
    qsort(self->clients, self->client_count, AUTH_KEY_SIZE, s_key_compare);
    rc = 0;
done:
    closedir(d);
    return rc;
}

static bool s_allowed(const auth_t *self, const void *key, size_t size)
{
    return size == AUTH_KEY_SIZE && self->client_count &&
           bsearch(key, self->clients, self->client_count, AUTH_KEY_SIZE, s_key_compare);
}

/* True when one more refusal may be logged now (see AUTH_LOG_BURST). Called by the thread. */
static bool s_may_log_refusal(auth_t *self)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - self->log_window_start >= AUTH_LOG_WINDOW_S) {
        if (self->log_suppressed)
            log_warn("auth: %zu more refusals in the last %d s were not logged",
                     self->log_suppressed, AUTH_LOG_WINDOW_S);
        self->log_window_start = now.tv_sec;
        self->log_window_lines = 0;
        self->log_suppressed = 0;
    }
    if (self->log_window_lines == AUTH_LOG_BURST) {
        self->log_suppressed++;
        return false;
    }
    self->log_window_lines++;
    return true;
}

/* Answers one ZAP request (RFC 27). */
static void s_handle_zap(auth_t *self)
{
    zmq_msg_t frames[AUTH_ZAP_FRAMES];
    bool overflow;
    int received = frames_recv(self->zap, 0, frames, AUTH_ZAP_FRAMES, &overflow);
    if (received < 0)
        return;
    size_t count = (size_t)received;
    if (count < 6) {
        frames_close(frames, count);
        return;
    }
    bool curve = zmq_msg_size(&frames[5]) == 5 && memcmp(zmq_msg_data(&frames[5]), "CURVE", 5) == 0;
    bool ok = curve && count == 7 && !overflow &&
              s_allowed(self, zmq_msg_data(&frames[6]), zmq_msg_size(&frames[6]));
    if (!ok)
        atomic_fetch_add_explicit(&self->refusals, 1, memory_order_relaxed);
    if (!ok && s_may_log_refusal(self)) {
        char address[64] = "?", key[PM_KEYFILE_Z85_LEN + 1] = "?";
        size_t alen = zmq_msg_size(&frames[3]);
        if (alen < sizeof address) {
            memcpy(address, zmq_msg_data(&frames[3]), alen);
            address[alen] = '\0';
        }
        if (count == 7 && zmq_msg_size(&frames[6]) == AUTH_KEY_SIZE)
            zmq_z85_encode(key, zmq_msg_data(&frames[6]), AUTH_KEY_SIZE);
        log_warn("auth: refused client key %s from %s", key, address);
    }
    const char *status = ok ? "200" : "400";
    const char *text = ok ? "OK" : "client key not allowed";
    /* version, request id (echoed), status code, status text, user id, metadata */
    if (zmq_send(self->zap, "1.0", 3, ZMQ_SNDMORE) < 0 ||
        zmq_send(self->zap, zmq_msg_data(&frames[1]), zmq_msg_size(&frames[1]), ZMQ_SNDMORE) < 0 ||
        zmq_send(self->zap, status, 3, ZMQ_SNDMORE) < 0 ||
        zmq_send(self->zap, text, strlen(text), ZMQ_SNDMORE) < 0 ||
        zmq_send(self->zap, "", 0, ZMQ_SNDMORE) < 0 || zmq_send(self->zap, "", 0, 0) < 0)
        log_error("auth: cannot answer a ZAP request: %s", zmq_strerror(errno));
    frames_close(frames, count);
}

/* Logs one socket monitor event: a refused handshake (two frames: event and value, then the
 * endpoint). */
static void s_handle_monitor(auth_t *self, void *monitor)
{
    zmq_msg_t frames[2];
    bool overflow;
    int received = frames_recv(monitor, 0, frames, 2, &overflow);
    if (received < 0)
        return;
    size_t count = (size_t)received;
    if (count == 2 && zmq_msg_size(&frames[0]) == 6) /* a failed handshake is a refusal too */
        atomic_fetch_add_explicit(&self->refusals, 1, memory_order_relaxed);
    if (count == 2 && zmq_msg_size(&frames[0]) == 6 && s_may_log_refusal(self)) {
        uint16_t event;
        uint32_t value; /* a protocol error code, or an errno for "no detail" */
        memcpy(&event, zmq_msg_data(&frames[0]), sizeof event);
        memcpy(&value, (const char *)zmq_msg_data(&frames[0]) + 2, sizeof value);
        char endpoint[256] = "?";
        size_t elen = zmq_msg_size(&frames[1]);
        if (elen < sizeof endpoint) {
            memcpy(endpoint, zmq_msg_data(&frames[1]), elen);
            endpoint[elen] = '\0';
        }
        if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
            log_warn("auth: refused a client on %s: the handshake failed (%s)", endpoint,
                     zmq_strerror((int)value));
        else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
            log_warn("auth: refused a client without CURVE on %s", endpoint);
        else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
            log_warn("auth: refused a client whose CURVE handshake failed (wrong server key?) "
                     "on %s",
                     endpoint);
        else
            log_warn("auth: refused a client on %s: ZMTP protocol error 0x%x", endpoint,
                     (unsigned)value);
    }
    frames_close(frames, count);
}

/* A control message: empty = stop (returns 1); else the endpoint of a socket monitor to
 * watch. */
static int s_handle_control(auth_t *self)
{
    char endpoint[128];
    int size = zmq_recv(self->control_peer, endpoint, sizeof endpoint - 1, 0);
    if (size < 0)
        return errno == EINTR ? 0 : 1;
    if (size == 0)
        return 1;
    if (size >= (int)sizeof endpoint || self->monitor_count == AUTH_MAX_MONITORS) {
        log_error("auth: cannot watch another socket monitor");
        return 0;
    }
    endpoint[size] = '\0';
    int zero = 0;
    void *monitor = zmq_socket(self->ctx, ZMQ_PAIR);
    if (!monitor || zmq_setsockopt(monitor, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_connect(monitor, endpoint) < 0) {
        log_error("auth: cannot watch %s: %s", endpoint, zmq_strerror(errno));
        if (monitor)
            zmq_close(monitor);
        return 0;
    }
    self->monitors[self->monitor_count++] = monitor;
    return 0;
}

static void *s_thread(void *arg)
{
    auth_t *self = arg;
    for (;;) {
        zmq_pollitem_t items[2 + AUTH_MAX_MONITORS] = {{self->control_peer, 0, ZMQ_POLLIN, 0},
                                                       {self->zap, 0, ZMQ_POLLIN, 0}};
        for (size_t i = 0; i < self->monitor_count; i++)
            items[2 + i] = (zmq_pollitem_t){self->monitors[i], 0, ZMQ_POLLIN, 0};
        if (zmq_poll(items, 2 + (int)self->monitor_count, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if ((items[0].revents & ZMQ_POLLIN) && s_handle_control(self) == 1)
            break;
        if (items[1].revents & ZMQ_POLLIN)
            s_handle_zap(self);
        for (size_t i = 0; i < self->monitor_count; i++) {
            if (items[2 + i].revents & ZMQ_POLLIN)
                s_handle_monitor(self, self->monitors[i]);
        }
    }
    /* The thread's own sockets: closed here, by the thread that used them. */
    for (size_t i = 0; i < self->monitor_count; i++)
        zmq_close(self->monitors[i]);
    self->monitor_count = 0;
    return NULL;
}

auth_t *auth_new(void *zmq_ctx, const config_t *cfg, char *err, size_t err_size)
{
    auth_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    if (!cfg->curve_secret_key_file || !*cfg->curve_secret_key_file)
        return self; /* CURVE off */
    self->curve = true;
    self->ctx = zmq_ctx;
    char reason[512];
    if (pm_keyfile_read(cfg->curve_secret_key_file, self->public_z85, self->secret_z85, reason,
                        sizeof reason) < 0) {
        snprintf(err, err_size, "server key: %s", reason);
        goto fail;
    }
    struct stat st;
    if (stat(cfg->curve_secret_key_file, &st) == 0 && (st.st_mode & 077))
        log_warn("auth: %s is readable by others; it should be mode 0600",
                 cfg->curve_secret_key_file);
    if (!cfg->curve_clients_dir || !*cfg->curve_clients_dir) {
        snprintf(err, err_size, "CURVE needs a clients directory (--curve-clients-dir)");
        goto fail;
    }
    if (s_load_clients(self, cfg->curve_clients_dir, err, err_size) < 0)
        goto fail;
    if (self->client_count == 0)
        log_warn("auth: no client keys in %s: every client will be refused",
                 cfg->curve_clients_dir);

    int zero = 0;
    inproc_endpoint(self->control_endpoint, sizeof self->control_endpoint, "auth");
    self->zap = zmq_socket(zmq_ctx, ZMQ_REP);
    self->control = zmq_socket(zmq_ctx, ZMQ_PAIR);
    self->control_peer = zmq_socket(zmq_ctx, ZMQ_PAIR);
    if (!self->zap || !self->control || !self->control_peer ||
        zmq_setsockopt(self->zap, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(self->control, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(self->control_peer, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_bind(self->zap, AUTH_ZAP_ENDPOINT) < 0 ||
        zmq_bind(self->control_peer, self->control_endpoint) < 0 ||
        zmq_connect(self->control, self->control_endpoint) < 0) {
        snprintf(err, err_size, "ZAP handler: %s", zmq_strerror(errno));
        goto fail;
    }
    if (pthread_create(&self->thread, NULL, s_thread, self) != 0) {
        snprintf(err, err_size, "cannot start the ZAP handler thread");
        goto fail;
    }
    self->thread_started = true;
    log_info("auth: CURVE on, %zu allowed client keys", self->client_count);
    return self;
fail:
    auth_destroy(&self);
    return NULL;
}

int auth_apply(const auth_t *self, void *socket)
{
    if (!self->curve)
        return 0;
    int one = 1;
    if (zmq_setsockopt(socket, ZMQ_CURVE_SERVER, &one, sizeof one) < 0 ||
        zmq_setsockopt(socket, ZMQ_CURVE_SECRETKEY, self->secret_z85, PM_KEYFILE_Z85_LEN) < 0)
        return -1;
    /* The ZAP thread watches the socket's monitor and logs each refused handshake. */
    char endpoint[64];
    inproc_endpoint(endpoint, sizeof endpoint, "auth-monitor");
    if (zmq_socket_monitor(socket, endpoint, AUTH_MONITOR_EVENTS) < 0 ||
        zmq_send(self->control, endpoint, strlen(endpoint), 0) < 0)
        return -1;
    return 0;
}

size_t auth_client_count(const auth_t *self)
{
    return self->client_count;
}

void auth_destroy(auth_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    auth_t *self = *self_p;
    if (self->thread_started) {
        if (zmq_send(self->control, "", 0, 0) < 0)
            log_error("auth: cannot stop the ZAP handler: %s", zmq_strerror(errno));
        pthread_join(self->thread, NULL);
    }
    if (self->zap)
        zmq_close(self->zap);
    if (self->control)
        zmq_close(self->control);
    if (self->control_peer)
        zmq_close(self->control_peer);
    explicit_bzero(self->secret_z85, sizeof self->secret_z85);
    free(self->clients);
    free(self);
    *self_p = NULL;
}

unsigned long long auth_refusals(const auth_t *self)
{
    return self ? atomic_load_explicit(&self->refusals, memory_order_relaxed) : 0;
}
