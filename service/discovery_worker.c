/*
 * discovery_worker: the worker pool's thread body (libcurl multi + jansson). See
 * discovery_worker.h; messages are discovery_msg's, verdicts discovery_classify's.
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
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <zmq.h>

#ifndef PM_VERSION
#error "PM_VERSION comes from CMake project(VERSION): build with CMake"
#endif

#define WORKER_USER_AGENT "provider-manager/" PM_VERSION
#define WORKER_IDLE_POLL_MS 1000 /* upper bound of one wait when nothing is due */
#define WORKER_STOP_MESSAGE "stop"
#define WORKER_UPSTREAM_DETAIL_MAX 200 /* bytes of an upstream error message quoted in ours */
#define WORKER_PROBE_PROMPT "Hi"

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
    double latency_ms;           /* of the last finished attempt */
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

/* A parsed model list: distinct ids in listed order and their metadata (owned). */
typedef struct {
    size_t count;
    char **ids;
    model_meta_t *metas;
} model_list_t;

static void s_model_list_clear(model_list_t *list)
{
    for (size_t i = 0; i < list->count; i++) {
        free(list->ids[i]);
        model_meta_clear(&list->metas[i]);
    }
    free(list->ids);
    free(list->metas);
    list->ids = NULL;
    list->metas = NULL;
    list->count = 0;
}

typedef struct {
    discovery_result_status_t status;
    discovery_verdict_t verdict;
    const char *error;
    model_list_t *models; /* list OK (borrowed) */
} outcome_t;

/* Sends the result of t. -1 on a zmq error (ETERM). */
static int s_send_result(worker_loop_t *loop, const transfer_t *t, long http_status,
                         const outcome_t *outcome)
{
    /* The strings are borrowed for the send only: this result is never cleared. */
    discovery_result_t result = {
        .task = t->task,
        .req = t->req,
        .kind = t->kind,
        .status = outcome->status,
        .verdict = outcome->verdict,
        .http_status = http_status,
        .attempts = t->attempts,
        .latency_ms = t->latency_ms,
        .model = t->model,
        .error = (char *)outcome->error,
    };
    if (outcome->models != NULL) {
        result.model_count = outcome->models->count;
        /* A list of zero models still sends an (empty) array, unlike "no list". */
        static char *s_no_ids[1];
        static model_meta_t s_no_metas[1];
        result.models = outcome->models->ids ? outcome->models->ids : s_no_ids;
        result.metas = outcome->models->metas ? outcome->models->metas : s_no_metas;
    }
    return discovery_result_send(loop->self->results, &result);
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

/* The metadata of one /models entry: its top-level scalar fields offered to model_meta
 * (nested objects such as OpenRouter's top_provider are not read). 0, or -1 on ENOMEM. */
static int s_entry_meta(const json_t *entry, model_meta_t *meta)
{
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)entry, key, value)
    {
        size_t key_len = strlen(key);
        if (!model_meta_known(key, key_len))
            continue;
        model_meta_field_t field = {.name = key, .name_len = key_len, .type = MODEL_META_OTHER};
        if (json_is_integer(value)) {
            field.type = MODEL_META_INT;
            field.int_value = (long long)json_integer_value(value);
        } else if (json_is_string(value)) {
            field.type = MODEL_META_STR;
            field.str = json_string_value(value);
            field.str_len = json_string_length(value);
        }
        if (model_meta_offer(meta, &field) != 0)
            return -1;
    }
    return 0;
}

/* Parses an OpenAI model list into distinct ids in listed order (*list, owned). 0, or -1
 * with a message in err. */
