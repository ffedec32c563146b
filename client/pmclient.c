/*
 * pmclient: libpmclient, the C client of the provider-manager service (see pmclient.h).
 *
 * A call packs {"op", "args", "id"} with pm_proto, sends it on a REQ socket and polls for the
 * reply with a timeout (the zguide's Lazy Pirate). A lost reply closes the socket: a REQ socket
 * that sent and got nothing back cannot send again, and a fresh socket also drops whatever
 * stale reply might still arrive for the old request. Every reply is checked by
 * pm_reply_decode (bounded, valid UTF-8) and then decoded into the typed results
 * defensively: any shape other than the contract's is a "bad_reply", never a crash.
 */
#include "pmclient.h"

#include "pm_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_CODE_SIZE 32
#define S_MESSAGE_SIZE 8192
#define S_KEY_FILE_MAX_SIZE (64 * 1024)
#define S_KEYGEN_MAX_NAME_LEN 64
#define S_EVENTS_MAX_SIZE (16 * 1024 * 1024)

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

struct pmclient_events_t {
    void *ctx;
    void *socket;
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

static void s_set_error(pmclient_t *self, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void s_set_error(pmclient_t *self, const char *code, const char *fmt, ...)
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

static int s_bad_reply(pmclient_t *self, const char *what)
{
    s_set_error(self, PMCLIENT_ERR_BAD_REPLY, "reply does not match the contract: %s", what);
    return -1;
}

static int s_nomem(pmclient_t *self)
{
    s_set_error(self, PMCLIENT_ERR_NOMEM, "out of memory");
    return -1;
}

static int64_t s_now_ms(void)
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

static bool s_is_str(const msgpack_object *obj)
{
    return obj && obj->type == MSGPACK_OBJECT_STR;
}

/* Copies a msgpack str into a new NUL-terminated string. */
static char *s_dup_obj(const msgpack_object *obj)
{
    char *copy = malloc(obj->via.str.size + 1);
    if (!copy)
        return NULL;
    if (obj->via.str.size)
        memcpy(copy, obj->via.str.ptr, obj->via.str.size);
    copy[obj->via.str.size] = '\0';
    return copy;
}

/* *out = copy of obj, which must be a str; what names it in the error. 0 or -1. */
static int s_take_str(pmclient_t *self, const msgpack_object *obj, const char *what, char **out)
{
    *out = NULL;
    if (!s_is_str(obj)) {
        s_set_error(self, PMCLIENT_ERR_BAD_REPLY,
                    "reply does not match the contract: %s is not a string", what);
        return -1;
    }
    *out = s_dup_obj(obj);
    return *out ? 0 : s_nomem(self);
}

/* Reads a msgpack integer that fits in int64_t. */
static int s_take_int(pmclient_t *self, const msgpack_object *obj, const char *what, int64_t *out)
{
    if (obj && obj->type == MSGPACK_OBJECT_POSITIVE_INTEGER && obj->via.u64 <= INT64_MAX) {
        *out = (int64_t)obj->via.u64;
        return 0;
    }
    if (obj && obj->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = obj->via.i64;
        return 0;
    }
    s_set_error(self, PMCLIENT_ERR_BAD_REPLY,
                "reply does not match the contract: %s is not an integer", what);
    return -1;
}

static void s_free_strv(char **strv, size_t count)
{
    if (!strv)
        return;
    for (size_t i = 0; i < count; i++)
        free(strv[i]);
    free(strv);
}

/* A zeroed array of count pointers (at least one slot, so that count 0 is not NULL-ambiguous
 * for callers that index it). NULL on overflow or ENOMEM. */
static void *s_calloc_array(size_t count, size_t size)
{
    return calloc(count ? count : 1, size);
}

/* Reads an array of str into a new string vector. */
static int s_take_strv(pmclient_t *self, const msgpack_object *obj, const char *what, char ***out,
                       size_t *count)
{
    *out = NULL;
    *count = 0;
    if (!obj || obj->type != MSGPACK_OBJECT_ARRAY) {
        s_set_error(self, PMCLIENT_ERR_BAD_REPLY,
                    "reply does not match the contract: %s is not an array", what);
        return -1;
    }
    size_t n = obj->via.array.size;
    char **strv = s_calloc_array(n, sizeof *strv);
    if (!strv)
        return s_nomem(self);
    for (size_t i = 0; i < n; i++) {
        if (s_take_str(self, &obj->via.array.ptr[i], what, &strv[i]) != 0) {
            s_free_strv(strv, n);
            return -1;
        }
    }
    *out = strv;
    *count = n;
    return 0;
}

/* ------------------------------------------------------------------------- typed results */

void pm_provider_free(pm_provider_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pm_provider_t *self = *self_p;
    free(self->provider);
    free(self->name);
    free(self->base_api_url);
    if (self->api_key) {
        /* A secret: do not leave it in freed heap memory. */
        explicit_bzero(self->api_key, strlen(self->api_key));
        free(self->api_key);
    }
    s_free_strv(self->model_long, self->model_count);
    s_free_strv(self->model_short, self->model_count);
    s_free_strv(self->invalid_models, self->invalid_count);
    free(self);
    *self_p = NULL;
}

void pm_provider_list_free(pm_provider_list_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pm_provider_list_t *self = *self_p;
    for (size_t i = 0; i < self->count; i++)
        pm_provider_free(&self->providers[i]);
    free(self->providers);
    free(self);
    *self_p = NULL;
}

void pm_strings_free(pm_strings_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    s_free_strv((*self_p)->items, (*self_p)->count);
    free(*self_p);
    *self_p = NULL;
}

void pm_merged_free(pm_merged_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pm_merged_t *self = *self_p;
    s_free_strv(self->provider, self->count);
    s_free_strv(self->model_long, self->count);
    s_free_strv(self->model_short, self->count);
    free(self);
    *self_p = NULL;
}

void pm_matches_free(pm_matches_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pm_matches_t *self = *self_p;
    if (self->providers) {
        for (size_t i = 0; i < self->count; i++)
            pm_provider_free(&self->providers[i]);
        free(self->providers);
    }
    s_free_strv(self->model_long, self->count);
    free(self);
    *self_p = NULL;
}

void pm_health_free(pm_health_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->status);
    free((*self_p)->version);
    free(*self_p);
    *self_p = NULL;
}

void pm_job_free(pm_job_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pm_job_t *self = *self_p;
    free(self->job);
    free(self->state);
    if (self->providers) {
        for (size_t i = 0; i < self->provider_count; i++) {
            free(self->providers[i].key);
            free(self->providers[i].state);
            free(self->providers[i].message);
        }
        free(self->providers);
    }
    s_free_strv(self->messages, self->message_count);
    free(self);
    *self_p = NULL;
}

/* ProviderConfig map -> pm_provider_t. */
static int s_decode_provider(pmclient_t *self, const msgpack_object *obj, pm_provider_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_MAP)
        return s_bad_reply(self, "ProviderConfig is not a map");
    pm_provider_t *provider = calloc(1, sizeof *provider);
    if (!provider)
        return s_nomem(self);

