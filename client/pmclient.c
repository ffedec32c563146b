/*
 * pmclient: the request client of libpmclient (see pmclient.h): the client object and its
 * options, the Lazy Pirate exchange, argument packing and one function per operation. Results
 * are decoded by pmclient_result.c, events are pmclient_events.c's, key files pm_keyfile's.
 *
 * A call packs {"op", "args", "id"} with pm_proto, sends it on a REQ socket and polls for the
 * reply with a timeout (the zguide's Lazy Pirate). A lost reply closes the socket: a REQ socket
 * that sent and got nothing back cannot send again, and a fresh socket also drops whatever
 * stale reply might still arrive for the old request. Every reply is checked by
 * pm_reply_decode (bounded, valid UTF-8) and then decoded into the typed results
 * defensively: any shape other than the contract's is a "bad_reply", never a crash.
 */
#include "pmclient.h"

#include "pm_keyfile.h"
#include "pm_proto.h"
#include "pmclient_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define S_CODE_SIZE 32
#define S_MESSAGE_SIZE 8192

/* The client's published limits are proto's: a request the client lets through is one the
 * service accepts, a reply the service may send is one the client accepts, and a key the
 * client takes is one a key file holds. */
_Static_assert(PMCLIENT_MAX_REQUEST_SIZE == PM_PROTO_MAX_MESSAGE_SIZE,
               "the client's request limit must be the service's");
_Static_assert(PMCLIENT_MAX_REPLY_SIZE == PM_PROTO_MAX_REPLY_SIZE,
               "the client's reply limit must be proto's");
_Static_assert(PMCLIENT_Z85_KEY_LEN == PM_KEYFILE_Z85_LEN,
               "the client's key length must be the key files'");

struct pmclient_t {
    void *ctx;
    void *socket; /* NULL until the first call, and after every lost reply */
    char *endpoint;
    int timeout_ms;
    int retries;
    bool curve;
    char server_public[PMCLIENT_Z85_KEY_LEN + 1];
    char client_public[PMCLIENT_Z85_KEY_LEN + 1];
    char client_secret[PMCLIENT_Z85_KEY_LEN + 1];
    long long next_id;
    char code[S_CODE_SIZE];
    char message[S_MESSAGE_SIZE];
    bool keep_reply;
    void *last_reply;
    size_t last_reply_size;
};

/* A received reply: the bytes (owned) and the decoded envelope pointing into them. */
typedef struct {
    void *data;
    size_t size;
    pm_reply_t rep;
    bool rep_init;
} s_reply_t;

/* A bounded growable buffer for packing requests: msgpack_packer writes into it through
 * s_buffer_write, which refuses to grow past max and remembers that it did. */
typedef struct {
    char *data;
    size_t size;
    size_t capacity;
    size_t max;
    bool failed;    /* a write was refused */
    bool too_large; /* ... because it would have passed max */
} s_buffer_t;

/* ------------------------------------------------------------------------------ helpers */

