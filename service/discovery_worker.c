/*
 * discovery_worker: the worker pool's thread body (libcurl multi + jansson), the job/result
 * message codec and the response classification table. See discovery_worker.h.
 *
 * One event loop per thread: curl_multi_poll() waits on curl's sockets plus the ZMQ_FD of the
 * job and control sockets. ZMQ_FD is edge-triggered, so after every wake-up the loop reads
 * ZMQ_EVENTS (which also re-arms the fd) and drains with ZMQ_DONTWAIT until EAGAIN; it never
 * trusts the fd alone. Retries wait in a timer list inside the same loop, so a thread never
 * sleeps while other transfers could progress.
 */
#include "discovery_worker.h"

#include "inproc.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <zmq.h>

#ifndef PM_VERSION
#define PM_VERSION "0.0.0"
#endif

#define WORKER_USER_AGENT "provider-manager/" PM_VERSION
#define WORKER_IDLE_POLL_MS 1000 /* upper bound of one wait when nothing is due */
#define WORKER_STOP_MESSAGE "stop"
#define WORKER_MAX_JOB_MESSAGE 16384   /* url + key + model + framing, with room to spare */
#define WORKER_UPSTREAM_DETAIL_MAX 200 /* bytes of an upstream error message quoted in ours */
#define WORKER_PROBE_PROMPT "Hi"

/* ============================================================ classification (one table) */

/* How the transfer itself ended, before any HTTP status is looked at. */
typedef enum {
    TRANSPORT_COMPLETED = 0, /* curl_code 0: a full response was received */
    TRANSPORT_RETRYABLE,     /* timeouts, refused / reset connections, DNS hiccups */
    TRANSPORT_FAILED         /* any other curl failure (TLS verification, bad URL, ...) */
} transport_t;

typedef enum {
    BODY_ANY = 0,
    BODY_MODEL_MISSING /* the error says the model does not exist / cannot chat */
} body_match_t;

typedef struct {
    transport_t transport;
    long status_min; /* inclusive; ignored unless transport is COMPLETED */
    long status_max;
    body_match_t body;
    discovery_verdict_t verdict;
} classify_row_t;

/* First matching row wins. The only place where HTTP outcomes get a meaning. */
static const classify_row_t s_classify_table[] = {
    {TRANSPORT_RETRYABLE, 0, 0, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_FAILED, 0, 0, BODY_ANY, DISCOVERY_VERDICT_ERROR},
    /* 2xx: valid, whatever the body says (finish_reason "length" included). */
    {TRANSPORT_COMPLETED, 200, 299, BODY_ANY, DISCOVERY_VERDICT_VALID},
    {TRANSPORT_COMPLETED, 404, 404, BODY_ANY, DISCOVERY_VERDICT_INVALID_MODEL},
    {TRANSPORT_COMPLETED, 400, 400, BODY_MODEL_MISSING, DISCOVERY_VERDICT_INVALID_MODEL},
    {TRANSPORT_COMPLETED, 422, 422, BODY_MODEL_MISSING, DISCOVERY_VERDICT_INVALID_MODEL},
    {TRANSPORT_COMPLETED, 400, 400, BODY_ANY, DISCOVERY_VERDICT_ERROR},
    {TRANSPORT_COMPLETED, 422, 422, BODY_ANY, DISCOVERY_VERDICT_ERROR},
    {TRANSPORT_COMPLETED, 401, 401, BODY_ANY, DISCOVERY_VERDICT_AUTH_ERROR},
    {TRANSPORT_COMPLETED, 403, 403, BODY_ANY, DISCOVERY_VERDICT_AUTH_ERROR},
    {TRANSPORT_COMPLETED, 408, 408, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_COMPLETED, 409, 409, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_COMPLETED, 425, 425, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_COMPLETED, 429, 429, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_COMPLETED, 500, 599, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_COMPLETED, 0, 999, BODY_ANY, DISCOVERY_VERDICT_ERROR},
};

/* Phrases that, next to the word "model", mean "this model does not exist here / cannot
 * chat". Matched case-insensitively. */
static const char *const s_model_missing_phrases[] = {
    "does not exist",
    "not found",
    "not_found",
    "not supported",
    "not_supported",
    "invalid model",
    "invalid_model",
    "unknown model",
    "not a valid model",
    "not a chat model",
    "does not support chat",
    "no such model",
};

static transport_t s_transport_class(int curl_code)
{
    switch (curl_code) {
    case CURLE_OK:
        return TRANSPORT_COMPLETED;
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
        return TRANSPORT_RETRYABLE;
    default:
        return TRANSPORT_FAILED;
    }
}

/* True when [hay, hay+hay_len) contains needle, ASCII case-insensitively. */
static bool s_contains_ci(const char *hay, size_t hay_len, const char *needle)
{
    size_t needle_len = strlen(needle);
    if (hay == NULL || needle_len == 0 || needle_len > hay_len)
        return false;
    for (size_t i = 0; i + needle_len <= hay_len; i++) {
        size_t j = 0;
        while (j < needle_len) {
            unsigned char a = (unsigned char)hay[i + j];
            unsigned char b = (unsigned char)needle[j];
            if (a >= 'A' && a <= 'Z')
                a = (unsigned char)(a - 'A' + 'a');
            if (a != b)
                break;
            j++;
        }
        if (j == needle_len)
            return true;
    }
    return false;
}

static bool s_text_says_model_missing(const char *text, size_t len)
{
    if (!s_contains_ci(text, len, "model"))
        return false;
    for (size_t i = 0; i < sizeof s_model_missing_phrases / sizeof *s_model_missing_phrases; i++)
        if (s_contains_ci(text, len, s_model_missing_phrases[i]))
            return true;
    return false;
}

static bool s_json_string_says_model_missing(const json_t *value)
{
    return json_is_string(value) &&
           s_text_says_model_missing(json_string_value(value), json_string_length(value));
}

