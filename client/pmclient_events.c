/*
 * pmclient_events: the subscriber of libpmclient (see pmclient.h): a SUB socket on the
 * service's "providers" and "models" topics, and a decoder that keeps only well-formed
 * "changed" and "models_changed" events (v1.1's heartbeats and any other kind are skipped).
 * Events are hints for caches, never the state itself, so a malformed event is skipped rather
 * than reported.
 */
#include "pmclient.h"

#include "pm_keyfile.h"
#include "pm_proto.h"
#include "pmclient_internal.h"

#include <errno.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* Events are small (a version and the keys a change touched); the limit is far above them
 * and below the largest reply, so a subscriber never buffers more than a request client. */
#define S_EVENTS_MAX_SIZE (16 * 1024 * 1024)
_Static_assert(S_EVENTS_MAX_SIZE <= PM_PROTO_MAX_REPLY_SIZE, "events are not larger than replies");

/* protocol v1.1's topic of model status transitions (the "models_changed" events). */
#define S_MODELS_TOPIC "models"

struct pmclient_events_t {
    void *ctx;
    void *socket;
};

/* ------------------------------------------------------------------------------- events */

static pmclient_events_t *s_events_new(const char *endpoint, const char *server_public,
                                       const char *client_public, const char *client_secret)
{
    if (!endpoint)
        endpoint = PMCLIENT_DEFAULT_EVENTS_ENDPOINT;
    pmclient_events_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->ctx = zmq_ctx_new();
    if (!self->ctx)
        goto fail;
    self->socket = zmq_socket(self->ctx, ZMQ_SUB);
    if (!self->socket)
        goto fail;
    int linger = 0;
    int64_t max_size = S_EVENTS_MAX_SIZE;
    if (zmq_setsockopt(self->socket, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(self->socket, ZMQ_MAXMSGSIZE, &max_size, sizeof max_size) != 0 ||
        zmq_setsockopt(self->socket, ZMQ_SUBSCRIBE, PM_PROTO_EVENTS_TOPIC,
                       strlen(PM_PROTO_EVENTS_TOPIC)) != 0 ||
        zmq_setsockopt(self->socket, ZMQ_SUBSCRIBE, S_MODELS_TOPIC, strlen(S_MODELS_TOPIC)) != 0)
        goto fail;
    if (server_public) {
        if (!pm_keyfile_z85_valid(server_public) || !pm_keyfile_z85_valid(client_public) ||
            !pm_keyfile_z85_valid(client_secret))
            goto fail;
        if (zmq_setsockopt(self->socket, ZMQ_CURVE_SERVERKEY, server_public,
                           PMCLIENT_Z85_KEY_LEN + 1) != 0 ||
            zmq_setsockopt(self->socket, ZMQ_CURVE_PUBLICKEY, client_public,
                           PMCLIENT_Z85_KEY_LEN + 1) != 0 ||
            zmq_setsockopt(self->socket, ZMQ_CURVE_SECRETKEY, client_secret,
                           PMCLIENT_Z85_KEY_LEN + 1) != 0)
            goto fail;
    }
    if (zmq_connect(self->socket, endpoint) != 0)
        goto fail;
    return self;

fail:
    pmclient_events_destroy(&self);
    return NULL;
}

pmclient_events_t *pmclient_events_new(const char *endpoint)
{
    return s_events_new(endpoint, NULL, NULL, NULL);
}

pmclient_events_t *pmclient_events_new_curve(const char *endpoint, const char *server_public_z85,
                                             const char *client_public_z85,
                                             const char *client_secret_z85)
{
    if (!server_public_z85)
        return NULL;
    return s_events_new(endpoint, server_public_z85, client_public_z85, client_secret_z85);
}

void pmclient_events_destroy(pmclient_events_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pmclient_events_t *self = *self_p;
    if (self->socket)
        zmq_close(self->socket);
    if (self->ctx) {
        while (zmq_ctx_term(self->ctx) != 0 && errno == EINTR) {
        }
    }
    free(self);
    *self_p = NULL;
}

void pm_event_free(pm_event_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pm_event_t *self = *self_p;
    pm_strings_free(&self->keys);
    free(self->provider);
    if (self->changes) {
        for (size_t i = 0; i < self->change_count; i++) {
            free(self->changes[i].model);
            free(self->changes[i].from);
            free(self->changes[i].to);
        }
        free(self->changes);
    }
    free(self);
    *self_p = NULL;
}

static bool s_str_is(const msgpack_object *obj, const char *text)
{
    return pmc_is_str(obj) && obj->via.str.size == strlen(text) &&
           memcmp(obj->via.str.ptr, text, obj->via.str.size) == 0;
}

/* {"event": "changed", "state_version": int, "providers": [key, ...], ...}. 0 or -1. */
static int s_decode_changed(const msgpack_object *root, pm_event_t *event)
{
    const msgpack_object *version = pm_map_get(root, "state_version");
    const msgpack_object *providers = pm_map_get(root, "providers");
    if (!version || version->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        version->via.u64 > INT64_MAX)
        return -1;
    if (!providers || providers->type != MSGPACK_OBJECT_ARRAY)
        return -1;
    event->kind = PMCLIENT_EVENT_CHANGED;
    event->state_version = (int64_t)version->via.u64;
    event->keys = calloc(1, sizeof *event->keys);
    if (!event->keys)
        return -1;
    size_t n = providers->via.array.size;
    event->keys->items = pmc_calloc_array(n, sizeof(char *));
    if (!event->keys->items)
        return -1;
    event->keys->count = n;
    for (size_t i = 0; i < n; i++) {
        if (!pmc_is_str(&providers->via.array.ptr[i]))
            return -1;
        event->keys->items[i] = pmc_dup_str(&providers->via.array.ptr[i]);
        if (!event->keys->items[i])
            return -1;
    }
    return 0;
}

/* {"event": "models_changed", "status_version": int, "provider": key,
 *  "changes": [{"model": str, "from": str or nil, "to": str}, ...]}. 0 or -1. */
static int s_decode_models_changed(const msgpack_object *root, pm_event_t *event)
{
    const msgpack_object *version = pm_map_get(root, "status_version");
    const msgpack_object *provider = pm_map_get(root, "provider");
    const msgpack_object *changes = pm_map_get(root, "changes");
    if (!version || version->type != MSGPACK_OBJECT_POSITIVE_INTEGER || !pmc_is_str(provider) ||
        !changes || changes->type != MSGPACK_OBJECT_ARRAY)
        return -1;
    event->kind = PMCLIENT_EVENT_MODELS_CHANGED;
    event->status_version = version->via.u64;
    if (!(event->provider = pmc_dup_str(provider)))
        return -1;
    size_t n = changes->via.array.size;
    event->changes = pmc_calloc_array(n, sizeof *event->changes);
    if (!event->changes)
        return -1;
    event->change_count = n;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *change = &changes->via.array.ptr[i];
        pm_model_change_t *out = &event->changes[i];
        const msgpack_object *model = pm_map_get(change, "model");
        const msgpack_object *from = pm_map_get(change, "from");
        const msgpack_object *to = pm_map_get(change, "to");
        if (!pmc_is_str(model) || !pmc_is_str(to) || !from ||
            (from->type != MSGPACK_OBJECT_NIL && !pmc_is_str(from)))
            return -1;
        if (!(out->model = pmc_dup_str(model)) || !(out->to = pmc_dup_str(to)))
            return -1;
        if (pmc_is_str(from) && !(out->from = pmc_dup_str(from)))
            return -1;
    }
    return 0;
}