void pmc_set_error(pmclient_t *self, const char *code, const char *fmt, ...)
{
    snprintf(self->code, sizeof self->code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(self->message, sizeof self->message, fmt, ap);
    va_end(ap);
}

static void s_clear_error(pmclient_t *self)
{
    self->code[0] = '\0';
    self->message[0] = '\0';
}

int pmc_bad_reply(pmclient_t *self, const char *what)
{
    pmc_set_error(self, PMCLIENT_ERR_BAD_REPLY, "reply does not match the contract: %s", what);
    return -1;
}

int pmc_nomem(pmclient_t *self)
{
    pmc_set_error(self, PMCLIENT_ERR_NOMEM, "out of memory");
    return -1;
}

int64_t pmc_now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int s_buffer_write(void *data, const char *buf, size_t len)
{
    s_buffer_t *self = data;
    if (self->failed)
        return -1;
    if (len > self->max - self->size) {
        self->failed = true;
        self->too_large = true;
        return -1;
    }
    if (self->size + len > self->capacity) {
        size_t capacity = self->capacity ? self->capacity : 256;
        while (capacity < self->size + len)
            capacity = capacity > self->max / 2 ? self->max : capacity * 2;
        char *grown = realloc(self->data, capacity);
        if (!grown) {
            self->failed = true;
            return -1;
        }
        self->data = grown;
        self->capacity = capacity;
    }
    memcpy(self->data + self->size, buf, len);
    self->size += len;
    return 0;
}

static void s_buffer_init(s_buffer_t *self, msgpack_packer *pk)
{
    memset(self, 0, sizeof *self);
    /* Slack over the request limit so that an oversized request is reported as such. */
    self->max = PMCLIENT_MAX_REQUEST_SIZE + 1;
    msgpack_packer_init(pk, self, s_buffer_write);
}

static void s_buffer_clear(s_buffer_t *self)
{
    free(self->data);
    memset(self, 0, sizeof *self);
}

/* ----------------------------------------------------------------------- client + socket */

pmclient_t *pmclient_new(const char *endpoint)
{
    if (!endpoint)
        endpoint = PMCLIENT_DEFAULT_ENDPOINT;
    if (strlen(endpoint) > PMCLIENT_MAX_ENDPOINT_LEN)
        return NULL;
    pmclient_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->endpoint = strdup(endpoint);
    self->ctx = zmq_ctx_new();
    if (!self->endpoint || !self->ctx) {
        pmclient_destroy(&self);
        return NULL;
    }
    self->timeout_ms = PMCLIENT_DEFAULT_TIMEOUT_MS;
    self->retries = PMCLIENT_DEFAULT_RETRIES;
    self->next_id = 1;
    return self;
}

static void s_close_socket(pmclient_t *self)
{
    if (self->socket) {
        /* LINGER is 0 already: a request nobody took is dropped, not kept. */
        zmq_close(self->socket);
        self->socket = NULL;
    }
}

static void s_forget_reply(pmclient_t *self)
{
    free(self->last_reply);
    self->last_reply = NULL;
    self->last_reply_size = 0;
}

void pmclient_destroy(pmclient_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pmclient_t *self = *self_p;
    s_close_socket(self);
    if (self->ctx) {
        /* Every socket is closed, so terminating cannot block; retry on a signal. */
        while (zmq_ctx_term(self->ctx) != 0 && errno == EINTR) {
        }
    }
    s_forget_reply(self);
    /* Key material does not outlive the client. */
    explicit_bzero(self->client_secret, sizeof self->client_secret);
    free(self->endpoint);
    free(self);
    *self_p = NULL;
}

int pmclient_set_timeout(pmclient_t *self, int timeout_ms)
{
    if (timeout_ms < 1 || timeout_ms > PMCLIENT_MAX_TIMEOUT_MS) {
        pmc_set_error(self, "bad_request", "timeout must be 1..%d ms", PMCLIENT_MAX_TIMEOUT_MS);
        return -1;
    }
    s_clear_error(self);
    self->timeout_ms = timeout_ms;
    return 0;
}

int pmclient_set_retries(pmclient_t *self, int retries)
{
    if (retries < 1 || retries > PMCLIENT_MAX_RETRIES) {
        pmc_set_error(self, "bad_request", "retries must be 1..%d", PMCLIENT_MAX_RETRIES);
        return -1;
    }
    s_clear_error(self);
    self->retries = retries;
    return 0;
}

int pmclient_set_curve(pmclient_t *self, const char *server_public_z85,
                       const char *client_public_z85, const char *client_secret_z85)
{
    if (!pm_keyfile_z85_valid(server_public_z85) || !pm_keyfile_z85_valid(client_public_z85) ||
        !pm_keyfile_z85_valid(client_secret_z85)) {
        pmc_set_error(self, "bad_request", "a CURVE key is not %d characters of Z85",
                      PMCLIENT_Z85_KEY_LEN);
        return -1;
    }
    memcpy(self->server_public, server_public_z85, PMCLIENT_Z85_KEY_LEN + 1);
    memcpy(self->client_public, client_public_z85, PMCLIENT_Z85_KEY_LEN + 1);
    memcpy(self->client_secret, client_secret_z85, PMCLIENT_Z85_KEY_LEN + 1);
    self->curve = true;
    s_close_socket(self); /* the next call opens one with the keys */
    s_clear_error(self);
    return 0;
}

int pmclient_set_curve_files(pmclient_t *self, const char *server_public_file,
                             const char *client_secret_file)
{
    char server_public[PMCLIENT_Z85_KEY_LEN + 1];
    char client_public[PMCLIENT_Z85_KEY_LEN + 1];
    char client_secret[PMCLIENT_Z85_KEY_LEN + 1];
    char err[512];
    int rc = -1;
    if (!server_public_file || !client_secret_file) {
        pmc_set_error(self, "bad_request", "both CURVE key files are required");
        return -1;
    }
    if (pmclient_curve_read_key_file(server_public_file, server_public, NULL, err, sizeof err) !=
        0) {
        pmc_set_error(self, "bad_request", "server key: %s", err);
        goto cleanup;
    }
    if (pmclient_curve_read_key_file(client_secret_file, client_public, client_secret, err,
                                     sizeof err) != 0) {
        pmc_set_error(self, "bad_request", "client key: %s", err);
        goto cleanup;
    }
    rc = pmclient_set_curve(self, server_public, client_public, client_secret);
cleanup:
    explicit_bzero(client_secret, sizeof client_secret);
    return rc;
}

const char *pmclient_endpoint(const pmclient_t *self)
{
    return self->endpoint;
}

const char *pmclient_error_code(const pmclient_t *self)
{
    return self->code;
}

const char *pmclient_error_message(const pmclient_t *self)
{
    return self->message;
}

bool pmclient_error_is_unreachable(const pmclient_t *self)
{
    return strcmp(self->code, PMCLIENT_ERR_TIMEOUT) == 0 ||
           strcmp(self->code, PMCLIENT_ERR_TRANSPORT) == 0;
}

void pmclient_set_keep_reply(pmclient_t *self, bool keep)
{
    self->keep_reply = keep;
    if (!keep)
        s_forget_reply(self);
}

int pmclient_last_reply(const pmclient_t *self, const void **data, size_t *size)
{
    if (!self->last_reply)
        return -1;
    *data = self->last_reply;
    *size = self->last_reply_size;
    return 0;
}

static int s_setsockopt(pmclient_t *self, void *socket, int option, const void *value, size_t size,
                        const char *name)
{
    if (zmq_setsockopt(socket, option, value, size) != 0) {
        pmc_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot set %s: %s", name, zmq_strerror(errno));
        return -1;
    }
    return 0;
}

/* Opens and connects the REQ socket when there is none. 0 or -1 ("transport"). */
static int s_open_socket(pmclient_t *self)
{
    if (self->socket)
        return 0;
    void *socket = zmq_socket(self->ctx, ZMQ_REQ);
    if (!socket) {
        pmc_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot create a socket: %s",
                      zmq_strerror(errno));
        return -1;
    }
    int linger = 0;
    int64_t max_size = PMCLIENT_MAX_REPLY_SIZE;
    int send_timeout = self->timeout_ms;
    if (s_setsockopt(self, socket, ZMQ_LINGER, &linger, sizeof linger, "ZMQ_LINGER") != 0 ||
        s_setsockopt(self, socket, ZMQ_MAXMSGSIZE, &max_size, sizeof max_size, "ZMQ_MAXMSGSIZE") !=
            0 ||
        s_setsockopt(self, socket, ZMQ_SNDTIMEO, &send_timeout, sizeof send_timeout,
                     "ZMQ_SNDTIMEO") != 0)
        goto fail;
    if (self->curve) {
        if (s_setsockopt(self, socket, ZMQ_CURVE_SERVERKEY, self->server_public,
                         PMCLIENT_Z85_KEY_LEN + 1, "ZMQ_CURVE_SERVERKEY") != 0 ||
            s_setsockopt(self, socket, ZMQ_CURVE_PUBLICKEY, self->client_public,
                         PMCLIENT_Z85_KEY_LEN + 1, "ZMQ_CURVE_PUBLICKEY") != 0 ||
            s_setsockopt(self, socket, ZMQ_CURVE_SECRETKEY, self->client_secret,
                         PMCLIENT_Z85_KEY_LEN + 1, "ZMQ_CURVE_SECRETKEY") != 0)
            goto fail;
    }
    if (zmq_connect(socket, self->endpoint) != 0) {
        pmc_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot connect to '%s': %s", self->endpoint,
                      zmq_strerror(errno));
        goto fail;
    }
    self->socket = socket;
    return 0;