    if (s_take_str(self, pm_map_get(obj, "provider"), "provider", &provider->provider) != 0 ||
        s_take_str(self, pm_map_get(obj, "name"), "name", &provider->name) != 0 ||
        s_take_str(self, pm_map_get(obj, "base_api_url"), "base_api_url",
                   &provider->base_api_url) != 0)
        goto fail;

    const msgpack_object *api_key = pm_map_get(obj, "api_key");
    if (api_key && api_key->type != MSGPACK_OBJECT_NIL) {
        if (s_take_str(self, api_key, "api_key", &provider->api_key) != 0)
            goto fail;
    }

    /* valid_models is a map long -> short; an absent one is treated as empty. */
    const msgpack_object *models = pm_map_get(obj, "valid_models");
    if (models) {
        if (models->type != MSGPACK_OBJECT_MAP) {
            s_bad_reply(self, "valid_models is not a map");
            goto fail;
        }
        size_t n = models->via.map.size;
        provider->model_long = s_calloc_array(n, sizeof(char *));
        provider->model_short = s_calloc_array(n, sizeof(char *));
        if (!provider->model_long || !provider->model_short) {
            s_nomem(self);
            goto fail;
        }
        provider->model_count = n;
        for (size_t i = 0; i < n; i++) {
            const msgpack_object_kv *kv = &models->via.map.ptr[i];
            if (s_take_str(self, &kv->key, "a valid_models name", &provider->model_long[i]) != 0 ||
                s_take_str(self, &kv->val, "a valid_models short name",
                           &provider->model_short[i]) != 0)
                goto fail;
        }
    }

