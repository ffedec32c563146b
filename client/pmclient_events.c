/*
 * pmclient_events: the subscriber of libpmclient (see pmclient.h): a SUB socket on the
 * service's "providers" topic, and a decoder that keeps only well-formed "changed" events.
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
                       strlen(PM_PROTO_EVENTS_TOPIC)) != 0)
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

/* Decodes one event body. 1 for a "changed" event, 0 to skip it. */
static int s_decode_event(const void *data, size_t size, int64_t *state_version,
                          pm_strings_t **keys)
{
    char err[128];
    msgpack_unpacked unpacked;
    size_t offset = 0;
    int found = 0;
    pm_strings_t *strings = NULL;
    if (pm_proto_precheck(data, size, PM_PROTO_MAX_DEPTH, err, sizeof err) != 0)
        return 0;
    msgpack_unpacked_init(&unpacked);
    if (msgpack_unpack_next(&unpacked, data, size, &offset) != MSGPACK_UNPACK_SUCCESS)
        goto cleanup;
    const msgpack_object *root = &unpacked.data;
    const msgpack_object *event = pm_map_get(root, "event");
    const msgpack_object *version = pm_map_get(root, "state_version");
    const msgpack_object *providers = pm_map_get(root, "providers");
    if (!pmc_is_str(event) || event->via.str.size != strlen("changed") ||
        memcmp(event->via.str.ptr, "changed", event->via.str.size) != 0)
        goto cleanup;
    if (!version || version->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        version->via.u64 > INT64_MAX)
        goto cleanup;
    if (!providers || providers->type != MSGPACK_OBJECT_ARRAY)
        goto cleanup;
    if (keys) {
        strings = calloc(1, sizeof *strings);
        if (!strings)
            goto cleanup;
        size_t n = providers->via.array.size;
        strings->items = pmc_calloc_array(n, sizeof(char *));
        if (!strings->items)
            goto cleanup;
        strings->count = n;
        for (size_t i = 0; i < n; i++) {
            if (!pmc_is_str(&providers->via.array.ptr[i]))
                goto cleanup;
            strings->items[i] = pmc_dup_str(&providers->via.array.ptr[i]);
            if (!strings->items[i])
                goto cleanup;
        }
        *keys = strings;
        strings = NULL;
    }
    *state_version = (int64_t)version->via.u64;
    found = 1;

cleanup:
    pm_strings_free(&strings);
    msgpack_unpacked_destroy(&unpacked);
    return found;
}

int pmclient_events_next(pmclient_events_t *self, int timeout_ms, int64_t *state_version,
                         pm_strings_t **keys)
{
    if (keys)
        *keys = NULL;
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
        bool topic_ok = false;
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
                topic_ok =
                    zmq_msg_size(&msg) == strlen(PM_PROTO_EVENTS_TOPIC) &&
                    memcmp(zmq_msg_data(&msg), PM_PROTO_EVENTS_TOPIC, zmq_msg_size(&msg)) == 0;
            } else if (frame == 1 && topic_ok && !more) {
                found = s_decode_event(zmq_msg_data(&msg), zmq_msg_size(&msg), state_version, keys);
            }
            frame++;
            zmq_msg_close(&msg);
        }
        if (found)
            return 1;
    }
}