fail:
    zmq_close(socket);
    return -1;
}

/* Reads are resent after a lost reply; writes never, because a lost reply may mean that the
 * service applied them. The list is proto's (pm_op_safe_to_resend), so that the client and
 * the contract cannot drift apart; an op the library does not know counts as a write. */
static bool s_op_is_retry_safe(const char *op)
{
    return pm_op_safe_to_resend(pm_op_from_name(op, strlen(op)));
}

static void s_reply_clear(s_reply_t *reply)
{
    if (reply->rep_init)
        pm_reply_clear(&reply->rep);
    free(reply->data);
    memset(reply, 0, sizeof *reply);
}

/* Receives every frame of the reply (a REQ socket delivers them together). One frame is
 * the contract; more is a bad reply. 0, 1 for a bad reply (message set), -1 transport. */
static int s_receive(pmclient_t *self, s_reply_t *reply)
{
    int frames = 0;
    int more = 1;
    while (more) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, self->socket, 0) < 0) {
            int error = errno;
            zmq_msg_close(&msg);
            if (error == EINTR)
                continue;
            pmc_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot receive: %s", zmq_strerror(error));
            return -1;
        }
        more = zmq_msg_more(&msg);
        if (frames++ == 0) {
            size_t size = zmq_msg_size(&msg);
            reply->data = malloc(size ? size : 1);
            if (!reply->data) {
                zmq_msg_close(&msg);
                pmc_nomem(self);
                return -1;
            }
            if (size)
                memcpy(reply->data, zmq_msg_data(&msg), size);
            reply->size = size;
        }
        zmq_msg_close(&msg);
    }
    if (frames != 1) {
        pmc_bad_reply(self, "the reply has more than one frame");
        return 1;
    }
    return 0;
}

/* Sends one request and waits for its reply, Lazy Pirate style. request is the packed map,
 * id its "id". On 0 reply->rep is a decoded envelope whose id matched (ok or not). */
