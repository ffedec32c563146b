/*
 * follower: a read replica's thread: the Clone pattern's I/O around replica/clone, the
 * writer's protocol towards the front end, forwarded ops, re-published events and the
 * replica's own heartbeats. See follower.h.
 */
#include "follower.h"

#include "clone.h"
#include "frames.h"
#include "inproc.h"
#include "iothreads.h"
#include "owner.h"
#include "log.h"
#include "pm_keyfile.h"
#include "pm_proto.h"
#include "wire.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define FOLLOWER_MAX_FRAMES 16        /* 'W' + routing frames + delimiter + body of a request */
#define FOLLOWER_SEND_TIMEOUT_MS 1000 /* a pipe send waits this long for a missing front end */
#define FOLLOWER_TICK_MS 50           /* the longest poll: silence and backoff are looked at */
#define FOLLOWER_BURST 64             /* messages from one socket before the others */
#define FOLLOWER_TAG_SIZE 8

/* A forwarded request waiting for the primary's answer. */
typedef struct {
    uint64_t tag;
    int64_t deadline_ms;
    zmq_msg_t frames[FOLLOWER_MAX_FRAMES]; /* the caller's routing frames and delimiter */
    size_t frame_count;
    void *body; /* a copy of the request, for its id when the primary does not answer */
    size_t body_size;
    pm_op_t op;
    uint64_t received_ns;
} forward_t;

struct follower_t {
    void *ctx;
    char endpoint[OWNER_ENDPOINT_SIZE];
    void *pipe; /* PAIR to the front end */
    void *control, *control_peer;
    void *sub, *dealer, *pub;
    pthread_t thread;
    bool thread_started;
    bool stop_sent;
    char *primary; /* the primary's request endpoint, for messages */
    int heartbeat_ms;
    clone_t *clone;
    snapshot_t *first;
    _Atomic int64_t seen_version;
    _Atomic int64_t seen_contact_ms;
    _Atomic(metrics_t *) metrics;
    atomic_uint_fast64_t handoffs; /* messages wholly sent on pipe (follower_handoffs) */
    /* The thread's own state. */
    bool stopping;
    bool metrics_synced;
    uint64_t next_tag;
    bool snapshot_pending;
    uint64_t snapshot_tag;
    int64_t snapshot_deadline_ms;
    int64_t next_heartbeat_ms;
    uint64_t sent_status_version; /* in the front end's snapshot */
    forward_t **forwards;
    size_t forward_count;
};

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static metrics_t *s_metrics(follower_t *self)
{
    return atomic_load_explicit(&self->metrics, memory_order_acquire);
}

/* What health reads from the front end's thread. */
static void s_note_seen(follower_t *self)
{
    atomic_store_explicit(&self->seen_version, clone_primary_version(self->clone),
                          memory_order_relaxed);
    atomic_store_explicit(&self->seen_contact_ms, clone_last_contact_ms(self->clone),
                          memory_order_relaxed);
}

void follower_seen(void *arg, int64_t *primary_version, int64_t *since_ms)
{
    follower_t *self = arg;
    *primary_version = atomic_load_explicit(&self->seen_version, memory_order_relaxed);
    int64_t contact = atomic_load_explicit(&self->seen_contact_ms, memory_order_relaxed);
    int64_t now = s_now_ms();
    *since_ms = contact < 0 ? -1 : now > contact ? now - contact : 0;
}

/* ------------------------------------------------------------------------ front end */

/* The gauges and /healthz from the replica's state (no model states: status lives on the
 * primary). */
static void s_publish_gauges(follower_t *self)
{
    metrics_t *metrics = s_metrics(self);
    if (!metrics)
        return;
    size_t counts[STATUS_STATE_COUNT] = {0};
    registry_t *reg = clone_registry(self->clone);
    int64_t version = clone_version(self->clone);
    int64_t status = clone_status_version(self->clone);
    metrics_set_state(metrics, version > 0 ? (uint64_t)version : 0,
                      status > 0 ? (uint64_t)status : 0, reg ? registry_count(reg) : 0, counts);
    if (clone_synced(self->clone))
        metrics_set_serving(metrics, true, NULL);
    self->metrics_synced = true;
}