/* The error texts of an OpenAI-style error body: error.message, error.code, a string
 * "error", "message", "detail" (or FastAPI's detail[].msg). Falls back to the raw body when
 * it is not JSON or has none of these. */
static bool s_body_says_model_missing(const char *body, size_t len)
{
    if (body == NULL || len == 0)
        return false;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        return s_text_says_model_missing(body, len);
    }
    bool found_field = false;
    bool missing = false;
    json_t *error = json_object_get(root, "error");
    if (json_is_object(error)) {
        json_t *message = json_object_get(error, "message");
        json_t *code = json_object_get(error, "code");
        found_field = json_is_string(message) || json_is_string(code);
        missing =
            s_json_string_says_model_missing(message) || s_json_string_says_model_missing(code);
    }
    const char *top_fields[] = {"error", "message", "detail"};
    for (size_t i = 0; i < sizeof top_fields / sizeof *top_fields && !missing; i++) {
        json_t *value = json_object_get(root, top_fields[i]);
        if (json_is_string(value)) {
            found_field = true;
            missing = s_json_string_says_model_missing(value);
        }
    }
    json_t *detail = json_object_get(root, "detail");
    if (!missing && json_is_array(detail)) {
        size_t index;
        json_t *item;
        json_array_foreach(detail, index, item)
        {
            json_t *msg = json_object_get(item, "msg");
            if (json_is_string(msg)) {
                found_field = true;
                if (s_json_string_says_model_missing(msg)) {
                    missing = true;
                    break;
                }
            }
        }
    }
    json_decref(root);
    if (!found_field)
        return s_text_says_model_missing(body, len);
    return missing;
}

discovery_verdict_t discovery_classify(long http_status, int curl_code, const char *body,
                                       size_t len)
{
    transport_t transport = s_transport_class(curl_code);
    for (size_t i = 0; i < sizeof s_classify_table / sizeof *s_classify_table; i++) {
        const classify_row_t *row = &s_classify_table[i];
        if (row->transport != transport)
            continue;
        if (transport == TRANSPORT_COMPLETED &&
            (http_status < row->status_min || http_status > row->status_max))
            continue;
        if (row->body == BODY_MODEL_MISSING && !s_body_says_model_missing(body, len))
            continue;
        return row->verdict;
    }
    return DISCOVERY_VERDICT_ERROR; /* unreachable: the table ends with catch-all rows */
}

const char *discovery_verdict_name(discovery_verdict_t verdict)
{
    switch (verdict) {
    case DISCOVERY_VERDICT_VALID:
        return "valid";
    case DISCOVERY_VERDICT_INVALID_MODEL:
        return "invalid_model";
    case DISCOVERY_VERDICT_AUTH_ERROR:
        return "auth_error";
    case DISCOVERY_VERDICT_TRANSIENT:
        return "transient";
    case DISCOVERY_VERDICT_ERROR:
        return "error";
    }
    return "error";
}

/* ============================================================================ messages */

static const char *s_kind_name(discovery_kind_t kind)
{
    return kind == DISCOVERY_KIND_PROBE ? "probe" : "list";
}

static const char *s_status_name(discovery_result_status_t status)
{
    switch (status) {
    case DISCOVERY_RESULT_OK:
        return "ok";
    case DISCOVERY_RESULT_INVALID:
        return "invalid";
    case DISCOVERY_RESULT_ERROR:
        return "error";
    }
    return "error";
}

static int s_pack_cstr(msgpack_packer *pk, const char *s)
{
    if (s == NULL)
        return msgpack_pack_nil(pk);
    size_t len = strlen(s);
    if (msgpack_pack_str(pk, len) != 0)
        return -1;
    return msgpack_pack_str_body(pk, s, len);
}

/* Sends the packed buffer as one message and frees it. zmq copies the bytes: a zero-copy
 * hand-over would be cheaper, but it moves heap memory between threads through libzmq's
 * lock-free queues, which ThreadSanitizer cannot see, and the messages are small. */
static int s_send_sbuffer(void *socket, msgpack_sbuffer *sbuf, int flags)
{
    int rc;
    while ((rc = zmq_send(socket, sbuf->data, sbuf->size, flags)) < 0 && errno == EINTR)
        ;
    int saved = errno;
    /* A job holds an API key: leave no copy of it in freed memory. */
    if (sbuf->data != NULL)
        explicit_bzero(sbuf->data, sbuf->size);
    msgpack_sbuffer_destroy(sbuf);
    msgpack_sbuffer_init(sbuf);
    errno = saved;
    return rc < 0 ? -1 : 0;
}

int discovery_job_send(void *socket, const discovery_job_t *job)
{
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    int rc = 0;
    rc |= msgpack_pack_map(&pk, 6);
    rc |= s_pack_cstr(&pk, "task");
    rc |= msgpack_pack_uint64(&pk, job->task);
    rc |= s_pack_cstr(&pk, "req");
    rc |= msgpack_pack_uint64(&pk, job->req);
    rc |= s_pack_cstr(&pk, "kind");
    rc |= s_pack_cstr(&pk, s_kind_name(job->kind));
    rc |= s_pack_cstr(&pk, "url");
    rc |= s_pack_cstr(&pk, job->base_api_url);
    rc |= s_pack_cstr(&pk, "key");
    rc |= s_pack_cstr(&pk, job->api_key);
    rc |= s_pack_cstr(&pk, "model");
    rc |= s_pack_cstr(&pk, job->model);
    if (rc != 0) {
        /* The buffer may hold the key: wipe it before giving the memory back. */
        if (sbuf.data != NULL)
            explicit_bzero(sbuf.data, sbuf.size);
        msgpack_sbuffer_destroy(&sbuf);
        errno = ENOMEM;
        return -1;
    }
    if (s_send_sbuffer(socket, &sbuf, ZMQ_DONTWAIT) != 0)
        return -1;
    return 0;
}