/* Decodes one event body of topic (a known one). 1 with *out for an event the caller wants
 * (models: also "models_changed"), 0 to skip it. */
static int s_decode_event(const void *data, size_t size, bool models, pm_event_t **out)
{
    char err[128];
    msgpack_unpacked unpacked;
    size_t offset = 0;
    int found = 0;
    pm_event_t *event = NULL;
    if (pm_proto_precheck(data, size, PM_PROTO_MAX_DEPTH, err, sizeof err) != 0)
        return 0;
    msgpack_unpacked_init(&unpacked);
    if (msgpack_unpack_next(&unpacked, data, size, &offset) != MSGPACK_UNPACK_SUCCESS)
        goto cleanup;
    const msgpack_object *root = &unpacked.data;
    if (root->type != MSGPACK_OBJECT_MAP)
        goto cleanup;
    const msgpack_object *name = pm_map_get(root, "event");
    event = calloc(1, sizeof *event);
    if (!event)
        goto cleanup;
    if (!models && s_str_is(name, "changed")) {
        if (s_decode_changed(root, event) != 0)
            goto cleanup;
    } else if (models && s_str_is(name, "models_changed")) {
        if (s_decode_models_changed(root, event) != 0)
            goto cleanup;
    } else {
        goto cleanup; /* heartbeats and kinds this library does not know */
    }
    *out = event;
    event = NULL;
    found = 1;

cleanup:
    pm_event_free(&event);
    msgpack_unpacked_destroy(&unpacked);
    return found;
}

