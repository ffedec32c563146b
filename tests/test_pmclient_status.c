/*
 * test_pmclient_status: libpmclient's and pmctl's side of protocol v1.1's model status, against
 * canned replies (no daemon): model_status, provider_status, verify_models, job_status of kind
 * "verify", health's new keys and the typed events of the "models" topic.
 *
 * A fake service (a ROUTER in a thread) answers each request with the next canned reply of a
 * script; the replies are written as JSON text in the tests and packed to msgpack here (numbers
 * with a '.' or an exponent become msgpack floats, as the contract's times are), so that a test
 * reads like the wire. The fake keeps the last request, so that the arguments the library
 * packs are checked too. A PUB socket plays the events endpoint. pmctl ($PM_PMCTL) is run
 * against the same fakes for its tables, its progress output and its exit codes.
 *
 * The daemon-level tests of the same functions (real records after a discovery against the
 * fake upstream) are in test_pmclient.c.
 */
#define _XOPEN_SOURCE 700 /* mkdtemp, nftw */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "pmclient.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

extern char **environ;

#define WAIT_STEP_MS 20
#define WAIT_LIMIT_MS 30000 /* generous: only a broken program gets near it */
#define FAKE_MAX_REPLIES 16
#define MAX_ARGS 32

/* ------------------------------------------------------------------ JSON text -> msgpack */

static void s_skip_space(const char **p)
{
    while (**p == ' ' || **p == '\n' || **p == '\t')
        (*p)++;
}

/* Packs one JSON value at *p (the subset the tests write: no \u escapes). Fails the test on
 * a syntax error, which is a mistake in the test. */
static void s_pack_value(msgpack_packer *pk, const char **p)
{
    s_skip_space(p);
    char c = **p;
    if (c == '{' || c == '[') {
        bool map = c == '{';
        const char *start = ++(*p);
        /* Count the members first: msgpack wants the size before the elements. */
        uint32_t count = 0;
        int depth = 0;
        bool in_string = false, any = false;
        for (const char *q = start; *q && !(depth == 0 && !in_string && (*q == '}' || *q == ']'));
             q++) {
            if (in_string) {
                if (*q == '\\')
                    q++;
                else if (*q == '"')
                    in_string = false;
                continue;
            }
            if (*q == '"')
                in_string = true;
            if (*q == '{' || *q == '[')
                depth++;
            else if (*q == '}' || *q == ']')
                depth--;
            else if (*q == ',' && depth == 0)
                count++;
            if (*q != ' ' && *q != '\n')
                any = true;
        }
        if (any)
            count++;
        if (map)
            msgpack_pack_map(pk, count);
        else
            msgpack_pack_array(pk, count);
        for (uint32_t i = 0; i < count; i++) {
            s_pack_value(pk, p);
            s_skip_space(p);
            if (map) {
                assert_int_equal(**p, ':');
                (*p)++;
                s_pack_value(pk, p);
                s_skip_space(p);
            }
            if (i + 1 < count) {
                assert_int_equal(**p, ',');
                (*p)++;
            }
        }
        s_skip_space(p);
        assert_int_equal(**p, map ? '}' : ']');
        (*p)++;
    } else if (c == '"') {
        char text[512];
        size_t n = 0;
        for ((*p)++; **p != '"'; (*p)++) {
            assert_true(**p != '\0' && n < sizeof text);
            if (**p == '\\') {
                (*p)++;
                text[n++] = **p == 'n' ? '\n' : **p == 't' ? '\t' : **p;
            } else {
                text[n++] = **p;
            }
        }
        (*p)++;
        msgpack_pack_str(pk, n);
        msgpack_pack_str_body(pk, text, n);
    } else if (strncmp(*p, "true", 4) == 0) {
        msgpack_pack_true(pk);
        *p += 4;
    } else if (strncmp(*p, "false", 5) == 0) {
        msgpack_pack_false(pk);
        *p += 5;
    } else if (strncmp(*p, "null", 4) == 0) {
        msgpack_pack_nil(pk);
        *p += 4;
    } else {
        char *end;
        size_t len = strspn(*p, "-+0123456789.eE");
        assert_true(len > 0);
        if (memchr(*p, '.', len) || memchr(*p, 'e', len) || memchr(*p, 'E', len)) {
            double value = strtod(*p, &end);
            msgpack_pack_double(pk, value);
        } else {
            long long value = strtoll(*p, &end, 10);
            msgpack_pack_long_long(pk, value);
        }
        assert_true(end == *p + len);
        *p = end;
    }
}

static void s_pack_json(msgpack_packer *pk, const char *text)
{
    const char *p = text;
    s_pack_value(pk, &p);
    s_skip_space(&p);
    assert_int_equal(*p, '\0');
}

static void s_pack_key(msgpack_packer *pk, const char *key)
{
    msgpack_pack_str(pk, strlen(key));
    msgpack_pack_str_body(pk, key, strlen(key));
}

static const msgpack_object *s_map_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            memcmp(kv->key.via.str.ptr, key, kv->key.via.str.size) == 0)
            return &kv->val;
    }
    return NULL;
}

static bool s_str_eq(const msgpack_object *obj, const char *text)
{
    return obj && obj->type == MSGPACK_OBJECT_STR && obj->via.str.size == strlen(text) &&
           memcmp(obj->via.str.ptr, text, obj->via.str.size) == 0;
}

/* --------------------------------------------------------------------- the fake service */

/* A reply of the script: the JSON text of the result; "!code:message" for an error reply;
 * "~" for no reply at all (a lost one). The last reply of a script repeats. */
typedef struct {
    void *ctx;
    void *router;
    char endpoint[64];
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t lock;
    const char *script[FAKE_MAX_REPLIES];
    size_t script_len;
    size_t next;
    int received;
    char *last_request; /* msgpack bytes */
    size_t last_request_size;
} s_fake_t;

typedef struct {
    char dir[PATH_MAX];
    s_fake_t *fake;
    pmclient_t *client;
} s_suite_t;

static void s_fake_reply(s_fake_t *fake, msgpack_sbuffer *sbuf, const char *entry, uint64_t id)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sbuf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    s_pack_key(&pk, "ok");
    if (entry[0] == '!') {
        const char *colon = strchr(entry, ':');
        msgpack_pack_false(&pk);
        s_pack_key(&pk, "id");
        msgpack_pack_uint64(&pk, id);
        s_pack_key(&pk, "error");
        msgpack_pack_map(&pk, 2);
        s_pack_key(&pk, "code");
        msgpack_pack_str(&pk, (size_t)(colon - entry - 1));
        msgpack_pack_str_body(&pk, entry + 1, (size_t)(colon - entry - 1));
        s_pack_key(&pk, "message");
        s_pack_key(&pk, colon + 1);
        return;
    }
    (void)fake;
    msgpack_pack_true(&pk);
    s_pack_key(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    s_pack_key(&pk, "result");
    s_pack_json(&pk, entry);
}

static void *s_fake_run(void *arg)
{
    s_fake_t *fake = arg;
    while (!atomic_load(&fake->stop)) {
        zmq_pollitem_t item = {.socket = fake->router, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, 20) <= 0)
            continue;
        zmq_msg_t frames[3];
        int count = 0, more = 1;
        while (more) {
            zmq_msg_t msg;
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, fake->router, 0) < 0) {
                zmq_msg_close(&msg);
                break;
            }
            more = zmq_msg_more(&msg);
            if (count < 3)
                frames[count++] = msg;
            else
                zmq_msg_close(&msg);
        }
        if (count == 3) {
            pthread_mutex_lock(&fake->lock);
            const char *entry = fake->script_len == 0 ? "~"
                                : fake->next < fake->script_len
                                    ? fake->script[fake->next]
                                    : fake->script[fake->script_len - 1];
            fake->next++;
            fake->received++;
            free(fake->last_request);
            fake->last_request_size = zmq_msg_size(&frames[2]);
            fake->last_request = malloc(fake->last_request_size + 1);
            if (fake->last_request)
                memcpy(fake->last_request, zmq_msg_data(&frames[2]), fake->last_request_size);
            pthread_mutex_unlock(&fake->lock);

            uint64_t id = 0;
            msgpack_unpacked unpacked;
            msgpack_unpacked_init(&unpacked);
            size_t offset = 0;
            if (msgpack_unpack_next(&unpacked, zmq_msg_data(&frames[2]), zmq_msg_size(&frames[2]),
                                    &offset) == MSGPACK_UNPACK_SUCCESS) {
                const msgpack_object *value = s_map_get(&unpacked.data, "id");
                if (value && value->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                    id = value->via.u64;
            }
            msgpack_unpacked_destroy(&unpacked);
            if (strcmp(entry, "~") != 0) {
                msgpack_sbuffer sbuf;
                msgpack_sbuffer_init(&sbuf);
                s_fake_reply(fake, &sbuf, entry, id);
                zmq_send(fake->router, zmq_msg_data(&frames[0]), zmq_msg_size(&frames[0]),
                         ZMQ_SNDMORE);
                zmq_send(fake->router, "", 0, ZMQ_SNDMORE);
                zmq_send(fake->router, sbuf.data, sbuf.size, 0);
                msgpack_sbuffer_destroy(&sbuf);
            }
        }
        for (int i = 0; i < count; i++)
            zmq_msg_close(&frames[i]);
    }
    return NULL;
}

