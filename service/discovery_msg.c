/*
 * discovery_msg: the coordinator <-> worker message codec (see discovery_msg.h), built on
 * proto's packing and lookup helpers so that the service has one way of reading msgpack maps.
 *
 * job:    {"task": u64, "req": u64, "kind": "list"|"probe", "url": str, "key": str,
 *          "model": str|nil}
 * result: {"task", "req", "kind", "outcome": "ok"|"invalid"|"error", "verdict": str,
 *          "status": int, "attempts": int, "latency_ms": float, "model": str|nil,
 *          "error": str|nil, "models": [str]|nil,
 *          "metas": [{"context_length"?, "max_output_tokens"?, "owned_by"?, "created"?}]|nil}
 */
#include "discovery_msg.h"

#include "pm_proto.h"

#include <errno.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define MSG_MAX_HTTP_STATUS 1000000 /* anything larger is not a status: read as 0 */

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

static void s_wipe_free(char *secret)
{
    if (secret != NULL) {
        explicit_bzero(secret, strlen(secret));
        free(secret);
    }
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

/* ================================================================================== jobs */

int discovery_job_send(void *socket, const discovery_job_t *job)
{
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    int rc = 0;
    rc |= msgpack_pack_map(&pk, 6);
    rc |= pm_pack_str(&pk, "task");
    rc |= msgpack_pack_uint64(&pk, job->task);
    rc |= pm_pack_str(&pk, "req");
    rc |= msgpack_pack_uint64(&pk, job->req);
    rc |= pm_pack_str(&pk, "kind");
    rc |= pm_pack_str(&pk, s_kind_name(job->kind));
    rc |= pm_pack_str(&pk, "url");
    rc |= pm_pack_str(&pk, job->base_api_url);
    rc |= pm_pack_str(&pk, "key");
    rc |= pm_pack_str(&pk, job->api_key);
    rc |= pm_pack_str(&pk, "model");
    rc |= pm_pack_str(&pk, job->model);
    if (rc != 0) {
        /* The buffer may hold the key: wipe it before giving the memory back. */
        if (sbuf.data != NULL)
            explicit_bzero(sbuf.data, sbuf.size);
        msgpack_sbuffer_destroy(&sbuf);
        errno = ENOMEM;
        return -1;
    }
    return s_send_sbuffer(socket, &sbuf, ZMQ_DONTWAIT);
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
    if (obj != NULL && obj->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
        obj->via.u64 < MSG_MAX_HTTP_STATUS)
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

static int s_obj_kind(const msgpack_object *obj, discovery_kind_t *kind)
{
    if (s_obj_is_str(obj, "list"))
        *kind = DISCOVERY_KIND_LIST;
    else if (s_obj_is_str(obj, "probe"))
        *kind = DISCOVERY_KIND_PROBE;
    else
        return -1;
    return 0;
}

static int s_obj_verdict(const msgpack_object *obj, discovery_verdict_t *verdict)
{
    const discovery_verdict_t all[] = {DISCOVERY_VERDICT_VALID, DISCOVERY_VERDICT_INVALID_MODEL,
                                       DISCOVERY_VERDICT_AUTH_ERROR, DISCOVERY_VERDICT_TRANSIENT,
                                       DISCOVERY_VERDICT_ERROR};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        if (s_obj_is_str(obj, discovery_verdict_name(all[i]))) {
            *verdict = all[i];
            return 0;
        }
    }
    return -1;
}

/* A packed meta map back into m, through model_meta_offer() so that the same checks apply
 * on both sides. Keys it does not know are ignored. 0, or -1 (not a map, ENOMEM). */
static int s_decode_meta(const msgpack_object *obj, model_meta_t *m)
{
    if (obj->type != MSGPACK_OBJECT_MAP)
        return -1;
    for (uint32_t i = 0; i < obj->via.map.size; i++) {
        const msgpack_object_kv *kv = &obj->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            continue;
        model_meta_field_t field = {.name = kv->key.via.str.ptr,
                                    .name_len = kv->key.via.str.size,
                                    .type = MODEL_META_OTHER};
        if (kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER && kv->val.via.u64 <= INT64_MAX) {
            field.type = MODEL_META_INT;
            field.int_value = (long long)kv->val.via.u64;
        } else if (kv->val.type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            field.type = MODEL_META_INT;
            field.int_value = (long long)kv->val.via.i64;
        } else if (kv->val.type == MSGPACK_OBJECT_STR) {
            field.type = MODEL_META_STR;
            field.str = kv->val.via.str.ptr;
            field.str_len = kv->val.via.str.size;
        }
        if (model_meta_offer(m, &field) != 0)
            return -1;
    }
    return 0;
}

void discovery_job_msg_clear(discovery_job_msg_t *job)
{
    if (job == NULL)
        return;
    free(job->base_api_url);
    s_wipe_free(job->api_key);
    free(job->model);
    memset(job, 0, sizeof *job);
}

int discovery_job_decode(const void *data, size_t size, discovery_job_msg_t *job)
{
    memset(job, 0, sizeof *job);
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    size_t offset = 0;
    int rc = -1;
    if (size == 0 || msgpack_unpack_next(&unpacked, data, size, &offset) != MSGPACK_UNPACK_SUCCESS)
        goto cleanup;
    const msgpack_object *root = &unpacked.data;
    if (s_obj_u64(pm_map_get(root, "task"), &job->task) != 0 ||
        s_obj_u64(pm_map_get(root, "req"), &job->req) != 0 ||
        s_obj_kind(pm_map_get(root, "kind"), &job->kind) != 0)
        goto cleanup;
    /* From here on the job can be answered. */
    rc = 1;
    if (size > DISCOVERY_MAX_JOB_MESSAGE ||
        s_obj_strdup(pm_map_get(root, "url"), &job->base_api_url) != 0 ||
        s_obj_strdup(pm_map_get(root, "key"), &job->api_key) != 0 ||
        s_obj_strdup(pm_map_get(root, "model"), &job->model) != 0 || job->base_api_url == NULL ||
        job->api_key == NULL || (job->kind == DISCOVERY_KIND_PROBE && job->model == NULL))
        goto cleanup;
    rc = 0;
cleanup:
    if (rc != 0) {
        uint64_t task = job->task, req = job->req;
        discovery_kind_t kind = job->kind;
        discovery_job_msg_clear(job);
        job->task = task;
        job->req = req;
        job->kind = kind;
    }
    /* The message held the key: msgpack's zone copies nothing here (strings point into
     * data), and the caller wipes data. */
    msgpack_unpacked_destroy(&unpacked);
    return rc;
}

/* =============================================================================== results */

void discovery_result_clear(discovery_result_t *result)
{
    if (result == NULL)
        return;
    free(result->model);
    free(result->error);
    for (size_t i = 0; i < result->model_count; i++)
        free(result->models[i]);
    free(result->models);
    if (result->metas != NULL)
        for (size_t i = 0; i < result->model_count; i++)
            model_meta_clear(&result->metas[i]);
    free(result->metas);
    memset(result, 0, sizeof *result);
}

static int s_pack_meta(msgpack_packer *pk, const model_meta_t *m)
{
    int rc = 0;
    uint32_t n = (uint32_t)m->has_context_length + (uint32_t)m->has_max_output_tokens +
                 (uint32_t)(m->owned_by != NULL) + (uint32_t)m->has_created;
    rc |= msgpack_pack_map(pk, n);
    if (m->has_context_length) {
        rc |= pm_pack_str(pk, "context_length");
        rc |= msgpack_pack_long_long(pk, m->context_length);
    }
    if (m->has_max_output_tokens) {
        rc |= pm_pack_str(pk, "max_output_tokens");
        rc |= msgpack_pack_long_long(pk, m->max_output_tokens);
    }
    if (m->owned_by != NULL) {
        rc |= pm_pack_str(pk, "owned_by");
        rc |= pm_pack_str(pk, m->owned_by);
    }
    if (m->has_created) {
        rc |= pm_pack_str(pk, "created");
        rc |= msgpack_pack_long_long(pk, m->created);
    }
    return rc;
}

static int s_pack_result(msgpack_packer *pk, const discovery_result_t *result)
{
    int rc = 0;
    rc |= msgpack_pack_map(pk, 12);
    rc |= pm_pack_str(pk, "verdict");
    rc |= pm_pack_str(pk, discovery_verdict_name(result->verdict));
    rc |= pm_pack_str(pk, "latency_ms");
    rc |= msgpack_pack_double(pk, result->latency_ms);
    rc |= pm_pack_str(pk, "task");
    rc |= msgpack_pack_uint64(pk, result->task);
    rc |= pm_pack_str(pk, "req");
    rc |= msgpack_pack_uint64(pk, result->req);
    rc |= pm_pack_str(pk, "kind");
    rc |= pm_pack_str(pk, s_kind_name(result->kind));
    rc |= pm_pack_str(pk, "outcome");
    rc |= pm_pack_str(pk, s_status_name(result->status));
    rc |= pm_pack_str(pk, "status");
    rc |= msgpack_pack_long(pk, result->http_status);
    rc |= pm_pack_str(pk, "attempts");
    rc |= msgpack_pack_int(pk, result->attempts);
    rc |= pm_pack_str(pk, "model");
    rc |= pm_pack_str(pk, result->model);
    rc |= pm_pack_str(pk, "error");
    rc |= pm_pack_str(pk, result->error);
    rc |= pm_pack_str(pk, "models");
    if (result->models != NULL) {
        rc |= msgpack_pack_array(pk, result->model_count);
        for (size_t i = 0; i < result->model_count; i++)
            rc |= pm_pack_str(pk, result->models[i]);
    } else {
        rc |= msgpack_pack_nil(pk);
    }
    rc |= pm_pack_str(pk, "metas");
    if (result->models != NULL && result->metas != NULL) {
        rc |= msgpack_pack_array(pk, result->model_count);
        for (size_t i = 0; i < result->model_count; i++)
            rc |= s_pack_meta(pk, &result->metas[i]);
    } else {
        rc |= msgpack_pack_nil(pk);
    }
    return rc;
}

int discovery_result_send(void *socket, const discovery_result_t *result)
{
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    if (s_pack_result(&pk, result) != 0) {
        msgpack_sbuffer_destroy(&sbuf);
        /* Out of memory: still answer, or the coordinator would wait forever. */
        msgpack_sbuffer_init(&sbuf);
        discovery_result_t oom = {.task = result->task,
                                  .req = result->req,
                                  .kind = result->kind,
                                  .status = DISCOVERY_RESULT_ERROR,
                                  .verdict = DISCOVERY_VERDICT_ERROR,
                                  .error = "out of memory"};
        if (s_pack_result(&pk, &oom) != 0) {
            msgpack_sbuffer_destroy(&sbuf);
            return -1;
        }
    }
    return s_send_sbuffer(socket, &sbuf, 0);
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
    if (s_obj_u64(pm_map_get(root, "task"), &result->task) != 0 ||
        s_obj_u64(pm_map_get(root, "req"), &result->req) != 0 ||
        s_obj_kind(pm_map_get(root, "kind"), &result->kind) != 0)
        goto cleanup;
    const msgpack_object *outcome = pm_map_get(root, "outcome");
    if (s_obj_is_str(outcome, "ok"))
        result->status = DISCOVERY_RESULT_OK;
    else if (s_obj_is_str(outcome, "invalid"))
        result->status = DISCOVERY_RESULT_INVALID;
    else if (s_obj_is_str(outcome, "error"))
        result->status = DISCOVERY_RESULT_ERROR;
    else
        goto cleanup;
    if (s_obj_verdict(pm_map_get(root, "verdict"), &result->verdict) != 0)
        goto cleanup;
    const msgpack_object *latency = pm_map_get(root, "latency_ms");
    if (latency != NULL &&
        (latency->type == MSGPACK_OBJECT_FLOAT64 || latency->type == MSGPACK_OBJECT_FLOAT32) &&
        latency->via.f64 >= 0)
        result->latency_ms = latency->via.f64;
    result->http_status = s_obj_long(pm_map_get(root, "status"));
    result->attempts = (int)s_obj_long(pm_map_get(root, "attempts"));
    if (s_obj_strdup(pm_map_get(root, "model"), &result->model) != 0 ||
        s_obj_strdup(pm_map_get(root, "error"), &result->error) != 0)
        goto cleanup;
    if (result->status == DISCOVERY_RESULT_ERROR && result->error == NULL)
        goto cleanup;
    const msgpack_object *models = pm_map_get(root, "models");
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
        const msgpack_object *metas = pm_map_get(root, "metas");
        if (metas != NULL && metas->type == MSGPACK_OBJECT_ARRAY) {
            if (metas->via.array.size != count)
                goto cleanup;
            result->metas = calloc(count, sizeof *result->metas);
            if (result->metas == NULL)
                goto cleanup;
            for (uint32_t i = 0; i < count; i++)
                if (s_decode_meta(&metas->via.array.ptr[i], &result->metas[i]) != 0)
                    goto cleanup;
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