    const msgpack_object *invalid = pm_map_get(obj, "invalid_models");
    if (invalid) {
        if (s_take_strv(self, invalid, "invalid_models", &provider->invalid_models,
                        &provider->invalid_count) != 0)
            goto fail;
    }
    *out = provider;
    return 0;

fail:
    pm_provider_free(&provider);
    return -1;
}

/* Array of ProviderConfig (values) or of [key, ProviderConfig] pairs (items). */
static int s_decode_provider_list(pmclient_t *self, const msgpack_object *obj, bool pairs,
                                  pm_provider_list_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_ARRAY)
        return s_bad_reply(self, "result is not an array");
    pm_provider_list_t *list = calloc(1, sizeof *list);
    if (!list)
        return s_nomem(self);
    size_t n = obj->via.array.size;
    list->providers = s_calloc_array(n, sizeof *list->providers);
    if (!list->providers) {
        free(list);
        return s_nomem(self);
    }
    list->count = n;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *element = &obj->via.array.ptr[i];
        if (pairs) {
            if (element->type != MSGPACK_OBJECT_ARRAY || element->via.array.size != 2 ||
                !s_is_str(&element->via.array.ptr[0])) {
                s_bad_reply(self, "an item is not a [key, ProviderConfig] pair");
                goto fail;
            }
            const msgpack_object *key = &element->via.array.ptr[0];
            if (s_decode_provider(self, &element->via.array.ptr[1], &list->providers[i]) != 0)
                goto fail;
            const char *inner = list->providers[i]->provider;
            if (strlen(inner) != key->via.str.size ||
                memcmp(inner, key->via.str.ptr, key->via.str.size) != 0) {
                s_bad_reply(self, "an item's key differs from its ProviderConfig's provider");
                goto fail;
            }
        } else if (s_decode_provider(self, element, &list->providers[i]) != 0) {
            goto fail;
        }
    }
    *out = list;
    return 0;

fail:
    pm_provider_list_free(&list);
    return -1;
}

static int s_decode_strings(pmclient_t *self, const msgpack_object *obj, pm_strings_t **out)
{
    *out = NULL;
    pm_strings_t *strings = calloc(1, sizeof *strings);
    if (!strings)
        return s_nomem(self);
    if (s_take_strv(self, obj, "result", &strings->items, &strings->count) != 0) {
        free(strings);
        return -1;
    }
    *out = strings;
    return 0;
}

static int s_decode_merged(pmclient_t *self, const msgpack_object *obj, pm_merged_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_ARRAY)
        return s_bad_reply(self, "result is not an array");
    pm_merged_t *merged = calloc(1, sizeof *merged);
    if (!merged)
        return s_nomem(self);
    size_t n = obj->via.array.size;
    merged->provider = s_calloc_array(n, sizeof(char *));
    merged->model_long = s_calloc_array(n, sizeof(char *));
    merged->model_short = s_calloc_array(n, sizeof(char *));
    merged->count = n;
    if (!merged->provider || !merged->model_long || !merged->model_short) {
        s_nomem(self);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        /* [key, [long, short]] */
        const msgpack_object *entry = &obj->via.array.ptr[i];
        if (entry->type != MSGPACK_OBJECT_ARRAY || entry->via.array.size != 2 ||
            entry->via.array.ptr[1].type != MSGPACK_OBJECT_ARRAY ||
            entry->via.array.ptr[1].via.array.size != 2) {
            s_bad_reply(self, "a merged_models entry is not [key, [long, short]]");
            goto fail;
        }
        const msgpack_object *names = entry->via.array.ptr[1].via.array.ptr;
        if (s_take_str(self, &entry->via.array.ptr[0], "merged_models key", &merged->provider[i]) !=
                0 ||
            s_take_str(self, &names[0], "merged_models long name", &merged->model_long[i]) != 0 ||
            s_take_str(self, &names[1], "merged_models short name", &merged->model_short[i]) != 0)
            goto fail;
    }
    *out = merged;
    return 0;

fail:
    pm_merged_free(&merged);
    return -1;
}