static const msgpack_object *s_map_get(const msgpack_object *map, const char *key)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t key_len = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == key_len &&
            memcmp(kv->key.via.str.ptr, key, key_len) == 0)
            return &kv->val;
    }
    return NULL;
}

static bool s_obj_is_str(const msgpack_object *obj, const char *text)
{
    size_t len = strlen(text);
    return obj != NULL && obj->type == MSGPACK_OBJECT_STR && obj->via.str.size == len &&
           memcmp(obj->via.str.ptr, text, len) == 0;
}

static int s_obj_u64(const msgpack_object *obj, uint64_t *out)
{
    if (obj == NULL || obj->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return -1;
    *out = obj->via.u64;
    return 0;
}

static long s_obj_long(const msgpack_object *obj)
{
    if (obj != NULL && obj->type == MSGPACK_OBJECT_POSITIVE_INTEGER && obj->via.u64 < 1000000)
        return (long)obj->via.u64;
    return 0;
}

/* A NUL-terminated copy of a str object; *out = NULL for nil/absent. -1 on a wrong type,
 * an embedded NUL or ENOMEM. */
static int s_obj_strdup(const msgpack_object *obj, char **out)
{
    *out = NULL;
    if (obj == NULL || obj->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (obj->type != MSGPACK_OBJECT_STR)
        return -1;
    if (memchr(obj->via.str.ptr, '\0', obj->via.str.size) != NULL)
        return -1;
    char *copy = malloc(obj->via.str.size + 1);
    if (copy == NULL)
        return -1;
    memcpy(copy, obj->via.str.ptr, obj->via.str.size);
    copy[obj->via.str.size] = '\0';
    *out = copy;
    return 0;
}

void discovery_result_clear(discovery_result_t *result)
{
    if (result == NULL)
        return;
    free(result->model);
    free(result->error);
    for (size_t i = 0; i < result->model_count; i++)
        free(result->models[i]);
    free(result->models);
    memset(result, 0, sizeof *result);
}

static int s_result_decode(discovery_result_t *result, const char *data, size_t size)
{
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    size_t offset = 0;
    int rc = -1;
    if (msgpack_unpack_next(&unpacked, data, size, &offset) != MSGPACK_UNPACK_SUCCESS ||
        offset != size)
        goto cleanup;
    const msgpack_object *root = &unpacked.data;
    if (root->type != MSGPACK_OBJECT_MAP)
        goto cleanup;
    if (s_obj_u64(s_map_get(root, "task"), &result->task) != 0 ||
        s_obj_u64(s_map_get(root, "req"), &result->req) != 0)
        goto cleanup;
    const msgpack_object *kind = s_map_get(root, "kind");
    if (s_obj_is_str(kind, "list"))
        result->kind = DISCOVERY_KIND_LIST;
    else if (s_obj_is_str(kind, "probe"))
        result->kind = DISCOVERY_KIND_PROBE;
    else
        goto cleanup;
    const msgpack_object *outcome = s_map_get(root, "outcome");
    if (s_obj_is_str(outcome, "ok"))
        result->status = DISCOVERY_RESULT_OK;
    else if (s_obj_is_str(outcome, "invalid"))
        result->status = DISCOVERY_RESULT_INVALID;
    else if (s_obj_is_str(outcome, "error"))
        result->status = DISCOVERY_RESULT_ERROR;
    else
        goto cleanup;
    result->http_status = s_obj_long(s_map_get(root, "status"));
    result->attempts = (int)s_obj_long(s_map_get(root, "attempts"));
    if (s_obj_strdup(s_map_get(root, "model"), &result->model) != 0 ||
        s_obj_strdup(s_map_get(root, "error"), &result->error) != 0)
        goto cleanup;
    if (result->status == DISCOVERY_RESULT_ERROR && result->error == NULL)
        goto cleanup;
    const msgpack_object *models = s_map_get(root, "models");
    if (models != NULL && models->type == MSGPACK_OBJECT_ARRAY && models->via.array.size > 0) {
        uint32_t count = models->via.array.size;
        if (count > DISCOVERY_MAX_LISTED_MODELS)
            goto cleanup;
        result->models = calloc(count, sizeof *result->models);
        if (result->models == NULL)
            goto cleanup;
        for (uint32_t i = 0; i < count; i++) {
            char *name = NULL;
            if (s_obj_strdup(&models->via.array.ptr[i], &name) != 0 || name == NULL)
                goto cleanup;
            result->models[result->model_count++] = name;
        }
    }
    rc = 0;
cleanup:
    msgpack_unpacked_destroy(&unpacked);
    if (rc != 0)
        discovery_result_clear(result);
    return rc;
}

int discovery_result_recv(void *socket, discovery_result_t *result, int flags)
{
    memset(result, 0, sizeof *result);
    zmq_msg_t msg;
    if (zmq_msg_init(&msg) != 0)
        return -1;
    if (zmq_msg_recv(&msg, socket, flags) < 0) {
        int saved = errno;
        zmq_msg_close(&msg);
        errno = saved;
        return -1;
    }
    int rc;
    if (zmq_msg_size(&msg) == 0) {
        rc = 1;
    } else {
        rc = s_result_decode(result, zmq_msg_data(&msg), zmq_msg_size(&msg));
        if (rc != 0)
            errno = EPROTO;
    }
    zmq_msg_close(&msg);
    return rc;
}

/* ============================================================================== worker */

struct discovery_worker_t {
    pthread_t thread;
    bool started;
    void *control; /* the owner's end of the control pipe */
    /* Handed over to the thread at pthread_create; the owner never touches them again. */
    void *control_peer; /* the thread's end */
    void *jobs;         /* PULL */
    void *results;      /* PUSH */
    config_discovery_t settings;
};

/* One job being fetched or waiting to be retried. */
typedef struct transfer_t {
    struct transfer_t *prev, *next;
    uint64_t task;
    uint64_t req;
    discovery_kind_t kind;
    char *model;        /* probe only */
    char *api_key;      /* kept only to scrub it out of quoted upstream messages */
    char *request_body; /* probe only: the JSON posted */
    struct curl_slist *headers;
    CURL *easy;
    bool in_multi; /* added to the multi handle (else waiting for its retry) */
    char *body;
    size_t body_len;
    size_t body_cap;
    size_t body_max;
    bool too_large;
    int attempts;
    long long retry_deadline_ms; /* 0 until the first transient failure */
    long long due_ms;            /* when waiting: the time of the next attempt */
    char curl_error[CURL_ERROR_SIZE];
} transfer_t;

typedef struct {
    discovery_worker_t *self;
    CURLM *multi;
    transfer_t *head;
    size_t count;
    uint64_t rng;
} worker_loop_t;

static long long s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* xorshift64*: only for backoff jitter, not for anything secret. */
static uint64_t s_random(worker_loop_t *loop)
{
    uint64_t x = loop->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    loop->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void s_wipe_free(char *secret)
{
    if (secret != NULL) {
        explicit_bzero(secret, strlen(secret));
        free(secret);
    }
}

static void s_transfer_free(worker_loop_t *loop, transfer_t *t)
{
    if (t->in_multi)
        curl_multi_remove_handle(loop->multi, t->easy);
    if (t->easy != NULL)
        curl_easy_cleanup(t->easy);
    /* The header list holds the key in clear text: wipe it before freeing. */
    for (struct curl_slist *h = t->headers; h != NULL; h = h->next)
        explicit_bzero(h->data, strlen(h->data));
    curl_slist_free_all(t->headers);
    s_wipe_free(t->api_key);
    free(t->model);
    free(t->request_body);
    free(t->body);
    if (t->prev != NULL)
        t->prev->next = t->next;
    else if (loop->head == t)
        loop->head = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    loop->count--;
    free(t);
}

static size_t s_write_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    transfer_t *t = userdata;
    size_t n = size * nmemb;
    if (n > t->body_max - t->body_len) {
        t->too_large = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (t->body_len + n + 1 > t->body_cap) {
        size_t cap = t->body_cap ? t->body_cap : 4096;
        while (cap < t->body_len + n + 1)
            cap *= 2;
        if (cap > t->body_max + 1)
            cap = t->body_max + 1;
        char *grown = realloc(t->body, cap);
        if (grown == NULL)
            return 0;
        t->body = grown;
        t->body_cap = cap;
    }
    memcpy(t->body + t->body_len, data, n);
    t->body_len += n;
    t->body[t->body_len] = '\0';
    return n;
}

/* base_api_url without its trailing slashes, then suffix. NULL on ENOMEM. */
static char *s_join_url(const char *base, const char *suffix)
{
    size_t base_len = strlen(base);
    while (base_len > 0 && base[base_len - 1] == '/')
        base_len--;
    size_t suffix_len = strlen(suffix);
    char *url = malloc(base_len + suffix_len + 1);
    if (url == NULL)
        return NULL;
    memcpy(url, base, base_len);
    memcpy(url + base_len, suffix, suffix_len + 1);
    return url;
}

static char *s_probe_body(const char *model, int max_tokens)
{
    json_t *root = json_pack("{s:s, s:[{s:s, s:s}], s:i}", "model", model, "messages", "role",
                             "user", "content", WORKER_PROBE_PROMPT, "max_tokens", max_tokens);
    if (root == NULL)
        return NULL;
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return text;
}

/* Builds the easy handle of a new transfer. 0, or -1 (t is then freed by the caller). */
static int s_transfer_setup(worker_loop_t *loop, transfer_t *t, const char *base_api_url)
{
    const config_discovery_t *settings = &loop->self->settings;
    char *url =
        s_join_url(base_api_url, t->kind == DISCOVERY_KIND_LIST ? "/models" : "/chat/completions");
    if (url == NULL)
        return -1;
    int rc = -1;
    char *auth = NULL;
    t->easy = curl_easy_init();
    if (t->easy == NULL)
        goto cleanup;
    size_t auth_len = strlen("Authorization: Bearer ") + strlen(t->api_key) + 1;
    auth = malloc(auth_len);
    if (auth == NULL)
        goto cleanup;
    snprintf(auth, auth_len, "Authorization: Bearer %s", t->api_key);
    struct curl_slist *list = curl_slist_append(NULL, auth);
    if (list == NULL)
        goto cleanup;
    t->headers = list;
    if ((list = curl_slist_append(t->headers, "Accept: application/json")) == NULL)
        goto cleanup;
    /* No "Expect: 100-continue" round trip for a long model name's probe body. */
    if ((list = curl_slist_append(t->headers, "Expect:")) == NULL)
        goto cleanup;
    if (t->kind == DISCOVERY_KIND_PROBE) {
        if ((list = curl_slist_append(t->headers, "Content-Type: application/json")) == NULL)
            goto cleanup;
        t->request_body = s_probe_body(t->model, settings->max_tokens);
        if (t->request_body == NULL)
            goto cleanup;
    }
    t->body_max = (size_t)(t->kind == DISCOVERY_KIND_LIST ? settings->list_max_bytes
                                                          : settings->probe_max_bytes);
    CURL *e = t->easy;
    CURLcode c = CURLE_OK;
    /* Options that cannot fail for a valid handle are still checked: one bad one is enough
     * to make the transfer do something else than intended. */
    if ((c = curl_easy_setopt(e, CURLOPT_URL, url)) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https")) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L)) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)settings->connect_timeout_ms)) !=
            CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)settings->request_timeout_ms)) !=
            CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L)) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L)) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L)) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_USERAGENT, WORKER_USER_AGENT)) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers)) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s_write_body)) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_WRITEDATA, t)) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->curl_error)) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)t->body_max)) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "")) != CURLE_OK ||
        (c = curl_easy_setopt(e, CURLOPT_PRIVATE, t)) != CURLE_OK)
        goto cleanup;
    if (t->kind == DISCOVERY_KIND_PROBE &&
        ((c = curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->request_body)) != CURLE_OK ||
         (c = curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(t->request_body))) !=
             CURLE_OK))
        goto cleanup;
    rc = 0;