/* Hands the front end the clone's current registry, as the writer hands its own. */
static int s_send_snapshot(follower_t *self)
{
    registry_t *reg = clone_registry(self->clone);
    if (!reg)
        return -1;
    int64_t version = clone_version(self->clone);
    int64_t status = clone_status_version(self->clone);
    snapshot_t *snap = snapshot_new(reg, version > 0 ? (uint64_t)version : 0, 0);
    if (!snap) {
        log_error("follower: out of memory publishing a snapshot");
        return -1;
    }
    snap->status_version = status > 0 ? (uint64_t)status : 0;
    snprintf(snap->epoch, sizeof snap->epoch, "%s", clone_epoch(self->clone));
    WRITER_TSAN_RELEASE(snap);
    char type = WRITER_MSG_SNAPSHOT;
    if (zmq_send(self->pipe, &type, 1, ZMQ_SNDMORE) < 0 ||
        zmq_send(self->pipe, &snap, sizeof snap, 0) < 0) {
        log_error("follower: cannot send a snapshot: %s", zmq_strerror(errno));
        snapshot_destroy(&snap);
        return -1;
    }
    /* The snapshot is the front end's now (it may already be freed): not read again. */
    atomic_fetch_add_explicit(&self->handoffs, 1, memory_order_release);
    self->sent_status_version = status > 0 ? (uint64_t)status : 0;
    s_publish_gauges(self);
    return 0;
}

/* 'R' + the caller's routing frames + body: the reply of one forwarded request. Counted just
 * before it is handed over, so that a caller who has the reply finds it in the metrics. */
static void s_reply(follower_t *self, forward_t *fw, const void *body, size_t size)
{
    metrics_t *metrics = s_metrics(self);
    if (metrics && fw->received_ns)
        metrics_request_observe(metrics_requests(metrics, METRICS_SET_WRITER), fw->op,
                                metrics_reply_outcome(body, size),
                                metrics_now_ns() - fw->received_ns);
    char type = WRITER_MSG_REPLY;
    int rc = zmq_send(self->pipe, &type, 1, ZMQ_SNDMORE);
    for (size_t i = 0; rc >= 0 && i < fw->frame_count; i++)
        rc = zmq_msg_send(&fw->frames[i], self->pipe, ZMQ_SNDMORE);
    if (rc >= 0)
        rc = zmq_send(self->pipe, body, size, 0);
    if (rc < 0)
        log_error("follower: cannot hand a reply to the front end: %s", zmq_strerror(errno));
    else
        atomic_fetch_add_explicit(&self->handoffs, 1, memory_order_release);
}

/* The caller gets `unavailable`, "Primary <REQ_EP> did not answer", with its request's id. */
static void s_reply_unavailable(follower_t *self, forward_t *fw)
{
    pm_request_t req;
    char err[64];
    pm_request_decode(&req, fw->body, fw->body_size, err, sizeof err);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    wire_pack_error_spans(&pk, req.id, PM_ERR_UNAVAILABLE, "Primary %s did not answer",
                          (pm_str_t){self->primary, strlen(self->primary)}, (pm_str_t){0});
    if (buf.data)
        s_reply(self, fw, buf.data, buf.size);
    else
        log_error("follower: out of memory answering a forwarded request");
    msgpack_sbuffer_destroy(&buf);
    pm_request_clear(&req);
}

static void s_forward_free(forward_t **fw_p)
{
    forward_t *fw = *fw_p;
    if (!fw)
        return;
    frames_close(fw->frames, fw->frame_count);
    free(fw->body);
    free(fw);
    *fw_p = NULL;
}