static int s_exchange(pmclient_t *self, const char *op, const s_buffer_t *request, long long id,
                      s_reply_t *reply)
{
    int attempts = s_op_is_retry_safe(op) ? self->retries : 1;
    for (int attempt = 1; attempt <= attempts; attempt++) {
        if (s_open_socket(self) != 0)
            return -1;
        int sent;
        do {
            sent = zmq_send(self->socket, request->data, request->size, 0);
        } while (sent < 0 && errno == EINTR);
        if (sent < 0) {
            int error = errno;
            s_close_socket(self);
            if (error == EAGAIN)
                continue; /* no room to queue within the timeout: like a lost reply */
            pmc_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot send to '%s': %s", self->endpoint,
                          zmq_strerror(error));
            return -1;
        }

        int64_t deadline = pmc_now_ms() + self->timeout_ms;
        bool readable = false;
        for (;;) {
            int64_t left = deadline - pmc_now_ms();
            if (left <= 0)
                break;
            zmq_pollitem_t item = {.socket = self->socket, .events = ZMQ_POLLIN};
            int rc = zmq_poll(&item, 1, (long)left);
            if (rc < 0) {
                if (errno == EINTR)
                    continue; /* a signal: keep waiting for the time left */
                pmc_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot poll: %s", zmq_strerror(errno));
                s_close_socket(self);
                return -1;
            }
            if (rc > 0 && (item.revents & ZMQ_POLLIN)) {
                readable = true;
                break;
            }
        }
        if (!readable) {
            /* The reply is lost or late: this socket can neither send nor be trusted to
             * deliver the right reply any more. */
            s_close_socket(self);
            continue;
        }

        int rc = s_receive(self, reply);
        if (rc != 0) {
            s_close_socket(self);
            return -1;
        }
        char err[256];
        /* pm_reply_clear() is safe on whatever a failed decode left behind. */
        reply->rep_init = true;
        if (pm_reply_decode(&reply->rep, reply->data, reply->size, err, sizeof err) != 0) {
            pmc_set_error(self, PMCLIENT_ERR_BAD_REPLY, "reply does not match the contract: %s",
                          err);
            return -1;
        }
        const msgpack_object *reply_id = reply->rep.id;
        if (!reply_id || reply_id->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            reply_id->via.u64 != (uint64_t)id) {
            /* Not the answer to this request: discard it. A REQ socket cannot receive
             * another one, so this counts as a lost reply. */
            s_reply_clear(reply);
            s_close_socket(self);
            if (attempt == attempts) {
                pmc_set_error(self, PMCLIENT_ERR_BAD_REPLY,
                              "reply does not match the contract: its id is not the request's");
                return -1;
            }
            continue;
        }
        return 0;
    }
    if (attempts > 1)
        pmc_set_error(self, PMCLIENT_ERR_TIMEOUT, "no reply from '%s' after %d attempts of %d ms",
                      self->endpoint, attempts, self->timeout_ms);
    else if (s_op_is_retry_safe(op))
        pmc_set_error(self, PMCLIENT_ERR_TIMEOUT, "no reply from '%s' within %d ms", self->endpoint,
                      self->timeout_ms);
    else
        pmc_set_error(self, PMCLIENT_ERR_TIMEOUT,
                      "no reply from '%s' within %d ms; the %s request may or may not have been "
                      "applied (not resent)",
                      self->endpoint, self->timeout_ms, op);
    return -1;
}

/* Packs and runs op with args (a packed map, or NULL for {}). On 0 *result points into
 * reply (valid until s_finish) and the reply said ok; on -1 the error is set (the service's
 * own when it answered with one). */
static int s_call(pmclient_t *self, const char *op, const s_buffer_t *args, s_reply_t *reply,
                  const msgpack_object **result)
{
    s_buffer_t request;
    msgpack_packer pk;
    int rc = -1;
    memset(reply, 0, sizeof *reply);
    *result = NULL;
    s_clear_error(self);
    s_forget_reply(self);

    if (args && args->failed) {
        if (args->too_large)
            pmc_set_error(self, "bad_request", "request is larger than %d bytes",
                          PMCLIENT_MAX_REQUEST_SIZE);
        else
            pmc_nomem(self);
        return -1;
    }
    long long id = self->next_id++;
    if (self->next_id > (long long)INT32_MAX * 1024)
        self->next_id = 1;
    s_buffer_init(&request, &pk);
    pm_request_begin(&pk, op, true, id);
    if (args && args->size)
        s_buffer_write(&request, args->data, args->size);
    else
        msgpack_pack_map(&pk, 0);
    if (request.failed || request.size > PMCLIENT_MAX_REQUEST_SIZE) {
        if (request.too_large || request.size > PMCLIENT_MAX_REQUEST_SIZE)
            pmc_set_error(self, "bad_request", "request is larger than %d bytes",
                          PMCLIENT_MAX_REQUEST_SIZE);
        else
            pmc_nomem(self);
        goto cleanup;
    }
    if (s_exchange(self, op, &request, id, reply) != 0)
        goto cleanup;
    if (!reply->rep.ok) {
        pm_str_t code = reply->rep.code_name;
        pm_str_t message = reply->rep.message;
        if (code.len == 0 || code.len >= sizeof self->code)
            snprintf(self->code, sizeof self->code, "%s", pm_error_name(PM_ERR_INTERNAL));
        else
            snprintf(self->code, sizeof self->code, "%.*s", (int)code.len, code.ptr);
        size_t message_len =
            message.len < sizeof self->message - 1 ? message.len : sizeof self->message - 1;
        snprintf(self->message, sizeof self->message, "%.*s", (int)message_len,
                 message.ptr ? message.ptr : "");
        goto cleanup;
    }
    if (!reply->rep.result) {
        pmc_bad_reply(self, "ok reply without a result");
        goto cleanup;
    }
    *result = reply->rep.result;
    rc = 0;

cleanup:
    s_buffer_clear(&request);
    if (rc != 0)
        s_reply_clear(reply);
    return rc;
}