static s_fake_t *s_fake_start(void)
{
    s_fake_t *fake = calloc(1, sizeof *fake);
    assert_non_null(fake);
    atomic_init(&fake->stop, false);
    assert_int_equal(pthread_mutex_init(&fake->lock, NULL), 0);
    fake->ctx = zmq_ctx_new();
    assert_non_null(fake->ctx);
    fake->router = zmq_socket(fake->ctx, ZMQ_ROUTER);
    assert_non_null(fake->router);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(fake->router, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_bind(fake->router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof fake->endpoint;
    assert_int_equal(zmq_getsockopt(fake->router, ZMQ_LAST_ENDPOINT, fake->endpoint, &len), 0);
    assert_int_equal(pthread_create(&fake->thread, NULL, s_fake_run, fake), 0);
    return fake;
}

static void s_fake_stop(s_fake_t **fake_p)
{
    s_fake_t *fake = *fake_p;
    if (!fake)
        return;
    atomic_store(&fake->stop, true);
    pthread_join(fake->thread, NULL);
    zmq_close(fake->router);
    zmq_ctx_term(fake->ctx);
    pthread_mutex_destroy(&fake->lock);
    free(fake->last_request);
    free(fake);
    *fake_p = NULL;
}

/* Sets the script: the replies to the next requests, in order (NULL-terminated). */
static void s_script(s_fake_t *fake, const char *const *replies)
{
    pthread_mutex_lock(&fake->lock);
    fake->script_len = 0;
    for (size_t i = 0; replies[i]; i++) {
        assert_true(i < FAKE_MAX_REPLIES);
        fake->script[fake->script_len++] = replies[i];
    }
    fake->next = 0;
    pthread_mutex_unlock(&fake->lock);
}

/* One reply for every request from now on. */
static void s_answer(s_fake_t *fake, const char *reply)
{
    s_script(fake, (const char *[]){reply, NULL});
}

static int s_received(s_fake_t *fake)
{
    pthread_mutex_lock(&fake->lock);
    int received = fake->received;
    pthread_mutex_unlock(&fake->lock);
    return received;
}

/* The last request the fake got, unpacked (caller destroys unpacked). */
static const msgpack_object *s_last_request(s_fake_t *fake, msgpack_unpacked *unpacked, char **copy)
{
    pthread_mutex_lock(&fake->lock);
    *copy = malloc(fake->last_request_size + 1);
    assert_non_null(*copy);
    size_t size = fake->last_request_size;
    if (size)
        memcpy(*copy, fake->last_request, size);
    pthread_mutex_unlock(&fake->lock);
    msgpack_unpacked_init(unpacked);
    size_t offset = 0;
    assert_int_equal(msgpack_unpack_next(unpacked, *copy, size, &offset), MSGPACK_UNPACK_SUCCESS);
    return &unpacked->data;
}

/* The last request's op and args; checks op. Returns args (valid until cleanup). */
typedef struct {
    msgpack_unpacked unpacked;
    char *copy;
    const msgpack_object *args;
} s_request_t;

static void s_request(s_fake_t *fake, const char *op, s_request_t *request)
{
    const msgpack_object *root = s_last_request(fake, &request->unpacked, &request->copy);
    assert_true(s_str_eq(s_map_get(root, "op"), op));
    request->args = s_map_get(root, "args");
    assert_non_null(request->args);
    assert_int_equal(request->args->type, MSGPACK_OBJECT_MAP);
}

static void s_request_clear(s_request_t *request)
{
    msgpack_unpacked_destroy(&request->unpacked);
    free(request->copy);
}

static int s_remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int s_setup(void **state)
{
    s_suite_t *suite = calloc(1, sizeof *suite);
    if (!suite)
        return -1;
    snprintf(suite->dir, sizeof suite->dir, "%s/pmclient-status-XXXXXX",
             getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(suite->dir)) {
        free(suite);
        return -1;
    }
    *state = suite;
    return 0;
}

static int s_teardown(void **state)
{
    s_suite_t *suite = *state;
    if (!suite)
        return 0;
    if (suite->dir[0])
        nftw(suite->dir, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(suite);
    return 0;
}

/* Each test gets a fresh fake and a client of it (timeout 5 s, one attempt). */
static int s_test_setup(void **state)
{
    s_suite_t *suite = *state;
    suite->fake = s_fake_start();
    suite->client = pmclient_new(suite->fake->endpoint);
    if (!suite->client || pmclient_set_timeout(suite->client, 5000) != 0 ||
        pmclient_set_retries(suite->client, 1) != 0)
        return -1;
    return 0;
}

static int s_test_teardown(void **state)
{
    s_suite_t *suite = *state;
    pmclient_destroy(&suite->client);
    s_fake_stop(&suite->fake);
    return 0;
}

static void s_assert_error(pmclient_t *client, int rc, const char *code, const char *fragment)
{
    assert_int_equal(rc, -1);
    assert_string_equal(pmclient_error_code(client), code);
    if (fragment && !strstr(pmclient_error_message(client), fragment)) {
        fprintf(stderr, "message '%s' lacks '%s'\n", pmclient_error_message(client), fragment);
        fail();
    }
}

/* ------------------------------------------------------------------------ model_status */

#define RECORD_FULL                                                                                \
    "{\"provider\": \"acme\", \"model\": \"org/model-a\", \"state\": \"failing\","                 \
    " \"in_valid_models\": true, \"listed\": true, \"first_seen_at\": 1700000000.25,"              \
    " \"last_listed_at\": 1700000100.5, \"last_checked_at\": 1700000200.75,"                       \
    " \"last_ok_at\": 1700000050.0, \"latency_ms\": 123.5, \"failures\": 3,"                       \
    " \"last_error\": {\"class\": \"model\", \"status\": 404, \"message\": \"no such model\"},"    \
    " \"meta\": {\"context_length\": 128000, \"max_output_tokens\": 4096,"                         \
    " \"owned_by\": \"acme-labs\", \"created\": 1690000000, \"future_key\": [1, 2]},"              \
    " \"a_key_of_v1_2\": {\"x\": null}}"

#define RECORD_NILS                                                                                \
    "{\"provider\": \"acme\", \"model\": \"fresh\", \"state\": \"unverified\","                    \
    " \"in_valid_models\": false, \"listed\": null, \"first_seen_at\": 1700000000.0,"              \
    " \"last_listed_at\": null, \"last_checked_at\": null, \"last_ok_at\": null,"                  \
    " \"latency_ms\": null, \"failures\": 0, \"last_error\": null, \"meta\": {}}"

static void test_model_status_decodes_every_field(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    pm_status_list_t *list = NULL;
    s_answer(suite->fake, "[" RECORD_FULL ", " RECORD_NILS "]");

    const char *states[] = {"failing", "unverified"};
    assert_int_equal(pmclient_model_status(c, "acme", "org/model-a", states, 2, &list), 0);
    assert_string_equal(pmclient_error_code(c), "");
    assert_int_equal(list->count, 2);

    const pm_model_status_t *r = &list->records[0];
    assert_string_equal(r->provider, "acme");
    assert_string_equal(r->model, "org/model-a");
    assert_string_equal(r->state, "failing");
    assert_true(r->in_valid_models);
    assert_int_equal(r->listed, 1);
    assert_true(r->first_seen_at == 1700000000.25);
    assert_true(r->last_listed_at == 1700000100.5);
    assert_true(r->last_checked_at == 1700000200.75);
    assert_true(r->last_ok_at == 1700000050.0);
    assert_true(r->latency_ms == 123.5);
    assert_int_equal(r->failures, 3);
    assert_true(r->has_last_error);
    assert_string_equal(r->last_error.error_class, "model");
    assert_int_equal(r->last_error.status, 404);
    assert_string_equal(r->last_error.message, "no such model");
    assert_true(r->meta.has_context_length);
    assert_int_equal(r->meta.context_length, 128000);
    assert_true(r->meta.has_max_output_tokens);
    assert_int_equal(r->meta.max_output_tokens, 4096);
    assert_string_equal(r->meta.owned_by, "acme-labs");
    assert_true(r->meta.has_created);
    assert_int_equal(r->meta.created, 1690000000);

    r = &list->records[1];
    assert_string_equal(r->model, "fresh");
    assert_string_equal(r->state, "unverified");
    assert_false(r->in_valid_models);
    assert_int_equal(r->listed, -1);
    assert_true(r->first_seen_at == 1700000000.0);
    assert_true(isnan(r->last_listed_at));
    assert_true(isnan(r->last_checked_at));
    assert_true(isnan(r->last_ok_at));
    assert_true(isnan(r->latency_ms));
    assert_int_equal(r->failures, 0);
    assert_false(r->has_last_error);
    assert_null(r->last_error.error_class);
    assert_false(r->meta.has_context_length);
    assert_false(r->meta.has_max_output_tokens);
    assert_null(r->meta.owned_by);
    assert_false(r->meta.has_created);
    pm_status_list_free(&list);
    assert_null(list);
    pm_status_list_free(&list);

    /* What was sent: the op and the three arguments, states in order. */
    s_request_t request;
    s_request(suite->fake, "model_status", &request);
    assert_int_equal(request.args->via.map.size, 3);
    assert_true(s_str_eq(s_map_get(request.args, "provider"), "acme"));
    assert_true(s_str_eq(s_map_get(request.args, "model"), "org/model-a"));
    const msgpack_object *sent = s_map_get(request.args, "states");
    assert_non_null(sent);
    assert_int_equal(sent->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(sent->via.array.size, 2);
    assert_true(s_str_eq(&sent->via.array.ptr[0], "failing"));
    assert_true(s_str_eq(&sent->via.array.ptr[1], "unverified"));
    s_request_clear(&request);
}

static void test_model_status_arguments(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    pm_status_list_t *list = NULL;
    s_request_t request;
    s_answer(suite->fake, "[]");

    /* Nothing given: {} and an empty (not NULL) list back. */
    assert_int_equal(pmclient_model_status(c, NULL, NULL, NULL, -1, &list), 0);
    assert_non_null(list);
    assert_int_equal(list->count, 0);
    pm_status_list_free(&list);
    s_request(suite->fake, "model_status", &request);
    assert_int_equal(request.args->via.map.size, 0);
    s_request_clear(&request);

    /* states NULL is "not given" whatever the count; a negative count too. */
    const char *states[] = {"valid"};
    assert_int_equal(pmclient_model_status(c, NULL, NULL, NULL, 3, &list), 0);
    pm_status_list_free(&list);
    s_request(suite->fake, "model_status", &request);
    assert_null(s_map_get(request.args, "states"));
    s_request_clear(&request);
    assert_int_equal(pmclient_model_status(c, NULL, NULL, states, -1, &list), 0);
    pm_status_list_free(&list);
    s_request(suite->fake, "model_status", &request);
    assert_null(s_map_get(request.args, "states"));
    s_request_clear(&request);

    /* A count of 0 sends the empty list (the service then answers []). */
    assert_int_equal(pmclient_model_status(c, "p", NULL, states, 0, &list), 0);
    pm_status_list_free(&list);
    s_request(suite->fake, "model_status", &request);
    const msgpack_object *sent = s_map_get(request.args, "states");
    assert_non_null(sent);
    assert_int_equal(sent->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(sent->via.array.size, 0);
    assert_true(s_str_eq(s_map_get(request.args, "provider"), "p"));
    assert_null(s_map_get(request.args, "model"));
    s_request_clear(&request);

    /* A NULL entry is refused before anything is sent. */
    int before = s_received(suite->fake);
    const char *holes[] = {"valid", NULL};
    s_assert_error(c, pmclient_model_status(c, NULL, NULL, holes, 2, &list), "bad_request",
                   "'states' has a NULL entry");
    assert_null(list);
    assert_int_equal(s_received(suite->fake), before);

    /* The service's refusals come through with its code and message. */
    s_answer(suite->fake, "!not_found:Provider 'nope' not found");
    s_assert_error(c, pmclient_model_status(c, "nope", NULL, NULL, -1, &list), "not_found",
                   "Provider 'nope' not found");
    assert_null(list);
    s_answer(suite->fake, "!bad_request:Unknown state 'sleepy'");
    const char *bad[] = {"sleepy"};
    s_assert_error(c, pmclient_model_status(c, NULL, NULL, bad, 1, &list), "bad_request", "sleepy");
    assert_null(list);
}

/* Every malformed record is a bad_reply naming what is wrong; never a crash nor a leak. */
static void test_model_status_malformed(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    static const struct {
        const char *result;
        const char *fragment;
    } cases[] = {
        {"{}", "model_status result is not an array"},
        {"null", "model_status result is not an array"},
        {"[1]", "a status record is not a map"},
        {"[" RECORD_NILS ", \"x\"]", "a status record is not a map"},
        {"[{\"provider\": \"p\"}]", "model is not a string"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": 1}]", "state is not a string"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "\"yes\"}]",
         "in_valid_models is not a boolean"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": 1}]",
         "listed is neither a boolean nor nil"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": true}]",
         "first_seen_at is missing"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": true, \"first_seen_at\": \"yesterday\"}]",
         "first_seen_at is neither a number nor nil"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": true, \"first_seen_at\": 1.0, \"last_listed_at\": 1.0, "
         "\"last_checked_at\": 1.0, \"last_ok_at\": 1.0, \"latency_ms\": [1]}]",
         "latency_ms is neither a number nor nil"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": true, \"first_seen_at\": 1.0, \"last_listed_at\": 1.0, "
         "\"last_checked_at\": 1.0, \"last_ok_at\": 1.0, \"latency_ms\": 1.0, \"failures\": "
         "1.5}]",
         "failures is not an integer"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": true, \"first_seen_at\": 1.0, \"last_listed_at\": 1.0, "
         "\"last_checked_at\": 1.0, \"last_ok_at\": 1.0, \"latency_ms\": 1.0, \"failures\": 0, "
         "\"meta\": {}}]",
         "last_error is missing"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": true, \"first_seen_at\": 1.0, \"last_listed_at\": 1.0, "
         "\"last_checked_at\": 1.0, \"last_ok_at\": 1.0, \"latency_ms\": 1.0, \"failures\": 0, "
         "\"last_error\": \"boom\", \"meta\": {}}]",
         "last_error is neither a map nor nil"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": true, \"first_seen_at\": 1.0, \"last_listed_at\": 1.0, "
         "\"last_checked_at\": 1.0, \"last_ok_at\": 1.0, \"latency_ms\": 1.0, \"failures\": 0, "
         "\"last_error\": {\"class\": 7, \"message\": \"m\"}, \"meta\": {}}]",
         "last_error.class is not a string"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": true, \"first_seen_at\": 1.0, \"last_listed_at\": 1.0, "
         "\"last_checked_at\": 1.0, \"last_ok_at\": 1.0, \"latency_ms\": 1.0, \"failures\": 0, "
         "\"last_error\": {\"class\": \"model\", \"status\": \"404\", \"message\": \"m\"}, "
         "\"meta\": {}}]",
         "last_error.status is not an integer"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": true, \"first_seen_at\": 1.0, \"last_listed_at\": 1.0, "
         "\"last_checked_at\": 1.0, \"last_ok_at\": 1.0, \"latency_ms\": 1.0, \"failures\": 0, "
         "\"last_error\": null}]",
         "meta is not a map"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": true, \"first_seen_at\": 1.0, \"last_listed_at\": 1.0, "
         "\"last_checked_at\": 1.0, \"last_ok_at\": 1.0, \"latency_ms\": 1.0, \"failures\": 0, "
         "\"last_error\": null, \"meta\": {\"owned_by\": \"x\", \"context_length\": \"big\"}}]",
         "meta.context_length is not an integer"},
        {"[{\"provider\": \"p\", \"model\": \"m\", \"state\": \"valid\", \"in_valid_models\": "
         "true, \"listed\": true, \"first_seen_at\": 1.0, \"last_listed_at\": 1.0, "
         "\"last_checked_at\": 1.0, \"last_ok_at\": 1.0, \"latency_ms\": 1.0, \"failures\": 0, "
         "\"last_error\": null, \"meta\": {\"owned_by\": 5}}]",
         "meta.owned_by is not a string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pm_status_list_t *list = NULL;
        s_answer(suite->fake, cases[i].result);
        s_assert_error(c, pmclient_model_status(c, NULL, NULL, NULL, -1, &list), "bad_reply",
                       cases[i].fragment);
        assert_null(list);
    }
    /* and the client still works */
    pm_status_list_t *list = NULL;
    s_answer(suite->fake, "[" RECORD_NILS "]");
    assert_int_equal(pmclient_model_status(c, NULL, NULL, NULL, -1, &list), 0);
    assert_int_equal(list->count, 1);
    pm_status_list_free(&list);
}

/* --------------------------------------------------------------------- provider_status */

static void test_provider_status(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    pm_provider_status_list_t *list = NULL;
    s_request_t request;
    s_answer(suite->fake,
             "[{\"provider\": \"acme\", \"state\": \"unreachable\", \"last_list_at\": 1700000000.5,"
             " \"last_list_ok_at\": 1690000000.0, \"models_listed\": 12, \"last_error\":"
             " {\"class\": \"transient\", \"status\": null, \"message\": \"connection refused\"},"
             " \"by\": \"someone\"},"
             " {\"provider\": \"bare\", \"state\": \"no_key\", \"last_list_at\": null,"
             " \"last_list_ok_at\": null, \"models_listed\": null, \"last_error\": null}]");
    assert_int_equal(pmclient_provider_status(c, NULL, &list), 0);
    assert_int_equal(list->count, 2);
    const pm_provider_status_t *p = &list->providers[0];
    assert_string_equal(p->provider, "acme");
    assert_string_equal(p->state, "unreachable");
    assert_true(p->last_list_at == 1700000000.5);
    assert_true(p->last_list_ok_at == 1690000000.0);
    assert_true(p->has_models_listed);
    assert_int_equal(p->models_listed, 12);
    assert_true(p->has_last_error);
    assert_string_equal(p->last_error.error_class, "transient");
    assert_int_equal(p->last_error.status, 0); /* nil: no HTTP answer */
    assert_string_equal(p->last_error.message, "connection refused");
    p = &list->providers[1];
    assert_string_equal(p->provider, "bare");
    assert_string_equal(p->state, "no_key");
    assert_true(isnan(p->last_list_at));
    assert_true(isnan(p->last_list_ok_at));
    assert_false(p->has_models_listed);
    assert_false(p->has_last_error);
    pm_provider_status_list_free(&list);
    assert_null(list);
    s_request(suite->fake, "provider_status", &request);
    assert_int_equal(request.args->via.map.size, 0);
    s_request_clear(&request);

    assert_int_equal(pmclient_provider_status(c, "acme", &list), 0);
    pm_provider_status_list_free(&list);
    s_request(suite->fake, "provider_status", &request);
    assert_int_equal(request.args->via.map.size, 1);
    assert_true(s_str_eq(s_map_get(request.args, "provider"), "acme"));
    s_request_clear(&request);

    /* A v1 service does not know the op. */
    s_answer(suite->fake, "!unknown_op:Unknown operation 'provider_status'");
    s_assert_error(c, pmclient_provider_status(c, NULL, &list), "unknown_op", "provider_status");
    assert_null(list);

    static const struct {
        const char *result;
        const char *fragment;
    } cases[] = {
        {"{\"provider\": \"a\"}", "provider_status result is not an array"},
        {"[[]]", "a provider_status entry is not a map"},
        {"[{\"provider\": \"a\", \"state\": null}]", "state is not a string"},
        {"[{\"provider\": \"a\", \"state\": \"ok\", \"last_list_at\": 1.0}]",
         "last_list_ok_at is missing"},
        {"[{\"provider\": \"a\", \"state\": \"ok\", \"last_list_at\": 1.0, \"last_list_ok_at\": "
         "true}]",
         "last_list_ok_at is neither a number nor nil"},
        {"[{\"provider\": \"a\", \"state\": \"ok\", \"last_list_at\": 1.0, \"last_list_ok_at\": "
         "1.0, \"last_error\": null}]",
         "models_listed is missing"},
        {"[{\"provider\": \"a\", \"state\": \"ok\", \"last_list_at\": 1.0, \"last_list_ok_at\": "
         "1.0, \"models_listed\": \"3\", \"last_error\": null}]",
         "models_listed is not an integer"},
        {"[{\"provider\": \"a\", \"state\": \"ok\", \"last_list_at\": 1.0, \"last_list_ok_at\": "
         "1.0, \"models_listed\": 3}]",
         "last_error is missing"},
        {"[{\"provider\": \"a\", \"state\": \"ok\", \"last_list_at\": 1.0, \"last_list_ok_at\": "
         "1.0, \"models_listed\": 3, \"last_error\": {\"class\": \"auth\", \"status\": 401}}]",
         "last_error.message is not a string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_answer(suite->fake, cases[i].result);
        s_assert_error(c, pmclient_provider_status(c, NULL, &list), "bad_reply", cases[i].fragment);
        assert_null(list);
    }
}

/* ----------------------------------------------------------------------- verify_models */

static void test_verify_models(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    char *job = NULL;
    s_request_t request;
    s_answer(suite->fake, "{\"job\": \"v-1\", \"later\": 1}");

    const char *models[] = {"m1", "org/m2"};
    assert_int_equal(pmclient_verify_models(c, "acme", models, 2, true, false, &job), 0);
    assert_string_equal(job, "v-1");
    free(job);
    s_request(suite->fake, "verify_models", &request);
    assert_int_equal(request.args->via.map.size, 4);
    assert_true(s_str_eq(s_map_get(request.args, "provider"), "acme"));
    const msgpack_object *flag = s_map_get(request.args, "include_invalid");
    assert_true(flag && flag->type == MSGPACK_OBJECT_BOOLEAN && flag->via.boolean);
    flag = s_map_get(request.args, "persist_on_success");
    assert_true(flag && flag->type == MSGPACK_OBJECT_BOOLEAN && !flag->via.boolean);
    const msgpack_object *sent = s_map_get(request.args, "models");
    assert_true(sent && sent->type == MSGPACK_OBJECT_ARRAY && sent->via.array.size == 2);
    assert_true(s_str_eq(&sent->via.array.ptr[1], "org/m2"));
    s_request_clear(&request);

    /* models not given (-1), every provider; then an empty list (0), which is sent. */
    assert_int_equal(pmclient_verify_models(c, NULL, models, -1, false, true, &job), 0);
    free(job);
    s_request(suite->fake, "verify_models", &request);
    assert_int_equal(request.args->via.map.size, 2);
    assert_null(s_map_get(request.args, "models"));
    assert_null(s_map_get(request.args, "provider"));
    s_request_clear(&request);
    assert_int_equal(pmclient_verify_models(c, NULL, models, 0, false, true, &job), 0);
    free(job);
    s_request(suite->fake, "verify_models", &request);
    sent = s_map_get(request.args, "models");
    assert_true(sent && sent->type == MSGPACK_OBJECT_ARRAY && sent->via.array.size == 0);
    s_request_clear(&request);

    int before = s_received(suite->fake);
    const char *holes[] = {NULL};
    s_assert_error(c, pmclient_verify_models(c, NULL, holes, 1, false, true, &job), "bad_request",
                   "'models' has a NULL entry");
    assert_null(job);
    assert_int_equal(s_received(suite->fake), before);

    s_answer(suite->fake, "{\"job\": 5}");
    s_assert_error(c, pmclient_verify_models(c, NULL, NULL, -1, false, true, &job), "bad_reply",
                   "job is not a string");
    assert_null(job);
    s_answer(suite->fake, "[\"v-1\"]");
    s_assert_error(c, pmclient_verify_models(c, NULL, NULL, -1, false, true, &job), "bad_reply",
                   "verify_models result is not a map");
    s_answer(suite->fake, "!not_found:Provider 'zz' not found");
    s_assert_error(c, pmclient_verify_models(c, "zz", NULL, -1, false, true, &job), "not_found",
                   "Provider 'zz' not found");
    assert_null(job);
}

/* model_status and provider_status are reads: resent after a lost reply. verify_models is a
 * write: sent once, and the error says it may have been applied. */
static void test_status_reads_resent_verify_not(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    assert_int_equal(pmclient_set_timeout(c, 300), 0);
    assert_int_equal(pmclient_set_retries(c, 3), 0);
    pm_status_list_t *list = NULL;
    pm_provider_status_list_t *providers = NULL;
    char *job = NULL;

    s_script(suite->fake, (const char *[]){"~", "[]", NULL});
    assert_int_equal(pmclient_model_status(c, NULL, NULL, NULL, -1, &list), 0);
    assert_int_equal(s_received(suite->fake), 2);
    pm_status_list_free(&list);

    s_script(suite->fake, (const char *[]){"~", "~", "[]", NULL});
    assert_int_equal(pmclient_provider_status(c, NULL, &providers), 0);
    assert_int_equal(s_received(suite->fake), 5);
    pm_provider_status_list_free(&providers);

    s_script(suite->fake, (const char *[]){"~", "{\"job\": \"v\"}", NULL});
    s_assert_error(c, pmclient_verify_models(c, NULL, NULL, -1, false, true, &job), "timeout",
                   "not resent");
    assert_null(job);
    assert_int_equal(s_received(suite->fake), 6);
}

/* -------------------------------------------------------------------- job_status, health */

static void test_job_kinds(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    pm_job_t *job = NULL;

    s_answer(suite->fake,
             "{\"job\": \"v-1\", \"kind\": \"verify\", \"state\": \"done\", \"success\": true,"
             " \"persisted\": false, \"providers\": {\"acme\": {\"state\": \"ok\", \"discovered\":"
             " 5, \"checked\": 4, \"ok\": 2, \"failed\": 1, \"transient\": 1, \"message\": \"\"}},"
             " \"messages\": [\"Verified acme\"]}");
    assert_int_equal(pmclient_job_status(c, "v-1", &job), 0);
    assert_string_equal(job->kind, "verify");
    assert_int_equal(job->success, 1);
    assert_false(job->persisted);
    assert_int_equal(job->provider_count, 1);
    assert_string_equal(job->providers[0].key, "acme");
    assert_int_equal(job->providers[0].discovered, 5);
    assert_int_equal(job->providers[0].checked, 4);
    assert_int_equal(job->providers[0].ok, 2);
    assert_int_equal(job->providers[0].failed, 1);
    assert_int_equal(job->providers[0].transient, 1);
    assert_int_equal(job->providers[0].validated, 0);
    assert_int_equal(job->message_count, 1);
    pm_job_free(&job);

    /* v1: no kind, a discovery job; v1.1 discovery: the same with "kind". */
    static const char *const discover[] = {
        "{\"job\": \"d\", \"state\": \"running\", \"success\": null, \"persisted\": false,"
        " \"providers\": {\"a\": {\"state\": \"validating\", \"discovered\": 9, \"validated\": 3,"
        " \"valid\": 2, \"invalid\": 1, \"message\": \"\"}}, \"messages\": []}",
        "{\"job\": \"d\", \"kind\": \"discover\", \"state\": \"running\", \"success\": null,"
        " \"persisted\": false, \"providers\": {\"a\": {\"state\": \"validating\", \"discovered\":"
        " 9, \"validated\": 3, \"valid\": 2, \"invalid\": 1, \"message\": \"\"}}, \"messages\":"
        " []}"};
    for (size_t i = 0; i < 2; i++) {
        s_answer(suite->fake, discover[i]);
        assert_int_equal(pmclient_job_status(c, "d", &job), 0);
        assert_string_equal(job->kind, "discover");
        assert_int_equal(job->success, -1);
        assert_int_equal(job->providers[0].validated, 3);
        assert_int_equal(job->providers[0].checked, 0);
        pm_job_free(&job);
    }

    /* A verify job without its counts, or with a count of the wrong type, is malformed. */
    s_answer(suite->fake, "{\"job\": \"v\", \"kind\": \"verify\", \"state\": \"running\","
                          " \"success\": null, \"persisted\": false, \"providers\": {\"a\":"
                          " {\"state\": \"listing\", \"discovered\": 0, \"message\": \"\"}},"
                          " \"messages\": []}");
    s_assert_error(c, pmclient_job_status(c, "v", &job), "bad_reply", "checked is not an integer");
    assert_null(job);
    s_answer(suite->fake, "{\"job\": \"v\", \"kind\": \"verify\", \"state\": \"running\","
                          " \"success\": null, \"persisted\": false, \"providers\": {\"a\":"
                          " {\"state\": \"listing\", \"checked\": 0, \"ok\": 0, \"failed\": 0,"
                          " \"transient\": \"x\", \"message\": \"\"}}, \"messages\": []}");
    s_assert_error(c, pmclient_job_status(c, "v", &job), "bad_reply",
                   "transient is not an integer");
    s_answer(suite->fake, "{\"job\": \"v\", \"kind\": 2, \"state\": \"running\", \"success\": "
                          "null, \"persisted\": false, \"providers\": {}, \"messages\": []}");
    s_assert_error(c, pmclient_job_status(c, "v", &job), "bad_reply", "kind is not a string");
    /* A v1 discovery job still needs its counts. */
    s_answer(suite->fake, "{\"job\": \"d\", \"state\": \"running\", \"success\": null, "
                          "\"persisted\": false, \"providers\": {\"a\": {\"state\": \"ok\", "
                          "\"discovered\": 1, \"message\": \"\"}}, \"messages\": []}");
    s_assert_error(c, pmclient_job_status(c, "d", &job), "bad_reply",
                   "validated is not an integer");
}

static void test_health_v11_keys(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    pm_health_t *health = NULL;
#define HEALTH_V1                                                                                  \
    "\"status\": \"ok\", \"version\": \"1.1.0\", \"state_version\": 4, \"providers\": 2,"          \
    " \"models\": 3, \"uptime_s\": 2.5, \"jobs_running\": 0"
    s_answer(suite->fake, "{" HEALTH_V1 ", \"protocol\": \"1.1\", \"status_version\": 42,"
                          " \"role\": \"primary\", \"epoch\": \"e1\"}");
    assert_int_equal(pmclient_health(c, &health), 0);
    assert_string_equal(health->protocol, "1.1");
    assert_true(health->has_status_version);
    assert_int_equal(health->status_version, 42);
    assert_int_equal(health->state_version, 4);
    pm_health_free(&health);

    s_answer(suite->fake, "{" HEALTH_V1 "}");
    assert_int_equal(pmclient_health(c, &health), 0);
    assert_null(health->protocol);
    assert_false(health->has_status_version);
    pm_health_free(&health);

    s_answer(suite->fake, "{" HEALTH_V1 ", \"protocol\": 1.1}");
    s_assert_error(c, pmclient_health(c, &health), "bad_reply", "protocol is not a string");
    assert_null(health);
    s_answer(suite->fake, "{" HEALTH_V1 ", \"status_version\": -1}");
    s_assert_error(c, pmclient_health(c, &health), "bad_reply", "status_version");
    assert_null(health);
#undef HEALTH_V1
}

/* -------------------------------------------------------------------------------- events */

typedef struct {
    void *ctx;
    void *pub;
    char endpoint[64];
} s_pub_t;

static void s_pub_start(s_pub_t *pub)
{
    pub->ctx = zmq_ctx_new();
    assert_non_null(pub->ctx);
    pub->pub = zmq_socket(pub->ctx, ZMQ_PUB);
    assert_non_null(pub->pub);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(pub->pub, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_bind(pub->pub, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof pub->endpoint;
    assert_int_equal(zmq_getsockopt(pub->pub, ZMQ_LAST_ENDPOINT, pub->endpoint, &len), 0);
}

static void s_pub_stop(s_pub_t *pub)
{
    zmq_close(pub->pub);
    zmq_ctx_term(pub->ctx);
}

/* Publishes [topic, body] with body given as JSON text. */
static void s_publish(s_pub_t *pub, const char *topic, const char *body)
{
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    s_pack_json(&pk, body);
    assert_int_equal(zmq_send(pub->pub, topic, strlen(topic), ZMQ_SNDMORE), (int)strlen(topic));
    assert_int_equal(zmq_send(pub->pub, sbuf.data, sbuf.size, 0), (int)sbuf.size);
    msgpack_sbuffer_destroy(&sbuf);
}

#define MODELS_EVENT                                                                               \
    "{\"event\": \"models_changed\", \"status_version\": 7, \"provider\": \"acme\","               \
    " \"changes\": [{\"model\": \"new-model\", \"from\": null, \"to\": \"unverified\"},"           \
    " {\"model\": \"org/old\", \"from\": \"valid\", \"to\": \"gone\", \"why\": \"x\"}],"           \
    " \"by\": \"scheduler\"}"

/* A subscriber misses what was published before its subscription arrived: publish a first
 * models event until one gets through. */
static pm_event_t *s_first_event(s_pub_t *pub, pmclient_events_t *events)
{
    pm_event_t *event = NULL;
    for (int attempt = 0; attempt < 200 && !event; attempt++) {
        s_publish(pub, "models", MODELS_EVENT);
        int rc = pmclient_events_recv(events, 100, &event);
        assert_true(rc >= 0);
    }
    assert_non_null(event);
    return event;
}

static void s_drain(pmclient_events_t *events)
{
    pm_event_t *event = NULL;
    while (pmclient_events_recv(events, 200, &event) == 1)
        pm_event_free(&event);
}

static void test_events_typed(void **state)
{
    (void)state;
    s_pub_t pub;
    s_pub_start(&pub);
    pmclient_events_t *events = pmclient_events_new(pub.endpoint);
    assert_non_null(events);

    pm_event_t *event = s_first_event(&pub, events);
    assert_int_equal(event->kind, PMCLIENT_EVENT_MODELS_CHANGED);
    assert_int_equal(event->status_version, 7);
    assert_string_equal(event->provider, "acme");
    assert_int_equal(event->change_count, 2);
    assert_string_equal(event->changes[0].model, "new-model");
    assert_null(event->changes[0].from);
    assert_string_equal(event->changes[0].to, "unverified");
    assert_string_equal(event->changes[1].model, "org/old");
    assert_string_equal(event->changes[1].from, "valid");
    assert_string_equal(event->changes[1].to, "gone");
    assert_null(event->keys);
    assert_int_equal(event->state_version, 0);
    pm_event_free(&event);
    assert_null(event);
    s_drain(events);

    /* In order: skipped ones (heartbeat, malformed, another topic), then the two kinds. */
    s_publish(&pub, "providers",
              "{\"event\": \"heartbeat\", \"state_version\": 3,"
              " \"status_version\": 7}");
    s_publish(&pub, "models",
              "{\"event\": \"models_changed\", \"status_version\": 8,"
              " \"provider\": \"acme\", \"changes\": {}}");
    s_publish(&pub, "models",
              "{\"event\": \"models_changed\", \"status_version\": 8,"
              " \"provider\": \"acme\", \"changes\": [{\"model\": \"m\","
              " \"to\": \"valid\"}]}"); /* "from" missing */
    s_publish(&pub, "models",
              "{\"event\": \"models_changed\", \"status_version\": \"8\","
              " \"provider\": \"acme\", \"changes\": []}");
    s_publish(&pub, "providers",
              "{\"event\": \"models_changed\", \"status_version\": 8,"
              " \"provider\": \"acme\", \"changes\": []}");
    s_publish(&pub, "providers",
              "{\"event\": \"changed\", \"state_version\": 4, \"providers\":"
              " [\"acme\", \"b\"], \"configs\": [null, null]}");
    s_publish(&pub, "models",
              "{\"event\": \"models_changed\", \"status_version\": 9,"
              " \"provider\": \"b\", \"changes\": [{\"model\": \"x\", \"from\":"
              " \"failing\", \"to\": \"valid\"}]}");
    assert_int_equal(pmclient_events_recv(events, 5000, &event), 1);
    assert_int_equal(event->kind, PMCLIENT_EVENT_CHANGED);
    assert_int_equal(event->state_version, 4);
    assert_int_equal(event->keys->count, 2);
    assert_string_equal(event->keys->items[1], "b");
    assert_null(event->provider);
    assert_int_equal(event->change_count, 0);
    pm_event_free(&event);
    assert_int_equal(pmclient_events_recv(events, 5000, &event), 1);
    assert_int_equal(event->kind, PMCLIENT_EVENT_MODELS_CHANGED);
    assert_int_equal(event->status_version, 9);
    assert_string_equal(event->provider, "b");
    assert_int_equal(event->change_count, 1);
    assert_string_equal(event->changes[0].from, "failing");
    pm_event_free(&event);
    assert_int_equal(pmclient_events_recv(events, 100, &event), 0);
    assert_null(event);

    /* pmclient_events_next keeps v1's meaning: "changed" events only. */
    s_publish(&pub, "models", MODELS_EVENT);
    s_publish(&pub, "providers",
              "{\"event\": \"changed\", \"state_version\": 5, \"providers\":"
              " [\"c\"]}");
    int64_t version = 0;
    pm_strings_t *keys = NULL;
    assert_int_equal(pmclient_events_next(events, 5000, &version, &keys), 1);
    assert_int_equal(version, 5);
    assert_int_equal(keys->count, 1);
    assert_string_equal(keys->items[0], "c");
    pm_strings_free(&keys);
    assert_int_equal(pmclient_events_next(events, 100, &version, &keys), 0);

    pmclient_events_destroy(&events);
    s_pub_stop(&pub);
}

/* --------------------------------------------------------------------------------- pmctl */

static char **s_clean_environment(void)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 1, sizeof *env);
    assert_non_null(env);
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(environ[i], "PM_", 3) != 0)
            env[out++] = environ[i];
    }
    return env;
}

static pid_t s_spawn_pmctl(s_suite_t *suite, const char *const *args)
{
    const char *binary = getenv("PM_PMCTL");
    assert_non_null(binary);
    char out_path[PATH_MAX + 16], err_path[PATH_MAX + 16];
    snprintf(out_path, sizeof out_path, "%s/pmctl.out", suite->dir);
    snprintf(err_path, sizeof err_path, "%s/pmctl.err", suite->dir);
    char *argv[MAX_ARGS];
    size_t argc = 0;
    argv[argc++] = "pmctl";
    for (size_t i = 0; args[i] && argc < MAX_ARGS - 1; i++)
        argv[argc++] = (char *)args[i];
    argv[argc] = NULL;
    posix_spawn_file_actions_t actions;
    pid_t pid = -1;
    char **env = s_clean_environment();
    assert_int_equal(posix_spawn_file_actions_init(&actions), 0);
    assert_int_equal(
        posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0), 0);
    assert_int_equal(posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_path,
                                                      O_WRONLY | O_CREAT | O_TRUNC, 0600),
                     0);
    assert_int_equal(posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_path,
                                                      O_WRONLY | O_CREAT | O_TRUNC, 0600),
                     0);
    assert_int_equal(posix_spawn(&pid, binary, &actions, NULL, argv, env), 0);
    posix_spawn_file_actions_destroy(&actions);
    free(env);
    return pid;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Exit status of pid, or -1 (a signal, or still running after WAIT_LIMIT_MS: killed). */
static int s_wait_exit(pid_t pid)
{
    int status = 0;
    for (int waited = 0; waited < WAIT_LIMIT_MS; waited += WAIT_STEP_MS) {
        pid_t rc = waitpid(pid, &status, WNOHANG);
        if (rc == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (rc < 0 && errno != EINTR)
            return -1;
        s_sleep_ms(WAIT_STEP_MS);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

static char *s_read_file(const char *path)
{
    FILE *file = fopen(path, "rb");
    if (!file)
        return NULL;
    char *text = calloc(1, 1 << 16);
    if (text) {
        size_t n = fread(text, 1, (1 << 16) - 1, file);
        text[n] = '\0';
    }
    fclose(file);
    return text;
}

static char *s_output(s_suite_t *suite, const char *name)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/pmctl.%s", suite->dir, name);
    char *text = s_read_file(path);
    assert_non_null(text);
    return text;
}

/* Runs pmctl --endpoint <fake> args...; *out and *err (may be NULL) get its output. */
static int s_pmctl(s_suite_t *suite, const char *const *args, char **out, char **err)
{
    const char *full[MAX_ARGS];
    size_t n = 0;
    full[n++] = "--endpoint";
    full[n++] = suite->fake->endpoint;
    full[n++] = "--retries";
    full[n++] = "1";
    for (size_t i = 0; args[i] && n < MAX_ARGS - 1; i++)
        full[n++] = args[i];
    full[n] = NULL;
    int status = s_wait_exit(s_spawn_pmctl(suite, full));
    if (out)
        *out = s_output(suite, "out");
    if (err)
        *err = s_output(suite, "err");
    return status;
}

static void s_assert_contains(const char *text, const char *fragment)
{
    if (!strstr(text, fragment)) {
        fprintf(stderr, "output lacks '%s':\n%s\n", fragment, text);
        fail();
    }
}

static void test_pmctl_status(void **state)
{
    s_suite_t *suite = *state;
    char *out = NULL, *err = NULL;
    struct timespec now;
    assert_int_equal(clock_gettime(CLOCK_REALTIME, &now), 0);
    /* last_ok_at 3 minutes and a few seconds ago: "3m ago" whatever the load. */
    char result[2048];
    snprintf(result, sizeof result,
             "[{\"provider\": \"acme\", \"model\": \"org/model-a\", \"state\": \"valid\","
             " \"in_valid_models\": true, \"listed\": true, \"first_seen_at\": 1.5,"
             " \"last_listed_at\": 1.5, \"last_checked_at\": %lld.0, \"last_ok_at\": %lld.0,"
             " \"latency_ms\": 231.75, \"failures\": 0, \"last_error\": null,"
             " \"meta\": {\"context_length\": 131072}},"
             " %s]",
             (long long)now.tv_sec - 185, (long long)now.tv_sec - 185, RECORD_NILS);
    s_answer(suite->fake, result);
    assert_int_equal(s_pmctl(suite,
                             (const char *[]){"status", "--provider", "acme", "--state", "valid",
                                              "-s", "unverified", NULL},
                             &out, NULL),
                     0);
    /* the header, then one row per record, "-" for what is nil */
    s_assert_contains(out,
                      "PROVIDER  MODEL        STATE       LAST OK  LATENCY  FAILURES  CONTEXT\n");
    s_assert_contains(out,
                      "acme      org/model-a  valid       3m ago   232 ms   0         131072\n");
    s_assert_contains(out, "acme      fresh        unverified  -        -        0         -\n");
    free(out);
    s_request_t request;
    s_request(suite->fake, "model_status", &request);
    const msgpack_object *states = s_map_get(request.args, "states");
    assert_true(states && states->type == MSGPACK_OBJECT_ARRAY && states->via.array.size == 2);
    assert_true(s_str_eq(&states->via.array.ptr[1], "unverified"));
    assert_true(s_str_eq(s_map_get(request.args, "provider"), "acme"));
    s_request_clear(&request);

    /* --json: the records as the service sent them, nil as null, times as numbers */
    assert_int_equal(s_pmctl(suite, (const char *[]){"--json", "status", NULL}, &out, NULL), 0);
    s_assert_contains(out, "\"latency_ms\": 231.75");
    s_assert_contains(out, "\"last_ok_at\": null");
    s_assert_contains(out, "\"context_length\": 131072");
    free(out);

    /* nothing matches: a note on stderr, success */
    s_answer(suite->fake, "[]");
    assert_int_equal(s_pmctl(suite, (const char *[]){"status", NULL}, &out, &err), 0);
    assert_string_equal(out, "");
    s_assert_contains(err, "no model status records match");
    free(out);
    free(err);

    /* the service says no: exit 1 with its message; a malformed reply: exit 1 too */
    s_answer(suite->fake, "!bad_request:Unknown state 'sleepy'");
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"status", "--state", "sleepy", NULL}, NULL, &err), 1);
    s_assert_contains(err, "bad_request: Unknown state 'sleepy'");
    free(err);
    s_answer(suite->fake, "[{\"provider\": 1}]");
    assert_int_equal(s_pmctl(suite, (const char *[]){"status", NULL}, NULL, &err), 1);
    s_assert_contains(err, "bad_reply");
    free(err);
    /* usage */
    assert_int_equal(s_pmctl(suite, (const char *[]){"status", "extra", NULL}, NULL, NULL), 2);
    assert_int_equal(s_pmctl(suite, (const char *[]){"status", "--state", NULL}, NULL, NULL), 2);
    /* nobody answering: exit 3 */
    s_answer(suite->fake, "~");
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--timeout", "200", "status", NULL}, NULL, NULL), 3);
}

#define VERIFY_RUNNING                                                                             \
    "{\"job\": \"v-9\", \"kind\": \"verify\", \"state\": \"running\", \"success\": null,"          \
    " \"persisted\": false, \"providers\": {\"acme\": {\"state\": \"validating\","                 \
    " \"discovered\": 4, \"checked\": 1, \"ok\": 1, \"failed\": 0, \"transient\": 0,"              \
    " \"message\": \"\"}}, \"messages\": []}"
#define VERIFY_DONE(success)                                                                       \
    "{\"job\": \"v-9\", \"kind\": \"verify\", \"state\": \"done\", \"success\": " success ","      \
    " \"persisted\": false, \"providers\": {\"acme\": {\"state\": \"ok\", \"discovered\": 4,"      \
    " \"checked\": 4, \"ok\": 2, \"failed\": 1, \"transient\": 1, \"message\": \"\"}},"            \
    " \"messages\": [\"Verified 4 models of acme\"]}"

static void test_pmctl_verify(void **state)
{
    s_suite_t *suite = *state;
    char *out = NULL, *err = NULL;
    s_script(suite->fake,
             (const char *[]){"{\"job\": \"v-9\"}", VERIFY_RUNNING, VERIFY_DONE("true"), NULL});
    assert_int_equal(s_pmctl(suite,
                             (const char *[]){"verify", "-p", "acme", "--model", "m1", "-m", "m2",
                                              "--include-invalid", "--no-persist", NULL},
                             &out, NULL),
                     0);
    /* plain output (not a TTY): the job, each change of progress, the messages */
    s_assert_contains(out, "job v-9\n");
    s_assert_contains(out, "acme  validating  4 listed, 1 checked, 1 ok, 0 failed, 0 transient\n");
    s_assert_contains(out, "acme  ok          4 listed, 4 checked, 2 ok, 1 failed, 1 transient\n");
    s_assert_contains(out, "Verified 4 models of acme\n");
    free(out);

    /* a failed job: exit 1 */
    s_script(suite->fake, (const char *[]){"{\"job\": \"v-9\"}", VERIFY_DONE("false"), NULL});
    assert_int_equal(s_pmctl(suite, (const char *[]){"verify", NULL}, &out, NULL), 1);
    free(out);
    /* --no-wait: the id only; --json: the final job_status */
    s_script(suite->fake, (const char *[]){"{\"job\": \"v-9\"}", NULL});
    assert_int_equal(s_pmctl(suite, (const char *[]){"verify", "--no-wait", NULL}, &out, NULL), 0);
    assert_string_equal(out, "job v-9 started\n");
    free(out);
    s_script(suite->fake, (const char *[]){"{\"job\": \"v-9\"}", VERIFY_DONE("true"), NULL});
    assert_int_equal(s_pmctl(suite, (const char *[]){"--json", "verify", NULL}, &out, NULL), 0);
    s_assert_contains(out, "\"kind\": \"verify\"");
    s_assert_contains(out, "\"transient\": 1");
    free(out);
    /* the service refuses: exit 1 */
    s_answer(suite->fake, "!not_found:Provider 'zz' not found");
    assert_int_equal(s_pmctl(suite, (const char *[]){"verify", "-p", "zz", NULL}, NULL, &err), 1);
    s_assert_contains(err, "not_found: Provider 'zz' not found");
    free(err);
    /* `pmctl job` shows the kind and the verify counts */
    s_answer(suite->fake, VERIFY_DONE("true"));
    assert_int_equal(s_pmctl(suite, (const char *[]){"job", "v-9", NULL}, &out, NULL), 0);
    s_assert_contains(out, "kind           verify\n");
    s_assert_contains(out, "4 listed, 4 checked, 2 ok, 1 failed, 1 transient");
    free(out);
}

#define VALUES_TWO                                                                                 \
    "[{\"provider\": \"acme\", \"name\": \"Acme\", \"base_api_url\": \"http://a/v1\","             \
    " \"api_key\": null, \"valid_models\": {}, \"invalid_models\": []},"                           \
    " {\"provider\": \"bare\", \"name\": \"Bare\", \"base_api_url\": \"http://b/v1\","             \
    " \"api_key\": null, \"valid_models\": {}, \"invalid_models\": []}]"

static void test_pmctl_providers_status_and_health(void **state)
{
    s_suite_t *suite = *state;
    char *out = NULL, *err = NULL;
    s_script(suite->fake,
             (const char *[]){VALUES_TWO,
                              "[{\"provider\": \"bare\", \"state\": \"no_key\", \"last_list_at\":"
                              " null, \"last_list_ok_at\": null, \"models_listed\": null,"
                              " \"last_error\": null}, {\"provider\": \"acme\", \"state\":"
                              " \"auth_failed\", \"last_list_at\": 5.0, \"last_list_ok_at\": null,"
                              " \"models_listed\": null, \"last_error\": {\"class\": \"auth\","
                              " \"status\": 401, \"message\": \"Unauthorized\"}}]",
                              NULL});
    assert_int_equal(s_pmctl(suite, (const char *[]){"providers", NULL}, &out, NULL), 0);
    s_assert_contains(out, "KEY   NAME  URL          MODELS  API KEY  STATUS\n");
    s_assert_contains(out, "acme  Acme  http://a/v1  0       -        auth_failed\n");
    s_assert_contains(out, "bare  Bare  http://b/v1  0       -        no_key\n");
    free(out);

    /* a v1 service: "-" and no complaint */
    s_script(suite->fake,
             (const char *[]){VALUES_TWO, "!unknown_op:Unknown operation 'provider_status'", NULL});
    assert_int_equal(s_pmctl(suite, (const char *[]){"providers", NULL}, &out, &err), 0);
    s_assert_contains(out, "acme  Acme  http://a/v1  0       -        -\n");
    assert_string_equal(err, "");
    free(out);
    free(err);
    /* another refusal: "-" too, and a warning */
    s_script(suite->fake,
             (const char *[]){VALUES_TWO, "!unavailable:Primary tcp://x did not answer", NULL});
    assert_int_equal(s_pmctl(suite, (const char *[]){"providers", NULL}, &out, &err), 0);
    s_assert_contains(out, "bare  Bare  http://b/v1  0       -        -\n");
    s_assert_contains(err, "no provider status: unavailable: Primary tcp://x did not answer");
    free(out);
    free(err);

    /* health: v1.1's lines when present, none from a v1 service */
    s_answer(suite->fake, "{\"status\": \"ok\", \"version\": \"1.1.0\", \"state_version\": 4,"
                          " \"providers\": 2, \"models\": 3, \"uptime_s\": 2.5, \"jobs_running\":"
                          " 0, \"protocol\": \"1.1\", \"status_version\": 42}");
    assert_int_equal(s_pmctl(suite, (const char *[]){"health", NULL}, &out, NULL), 0);
    s_assert_contains(out, "protocol       1.1\n");
    s_assert_contains(out, "status_version 42\n");
    free(out);
    s_answer(suite->fake, "{\"status\": \"ok\", \"version\": \"1.0.0\", \"state_version\": 4,"
                          " \"providers\": 2, \"models\": 3, \"uptime_s\": 2.5, \"jobs_running\":"
                          " 0}");
    assert_int_equal(s_pmctl(suite, (const char *[]){"health", NULL}, &out, NULL), 0);
    assert_null(strstr(out, "protocol"));
    assert_null(strstr(out, "status_version"));
    free(out);
}

static void test_pmctl_watch_models(void **state)
{
    s_suite_t *suite = *state;
    s_pub_t pub;
    s_pub_start(&pub);
    for (int json = 0; json < 2; json++) {
        const char *args[] = {"--events-endpoint",
                              pub.endpoint,
                              json ? "--json" : "watch",
                              json ? "watch" : "--count",
                              json ? "--count" : "1",
                              json ? "1" : NULL,
                              NULL};
        pid_t pid = s_spawn_pmctl(suite, args);
        int status = -1;
        /* publish until the subscriber has seen one event and exited */
        for (int waited = 0; waited < WAIT_LIMIT_MS; waited += 50) {
            s_publish(&pub, "models", MODELS_EVENT);
            int raw;
            if (waitpid(pid, &raw, WNOHANG) == pid) {
                status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
                break;
            }
            s_sleep_ms(50);
        }
        if (status == -1) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        assert_int_equal(status, 0);
        char *out = s_output(suite, "out");
        if (json) {
            assert_string_equal(out, "{\"event\":\"models_changed\",\"status_version\":7,"
                                     "\"provider\":\"acme\",\"changes\":[{\"model\":"
                                     "\"new-model\",\"from\":null,\"to\":\"unverified\"},"
                                     "{\"model\":\"org/old\",\"from\":\"valid\",\"to\":"
                                     "\"gone\"}]}\n");
        } else {
            /* one line per change, the event counted once */
            assert_string_equal(out, "status_version 7: acme/new-model: - -> unverified\n"
                                     "status_version 7: acme/org/old: valid -> gone\n");
        }
        free(out);
    }
    s_pub_stop(&pub);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_model_status_decodes_every_field, s_test_setup,
                                        s_test_teardown),
        cmocka_unit_test_setup_teardown(test_model_status_arguments, s_test_setup, s_test_teardown),
        cmocka_unit_test_setup_teardown(test_model_status_malformed, s_test_setup, s_test_teardown),
        cmocka_unit_test_setup_teardown(test_provider_status, s_test_setup, s_test_teardown),
        cmocka_unit_test_setup_teardown(test_verify_models, s_test_setup, s_test_teardown),
        cmocka_unit_test_setup_teardown(test_status_reads_resent_verify_not, s_test_setup,
                                        s_test_teardown),
        cmocka_unit_test_setup_teardown(test_job_kinds, s_test_setup, s_test_teardown),
        cmocka_unit_test_setup_teardown(test_health_v11_keys, s_test_setup, s_test_teardown),
        cmocka_unit_test(test_events_typed),
        cmocka_unit_test_setup_teardown(test_pmctl_status, s_test_setup, s_test_teardown),
        cmocka_unit_test_setup_teardown(test_pmctl_verify, s_test_setup, s_test_teardown),
        cmocka_unit_test_setup_teardown(test_pmctl_providers_status_and_health, s_test_setup,
                                        s_test_teardown),
        cmocka_unit_test_setup_teardown(test_pmctl_watch_models, s_test_setup, s_test_teardown),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