cleanup:
    if (auth != NULL) {
        explicit_bzero(auth, strlen(auth));
        free(auth);
    }
    free(url);
    return rc;
}

static int s_transfer_add(worker_loop_t *loop, transfer_t *t)
{
    t->body_len = 0;
    t->too_large = false;
    t->curl_error[0] = '\0';
    if (curl_multi_add_handle(loop->multi, t->easy) != CURLM_OK)
        return -1;
    t->in_multi = true;
    return 0;
}

/* ------------------------------------------------------------------------ results out */

typedef struct {
    discovery_result_status_t status;
    const char *error;
    json_t *models; /* list OK: array of strings (borrowed) */
} outcome_t;

/* Sends the result of t. Blocking is fine: the results pipe has no high-water mark, and its
 * size is bounded by the jobs the coordinator handed out. -1 on a zmq error (ETERM). */
static int s_send_result(worker_loop_t *loop, const transfer_t *t, long http_status,
                         const outcome_t *outcome)
{
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    int rc = 0;
    rc |= msgpack_pack_map(&pk, 9);
    rc |= s_pack_cstr(&pk, "task");
    rc |= msgpack_pack_uint64(&pk, t->task);
    rc |= s_pack_cstr(&pk, "req");
    rc |= msgpack_pack_uint64(&pk, t->req);
    rc |= s_pack_cstr(&pk, "kind");
    rc |= s_pack_cstr(&pk, s_kind_name(t->kind));
    rc |= s_pack_cstr(&pk, "outcome");
    rc |= s_pack_cstr(&pk, s_status_name(outcome->status));
    rc |= s_pack_cstr(&pk, "status");
    rc |= msgpack_pack_long(&pk, http_status);
    rc |= s_pack_cstr(&pk, "attempts");
    rc |= msgpack_pack_int(&pk, t->attempts);
    rc |= s_pack_cstr(&pk, "model");
    rc |= s_pack_cstr(&pk, t->model);
    rc |= s_pack_cstr(&pk, "error");
    rc |= s_pack_cstr(&pk, outcome->error);
    rc |= s_pack_cstr(&pk, "models");
    if (outcome->models != NULL) {
        size_t count = json_array_size(outcome->models);
        rc |= msgpack_pack_array(&pk, count);
        for (size_t i = 0; i < count; i++)
            rc |= s_pack_cstr(&pk, json_string_value(json_array_get(outcome->models, i)));
    } else {
        rc |= msgpack_pack_nil(&pk);
    }
    if (rc != 0) {
        msgpack_sbuffer_destroy(&sbuf);
        /* Out of memory: still answer, or the coordinator would wait forever. */
        msgpack_sbuffer_init(&sbuf);
        rc = 0;
        rc |= msgpack_pack_map(&pk, 5);
        rc |= s_pack_cstr(&pk, "task");
        rc |= msgpack_pack_uint64(&pk, t->task);
        rc |= s_pack_cstr(&pk, "req");
        rc |= msgpack_pack_uint64(&pk, t->req);
        rc |= s_pack_cstr(&pk, "kind");
        rc |= s_pack_cstr(&pk, s_kind_name(t->kind));
        rc |= s_pack_cstr(&pk, "outcome");
        rc |= s_pack_cstr(&pk, "error");
        rc |= s_pack_cstr(&pk, "error");
        rc |= s_pack_cstr(&pk, "out of memory");
        if (rc != 0) {
            msgpack_sbuffer_destroy(&sbuf);
            return -1;
        }
    }
    return s_send_sbuffer(loop->self->results, &sbuf, 0);
}