/* Waits for the next event the caller wants: "changed" ones, and "models_changed" ones when
 * models is true. Returns as pmclient_events_recv. */
static int s_next(pmclient_events_t *self, int timeout_ms, bool models, pm_event_t **out)
{
    *out = NULL;
    int64_t deadline = timeout_ms < 0 ? -1 : pmc_now_ms() + timeout_ms;
    for (;;) {
        long wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - pmc_now_ms();
            if (left < 0)
                return 0;
            wait = (long)left;
        }
        zmq_pollitem_t item = {.socket = self->socket, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&item, 1, wait);
        if (rc < 0)
            return errno == EINTR ? 0 : -1;
        if (rc == 0)
            return 0;

        /* Frame 1: the topic; frame 2: the body; anything else is skipped. */
        int frame = 0;
        int more = 1;
        int found = 0;
        int topic = 0; /* 1: providers, 2: models, 0: neither */
        while (more) {
            zmq_msg_t msg;
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, self->socket, ZMQ_DONTWAIT) < 0) {
                int error = errno;
                zmq_msg_close(&msg);
                if (error == EINTR)
                    continue;
                /* The parts of one message arrive together, so EAGAIN cannot come
                 * mid-message; whatever it is, resume at the next poll. */
                break;
            }
            more = zmq_msg_more(&msg);
            if (frame == 0) {
                size_t len = zmq_msg_size(&msg);
                const void *data = zmq_msg_data(&msg);
                /* SUB matches prefixes: the topic must be exactly one of ours. */
                if (len == strlen(PM_PROTO_EVENTS_TOPIC) &&
                    memcmp(data, PM_PROTO_EVENTS_TOPIC, len) == 0)
                    topic = 1;
                else if (len == strlen(S_MODELS_TOPIC) && memcmp(data, S_MODELS_TOPIC, len) == 0)
                    topic = 2;
            } else if (frame == 1 && topic && !more && (topic == 1 || models)) {
                found = s_decode_event(zmq_msg_data(&msg), zmq_msg_size(&msg), topic == 2, out);
            }
            frame++;
            zmq_msg_close(&msg);
        }
        if (found)
            return 1;
    }
}

int pmclient_events_recv(pmclient_events_t *self, int timeout_ms, pm_event_t **out)
{
    return s_next(self, timeout_ms, true, out);
}

int pmclient_events_next(pmclient_events_t *self, int timeout_ms, int64_t *state_version,
                         pm_strings_t **keys)
{
    pm_event_t *event = NULL;
    if (keys)
        *keys = NULL;
    int rc = s_next(self, timeout_ms, false, &event);
    if (rc == 1) {
        *state_version = event->state_version;
        if (keys) {
            *keys = event->keys;
            event->keys = NULL;
        }
        pm_event_free(&event);
    }
    return rc;
}