static int s_decode_matches(pmclient_t *self, const msgpack_object *obj, pm_matches_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_ARRAY)
        return s_bad_reply(self, "result is not an array");
    pm_matches_t *matches = calloc(1, sizeof *matches);
    if (!matches)
        return s_nomem(self);
    size_t n = obj->via.array.size;
    matches->providers = s_calloc_array(n, sizeof *matches->providers);
    matches->model_long = s_calloc_array(n, sizeof(char *));
    matches->count = n;
    if (!matches->providers || !matches->model_long) {
        s_nomem(self);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        /* [ProviderConfig, long] */
        const msgpack_object *entry = &obj->via.array.ptr[i];
        if (entry->type != MSGPACK_OBJECT_ARRAY || entry->via.array.size != 2) {
            s_bad_reply(self, "a find_model entry is not [ProviderConfig, long_name]");
            goto fail;
        }
        if (s_decode_provider(self, &entry->via.array.ptr[0], &matches->providers[i]) != 0 ||
            s_take_str(self, &entry->via.array.ptr[1], "find_model long name",
                       &matches->model_long[i]) != 0)
            goto fail;
    }
    *out = matches;
    return 0;

fail:
    pm_matches_free(&matches);
    return -1;
}

static int s_decode_health(pmclient_t *self, const msgpack_object *obj, pm_health_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_MAP)
        return s_bad_reply(self, "health result is not a map");
    pm_health_t *health = calloc(1, sizeof *health);
    if (!health)
        return s_nomem(self);
    if (s_take_str(self, pm_map_get(obj, "status"), "status", &health->status) != 0 ||
        s_take_str(self, pm_map_get(obj, "version"), "version", &health->version) != 0 ||
        s_take_int(self, pm_map_get(obj, "state_version"), "state_version",
                   &health->state_version) != 0 ||
        s_take_int(self, pm_map_get(obj, "providers"), "providers", &health->providers) != 0 ||
        s_take_int(self, pm_map_get(obj, "models"), "models", &health->models) != 0 ||
        s_take_int(self, pm_map_get(obj, "jobs_running"), "jobs_running", &health->jobs_running) !=
            0)
        goto fail;
    const msgpack_object *uptime = pm_map_get(obj, "uptime_s");
    if (uptime &&
        (uptime->type == MSGPACK_OBJECT_FLOAT64 || uptime->type == MSGPACK_OBJECT_FLOAT32)) {
        health->uptime_s = uptime->via.f64;
    } else {
        int64_t whole;
        if (s_take_int(self, uptime, "uptime_s", &whole) != 0)
            goto fail;
        health->uptime_s = (double)whole;
    }
    *out = health;
    return 0;

fail:
    pm_health_free(&health);
    return -1;
}

static int s_decode_job(pmclient_t *self, const msgpack_object *obj, pm_job_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_MAP)
        return s_bad_reply(self, "job_status result is not a map");
    pm_job_t *job = calloc(1, sizeof *job);
    if (!job)
        return s_nomem(self);
    if (s_take_str(self, pm_map_get(obj, "job"), "job", &job->job) != 0 ||
        s_take_str(self, pm_map_get(obj, "state"), "state", &job->state) != 0)
        goto fail;

    const msgpack_object *success = pm_map_get(obj, "success");
    if (!success || success->type == MSGPACK_OBJECT_NIL)
        job->success = -1;
    else if (success->type == MSGPACK_OBJECT_BOOLEAN)
        job->success = success->via.boolean ? 1 : 0;
    else {
        s_bad_reply(self, "success is neither a boolean nor nil");
        goto fail;
    }

    const msgpack_object *persisted = pm_map_get(obj, "persisted");
    if (!persisted || persisted->type != MSGPACK_OBJECT_BOOLEAN) {
        s_bad_reply(self, "persisted is not a boolean");
        goto fail;
    }
    job->persisted = persisted->via.boolean;

    const msgpack_object *providers = pm_map_get(obj, "providers");
    if (!providers || providers->type != MSGPACK_OBJECT_MAP) {
        s_bad_reply(self, "providers is not a map");
        goto fail;
    }
    size_t n = providers->via.map.size;
    job->providers = s_calloc_array(n, sizeof *job->providers);
    if (!job->providers) {
        s_nomem(self);
        goto fail;
    }
    job->provider_count = n;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object_kv *kv = &providers->via.map.ptr[i];
        pm_job_provider_t *entry = &job->providers[i];
        if (kv->val.type != MSGPACK_OBJECT_MAP) {
            s_bad_reply(self, "a job provider entry is not a map");
            goto fail;
        }
        if (s_take_str(self, &kv->key, "job provider key", &entry->key) != 0 ||
            s_take_str(self, pm_map_get(&kv->val, "state"), "job provider state", &entry->state) !=
                0 ||
            s_take_int(self, pm_map_get(&kv->val, "discovered"), "discovered",
                       &entry->discovered) != 0 ||
            s_take_int(self, pm_map_get(&kv->val, "validated"), "validated", &entry->validated) !=
                0 ||
            s_take_int(self, pm_map_get(&kv->val, "valid"), "valid", &entry->valid) != 0 ||
            s_take_int(self, pm_map_get(&kv->val, "invalid"), "invalid", &entry->invalid) != 0 ||
            s_take_str(self, pm_map_get(&kv->val, "message"), "job provider message",
                       &entry->message) != 0)
            goto fail;
    }
    if (s_take_strv(self, pm_map_get(obj, "messages"), "messages", &job->messages,
                    &job->message_count) != 0)
        goto fail;
    *out = job;
    return 0;