/* Ends a call: keeps the reply bytes when asked to, frees the rest. Returns rc. */
static int s_finish(pmclient_t *self, s_reply_t *reply, int rc)
{
    if (rc == 0 && self->keep_reply && reply->data) {
        self->last_reply = reply->data;
        self->last_reply_size = reply->size;
        reply->data = NULL;
    }
    s_reply_clear(reply);
    return rc;
}

/* ---------------------------------------------------------------------- argument packing */

typedef struct {
    s_buffer_t buffer;
    msgpack_packer pk;
} s_args_t;

static void s_args_init(s_args_t *args, uint32_t entries)
{
    s_buffer_init(&args->buffer, &args->pk);
    msgpack_pack_map(&args->pk, entries);
}

static void s_args_str(s_args_t *args, const char *name, const char *value)
{
    pm_pack_str(&args->pk, name);
    pm_pack_str(&args->pk, value);
}

static int s_require(pmclient_t *self, const char *value, const char *name)
{
    if (value)
        return 0;
    pmc_set_error(self, "bad_request", "missing required argument '%s'", name);
    return -1;
}

/* Runs an op with one string argument. */
static int s_call_str1(pmclient_t *self, const char *op, const char *name, const char *value,
                       s_reply_t *reply, const msgpack_object **result)
{
    s_args_t args;
    s_args_init(&args, 1);
    s_args_str(&args, name, value);
    int rc = s_call(self, op, &args.buffer, reply, result);
    s_buffer_clear(&args.buffer);
    return rc;
}

/* --------------------------------------------------------------------------- operations */

static int s_get_common(pmclient_t *self, const char *op, const char *provider_name, bool nil_ok,
                        pm_provider_t **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    *out = NULL;
    if (s_require(self, provider_name, "provider_name") != 0)
        return -1;
    int rc = s_call_str1(self, op, "provider_name", provider_name, &reply, &result);
    if (rc == 0) {
        if (nil_ok && result->type == MSGPACK_OBJECT_NIL)
            rc = 0;
        else
            rc = pmc_decode_provider(self, result, out);
    }
    return s_finish(self, &reply, rc);
}

int pmclient_get(pmclient_t *self, const char *provider_name, pm_provider_t **out)
{
    return s_get_common(self, "get", provider_name, true, out);
}

int pmclient_getitem(pmclient_t *self, const char *provider_name, pm_provider_t **out)
{
    return s_get_common(self, "getitem", provider_name, false, out);
}

int pmclient_contains(pmclient_t *self, const char *provider_name, bool *out)
{
    s_reply_t reply;
    const msgpack_object *result;
    *out = false;
    if (s_require(self, provider_name, "provider_name") != 0)
        return -1;
    int rc = s_call_str1(self, "contains", "provider_name", provider_name, &reply, &result);
    if (rc == 0) {
        if (result->type == MSGPACK_OBJECT_BOOLEAN)
            *out = result->via.boolean;
        else
            rc = pmc_bad_reply(self, "contains result is not a boolean");
    }
    return s_finish(self, &reply, rc);
}

/* An op without arguments whose result is an array of str. */
static int s_strings_op(pmclient_t *self, const char *op, pm_strings_t **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    *out = NULL;
    int rc = s_call(self, op, NULL, &reply, &result);
    if (rc == 0)
        rc = pmc_decode_strings(self, result, out);
    return s_finish(self, &reply, rc);
}

int pmclient_keys(pmclient_t *self, pm_strings_t **out)
{
    return s_strings_op(self, "keys", out);
}

static int s_list_op(pmclient_t *self, const char *op, bool pairs, pm_provider_list_t **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    *out = NULL;
    int rc = s_call(self, op, NULL, &reply, &result);
    if (rc == 0)
        rc = pmc_decode_provider_list(self, result, pairs, out);
    return s_finish(self, &reply, rc);
}

int pmclient_values(pmclient_t *self, pm_provider_list_t **out)
{
    return s_list_op(self, "values", false, out);
}

int pmclient_items(pmclient_t *self, pm_provider_list_t **out)
{
    return s_list_op(self, "items", true, out);
}

int pmclient_merged_models(pmclient_t *self, pm_merged_t **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    *out = NULL;
    int rc = s_call(self, "merged_models", NULL, &reply, &result);
    if (rc == 0)
        rc = pmc_decode_merged(self, result, out);
    return s_finish(self, &reply, rc);
}

int pmclient_valid_scoped_models(pmclient_t *self, pm_strings_t **out)
{
    return s_strings_op(self, "valid_scoped_models", out);
}

int pmclient_resolve(pmclient_t *self, const char *model_string, pm_provider_t **provider_out,
                     char **long_name_out)
{
    s_reply_t reply;
    const msgpack_object *result;
    pm_provider_t *provider = NULL;
    char *long_name = NULL;
    if (provider_out)
        *provider_out = NULL;
    if (long_name_out)
        *long_name_out = NULL;
    if (s_require(self, model_string, "model_string") != 0)
        return -1;
    int rc = s_call_str1(self, "get_api_for_model_string", "model_string", model_string, &reply,
                         &result);
    if (rc == 0) {
        if (result->type != MSGPACK_OBJECT_ARRAY || result->via.array.size != 2)
            rc = pmc_bad_reply(self, "result is not [ProviderConfig, long_name]");
        else if (pmc_decode_provider(self, &result->via.array.ptr[0], &provider) != 0 ||
                 pmc_take_str(self, &result->via.array.ptr[1], "long_name", &long_name) != 0)
            rc = -1;
    }
    if (rc == 0 && provider_out)
        *provider_out = provider;
    else
        pm_provider_free(&provider);
    if (rc == 0 && long_name_out)
        *long_name_out = long_name;
    else
        free(long_name);
    return s_finish(self, &reply, rc);
}