/* Removes the forward at index i (order does not matter: the table is searched by tag). */
static forward_t *s_forward_take(follower_t *self, size_t i)
{
    forward_t *fw = self->forwards[i];
    self->forwards[i] = self->forwards[--self->forward_count];
    return fw;
}

/* ------------------------------------------------------------------------ primary */

/* Sends [tag][empty][body] on the DEALER. ZMQ_IMMEDIATE is set: with no live connection the
 * send fails at once (EAGAIN) instead of queueing requests that would reach a primary that
 * comes back long after their callers gave up. 0 or -1. */
static int s_send_primary(follower_t *self, uint64_t tag, const void *body, size_t size)
{
    unsigned char bytes[FOLLOWER_TAG_SIZE];
    for (int i = 0; i < FOLLOWER_TAG_SIZE; i++)
        bytes[i] = (unsigned char)(tag >> (8 * i));
    if (zmq_send(self->dealer, bytes, sizeof bytes, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    /* Once the first frame is queued the rest of the message always follows it. */
    if (zmq_send(self->dealer, "", 0, ZMQ_SNDMORE) < 0 || zmq_send(self->dealer, body, size, 0) < 0)
        return -1;
    return 0;
}

static void s_request_snapshot(follower_t *self, int64_t now)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    pm_pack_str(&pk, "op");
    pm_pack_str(&pk, "snapshot");
    uint64_t tag = ++self->next_tag;
    if (!buf.data || s_send_primary(self, tag, buf.data, buf.size) < 0) {
        log_debug("follower: snapshot request not sent (%s)",
                  buf.data ? "no connection to the primary" : "out of memory");
        clone_snapshot_failed(self->clone, now);
    } else {
        self->snapshot_pending = true;
        self->snapshot_tag = tag;
        self->snapshot_deadline_ms = now + FOLLOWER_SNAPSHOT_TIMEOUT_MS;
    }
    msgpack_sbuffer_destroy(&buf);
}

/* The replica's heartbeat: its own view (the state its front end answers from), with the
 * primary's epoch, so that a replica of this replica follows the same rules as of a primary. */
static void s_publish_heartbeat(follower_t *self)
{
    if (!clone_synced(self->clone))
        return; /* nothing to announce yet */
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    int64_t status = clone_status_version(self->clone);
    int rc = msgpack_pack_map(&pk, 4);
    rc |= pm_pack_str(&pk, "event");
    rc |= pm_pack_str(&pk, "heartbeat");
    rc |= pm_pack_str(&pk, "state_version");
    rc |= msgpack_pack_int64(&pk, clone_version(self->clone));
    rc |= pm_pack_str(&pk, "status_version");
    rc |= msgpack_pack_int64(&pk, status > 0 ? status : 0);
    rc |= pm_pack_str(&pk, "epoch");
    rc |= pm_pack_str(&pk, clone_epoch(self->clone));
    if (rc != 0 || !buf.data)
        log_error("follower: out of memory packing a heartbeat");
    else if (zmq_send(self->pub, PM_PROTO_EVENTS_TOPIC, strlen(PM_PROTO_EVENTS_TOPIC),
                      ZMQ_SNDMORE) < 0 ||
             zmq_send(self->pub, buf.data, buf.size, 0) < 0)
        log_warn("follower: cannot publish a heartbeat: %s", zmq_strerror(errno));
    msgpack_sbuffer_destroy(&buf);
}

/* Re-publishes an event of the primary as it came (topic and body). */
static void s_republish(follower_t *self, zmq_msg_t *topic, zmq_msg_t *body)
{
    if (zmq_send(self->pub, zmq_msg_data(topic), zmq_msg_size(topic), ZMQ_SNDMORE) < 0 ||
        zmq_send(self->pub, zmq_msg_data(body), zmq_msg_size(body), 0) < 0)
        log_warn("follower: cannot re-publish an event: %s", zmq_strerror(errno));
}

/* After a snapshot was applied: the front end first, then a heartbeat at once, so that a
 * replica of this one learns of the jump without waiting for the next period. */
static void s_snapshot_applied(follower_t *self)
{
    log_info("follower: snapshot of %s applied: state_version %lld, epoch %s", self->primary,
             (long long)clone_version(self->clone), clone_epoch(self->clone));
    s_send_snapshot(self);
    s_publish_heartbeat(self);
}

/* One message of the primary's events. */
static void s_handle_event(follower_t *self, zmq_msg_t *frames, int count, int64_t now)
{
    if (count != 2)
        return;
    size_t topic_size = zmq_msg_size(&frames[0]);
    const char *topic = zmq_msg_data(&frames[0]);
    size_t providers = strlen(PM_PROTO_EVENTS_TOPIC);
    if (topic_size == providers && memcmp(topic, PM_PROTO_EVENTS_TOPIC, providers) == 0) {
        clone_event_t what =
            clone_on_event(self->clone, zmq_msg_data(&frames[1]), zmq_msg_size(&frames[1]), now);
        s_note_seen(self);
        if (what == CLONE_EVENT_APPLIED) {
            /* The front end has the change before a subscriber of ours hears of it. */
            s_send_snapshot(self);
            s_republish(self, &frames[0], &frames[1]);
        } else if (what == CLONE_EVENT_HEARTBEAT && clone_synced(self->clone)) {
            /* health's status_version follows the primary's (status changes bump no
             * state_version, so only heartbeats tell). */
            int64_t status = clone_status_version(self->clone);
            if (status >= 0 && (uint64_t)status != self->sent_status_version)
                s_send_snapshot(self);
        }
    } else if (topic_size == 6 && memcmp(topic, "models", 6) == 0) {
        s_republish(self, &frames[0], &frames[1]);
    }
}

static uint64_t s_tag_of(zmq_msg_t *frame)
{
    if (zmq_msg_size(frame) != FOLLOWER_TAG_SIZE)
        return 0;
    const unsigned char *bytes = zmq_msg_data(frame);
    uint64_t tag = 0;
    for (int i = 0; i < FOLLOWER_TAG_SIZE; i++)
        tag |= (uint64_t)bytes[i] << (8 * i);
    return tag;
}

/* One reply from the primary: [tag][empty][body]. */
static void s_handle_primary_reply(follower_t *self, zmq_msg_t *frames, int count, int64_t now)
{
    if (count != 3 || zmq_msg_size(&frames[1]) != 0)
        return;
    uint64_t tag = s_tag_of(&frames[0]);
    const void *body = zmq_msg_data(&frames[2]);
    size_t size = zmq_msg_size(&frames[2]);
    if (tag && self->snapshot_pending && tag == self->snapshot_tag) {
        self->snapshot_pending = false;
        int applied = clone_apply_snapshot(self->clone, body, size, now);
        s_note_seen(self); /* before the front end can answer from the new state */
        if (applied == 0)
            s_snapshot_applied(self);
        else
            log_warn("follower: %s gave no usable snapshot; retrying", self->primary);
        return;
    }
    for (size_t i = 0; tag && i < self->forward_count; i++) {
        if (self->forwards[i]->tag == tag) {
            forward_t *fw = s_forward_take(self, i);
            s_reply(self, fw, body, size); /* the primary's answer, byte for byte */
            s_forward_free(&fw);
            return;
        }
    }
    /* A reply after its deadline (the caller has had `unavailable`): dropped. */
}

/* One message from the front end: 'W' + caller + routing frames + delimiter + body, or 'Q'. */
static void s_handle_front(follower_t *self, zmq_msg_t *frames, int count, int64_t now)
{
    const char *type = zmq_msg_size(&frames[0]) >= 1 ? zmq_msg_data(&frames[0]) : "?";
    if (*type == WRITER_MSG_STOP) {
        self->stopping = true;
        frames_close(frames, (size_t)count);
        return;
    }
    if (*type != WRITER_MSG_REQUEST || count < 3) {
        log_error("follower: unexpected message from the front end");
        frames_close(frames, (size_t)count);
        return;
    }
    forward_t *fw = calloc(1, sizeof *fw);
    zmq_msg_t *body = &frames[count - 1];
    if (fw)
        fw->body = malloc(zmq_msg_size(body) ? zmq_msg_size(body) : 1);
    if (!fw || !fw->body) {
        log_error("follower: out of memory forwarding a request");
        if (fw)
            free(fw);
        frames_close(frames, (size_t)count);
        return;
    }
    fw->body_size = zmq_msg_size(body);
    memcpy(fw->body, zmq_msg_data(body), fw->body_size);
    for (int i = 1; i < count - 1; i++)
        fw->frames[fw->frame_count++] = frames[i]; /* ownership moves to the forward */
    zmq_msg_close(&frames[0]);
    fw->received_ns = s_metrics(self) ? metrics_now_ns() : 0;
    pm_request_t req;
    char err[64];
    fw->op = pm_request_decode(&req, fw->body, fw->body_size, err, sizeof err) == PM_OK
                 ? req.op
                 : PM_OP_COUNT_;
    pm_request_clear(&req);
    fw->tag = ++self->next_tag;
    fw->deadline_ms = now + FOLLOWER_FORWARD_TIMEOUT_MS;
    /* The caller's body goes as it is: the primary checks it and answers it. */
    if (self->forward_count >= FOLLOWER_MAX_PENDING ||
        s_send_primary(self, fw->tag, zmq_msg_data(body), zmq_msg_size(body)) < 0) {
        s_reply_unavailable(self, fw);
        s_forward_free(&fw);
        zmq_msg_close(body);
        return;
    }
    zmq_msg_close(body);
    self->forwards[self->forward_count++] = fw;
}

/* Callers whose primary did not answer in time get `unavailable`. Returns the ms until the
 * next deadline (or FOLLOWER_TICK_MS). */
static long s_expire_forwards(follower_t *self, int64_t now)
{
    long next = FOLLOWER_TICK_MS;
    for (size_t i = 0; i < self->forward_count;) {
        forward_t *fw = self->forwards[i];
        if (fw->deadline_ms <= now) {
            fw = s_forward_take(self, i);
            s_reply_unavailable(self, fw);
            s_forward_free(&fw);
            continue;
        }
        if (fw->deadline_ms - now < next)
            next = (long)(fw->deadline_ms - now);
        i++;
    }
    return next;
}

/* Drains up to FOLLOWER_BURST messages of socket into handle. */
static void s_drain(follower_t *self, void *socket,
                    void (*handle)(follower_t *, zmq_msg_t *, int, int64_t), bool close_frames)
{
    for (int n = 0; n < FOLLOWER_BURST && !self->stopping; n++) {
        zmq_msg_t frames[FOLLOWER_MAX_FRAMES];
        bool overflow;
        int count = frames_recv(socket, ZMQ_DONTWAIT, frames, FOLLOWER_MAX_FRAMES, &overflow);
        if (count <= 0)
            return;
        if (overflow) {
            frames_close(frames, (size_t)count);
            continue;
        }
        handle(self, frames, count, s_now_ms());
        if (close_frames)
            frames_close(frames, (size_t)count);
    }
}

static void *s_thread(void *arg)
{
    follower_t *self = arg;
    self->next_heartbeat_ms = s_now_ms() + self->heartbeat_ms;
    while (!self->stopping) {
        int64_t now = s_now_ms();
        if (self->snapshot_pending && now >= self->snapshot_deadline_ms) {
            self->snapshot_pending = false;
            log_warn("follower: %s did not answer a snapshot request within %d ms; retrying",
                     self->primary, FOLLOWER_SNAPSHOT_TIMEOUT_MS);
            clone_snapshot_failed(self->clone, now);
        }
        /* Also where silence is noticed (clone_want_snapshot). */
        if (!self->snapshot_pending && clone_want_snapshot(self->clone, now))
            s_request_snapshot(self, now);
        long timeout = s_expire_forwards(self, now);
        if (now >= self->next_heartbeat_ms) {
            s_publish_heartbeat(self);
            self->next_heartbeat_ms += self->heartbeat_ms;
            if (self->next_heartbeat_ms <= now)
                self->next_heartbeat_ms = now + self->heartbeat_ms;
        }
        if (self->next_heartbeat_ms - now < timeout)
            timeout = (long)(self->next_heartbeat_ms - now);
        if (!self->metrics_synced && s_metrics(self))
            s_publish_gauges(self);
        /* While a snapshot request is in flight the events stay queued on the SUB socket
         * (clone ignores events fed meanwhile; fed after the reply, the ones above the
         * snapshot's version apply): the socket is left out of the poll until then. */
        bool events = !self->snapshot_pending;
        zmq_pollitem_t items[4] = {{self->pipe, 0, ZMQ_POLLIN, 0},
                                   {self->dealer, 0, ZMQ_POLLIN, 0},
                                   {self->control_peer, 0, ZMQ_POLLIN, 0},
                                   {self->sub, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, events ? 4 : 3, timeout < 1 ? 1 : timeout) < 0) {
            if (errno == EINTR)
                continue;
            log_error("follower: poll failed: %s", zmq_strerror(errno));
            break;
        }
        if (items[1].revents & ZMQ_POLLIN)
            s_drain(self, self->dealer, s_handle_primary_reply, true);
        /* Also right after a snapshot reply: the events queued behind it. */
        if (!self->snapshot_pending && (items[3].revents & ZMQ_POLLIN || !events))
            s_drain(self, self->sub, s_handle_event, true);
        if (items[0].revents & ZMQ_POLLIN)
            s_drain(self, self->pipe, s_handle_front, false);
        if (items[2].revents & ZMQ_POLLIN)
            self->stopping = true;
    }
    /* Whoever waits for the primary now gets an answer: nobody will route a later one. */
    while (self->forward_count) {
        forward_t *fw = s_forward_take(self, self->forward_count - 1);
        s_reply_unavailable(self, fw);
        s_forward_free(&fw);
    }
    char type = WRITER_MSG_STOP;
    if (zmq_send(self->pipe, &type, 1, ZMQ_DONTWAIT) < 0 && errno != EAGAIN)
        log_error("follower: cannot confirm the stop: %s", zmq_strerror(errno));
    return NULL;
}

/* ------------------------------------------------------------------------ life cycle */

/* CURVE towards the primary: its public key from key_file, the replica's own server key pair
 * (curve_secret_key_file) as the client identity, so that the primary lists one key per
 * replica in its readers (or clients) directory. */
static int s_curve_client(const config_t *cfg, void *sockets[], size_t count, char *err,
                          size_t err_size)
{
    char server[PM_KEYFILE_Z85_LEN + 1], public_key[PM_KEYFILE_Z85_LEN + 1],
        secret[PM_KEYFILE_Z85_LEN + 1];
    char why[512];
    if (pm_keyfile_read(cfg->replica_server_key_file, server, NULL, why, sizeof why) < 0) {
        snprintf(err, err_size, "the primary's key (--replica-server-key-file): %s", why);
        return -1;
    }
    if (pm_keyfile_read(cfg->curve_secret_key_file, public_key, secret, why, sizeof why) < 0) {
        snprintf(err, err_size, "the replica's key pair (--curve-secret-key-file): %s", why);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        if (zmq_setsockopt(sockets[i], ZMQ_CURVE_SERVERKEY, server, PM_KEYFILE_Z85_LEN) < 0 ||
            zmq_setsockopt(sockets[i], ZMQ_CURVE_PUBLICKEY, public_key, PM_KEYFILE_Z85_LEN) < 0 ||
            zmq_setsockopt(sockets[i], ZMQ_CURVE_SECRETKEY, secret, PM_KEYFILE_Z85_LEN) < 0) {
            snprintf(err, err_size, "CURVE towards the primary: %s", zmq_strerror(errno));
            rc = -1;
        }
    }
    /* The secret leaves no copy on this stack (the sockets keep theirs). */
    volatile char *wipe = secret;
    for (size_t i = 0; i < sizeof secret; i++)
        wipe[i] = 0;
    return rc;
}

/* ZMTP heartbeats on a socket towards the primary: a PING every heartbeat_ms, and the
 * connection dropped (then made again, the primary's name resolved again) when nothing came
 * back for 3 x heartbeat_ms. Without them a primary that vanished from the network without
 * closing its connections (a node lost, a pod rescheduled to a new address) leaves the replica
 * on a half-open TCP connection for ever: it would answer reads from an older state with
 * primary_seen_s growing, and never catch up (found by kube-test's network-loss case). */
static int s_detect_dead_peer(void *socket, int heartbeat_ms)
{
    int timeout = 3 * heartbeat_ms;
    return zmq_setsockopt(socket, ZMQ_HEARTBEAT_IVL, &heartbeat_ms, sizeof heartbeat_ms) < 0 ||
                   zmq_setsockopt(socket, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout) < 0
               ? -1
               : 0;
}

follower_t *follower_new(void *zmq_ctx, const config_t *cfg, const auth_t *auth, bool *bind_failed,
                         char *err, size_t err_size)
{
    *bind_failed = false;
    follower_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    self->ctx = zmq_ctx;
    atomic_init(&self->seen_version, -1);
    atomic_init(&self->seen_contact_ms, -1);
    atomic_init(&self->metrics, NULL);
    atomic_init(&self->handoffs, 0);
    self->heartbeat_ms = cfg->heartbeat_ms >= CONFIG_MIN_HEARTBEAT_MS ? cfg->heartbeat_ms
                                                                      : CONFIG_DEFAULT_HEARTBEAT_MS;
    self->primary = cfg->replica_of ? strdup(cfg->replica_of) : NULL;
    self->forwards = calloc(FOLLOWER_MAX_PENDING, sizeof *self->forwards);
    /* The replica expects the primary's heartbeats at its own period (set both equal). */
    self->clone = clone_new(self->heartbeat_ms, FOLLOWER_BACKOFF_MAX_MS);
    registry_t *empty = registry_new();
    if (empty && registry_seal(empty) == 0)
        self->first = snapshot_new(empty, 0, 0);
    registry_destroy(&empty);
    if (!self->primary || !self->forwards || !self->clone || !self->first || !cfg->replica_events) {
        snprintf(err, err_size,
                 cfg->replica_of && cfg->replica_events
                     ? "out of memory"
                     : "the replica needs --replica-of and --replica-events");
        goto fail;
    }
    int zero = 0, one = 1;
    int64_t max_size = PM_PROTO_MAX_REPLY_SIZE;
    owner_sockets_t own;
    if (owner_sockets_open(&own, zmq_ctx, "follower", auth, cfg->events_endpoint,
                           FOLLOWER_SEND_TIMEOUT_MS, bind_failed, err, err_size) < 0)
        goto fail;
    self->pipe = own.pipe;
    self->control = own.control;
    self->control_peer = own.control_peer;
    self->pub = own.pub;
    memcpy(self->endpoint, own.endpoint, sizeof self->endpoint);
    self->sub = zmq_socket(zmq_ctx, ZMQ_SUB);
    self->dealer = zmq_socket(zmq_ctx, ZMQ_DEALER);
    /* On the events I/O thread, never the requests': libzmq resolves the primary's host name
     * with a blocking getaddrinfo() in the I/O thread at every reconnect, and while the
     * primary is away its name may not resolve for seconds (a Kubernetes Service without
     * endpoints; podman's DNS was seen silent for 30-40 s): callers' handshakes must not wait
     * behind that. */
    if (!self->sub || !self->dealer || iothreads_pin(zmq_ctx, self->sub, IOTHREADS_EVENTS) < 0 ||
        iothreads_pin(zmq_ctx, self->dealer, IOTHREADS_EVENTS) < 0 ||
        zmq_setsockopt(self->sub, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(self->sub, ZMQ_MAXMSGSIZE, &max_size, sizeof max_size) < 0 ||
        zmq_setsockopt(self->sub, ZMQ_SUBSCRIBE, PM_PROTO_EVENTS_TOPIC,
                       strlen(PM_PROTO_EVENTS_TOPIC)) < 0 ||
        zmq_setsockopt(self->sub, ZMQ_SUBSCRIBE, "models", 6) < 0 ||
        zmq_setsockopt(self->dealer, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(self->dealer, ZMQ_MAXMSGSIZE, &max_size, sizeof max_size) < 0 ||
        zmq_setsockopt(self->dealer, ZMQ_IMMEDIATE, &one, sizeof one) < 0 ||
        s_detect_dead_peer(self->sub, self->heartbeat_ms) < 0 ||
        s_detect_dead_peer(self->dealer, self->heartbeat_ms) < 0) {
        snprintf(err, err_size, "sockets towards the primary: %s", zmq_strerror(errno));
        goto fail;
    }
    if (cfg->replica_server_key_file) {
        void *sockets[2] = {self->sub, self->dealer};
        if (s_curve_client(cfg, sockets, 2, err, err_size) < 0)
            goto fail;
    }
    /* Subscribe first, then ask for the snapshot (the Clone pattern's order): the thread's
     * first request goes out once the DEALER is connected. */
    if (zmq_connect(self->sub, cfg->replica_events) < 0 ||
        zmq_connect(self->dealer, cfg->replica_of) < 0) {
        snprintf(err, err_size, "cannot connect to the primary (%s, %s): %s", cfg->replica_of,
                 cfg->replica_events, zmq_strerror(errno));
        goto fail;
    }
    if (pthread_create(&self->thread, NULL, s_thread, self) != 0) {
        snprintf(err, err_size, "cannot start the follower thread");
        goto fail;
    }
    self->thread_started = true;
    return self;
fail:
    follower_destroy(&self);
    return NULL;
}

const char *follower_endpoint(const follower_t *self)
{
    return self->endpoint;
}

const atomic_uint_fast64_t *follower_handoffs(const follower_t *self)
{
    return &self->handoffs;
}

snapshot_t *follower_first_snapshot(follower_t *self)
{
    snapshot_t *first = self->first;
    self->first = NULL;
    return first;
}

void follower_set_metrics(follower_t *self, metrics_t *metrics)
{
    if (!self || !metrics)
        return;
    char reason[300];
    snprintf(reason, sizeof reason, "Replica not yet synchronised with %s", self->primary);
    /* Before the thread can see the metrics: it alone turns serving on, at its first
     * snapshot (s_publish_gauges), so this cannot undo that. */
    metrics_set_serving(metrics, false, reason);
    atomic_store_explicit(&self->metrics, metrics, memory_order_release);
}

void follower_stop(follower_t *self)
{
    if (!self || !self->thread_started)
        return;
    if (!self->stop_sent) {
        char byte = 1;
        if (zmq_send(self->control, &byte, 1, 0) < 0)
            log_error("follower: cannot signal the stop: %s", zmq_strerror(errno));
        self->stop_sent = true;
    }
    pthread_join(self->thread, NULL);
    self->thread_started = false;
}

void follower_destroy(follower_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    follower_t *self = *self_p;
    follower_stop(self);
    void *sockets[] = {self->pipe, self->control, self->control_peer,
                       self->sub,  self->dealer,  self->pub};
    for (size_t i = 0; i < sizeof sockets / sizeof sockets[0]; i++)
        if (sockets[i])
            zmq_close(sockets[i]);
    for (size_t i = 0; i < self->forward_count; i++)
        s_forward_free(&self->forwards[i]);
    free(self->forwards);
    clone_destroy(&self->clone);
    snapshot_destroy(&self->first);
    free(self->primary);
    free(self);
    *self_p = NULL;
}