fail:
    pm_job_free(&job);
    return -1;
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
        s_set_error(self, "bad_request", "timeout must be 1..%d ms", PMCLIENT_MAX_TIMEOUT_MS);
        return -1;
    }
    s_clear_error(self);
    self->timeout_ms = timeout_ms;
    return 0;
}

int pmclient_set_retries(pmclient_t *self, int retries)
{
    if (retries < 1 || retries > PMCLIENT_MAX_RETRIES) {
        s_set_error(self, "bad_request", "retries must be 1..%d", PMCLIENT_MAX_RETRIES);
        return -1;
    }
    s_clear_error(self);
    self->retries = retries;
    return 0;
}

static bool s_z85_key_valid(const char *key)
{
    uint8_t binary[32];
    return key && strlen(key) == PMCLIENT_Z85_KEY_LEN && zmq_z85_decode(binary, key) != NULL;
}

int pmclient_set_curve(pmclient_t *self, const char *server_public_z85,
                       const char *client_public_z85, const char *client_secret_z85)
{
    if (!s_z85_key_valid(server_public_z85) || !s_z85_key_valid(client_public_z85) ||
        !s_z85_key_valid(client_secret_z85)) {
        s_set_error(self, "bad_request", "a CURVE key is not %d characters of Z85",
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
        s_set_error(self, "bad_request", "both CURVE key files are required");
        return -1;
    }
    if (pmclient_curve_read_key_file(server_public_file, server_public, NULL, err, sizeof err) !=
        0) {
        s_set_error(self, "bad_request", "server key: %s", err);
        goto cleanup;
    }
    if (pmclient_curve_read_key_file(client_secret_file, client_public, client_secret, err,
                                     sizeof err) != 0) {
        s_set_error(self, "bad_request", "client key: %s", err);
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
        s_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot set %s: %s", name, zmq_strerror(errno));
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
        s_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot create a socket: %s",
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
        s_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot connect to '%s': %s", self->endpoint,
                    zmq_strerror(errno));
        goto fail;
    }
    self->socket = socket;
    return 0;

fail:
    zmq_close(socket);
    return -1;
}

/* The ops that change state: never resent after a lost reply, which may mean that the
 * service applied them. Anything the library does not know is treated the same way. */