/* An op with one string argument whose result is a str. */
static int s_string_result_op(pmclient_t *self, const char *op, const char *name, const char *value,
                              char **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    *out = NULL;
    if (s_require(self, value, name) != 0)
        return -1;
    int rc = s_call_str1(self, op, name, value, &reply, &result);
    if (rc == 0)
        rc = pmc_take_str(self, result, "result", out);
    return s_finish(self, &reply, rc);
}

int pmclient_validate_model(pmclient_t *self, const char *model_string, char **long_name_out)
{
    return s_string_result_op(self, "validate_model", "model_string", model_string, long_name_out);
}

int pmclient_available_models(pmclient_t *self, const char *filter_by_provider, pm_strings_t **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    s_args_t args;
    *out = NULL;
    s_args_init(&args, filter_by_provider ? 1 : 0);
    if (filter_by_provider)
        s_args_str(&args, "filter_by_provider", filter_by_provider);
    int rc = s_call(self, "get_available_models", &args.buffer, &reply, &result);
    s_buffer_clear(&args.buffer);
    if (rc == 0)
        rc = pmc_decode_strings(self, result, out);
    return s_finish(self, &reply, rc);
}

int pmclient_short_name(pmclient_t *self, const char *long_name, char **out)
{
    return s_string_result_op(self, "get_short_name", "long_name", long_name, out);
}

int pmclient_find_model(pmclient_t *self, const char *name, pm_matches_t **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    *out = NULL;
    if (s_require(self, name, "name") != 0)
        return -1;
    int rc = s_call_str1(self, "find_model", "name", name, &reply, &result);
    if (rc == 0)
        rc = pmc_decode_matches(self, result, out);
    return s_finish(self, &reply, rc);
}

int pmclient_discover(pmclient_t *self, bool force_refresh, bool persist_on_success,
                      const char *provider, char **job_out)
{
    s_reply_t reply;
    const msgpack_object *result;
    s_args_t args;
    *job_out = NULL;
    s_args_init(&args, provider ? 3 : 2);
    pm_pack_str(&args.pk, "force_refresh");
    if (force_refresh)
        msgpack_pack_true(&args.pk);
    else
        msgpack_pack_false(&args.pk);
    pm_pack_str(&args.pk, "persist_on_success");
    if (persist_on_success)
        msgpack_pack_true(&args.pk);
    else
        msgpack_pack_false(&args.pk);
    if (provider)
        s_args_str(&args, "provider", provider);
    int rc = s_call(self, "discover_models", &args.buffer, &reply, &result);
    s_buffer_clear(&args.buffer);
    if (rc == 0) {
        if (!result || result->type != MSGPACK_OBJECT_MAP)
            rc = pmc_bad_reply(self, "discover_models result is not a map");
        else
            rc = pmc_take_str(self, pm_map_get(result, "job"), "job", job_out);
    }
    return s_finish(self, &reply, rc);
}

/* Checks an optional string-array argument: given (array not NULL and count >= 0), no NULL
 * element, a count that msgpack can hold. 0, or -1 with "bad_request". */
static int s_check_str_array(pmclient_t *self, const char *const *array, long count,
                             const char *name, bool *given)
{
    *given = array && count >= 0;
    if (!*given)
        return 0;
    if ((unsigned long)count > UINT32_MAX) {
        pmc_set_error(self, "bad_request", "too many entries in '%s'", name);
        return -1;
    }
    for (long i = 0; i < count; i++) {
        if (!array[i]) {
            pmc_set_error(self, "bad_request", "'%s' has a NULL entry", name);
            return -1;
        }
    }
    return 0;
}

static void s_args_str_array(s_args_t *args, const char *name, const char *const *array, long count)
{
    pm_pack_str(&args->pk, name);
    msgpack_pack_array(&args->pk, (uint32_t)count);
    for (long i = 0; i < count && !args->buffer.failed; i++)
        pm_pack_str(&args->pk, array[i]);
}

static void s_args_bool(s_args_t *args, const char *name, bool value)
{
    pm_pack_str(&args->pk, name);
    if (value)
        msgpack_pack_true(&args->pk);
    else
        msgpack_pack_false(&args->pk);
}

int pmclient_model_status(pmclient_t *self, const char *provider, const char *model,
                          const char *const *states, long n_states, pm_status_list_t **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    s_args_t args;
    bool has_states;
    *out = NULL;
    if (s_check_str_array(self, states, n_states, "states", &has_states) != 0)
        return -1;
    s_args_init(&args, (uint32_t)(provider != NULL) + (model != NULL) + has_states);
    if (provider)
        s_args_str(&args, "provider", provider);
    if (model)
        s_args_str(&args, "model", model);
    if (has_states)
        s_args_str_array(&args, "states", states, n_states);
    int rc = s_call(self, "model_status", &args.buffer, &reply, &result);
    s_buffer_clear(&args.buffer);
    if (rc == 0)
        rc = pmc_decode_status_list(self, result, out);
    return s_finish(self, &reply, rc);
}