/* Copies text into out, replacing control bytes by spaces and every occurrence of secret by
 * "***", at most max bytes of text (cut on a UTF-8 boundary). */
static void s_sanitize(char *out, size_t out_size, const char *text, size_t len, size_t max,
                       const char *secret)
{
    size_t secret_len = secret ? strlen(secret) : 0;
    size_t o = 0;
    if (len > max) {
        len = max;
        while (len > 0 && ((unsigned char)text[len] & 0xC0) == 0x80)
            len--;
    }
    for (size_t i = 0; i < len && o + 1 < out_size;) {
        if (secret_len > 0 && len - i >= secret_len && memcmp(text + i, secret, secret_len) == 0) {
            for (const char *r = "***"; *r && o + 1 < out_size; r++)
                out[o++] = *r;
            i += secret_len;
            continue;
        }
        unsigned char c = (unsigned char)text[i++];
        out[o++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    out[o] = '\0';
}

/* The upstream's own words for a failed request (error.message, or a string error /
 * message / detail), quoted after the status so operators see why; "" when none. */
static void s_upstream_detail(const transfer_t *t, char *out, size_t out_size)
{
    out[0] = '\0';
    if (t->body == NULL || t->body_len == 0)
        return;
    json_error_t jerr;
    json_t *root = json_loadb(t->body, t->body_len, 0, &jerr);
    if (root == NULL)
        return;
    const json_t *text = NULL;
    json_t *error = json_object_get(root, "error");
    if (json_is_object(error))
        text = json_object_get(error, "message");
    if (!json_is_string(text))
        text = error;
    if (!json_is_string(text))
        text = json_object_get(root, "message");
    if (!json_is_string(text))
        text = json_object_get(root, "detail");
    if (json_is_string(text))
        s_sanitize(out, out_size, json_string_value(text), json_string_length(text),
                   WORKER_UPSTREAM_DETAIL_MAX, t->api_key);
    json_decref(root);
}

/* Parses an OpenAI model list into an array of distinct ids in listed order. NULL with a
 * message in err on failure. */
static json_t *s_parse_model_list(const char *body, size_t len, char *err, size_t err_size)
{
    json_error_t jerr;
    json_t *root = json_loadb(body ? body : "", len, 0, &jerr);
    json_t *ids = NULL;
    json_t *seen = NULL;
    if (root == NULL) {
        snprintf(err, err_size, "malformed model list: %s", jerr.text);
        return NULL;
    }
    json_t *data = json_object_get(root, "data");
    if (!json_is_array(data)) {
        snprintf(err, err_size, "malformed model list: no \"data\" array");
        goto cleanup;
    }
    ids = json_array();
    seen = json_object(); /* jansson's hash table as a set of the ids already taken */
    if (ids == NULL || seen == NULL) {
        snprintf(err, err_size, "out of memory");
        goto cleanup;
    }
    size_t index;
    json_t *entry;
    json_array_foreach(data, index, entry)
    {
        json_t *id = json_object_get(entry, "id");
        if (!json_is_string(id))
            continue;
        size_t id_len = json_string_length(id);
        const char *id_text = json_string_value(id);
        if (id_len == 0 || id_len > DISCOVERY_MAX_MODEL_ID_LEN ||
            memchr(id_text, '\0', id_len) != NULL)
            continue;
        if (json_object_get(seen, id_text) != NULL)
            continue;
        if (json_array_size(ids) >= DISCOVERY_MAX_LISTED_MODELS) {
            snprintf(err, err_size, "model list too long (more than %d models)",
                     DISCOVERY_MAX_LISTED_MODELS);
            goto cleanup;
        }
        if (json_object_set_new(seen, id_text, json_true()) != 0 ||
            json_array_append(ids, id) != 0) {
            snprintf(err, err_size, "out of memory");
            goto cleanup;
        }
    }
    json_decref(seen);
    json_decref(root);
    return ids;
cleanup:
    json_decref(seen);
    json_decref(ids);
    json_decref(root);
    return NULL;
}

/* Schedules a retry of t when its verdict is transient and attempts and budget remain. */
static bool s_schedule_retry(worker_loop_t *loop, transfer_t *t)
{
    const config_discovery_t *settings = &loop->self->settings;
    if (t->attempts > settings->max_retries)
        return false;
    long long now = s_now_ms();
    if (t->retry_deadline_ms == 0)
        t->retry_deadline_ms =
            now + (settings->retry_budget_ms > 0 ? settings->retry_budget_ms : 0);
    long long remaining = t->retry_deadline_ms - now;
    if (remaining <= 0)
        return false;
    long long delay;
    curl_off_t retry_after = 0;
    if (curl_easy_getinfo(t->easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK &&
        retry_after > 0) {
        /* The server said when; never wait past our own budget for it (compared in seconds
         * first, so that a huge header value cannot overflow). */
        delay = retry_after > remaining / 1000 ? remaining : (long long)retry_after * 1000;
    } else {
        /* Full jitter: uniform in [0, base * 2^(failures - 1)]. */
        int shift = t->attempts - 1 < 20 ? t->attempts - 1 : 20;
        long long ceiling = (long long)DISCOVERY_RETRY_BASE_MS << shift;
        delay = (long long)(s_random(loop) % (uint64_t)(ceiling + 1));
    }
    if (delay > remaining)
        delay = remaining;
    curl_multi_remove_handle(loop->multi, t->easy);
    t->in_multi = false;
    t->due_ms = now + delay;
    return true;
}

/* A transfer finished (curl says so): classify, retry or answer, then free it. -1 when the
 * results socket is gone (the loop must stop). */
static int s_transfer_done(worker_loop_t *loop, transfer_t *t, CURLcode code)
{
    long http_status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &http_status);
    t->attempts++;
    char error[DISCOVERY_ERROR_SIZE];
    char detail[WORKER_UPSTREAM_DETAIL_MAX + 56];
    outcome_t outcome = {DISCOVERY_RESULT_ERROR, error, NULL};
    error[0] = '\0';

    if (t->too_large || code == CURLE_FILESIZE_EXCEEDED) {
        snprintf(error, sizeof error, "response too large");
    } else {
        discovery_verdict_t verdict =
            discovery_classify(http_status, (int)code, t->body, t->body_len);
        if (verdict == DISCOVERY_VERDICT_TRANSIENT && s_schedule_retry(loop, t))
            return 0;
        const char *curl_text = t->curl_error[0] ? t->curl_error : curl_easy_strerror(code);
        switch (verdict) {
        case DISCOVERY_VERDICT_VALID:
            if (t->kind == DISCOVERY_KIND_PROBE) {
                outcome.status = DISCOVERY_RESULT_OK;
                outcome.error = NULL;
            } else {
                outcome.models = s_parse_model_list(t->body, t->body_len, error, sizeof error);
                if (outcome.models != NULL) {
                    outcome.status = DISCOVERY_RESULT_OK;
                    outcome.error = NULL;
                }
            }
            break;
        case DISCOVERY_VERDICT_INVALID_MODEL:
            if (t->kind == DISCOVERY_KIND_PROBE) {
                outcome.status = DISCOVERY_RESULT_INVALID;
                outcome.error = NULL;
                break;
            }
            /* A list that answers "not found" is an error like any other. */
            /* fall through */
        case DISCOVERY_VERDICT_ERROR:
            if (code != CURLE_OK) {
                snprintf(error, sizeof error, "%s", curl_text);
            } else {
                s_upstream_detail(t, detail, sizeof detail);
                snprintf(error, sizeof error, "HTTP %ld%s%s", http_status, detail[0] ? ": " : "",
                         detail);
            }
            break;
        case DISCOVERY_VERDICT_AUTH_ERROR:
            snprintf(error, sizeof error, "authentication failed (HTTP %ld)", http_status);
            break;
        case DISCOVERY_VERDICT_TRANSIENT:
            if (code != CURLE_OK)
                snprintf(error, sizeof error, "%s", curl_text);
            else
                snprintf(error, sizeof error, "HTTP %ld", http_status);
            if (t->attempts > 1) {
                /* "HTTP 503 after 4 attempts"; curl's texts end in their own clause. */
                size_t used = strlen(error);
                snprintf(error + used, sizeof error - used, "%s after %d attempts",
                         code != CURLE_OK ? "," : "", t->attempts);
            }
            break;
        }
    }
    int rc = s_send_result(loop, t, http_status, &outcome);
    json_decref(outcome.models);
    s_transfer_free(loop, t);
    return rc;
}

/* Decodes one job message and starts its transfer. A job without readable ids is dropped (it
 * cannot be answered); any other bad job, or one whose transfer cannot be set up, is answered
 * with an error so that the coordinator never waits for it. */
static int s_start_job(worker_loop_t *loop, const void *data, size_t size)
{
    if (size == 0)
        return 0;
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    size_t offset = 0;
    char *url = NULL;
    int rc = 0;
    transfer_t *t = NULL;
    if (msgpack_unpack_next(&unpacked, data, size, &offset) != MSGPACK_UNPACK_SUCCESS)
        goto cleanup;
    const msgpack_object *root = &unpacked.data;
    t = calloc(1, sizeof *t);
    if (t == NULL)
        goto cleanup;
    const msgpack_object *kind = s_map_get(root, "kind");
    if (s_obj_u64(s_map_get(root, "task"), &t->task) != 0 ||
        s_obj_u64(s_map_get(root, "req"), &t->req) != 0)
        goto cleanup;
    if (s_obj_is_str(kind, "list"))
        t->kind = DISCOVERY_KIND_LIST;
    else if (s_obj_is_str(kind, "probe"))
        t->kind = DISCOVERY_KIND_PROBE;
    else
        goto cleanup;
    /* From here on the job can be answered, so it is linked into the loop. */
    t->next = loop->head;
    if (loop->head != NULL)
        loop->head->prev = t;
    loop->head = t;
    loop->count++;
    const char *failure = NULL;
    if (size > WORKER_MAX_JOB_MESSAGE || s_obj_strdup(s_map_get(root, "url"), &url) != 0 ||
        s_obj_strdup(s_map_get(root, "key"), &t->api_key) != 0 ||
        s_obj_strdup(s_map_get(root, "model"), &t->model) != 0 || url == NULL ||
        t->api_key == NULL || (t->kind == DISCOVERY_KIND_PROBE && t->model == NULL))
        failure = "invalid discovery job";
    else if (s_transfer_setup(loop, t, url) != 0 || s_transfer_add(loop, t) != 0)
        failure = "could not start the HTTP request";
    if (failure != NULL) {
        outcome_t outcome = {DISCOVERY_RESULT_ERROR, failure, NULL};
        rc = s_send_result(loop, t, 0, &outcome);
        s_transfer_free(loop, t);
    }
    t = NULL;
cleanup:
    if (t != NULL) {
        s_wipe_free(t->api_key);
        free(t->model);
        free(t);
    }
    free(url);
    /* The message held the key: msgpack's zone copies nothing here, but the zmq buffer
     * does; the caller wipes it. */
    msgpack_unpacked_destroy(&unpacked);
    return rc;
}

/* Reads ZMQ_EVENTS (this also re-arms the edge-triggered ZMQ_FD). -1 on ETERM. */
static int s_socket_events(void *socket, int *events)
{
    size_t size = sizeof *events;
    while (zmq_getsockopt(socket, ZMQ_EVENTS, events, &size) != 0) {
        if (errno != EINTR)
            return -1;
    }
    return 0;
}

/* Drains the job socket while there is room. -1 when the loop must stop. */
static int s_drain_jobs(worker_loop_t *loop)
{
    for (;;) {
        int events = 0;
        if (s_socket_events(loop->self->jobs, &events) != 0)
            return -1;
        if (!(events & ZMQ_POLLIN) || loop->count >= DISCOVERY_MAX_TRANSFERS)
            return 0;
        zmq_msg_t msg;
        if (zmq_msg_init(&msg) != 0)
            return -1;
        if (zmq_msg_recv(&msg, loop->self->jobs, ZMQ_DONTWAIT) < 0) {
            int saved = errno;
            zmq_msg_close(&msg);
            if (saved == EINTR)
                continue;
            return saved == EAGAIN ? 0 : -1;
        }
        int rc = s_start_job(loop, zmq_msg_data(&msg), zmq_msg_size(&msg));
        explicit_bzero(zmq_msg_data(&msg), zmq_msg_size(&msg));
        zmq_msg_close(&msg);
        if (rc != 0)
            return -1;
    }
}

/* True when the owner asked to stop (any message on the control pipe), or on ETERM. */
static bool s_stop_requested(worker_loop_t *loop)
{
    int events = 0;
    if (s_socket_events(loop->self->control_peer, &events) != 0)
        return true;
    if (!(events & ZMQ_POLLIN))
        return false;
    char buf[16];
    int n = zmq_recv(loop->self->control_peer, buf, sizeof buf, ZMQ_DONTWAIT);
    return n >= 0 || (errno != EAGAIN && errno != EINTR);
}

/* Puts retries whose time has come back into the multi handle; returns ms until the next one
 * (or WORKER_IDLE_POLL_MS). */
static int s_fire_timers(worker_loop_t *loop)
{
    long long now = s_now_ms();
    long long next = now + WORKER_IDLE_POLL_MS;
    transfer_t *t = loop->head;
    while (t != NULL) {
        transfer_t *following = t->next;
        if (!t->in_multi) {
            if (t->due_ms <= now) {
                if (s_transfer_add(loop, t) != 0) {
                    outcome_t outcome = {DISCOVERY_RESULT_ERROR, "could not retry the HTTP request",
                                         NULL};
                    int rc = s_send_result(loop, t, 0, &outcome);
                    s_transfer_free(loop, t);
                    if (rc != 0)
                        return -1;
                }
            } else if (t->due_ms < next) {
                next = t->due_ms;
            }
        }
        t = following;
    }
    return (int)(next - now);
}

static int s_fd_of(void *socket, curl_socket_t *fd)
{
#ifdef _WIN32
    SOCKET handle;
#else
    int handle;
#endif
    size_t size = sizeof handle;
    if (zmq_getsockopt(socket, ZMQ_FD, &handle, &size) != 0)
        return -1;
    *fd = (curl_socket_t)handle;
    return 0;
}

static void s_run(worker_loop_t *loop)
{
    discovery_worker_t *self = loop->self;
    struct curl_waitfd extra[2];
    memset(extra, 0, sizeof extra);
    if (s_fd_of(self->control_peer, &extra[0].fd) != 0 || s_fd_of(self->jobs, &extra[1].fd) != 0)
        return;
    extra[0].events = CURL_WAIT_POLLIN;
    extra[1].events = CURL_WAIT_POLLIN;
    for (;;) {
        if (s_stop_requested(loop))
            return;
        if (s_drain_jobs(loop) != 0)
            return;
        int wait_ms = s_fire_timers(loop);
        if (wait_ms < 0)
            return;
        int running = 0;
        if (curl_multi_perform(loop->multi, &running) != CURLM_OK)
            return;
        CURLMsg *info;
        int left = 0;
        bool finished_any = false;
        while ((info = curl_multi_info_read(loop->multi, &left)) != NULL) {
            if (info->msg != CURLMSG_DONE)
                continue;
            transfer_t *t = NULL;
            curl_easy_getinfo(info->easy_handle, CURLINFO_PRIVATE, (char **)&t);
            CURLcode code = info->data.result;
            if (t == NULL || s_transfer_done(loop, t, code) != 0)
                return;
            finished_any = true;
        }
        /* A finished transfer made room or scheduled a retry: look again before waiting. */
        if (finished_any)
            continue;
        if (curl_multi_poll(loop->multi, extra, 2, wait_ms, NULL) != CURLM_OK)
            return;
    }
}

static void *s_worker_thread(void *arg)
{
    discovery_worker_t *self = arg;
    worker_loop_t loop = {.self = self};
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
        seed = (uint64_t)s_now_ms() ^ (uint64_t)(uintptr_t)self;
    loop.rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
    loop.multi = curl_multi_init();
    if (loop.multi != NULL)
        s_run(&loop);
    while (loop.head != NULL)
        s_transfer_free(&loop, loop.head);
    if (loop.multi != NULL)
        curl_multi_cleanup(loop.multi);
    int linger = 0;
    zmq_setsockopt(self->jobs, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(self->results, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(self->control_peer, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(self->jobs);
    zmq_close(self->results);
    zmq_close(self->control_peer);
    return NULL;
}

static void *s_socket(void *ctx, int type, int hwm)
{
    void *socket = zmq_socket(ctx, type);
    if (socket == NULL)
        return NULL;
    int linger = 0;
    if (zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(socket, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(socket, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0) {
        zmq_close(socket);
        return NULL;
    }
    return socket;
}

discovery_worker_t *discovery_worker_new(void *zmq_ctx, const config_discovery_t *settings,
                                         const char *jobs_endpoint, const char *results_endpoint)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    discovery_worker_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        goto fail;
    self->settings = *settings;
    char control_endpoint[96];
    inproc_endpoint(control_endpoint, sizeof control_endpoint, "discovery-control");
    /* Jobs and results pipes without a high-water mark: their length is bounded by the
     * requests the coordinator keeps in flight, and a full pipe must never block either end. */
    self->control = s_socket(zmq_ctx, ZMQ_PAIR, 0);
    self->control_peer = s_socket(zmq_ctx, ZMQ_PAIR, 0);
    self->jobs = s_socket(zmq_ctx, ZMQ_PULL, 0);
    self->results = s_socket(zmq_ctx, ZMQ_PUSH, 0);
    if (self->control == NULL || self->control_peer == NULL || self->jobs == NULL ||
        self->results == NULL)
        goto fail;
    if (zmq_bind(self->control, control_endpoint) != 0 ||
        zmq_connect(self->control_peer, control_endpoint) != 0 ||
        zmq_connect(self->jobs, jobs_endpoint) != 0 ||
        zmq_connect(self->results, results_endpoint) != 0)
        goto fail;
    if (pthread_create(&self->thread, NULL, s_worker_thread, self) != 0)
        goto fail;
    self->started = true;
    return self;
fail:
    if (self != NULL) {
        if (self->control)
            zmq_close(self->control);
        if (self->control_peer)
            zmq_close(self->control_peer);
        if (self->jobs)
            zmq_close(self->jobs);
        if (self->results)
            zmq_close(self->results);
        free(self);
    }
    curl_global_cleanup();
    return NULL;
}

void discovery_worker_destroy(discovery_worker_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    discovery_worker_t *self = *self_p;
    *self_p = NULL;
    if (self->started) {
        /* The pipe was connected before the thread started, so this cannot be lost; if it
         * fails (ETERM) the thread sees the same error and stops by itself. */
        while (zmq_send(self->control, WORKER_STOP_MESSAGE, strlen(WORKER_STOP_MESSAGE), 0) < 0 &&
               errno == EINTR)
            ;
        pthread_join(self->thread, NULL);
    }
    zmq_close(self->control);
    free(self);
    curl_global_cleanup();
}