static bool s_op_is_retry_safe(const char *op)
{
    static const char *const reads[] = {
        "get",
        "get_provider_config",
        "getitem",
        "contains",
        "keys",
        "get_all_provider_names",
        "values",
        "items",
        "merged_models",
        "valid_scoped_models",
        "get_api_for_model_string",
        "validate_model",
        "get_available_models",
        "get_short_name",
        "find_model",
        "job_status",
        "health",
    };
    for (size_t i = 0; i < sizeof reads / sizeof reads[0]; i++) {
        if (strcmp(op, reads[i]) == 0)
            return true;
    }
    return false;
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
            s_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot receive: %s", zmq_strerror(error));
            return -1;
        }
        more = zmq_msg_more(&msg);
        if (frames++ == 0) {
            size_t size = zmq_msg_size(&msg);
            reply->data = malloc(size ? size : 1);
            if (!reply->data) {
                zmq_msg_close(&msg);
                s_nomem(self);
                return -1;
            }
            if (size)
                memcpy(reply->data, zmq_msg_data(&msg), size);
            reply->size = size;
        }
        zmq_msg_close(&msg);
    }
    if (frames != 1) {
        s_bad_reply(self, "the reply has more than one frame");
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
            s_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot send to '%s': %s", self->endpoint,
                        zmq_strerror(error));
            return -1;
        }

        int64_t deadline = s_now_ms() + self->timeout_ms;
        bool readable = false;
        for (;;) {
            int64_t left = deadline - s_now_ms();
            if (left <= 0)
                break;
            zmq_pollitem_t item = {.socket = self->socket, .events = ZMQ_POLLIN};
            int rc = zmq_poll(&item, 1, (long)left);
            if (rc < 0) {
                if (errno == EINTR)
                    continue; /* a signal: keep waiting for the time left */
                s_set_error(self, PMCLIENT_ERR_TRANSPORT, "cannot poll: %s", zmq_strerror(errno));
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
            s_set_error(self, PMCLIENT_ERR_BAD_REPLY, "reply does not match the contract: %s", err);
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
                s_set_error(self, PMCLIENT_ERR_BAD_REPLY,
                            "reply does not match the contract: its id is not the request's");
                return -1;
            }
            continue;
        }
        return 0;
    }
    if (attempts > 1)
        s_set_error(self, PMCLIENT_ERR_TIMEOUT, "no reply from '%s' after %d attempts of %d ms",
                    self->endpoint, attempts, self->timeout_ms);
    else if (s_op_is_retry_safe(op))
        s_set_error(self, PMCLIENT_ERR_TIMEOUT, "no reply from '%s' within %d ms", self->endpoint,
                    self->timeout_ms);
    else
        s_set_error(self, PMCLIENT_ERR_TIMEOUT,
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
            s_set_error(self, "bad_request", "request is larger than %d bytes",
                        PMCLIENT_MAX_REQUEST_SIZE);
        else
            s_nomem(self);
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
            s_set_error(self, "bad_request", "request is larger than %d bytes",
                        PMCLIENT_MAX_REQUEST_SIZE);
        else
            s_nomem(self);
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
        s_bad_reply(self, "ok reply without a result");
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
    s_set_error(self, "bad_request", "missing required argument '%s'", name);
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
            rc = s_decode_provider(self, result, out);
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
            rc = s_bad_reply(self, "contains result is not a boolean");
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
        rc = s_decode_strings(self, result, out);
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
        rc = s_decode_provider_list(self, result, pairs, out);
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
        rc = s_decode_merged(self, result, out);
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
            rc = s_bad_reply(self, "result is not [ProviderConfig, long_name]");
        else if (s_decode_provider(self, &result->via.array.ptr[0], &provider) != 0 ||
                 s_take_str(self, &result->via.array.ptr[1], "long_name", &long_name) != 0)
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
        rc = s_take_str(self, result, "result", out);
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
        rc = s_decode_strings(self, result, out);
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
        rc = s_decode_matches(self, result, out);
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
            rc = s_bad_reply(self, "discover_models result is not a map");
        else
            rc = s_take_str(self, pm_map_get(result, "job"), "job", job_out);
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
        rc = s_decode_job(self, result, out);
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
            rc = s_bad_reply(self, "persist_provider_configs result is not a map");
        else if (s_take_str(self, pm_map_get(result, "path"), "path", &path) != 0 ||
                 s_take_int(self, pm_map_get(result, "providers"), "providers", &providers) != 0)
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
        rc = s_decode_provider(self, result, &provider);
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
        s_set_error(self, "bad_request", "missing required argument 'provider'");
        return -1;
    }
    if ((spec->has_valid_models && spec->model_count && !spec->model_long) ||
        (spec->has_invalid_models && spec->invalid_count && !spec->invalid_models)) {
        s_set_error(self, "bad_request", "a model array is NULL but its count is not 0");
        return -1;
    }
    if (spec->model_count > UINT32_MAX || spec->invalid_count > UINT32_MAX) {
        s_set_error(self, "bad_request", "too many models");
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
            rc = s_bad_reply(self, "remove_provider result is not a boolean");
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
        rc = s_decode_health(self, result, out);
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
            s_set_error(self, "bad_request", "request is larger than %d bytes",
                        PMCLIENT_MAX_REQUEST_SIZE);
            return -1;
        }
        if (pm_proto_precheck(args, args_size, PM_PROTO_MAX_DEPTH - 1, err, sizeof err) != 0) {
            s_set_error(self, "bad_request", "args are not valid msgpack: %s", err);
            return -1;
        }
        uint8_t first = *(const uint8_t *)args;
        if (!((first & 0xf0) == 0x80 || first == 0xde || first == 0xdf)) {
            s_set_error(self, "bad_request", "'args' must be a map");
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
        if (!s_z85_key_valid(server_public) || !s_z85_key_valid(client_public) ||
            !s_z85_key_valid(client_secret))
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
    if (!s_is_str(event) || event->via.str.size != strlen("changed") ||
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
        strings->items = s_calloc_array(n, sizeof(char *));
        if (!strings->items)
            goto cleanup;
        strings->count = n;
        for (size_t i = 0; i < n; i++) {
            if (!s_is_str(&providers->via.array.ptr[i]))
                goto cleanup;
            strings->items[i] = s_dup_obj(&providers->via.array.ptr[i]);
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
    int64_t deadline = timeout_ms < 0 ? -1 : s_now_ms() + timeout_ms;
    for (;;) {
        long wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - s_now_ms();
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

/* ---------------------------------------------------------------------------- CURVE keys */

/* Trims spaces and tabs in place at both ends of [*start, *end). */
static void s_trim(const char **start, const char **end)
{
    while (*start < *end && (**start == ' ' || **start == '\t' || **start == '\r'))
        (*start)++;
    while (*end > *start && ((*end)[-1] == ' ' || (*end)[-1] == '\t' || (*end)[-1] == '\r'))
        (*end)--;
}

/* Parses `name = "value"` for name public-key / secret-key; copies a valid Z85 key. */
static void s_key_line(const char *line, const char *end, char *public_z85, char *secret_z85,
                       bool *have_public, bool *have_secret)
{
    const char *equals = memchr(line, '=', (size_t)(end - line));
    if (!equals)
        return;
    const char *name = line, *name_end = equals;
    const char *value = equals + 1, *value_end = end;
    s_trim(&name, &name_end);
    s_trim(&value, &value_end);
    if (value_end - value >= 2 && *value == '"' && value_end[-1] == '"') {
        value++;
        value_end--;
    }
    if (value_end - value != PMCLIENT_Z85_KEY_LEN)
        return;
    char key[PMCLIENT_Z85_KEY_LEN + 1];
    memcpy(key, value, PMCLIENT_Z85_KEY_LEN);
    key[PMCLIENT_Z85_KEY_LEN] = '\0';
    if (!s_z85_key_valid(key))
        return;
    size_t name_len = (size_t)(name_end - name);
    if (name_len == strlen("public-key") && memcmp(name, "public-key", name_len) == 0) {
        memcpy(public_z85, key, sizeof key);
        *have_public = true;
    } else if (secret_z85 && name_len == strlen("secret-key") &&
               memcmp(name, "secret-key", name_len) == 0) {
        memcpy(secret_z85, key, sizeof key);
        *have_secret = true;
    }
    explicit_bzero(key, sizeof key);
}

int pmclient_curve_read_key_file(const char *path, char *public_z85, char *secret_z85, char *err,
                                 size_t err_size)
{
    int rc = -1;
    char *text = NULL;
    bool have_public = false, have_secret = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, err_size, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    text = malloc(S_KEY_FILE_MAX_SIZE + 1);
    if (!text) {
        snprintf(err, err_size, "out of memory");
        goto cleanup;
    }
    size_t size = 0;
    for (;;) {
        ssize_t n = read(fd, text + size, S_KEY_FILE_MAX_SIZE + 1 - size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, err_size, "cannot read %s: %s", path, strerror(errno));
            goto cleanup;
        }
        if (n == 0)
            break;
        size += (size_t)n;
        if (size > S_KEY_FILE_MAX_SIZE) {
            snprintf(err, err_size, "%s is larger than %d bytes", path, S_KEY_FILE_MAX_SIZE);
            goto cleanup;
        }
    }
    const char *line = text;
    const char *text_end = text + size;
    while (line < text_end) {
        const char *end = memchr(line, '\n', (size_t)(text_end - line));
        if (!end)
            end = text_end;
        const char *first = line;
        while (first < end && (*first == ' ' || *first == '\t'))
            first++;
        /* '#' starts a comment only at the start of a line: Z85 itself contains '#'. */
        if (first < end && *first != '#')
            s_key_line(first, end, public_z85, secret_z85, &have_public, &have_secret);
        line = end + 1;
    }
    if (!have_public) {
        snprintf(err, err_size, "%s has no valid public-key line", path);
        goto cleanup;
    }
    if (secret_z85 && !have_secret) {
        snprintf(err, err_size, "%s has no valid secret-key line (is it a .pub file?)", path);
        goto cleanup;
    }
    rc = 0;

cleanup:
    if (text) {
        explicit_bzero(text, S_KEY_FILE_MAX_SIZE + 1);
        free(text);
    }
    close(fd);
    return rc;
}

static bool s_keygen_name_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > S_KEYGEN_MAX_NAME_LEN || name[0] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* Creates path with mode (never replacing a file) and writes text; fsyncs. 0 or -1. */
static int s_write_new_file(const char *path, mode_t mode, const char *text, char *err,
                            size_t err_size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        snprintf(err, err_size, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    size_t len = strlen(text), done = 0;
    int rc = -1;
    /* The umask may have taken bits away; set exactly the mode asked for. */
    if (fchmod(fd, mode) != 0) {
        snprintf(err, err_size, "cannot chmod %s: %s", path, strerror(errno));
        goto cleanup;
    }
    while (done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, err_size, "cannot write %s: %s", path, strerror(errno));
            goto cleanup;
        }
        done += (size_t)n;
    }
    if (fsync(fd) != 0) {
        snprintf(err, err_size, "cannot fsync %s: %s", path, strerror(errno));
        goto cleanup;
    }
    rc = 0;

cleanup:
    if (close(fd) != 0 && rc == 0) {
        snprintf(err, err_size, "cannot close %s: %s", path, strerror(errno));
        rc = -1;
    }
    if (rc != 0)
        unlink(path);
    return rc;
}

int pmclient_curve_keygen(const char *dir, const char *name, char *err, size_t err_size)
{
    char public_z85[PMCLIENT_Z85_KEY_LEN + 1];
    char secret_z85[PMCLIENT_Z85_KEY_LEN + 1];
    char secret_path[PATH_MAX], public_path[PATH_MAX];
    char secret_text[1024], public_text[1024];
    int rc = -1;
    if (!dir || !*dir || !name || !s_keygen_name_valid(name)) {
        snprintf(err, err_size,
                 "the key name must be 1..%d of [A-Za-z0-9._-], not starting with '.'",
                 S_KEYGEN_MAX_NAME_LEN);
        return -1;
    }
    int n1 = snprintf(secret_path, sizeof secret_path, "%s/%s.key", dir, name);
    int n2 = snprintf(public_path, sizeof public_path, "%s/%s.pub", dir, name);
    if (n1 < 0 || n2 < 0 || (size_t)n1 >= sizeof secret_path || (size_t)n2 >= sizeof public_path) {
        snprintf(err, err_size, "directory path too long");
        return -1;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, err_size, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    if (zmq_curve_keypair(public_z85, secret_z85) != 0) {
        snprintf(err, err_size, "cannot generate a key pair: %s", zmq_strerror(errno));
        return -1;
    }
    int t1 = snprintf(secret_text, sizeof secret_text,
                      "#   provider-manager CURVE secret key '%s' (Z85). Keep it private.\n"
                      "#   Give %s.pub, never this file, to the other side.\n"
                      "\n"
                      "metadata\n"
                      "    name = \"%s\"\n"
                      "curve\n"
                      "    public-key = \"%s\"\n"
                      "    secret-key = \"%s\"\n",
                      name, name, name, public_z85, secret_z85);
    int t2 = snprintf(public_text, sizeof public_text,
                      "#   provider-manager CURVE public key '%s' (Z85).\n"
                      "\n"
                      "metadata\n"
                      "    name = \"%s\"\n"
                      "curve\n"
                      "    public-key = \"%s\"\n",
                      name, name, public_z85);
    if (t1 < 0 || t2 < 0 || (size_t)t1 >= sizeof secret_text || (size_t)t2 >= sizeof public_text) {
        snprintf(err, err_size, "key file text too long");
        goto cleanup;
    }
    if (s_write_new_file(secret_path, 0600, secret_text, err, err_size) != 0)
        goto cleanup;
    if (s_write_new_file(public_path, 0644, public_text, err, err_size) != 0) {
        unlink(secret_path); /* no half-made pair */
        goto cleanup;
    }
    rc = 0;

cleanup:
    explicit_bzero(secret_z85, sizeof secret_z85);
    explicit_bzero(secret_text, sizeof secret_text);
    return rc;
}