int pmclient_provider_status(pmclient_t *self, const char *provider,
                             pm_provider_status_list_t **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    s_args_t args;
    *out = NULL;
    s_args_init(&args, provider ? 1 : 0);
    if (provider)
        s_args_str(&args, "provider", provider);
    int rc = s_call(self, "provider_status", &args.buffer, &reply, &result);
    s_buffer_clear(&args.buffer);
    if (rc == 0)
        rc = pmc_decode_provider_status_list(self, result, out);
    return s_finish(self, &reply, rc);
}

int pmclient_verify_models(pmclient_t *self, const char *provider, const char *const *models,
                           long n_models, bool include_invalid, bool persist_on_success,
                           char **job_out)
{
    s_reply_t reply;
    const msgpack_object *result;
    s_args_t args;
    bool has_models;
    *job_out = NULL;
    if (s_check_str_array(self, models, n_models, "models", &has_models) != 0)
        return -1;
    s_args_init(&args, 2 + (uint32_t)(provider != NULL) + has_models);
    s_args_bool(&args, "include_invalid", include_invalid);
    s_args_bool(&args, "persist_on_success", persist_on_success);
    if (provider)
        s_args_str(&args, "provider", provider);
    if (has_models)
        s_args_str_array(&args, "models", models, n_models);
    int rc = s_call(self, "verify_models", &args.buffer, &reply, &result);
    s_buffer_clear(&args.buffer);
    if (rc == 0) {
        if (!result || result->type != MSGPACK_OBJECT_MAP)
            rc = pmc_bad_reply(self, "verify_models result is not a map");
        else
            rc = pmc_take_str(self, pm_map_get(result, "job"), "job", job_out);
    }
    return s_finish(self, &reply, rc);
}

int pmclient_job_status(pmclient_t *self, const char *job, pm_job_t **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    *out = NULL;
    if (s_require(self, job, "job") != 0)
        return -1;
    int rc = s_call_str1(self, "job_status", "job", job, &reply, &result);
    if (rc == 0)
        rc = pmc_decode_job(self, result, out);
    return s_finish(self, &reply, rc);
}

int pmclient_persist(pmclient_t *self, char **path_out, int64_t *providers_out)
{
    s_reply_t reply;
    const msgpack_object *result;
    char *path = NULL;
    int64_t providers = 0;
    if (path_out)
        *path_out = NULL;
    if (providers_out)
        *providers_out = 0;
    int rc = s_call(self, "persist_provider_configs", NULL, &reply, &result);
    if (rc == 0) {
        if (result->type != MSGPACK_OBJECT_MAP)
            rc = pmc_bad_reply(self, "persist_provider_configs result is not a map");
        else if (pmc_take_str(self, pm_map_get(result, "path"), "path", &path) != 0 ||
                 pmc_take_int(self, pm_map_get(result, "providers"), "providers", &providers) != 0)
            rc = -1;
    }
    if (rc == 0 && path_out)
        *path_out = path;
    else
        free(path);
    if (rc == 0 && providers_out)
        *providers_out = providers;
    return s_finish(self, &reply, rc);
}

/* Runs a write whose result is a ProviderConfig. */
static int s_provider_write(pmclient_t *self, const char *op, s_args_t *args, pm_provider_t **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    pm_provider_t *provider = NULL;
    int rc = s_call(self, op, &args->buffer, &reply, &result);
    s_buffer_clear(&args->buffer);
    if (rc == 0)
        rc = pmc_decode_provider(self, result, &provider);
    if (rc == 0 && out)
        *out = provider;
    else
        pm_provider_free(&provider);
    return s_finish(self, &reply, rc);
}

int pmclient_set_provider(pmclient_t *self, const pm_provider_spec_t *spec, pm_provider_t **out)
{
    s_args_t args;
    if (out)
        *out = NULL;
    if (!spec) {
        pmc_set_error(self, "bad_request", "missing required argument 'provider'");
        return -1;
    }
    if ((spec->has_valid_models && spec->model_count && !spec->model_long) ||
        (spec->has_invalid_models && spec->invalid_count && !spec->invalid_models)) {
        pmc_set_error(self, "bad_request", "a model array is NULL but its count is not 0");
        return -1;
    }
    if (spec->model_count > UINT32_MAX || spec->invalid_count > UINT32_MAX) {
        pmc_set_error(self, "bad_request", "too many models");
        return -1;
    }
    uint32_t entries = (spec->provider != NULL) + (spec->name != NULL) +
                       (spec->base_api_url != NULL) + spec->has_api_key + spec->has_valid_models +
                       spec->has_invalid_models;
    s_args_init(&args, entries);
    if (spec->provider)
        s_args_str(&args, "provider", spec->provider);
    if (spec->name)
        s_args_str(&args, "name", spec->name);
    if (spec->base_api_url)
        s_args_str(&args, "base_api_url", spec->base_api_url);
    if (spec->has_api_key)
        s_args_str(&args, "api_key", spec->api_key); /* NULL packs nil: clears the key */
    if (spec->has_valid_models) {
        pm_pack_str(&args.pk, "valid_models");
        msgpack_pack_map(&args.pk, (uint32_t)spec->model_count);
        for (size_t i = 0; i < spec->model_count && !args.buffer.failed; i++) {
            const char *long_name = spec->model_long[i] ? spec->model_long[i] : "";
            const char *short_name =
                spec->model_short && spec->model_short[i] ? spec->model_short[i] : long_name;
            s_args_str(&args, long_name, short_name);
        }
    }
    if (spec->has_invalid_models) {
        pm_pack_str(&args.pk, "invalid_models");
        msgpack_pack_array(&args.pk, (uint32_t)spec->invalid_count);
        for (size_t i = 0; i < spec->invalid_count && !args.buffer.failed; i++)
            pm_pack_str(&args.pk, spec->invalid_models[i] ? spec->invalid_models[i] : "");
    }
    return s_provider_write(self, "set_provider", &args, out);
}