static int s_parse_model_list(const char *body, size_t len, model_list_t *list, char *err,
                              size_t err_size)
{
    memset(list, 0, sizeof *list);
    json_error_t jerr;
    json_t *root = json_loadb(body ? body : "", len, 0, &jerr);
    json_t *seen = NULL;
    if (root == NULL) {
        snprintf(err, err_size, "malformed model list: %s", jerr.text);
        return -1;
    }
    json_t *data = json_object_get(root, "data");
    if (!json_is_array(data)) {
        snprintf(err, err_size, "malformed model list: no \"data\" array");
        goto fail;
    }
    size_t entries = json_array_size(data);
    size_t cap = entries < DISCOVERY_MAX_LISTED_MODELS ? entries : DISCOVERY_MAX_LISTED_MODELS;
    list->ids = calloc(cap ? cap : 1, sizeof *list->ids);
    list->metas = calloc(cap ? cap : 1, sizeof *list->metas);
    seen = json_object(); /* jansson's hash table as a set of the ids already taken */
    if (list->ids == NULL || list->metas == NULL || seen == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
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
        if (list->count >= DISCOVERY_MAX_LISTED_MODELS) {
            snprintf(err, err_size, "model list too long (more than %d models)",
                     DISCOVERY_MAX_LISTED_MODELS);
            goto fail;
        }
        char *copy = malloc(id_len + 1);
        if (copy == NULL || json_object_set_new(seen, id_text, json_true()) != 0) {
            free(copy);
            snprintf(err, err_size, "out of memory");
            goto fail;
        }
        memcpy(copy, id_text, id_len + 1);
        list->ids[list->count] = copy;
        /* Counted before its metadata, so that a failure below frees it. */
        model_meta_t *meta = &list->metas[list->count++];
        if (s_entry_meta(entry, meta) != 0) {
            snprintf(err, err_size, "out of memory");
            goto fail;
        }
    }
    json_decref(seen);
    json_decref(root);
    return 0;
fail:
    json_decref(seen);
    json_decref(root);
    s_model_list_clear(list);
    return -1;
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
    curl_off_t total_us = 0;
    if (curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &total_us) == CURLE_OK && total_us >= 0)
        t->latency_ms = (double)total_us / 1000.0;
    char error[DISCOVERY_ERROR_SIZE];
    char detail[WORKER_UPSTREAM_DETAIL_MAX + 56];
    model_list_t models = {0, NULL, NULL};
    outcome_t outcome = {DISCOVERY_RESULT_ERROR, DISCOVERY_VERDICT_ERROR, error, NULL};
    error[0] = '\0';

    if (t->too_large || code == CURLE_FILESIZE_EXCEEDED) {
        snprintf(error, sizeof error, "response too large");
    } else {
        discovery_verdict_t verdict =
            discovery_classify(http_status, (int)code, t->body, t->body_len);
        if (verdict == DISCOVERY_VERDICT_TRANSIENT && s_schedule_retry(loop, t))
            return 0;
        /* A list that answers "not found" is an error like any other. */
        outcome.verdict =
            t->kind == DISCOVERY_KIND_LIST && verdict == DISCOVERY_VERDICT_INVALID_MODEL
                ? DISCOVERY_VERDICT_ERROR
                : verdict;
        const char *curl_text = t->curl_error[0] ? t->curl_error : curl_easy_strerror(code);
        switch (verdict) {
        case DISCOVERY_VERDICT_VALID:
            if (t->kind == DISCOVERY_KIND_PROBE) {
                outcome.status = DISCOVERY_RESULT_OK;
                outcome.error = NULL;
            } else {
                if (s_parse_model_list(t->body, t->body_len, &models, error, sizeof error) == 0) {
                    outcome.models = &models;
                    outcome.status = DISCOVERY_RESULT_OK;
                    outcome.error = NULL;
                } else {
                    outcome.verdict = DISCOVERY_VERDICT_ERROR; /* a malformed list */
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
    s_model_list_clear(&models);
    s_transfer_free(loop, t);
    return rc;
}

/* Decodes one job message and starts its transfer. A job without readable ids is dropped (it
 * cannot be answered); any other bad job, or one whose transfer cannot be set up, is answered
 * with an error so that the coordinator never waits for it. */
static int s_start_job(worker_loop_t *loop, const void *data, size_t size)
{
    discovery_job_msg_t job;
    int decoded = discovery_job_decode(data, size, &job);
    if (decoded < 0)
        return 0;
    transfer_t *t = calloc(1, sizeof *t);
    if (t == NULL) {
        /* Cannot even hold the job: answer through a stack transfer, so the coordinator
         * does not wait for ever. */
        transfer_t failed = {.task = job.task, .req = job.req, .kind = job.kind};
        outcome_t outcome = {DISCOVERY_RESULT_ERROR, DISCOVERY_VERDICT_ERROR, "out of memory",
                             NULL};
        discovery_job_msg_clear(&job);
        return s_send_result(loop, &failed, 0, &outcome);
    }
    t->task = job.task;
    t->req = job.req;
    t->kind = job.kind;
    t->api_key = job.api_key; /* adopted, like model */
    t->model = job.model;
    job.api_key = NULL;
    job.model = NULL;
    t->next = loop->head;
    if (loop->head != NULL)
        loop->head->prev = t;
    loop->head = t;
    loop->count++;
    const char *failure = NULL;
    if (decoded != 0)
        failure = "invalid discovery job";
    else if (s_transfer_setup(loop, t, job.base_api_url) != 0 || s_transfer_add(loop, t) != 0)
        failure = "could not start the HTTP request";
    discovery_job_msg_clear(&job);
    int rc = 0;
    if (failure != NULL) {
        outcome_t outcome = {DISCOVERY_RESULT_ERROR, DISCOVERY_VERDICT_ERROR, failure, NULL};
        rc = s_send_result(loop, t, 0, &outcome);
        s_transfer_free(loop, t);
    }
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
                    outcome_t outcome = {DISCOVERY_RESULT_ERROR, DISCOVERY_VERDICT_ERROR,
                                         "could not retry the HTTP request", NULL};
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
