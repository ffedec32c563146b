/*
 * status_ops: model_status, provider_status and verify_models (see status_ops.h).
 */
#include "status_ops.h"

#include "log.h"
#include "status_wire.h"
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATUS_OPS_MAX_MODELS 100000 /* names in verify_models' `models` */

/* Reads the optional provider argument (str or nil). 0 absent, 1 present (out set), -1 with
 * the bad_request message in err. */
static int s_provider_arg(const pm_request_t *req, pm_str_t *out, char *err, size_t err_size)
{
    int rc = pm_arg_str_or_nil(req, "provider", out, err, err_size);
    if (rc < 0)
        return -1;
    if (rc == 1 && out->len > WIRE_MAX_NAME_LEN) {
        snprintf(err, err_size, "argument 'provider' is longer than %d bytes", WIRE_MAX_NAME_LEN);
        return -1;
    }
    return rc == 1 ? 1 : 0;
}

/* Packs not_found for an unknown provider; true when it did. */
static bool s_unknown_provider(const registry_t *reg, const pm_request_t *req, pm_str_t key,
                               msgpack_packer *pk)
{
    if (registry_get(reg, key.ptr, key.len))
        return false;
    wire_pack_error_spans(pk, req->id, PM_ERR_NOT_FOUND, "Provider '%s' not found", key,
                          (pm_str_t){0});
    return true;
}

/* ------------------------------------------------------------------------ model_status */

typedef struct {
    msgpack_packer *pk;
    size_t count;
    int failed;
} s_walk_t;

static int s_count_record(const char *provider, const status_record_t *rec, void *arg)
{
    (void)provider;
    (void)rec;
    ((s_walk_t *)arg)->count++;
    return 0;
}

static int s_pack_record(const char *provider, const status_record_t *rec, void *arg)
{
    s_walk_t *walk = arg;
    if (status_wire_pack_record(walk->pk, provider, rec) < 0)
        walk->failed = 1;
    return 0;
}

void status_ops_model_status(const model_status_t *table, const registry_t *reg,
                             const pm_request_t *req, msgpack_packer *pk)
{
    char err[256];
    pm_str_t provider = {0}, model = {0};
    const msgpack_object *states = NULL;
    int has_provider = s_provider_arg(req, &provider, err, sizeof err);
    int has_model = has_provider < 0 ? -1 : pm_arg_str(req, "model", &model, err, sizeof err);
    if (has_provider < 0 || has_model < 0 ||
        pm_arg_str_array(req, "states", &states, err, sizeof err) < 0) {
        pm_reply_error(pk, req->id, PM_ERR_BAD_REQUEST, err);
        return;
    }
    if (has_provider == 1 && s_unknown_provider(reg, req, provider, pk))
        return;
    unsigned mask = STATUS_MASK_ALL;
    if (states) {
        mask = 0;
        const msgpack_object_array *arr = &states->via.array;
        for (uint32_t i = 0; i < arr->size; i++) {
            const msgpack_object_str *s = &arr->ptr[i].via.str;
            status_state_t state;
            if (status_state_from_name(s->ptr, s->size, &state) < 0) {
                wire_pack_error_spans(pk, req->id, PM_ERR_BAD_REQUEST,
                                      "argument 'states' has an unknown state '%s'",
                                      (pm_str_t){s->ptr, s->size}, (pm_str_t){0});
                return;
            }
            mask |= STATUS_MASK(state);
        }
    }
    char *provider_key = has_provider == 1 ? pm_str_dup(provider) : NULL;
    char *model_name = has_model == 1 ? pm_str_dup(model) : NULL;
    if ((has_provider == 1 && !provider_key) || (has_model == 1 && !model_name)) {
        pm_reply_error(pk, req->id, PM_ERR_INTERNAL, "out of memory");
        goto done;
    }
    s_walk_t walk = {pk, 0, 0};
    if (mask != 0)
        model_status_each(table, reg, provider_key, model_name, mask, s_count_record, &walk);
    if (walk.count > UINT32_MAX) {
        pm_reply_error(pk, req->id, PM_ERR_INTERNAL, "too many status records");
        goto done;
    }
    pm_reply_ok_begin(pk, req->id);
    msgpack_pack_array(pk, (uint32_t)walk.count);
    if (walk.count > 0)
        model_status_each(table, reg, provider_key, model_name, mask, s_pack_record, &walk);
done:
    free(provider_key);
    free(model_name);
}

/* ------------------------------------------------------------------------ provider_status */

static int s_count_provider(const char *provider, const status_provider_t *ps, void *arg)
{
    (void)provider;
    (void)ps;
    ((s_walk_t *)arg)->count++;
    return 0;
}