int pmclient_remove_provider(pmclient_t *self, const char *provider, bool *removed)
{
    s_reply_t reply;
    const msgpack_object *result;
    if (removed)
        *removed = false;
    if (s_require(self, provider, "provider") != 0)
        return -1;
    int rc = s_call_str1(self, "remove_provider", "provider", provider, &reply, &result);
    if (rc == 0) {
        if (result->type != MSGPACK_OBJECT_BOOLEAN)
            rc = pmc_bad_reply(self, "remove_provider result is not a boolean");
        else if (removed)
            *removed = result->via.boolean;
    }
    return s_finish(self, &reply, rc);
}

int pmclient_set_short_name(pmclient_t *self, const char *provider, const char *long_name,
                            const char *short_name, pm_provider_t **out)
{
    s_args_t args;
    if (out)
        *out = NULL;
    if (s_require(self, provider, "provider") != 0 ||
        s_require(self, long_name, "long_name") != 0 ||
        s_require(self, short_name, "short_name") != 0)
        return -1;
    s_args_init(&args, 3);
    s_args_str(&args, "provider", provider);
    s_args_str(&args, "long_name", long_name);
    s_args_str(&args, "short_name", short_name);
    return s_provider_write(self, "set_short_name", &args, out);
}

int pmclient_health(pmclient_t *self, pm_health_t **out)
{
    s_reply_t reply;
    const msgpack_object *result;
    *out = NULL;
    int rc = s_call(self, "health", NULL, &reply, &result);
    if (rc == 0)
        rc = pmc_decode_health(self, result, out);
    return s_finish(self, &reply, rc);
}

int pmclient_call_raw(pmclient_t *self, const char *op, const void *args, size_t args_size,
                      void **reply_out, size_t *reply_size)
{
    s_reply_t reply;
    const msgpack_object *result;
    s_buffer_t packed;
    char err[256];
    *reply_out = NULL;
    *reply_size = 0;
    if (s_require(self, op, "op") != 0)
        return -1;
    memset(&packed, 0, sizeof packed);
    if (args && args_size) {
        /* The args must be one well-formed map: checked here, so that a tool cannot send a
         * request that is broken in a way the service would have to guess about. */
        if (args_size > PMCLIENT_MAX_REQUEST_SIZE) {
            pmc_set_error(self, "bad_request", "request is larger than %d bytes",
                          PMCLIENT_MAX_REQUEST_SIZE);
            return -1;
        }
        if (pm_proto_precheck(args, args_size, PM_PROTO_MAX_DEPTH - 1, err, sizeof err) != 0) {
            pmc_set_error(self, "bad_request", "args are not valid msgpack: %s", err);
            return -1;
        }
        uint8_t first = *(const uint8_t *)args;
        if (!((first & 0xf0) == 0x80 || first == 0xde || first == 0xdf)) {
            pmc_set_error(self, "bad_request", "'args' must be a map");
            return -1;
        }
        packed.data = (char *)args; /* borrowed, never written: s_call only reads it */
        packed.size = args_size;
        packed.max = args_size;
    }
    int rc = s_call(self, op, args && args_size ? &packed : NULL, &reply, &result);
    if (rc == 0) {
        *reply_out = reply.data;
        *reply_size = reply.size;
        reply.data = NULL;
        if (self->keep_reply) {
            self->last_reply = malloc(*reply_size ? *reply_size : 1);
            if (self->last_reply) {
                memcpy(self->last_reply, *reply_out, *reply_size);
                self->last_reply_size = *reply_size;
            }
        }
    }
    s_reply_clear(&reply);
    return rc;
}

/* ---------------------------------------------------------------------------- CURVE keys */

/* The key-file format is proto's (pm_keyfile), shared with the daemon; these keep the
 * library's published names. */
int pmclient_curve_read_key_file(const char *path, char *public_z85, char *secret_z85, char *err,
                                 size_t err_size)
{
    return pm_keyfile_read(path, public_z85, secret_z85, err, err_size);
}

int pmclient_curve_keygen(const char *dir, const char *name, char *err, size_t err_size)
{
    return pm_keyfile_generate(dir, name, err, err_size);
}