static int s_pack_provider(const char *provider, const status_provider_t *ps, void *arg)
{
    s_walk_t *walk = arg;
    if (status_wire_pack_provider(walk->pk, provider, ps) < 0)
        walk->failed = 1;
    return 0;
}

void status_ops_provider_status(const model_status_t *table, const registry_t *reg,
                                const pm_request_t *req, msgpack_packer *pk)
{
    char err[256];
    pm_str_t provider = {0};
    int has_provider = s_provider_arg(req, &provider, err, sizeof err);
    if (has_provider < 0) {
        pm_reply_error(pk, req->id, PM_ERR_BAD_REQUEST, err);
        return;
    }
    if (has_provider == 1 && s_unknown_provider(reg, req, provider, pk))
        return;
    char *provider_key = has_provider == 1 ? pm_str_dup(provider) : NULL;
    if (has_provider == 1 && !provider_key) {
        pm_reply_error(pk, req->id, PM_ERR_INTERNAL, "out of memory");
        return;
    }
    s_walk_t walk = {pk, 0, 0};
    model_status_each_provider(table, reg, provider_key, s_count_provider, &walk);
    pm_reply_ok_begin(pk, req->id);
    msgpack_pack_array(pk, (uint32_t)walk.count);
    model_status_each_provider(table, reg, provider_key, s_pack_provider, &walk);
    free(provider_key);
}

/* ------------------------------------------------------------------------ verify_models */

void status_ops_verify_models(discovery_t *discovery, const registry_t *reg,
                              const pm_request_t *req, const char *by, double now,
                              msgpack_packer *pk)
{
    char err[256];
    pm_str_t provider = {0};
    const msgpack_object *models = NULL;
    bool include_invalid = false, persist = true;
    int has_provider = s_provider_arg(req, &provider, err, sizeof err);
    if (has_provider < 0 || pm_arg_str_array(req, "models", &models, err, sizeof err) < 0 ||
        pm_arg_bool(req, "include_invalid", &include_invalid, err, sizeof err) < 0 ||
        pm_arg_bool(req, "persist_on_success", &persist, err, sizeof err) < 0) {
        pm_reply_error(pk, req->id, PM_ERR_BAD_REQUEST, err);
        return;
    }
    if (models) {
        const msgpack_object_array *arr = &models->via.array;
        if (arr->size > STATUS_OPS_MAX_MODELS) {
            snprintf(err, sizeof err, "argument 'models' has more than %d names",
                     STATUS_OPS_MAX_MODELS);
            pm_reply_error(pk, req->id, PM_ERR_BAD_REQUEST, err);
            return;
        }
        for (uint32_t i = 0; i < arr->size; i++) {
            if (arr->ptr[i].via.str.size == 0 || arr->ptr[i].via.str.size > WIRE_MAX_NAME_LEN) {
                snprintf(err, sizeof err, "argument 'models' names must be 1 to %d bytes long",
                         WIRE_MAX_NAME_LEN);
                pm_reply_error(pk, req->id, PM_ERR_BAD_REQUEST, err);
                return;
            }
        }
    }
    if (has_provider == 1 && s_unknown_provider(reg, req, provider, pk))
        return;

    char *key = has_provider == 1 ? pm_str_dup(provider) : NULL;
    size_t count = models ? models->via.array.size : 0;
    char **names = count ? calloc(count, sizeof *names) : NULL;
    bool nomem = (has_provider == 1 && !key) || (count && !names);
    for (size_t i = 0; !nomem && i < count; i++) {
        const msgpack_object_str *s = &models->via.array.ptr[i].via.str;
        names[i] = pm_str_dup((pm_str_t){s->ptr, s->size});
        nomem = !names[i];
    }
    if (nomem) {
        pm_reply_error(pk, req->id, PM_ERR_INTERNAL, "out of memory");
        goto done;
    }
    char job[DISCOVERY_JOB_ID_SIZE];
    int code = PM_ERR_INTERNAL;
    /* `models: []` names nothing in particular: like an absent list, every target. */
    if (discovery_start_verify(discovery, reg, key, (const char *const *)names, count,
                               include_invalid, persist, by, now, job, &code, err,
                               sizeof err) < 0) {
        pm_reply_error(pk, req->id, (pm_error_t)code, err);
        goto done;
    }
    pm_reply_ok_begin(pk, req->id);
    msgpack_pack_map(pk, 1);
    pm_pack_str(pk, "job");
    pm_pack_str(pk, job);
    log_info("verify_models job %s (provider %s, %zu model(s) named, include_invalid %d, "
             "persist %d)",
             job, key ? key : "*", count, include_invalid, persist);
done:
    for (size_t i = 0; names && i < count; i++)
        free(names[i]);
    free(names);
    free(key);
}
