/*
 * pmclient_result: the typed results of libpmclient (see pmclient.h): their free functions,
 * and the decoders that turn a reply's result into them. The reply has passed
 * pm_reply_decode (bounded, valid UTF-8), but its shape is still the service's word: every
 * field is checked, and anything other than the contract's shape is a "bad_reply".
 */
#include "pmclient.h"

#include "pm_proto.h"
#include "pmclient_internal.h"

#include <math.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------ helpers */

bool pmc_is_str(const msgpack_object *obj)
{
    return obj && obj->type == MSGPACK_OBJECT_STR;
}

/* Copies a msgpack str into a new NUL-terminated string. */
char *pmc_dup_str(const msgpack_object *obj)
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
int pmc_take_str(pmclient_t *self, const msgpack_object *obj, const char *what, char **out)
{
    *out = NULL;
    if (!pmc_is_str(obj)) {
        pmc_set_error(self, PMCLIENT_ERR_BAD_REPLY,
                      "reply does not match the contract: %s is not a string", what);
        return -1;
    }
    *out = pmc_dup_str(obj);
    return *out ? 0 : pmc_nomem(self);
}

/* Reads a msgpack integer that fits in int64_t. */
int pmc_take_int(pmclient_t *self, const msgpack_object *obj, const char *what, int64_t *out)
{
    if (obj && obj->type == MSGPACK_OBJECT_POSITIVE_INTEGER && obj->via.u64 <= INT64_MAX) {
        *out = (int64_t)obj->via.u64;
        return 0;
    }
    if (obj && obj->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = obj->via.i64;
        return 0;
    }
    pmc_set_error(self, PMCLIENT_ERR_BAD_REPLY,
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
void *pmc_calloc_array(size_t count, size_t size)
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
        pmc_set_error(self, PMCLIENT_ERR_BAD_REPLY,
                      "reply does not match the contract: %s is not an array", what);
        return -1;
    }
    size_t n = obj->via.array.size;
    char **strv = pmc_calloc_array(n, sizeof *strv);
    if (!strv)
        return pmc_nomem(self);
    for (size_t i = 0; i < n; i++) {
        if (pmc_take_str(self, &obj->via.array.ptr[i], what, &strv[i]) != 0) {
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
    free((*self_p)->protocol);
    free((*self_p)->role);
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
    free(self->kind);
    free(self);
    *self_p = NULL;
}

static void s_status_error_clear(pm_status_error_t *error)
{
    free(error->error_class);
    free(error->message);
    memset(error, 0, sizeof *error);
}

void pm_status_list_free(pm_status_list_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pm_status_list_t *self = *self_p;
    if (self->records) {
        for (size_t i = 0; i < self->count; i++) {
            pm_model_status_t *record = &self->records[i];
            free(record->provider);
            free(record->model);
            free(record->state);
            s_status_error_clear(&record->last_error);
            free(record->meta.owned_by);
        }
        free(self->records);
    }
    free(self);
    *self_p = NULL;
}

void pm_provider_status_list_free(pm_provider_status_list_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pm_provider_status_list_t *self = *self_p;
    if (self->providers) {
        for (size_t i = 0; i < self->count; i++) {
            free(self->providers[i].provider);
            free(self->providers[i].state);
            s_status_error_clear(&self->providers[i].last_error);
        }
        free(self->providers);
    }
    free(self);
    *self_p = NULL;
}

/* ProviderConfig map -> pm_provider_t. */
int pmc_decode_provider(pmclient_t *self, const msgpack_object *obj, pm_provider_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_MAP)
        return pmc_bad_reply(self, "ProviderConfig is not a map");
    pm_provider_t *provider = calloc(1, sizeof *provider);
    if (!provider)
        return pmc_nomem(self);

    if (pmc_take_str(self, pm_map_get(obj, "provider"), "provider", &provider->provider) != 0 ||
        pmc_take_str(self, pm_map_get(obj, "name"), "name", &provider->name) != 0 ||
        pmc_take_str(self, pm_map_get(obj, "base_api_url"), "base_api_url",
                     &provider->base_api_url) != 0)
        goto fail;

    const msgpack_object *api_key = pm_map_get(obj, "api_key");
    if (api_key && api_key->type != MSGPACK_OBJECT_NIL) {
        if (pmc_take_str(self, api_key, "api_key", &provider->api_key) != 0)
            goto fail;
    }

    /* valid_models is a map long -> short; an absent one is treated as empty. */
    const msgpack_object *models = pm_map_get(obj, "valid_models");
    if (models) {
        if (models->type != MSGPACK_OBJECT_MAP) {
            pmc_bad_reply(self, "valid_models is not a map");
            goto fail;
        }
        size_t n = models->via.map.size;
        provider->model_long = pmc_calloc_array(n, sizeof(char *));
        provider->model_short = pmc_calloc_array(n, sizeof(char *));
        if (!provider->model_long || !provider->model_short) {
            pmc_nomem(self);
            goto fail;
        }
        provider->model_count = n;
        for (size_t i = 0; i < n; i++) {
            const msgpack_object_kv *kv = &models->via.map.ptr[i];
            if (pmc_take_str(self, &kv->key, "a valid_models name", &provider->model_long[i]) !=
                    0 ||
                pmc_take_str(self, &kv->val, "a valid_models short name",
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
int pmc_decode_provider_list(pmclient_t *self, const msgpack_object *obj, bool pairs,
                             pm_provider_list_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_ARRAY)
        return pmc_bad_reply(self, "result is not an array");
    pm_provider_list_t *list = calloc(1, sizeof *list);
    if (!list)
        return pmc_nomem(self);
    size_t n = obj->via.array.size;
    list->providers = pmc_calloc_array(n, sizeof *list->providers);
    if (!list->providers) {
        free(list);
        return pmc_nomem(self);
    }
    list->count = n;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *element = &obj->via.array.ptr[i];
        if (pairs) {
            if (element->type != MSGPACK_OBJECT_ARRAY || element->via.array.size != 2 ||
                !pmc_is_str(&element->via.array.ptr[0])) {
                pmc_bad_reply(self, "an item is not a [key, ProviderConfig] pair");
                goto fail;
            }
            const msgpack_object *key = &element->via.array.ptr[0];
            if (pmc_decode_provider(self, &element->via.array.ptr[1], &list->providers[i]) != 0)
                goto fail;
            const char *inner = list->providers[i]->provider;
            if (strlen(inner) != key->via.str.size ||
                memcmp(inner, key->via.str.ptr, key->via.str.size) != 0) {
                pmc_bad_reply(self, "an item's key differs from its ProviderConfig's provider");
                goto fail;
            }
        } else if (pmc_decode_provider(self, element, &list->providers[i]) != 0) {
            goto fail;
        }
    }
    *out = list;
    return 0;

fail:
    pm_provider_list_free(&list);
    return -1;
}

int pmc_decode_strings(pmclient_t *self, const msgpack_object *obj, pm_strings_t **out)
{
    *out = NULL;
    pm_strings_t *strings = calloc(1, sizeof *strings);
    if (!strings)
        return pmc_nomem(self);
    if (s_take_strv(self, obj, "result", &strings->items, &strings->count) != 0) {
        free(strings);
        return -1;
    }
    *out = strings;
    return 0;
}

int pmc_decode_merged(pmclient_t *self, const msgpack_object *obj, pm_merged_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_ARRAY)
        return pmc_bad_reply(self, "result is not an array");
    pm_merged_t *merged = calloc(1, sizeof *merged);
    if (!merged)
        return pmc_nomem(self);
    size_t n = obj->via.array.size;
    merged->provider = pmc_calloc_array(n, sizeof(char *));
    merged->model_long = pmc_calloc_array(n, sizeof(char *));
    merged->model_short = pmc_calloc_array(n, sizeof(char *));
    merged->count = n;
    if (!merged->provider || !merged->model_long || !merged->model_short) {
        pmc_nomem(self);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        /* [key, [long, short]] */
        const msgpack_object *entry = &obj->via.array.ptr[i];
        if (entry->type != MSGPACK_OBJECT_ARRAY || entry->via.array.size != 2 ||
            entry->via.array.ptr[1].type != MSGPACK_OBJECT_ARRAY ||
            entry->via.array.ptr[1].via.array.size != 2) {
            pmc_bad_reply(self, "a merged_models entry is not [key, [long, short]]");
            goto fail;
        }
        const msgpack_object *names = entry->via.array.ptr[1].via.array.ptr;
        if (pmc_take_str(self, &entry->via.array.ptr[0], "merged_models key",
                         &merged->provider[i]) != 0 ||
            pmc_take_str(self, &names[0], "merged_models long name", &merged->model_long[i]) != 0 ||
            pmc_take_str(self, &names[1], "merged_models short name", &merged->model_short[i]) != 0)
            goto fail;
    }
    *out = merged;
    return 0;

fail:
    pm_merged_free(&merged);
    return -1;
}

int pmc_decode_matches(pmclient_t *self, const msgpack_object *obj, pm_matches_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_ARRAY)
        return pmc_bad_reply(self, "result is not an array");
    pm_matches_t *matches = calloc(1, sizeof *matches);
    if (!matches)
        return pmc_nomem(self);
    size_t n = obj->via.array.size;
    matches->providers = pmc_calloc_array(n, sizeof *matches->providers);
    matches->model_long = pmc_calloc_array(n, sizeof(char *));
    matches->count = n;
    if (!matches->providers || !matches->model_long) {
        pmc_nomem(self);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        /* [ProviderConfig, long] */
        const msgpack_object *entry = &obj->via.array.ptr[i];
        if (entry->type != MSGPACK_OBJECT_ARRAY || entry->via.array.size != 2) {
            pmc_bad_reply(self, "a find_model entry is not [ProviderConfig, long_name]");
            goto fail;
        }
        if (pmc_decode_provider(self, &entry->via.array.ptr[0], &matches->providers[i]) != 0 ||
            pmc_take_str(self, &entry->via.array.ptr[1], "find_model long name",
                         &matches->model_long[i]) != 0)
            goto fail;
    }
    *out = matches;
    return 0;

fail:
    pm_matches_free(&matches);
    return -1;
}

int pmc_decode_health(pmclient_t *self, const msgpack_object *obj, pm_health_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_MAP)
        return pmc_bad_reply(self, "health result is not a map");
    pm_health_t *health = calloc(1, sizeof *health);
    if (!health)
        return pmc_nomem(self);
    if (pmc_take_str(self, pm_map_get(obj, "status"), "status", &health->status) != 0 ||
        pmc_take_str(self, pm_map_get(obj, "version"), "version", &health->version) != 0 ||
        pmc_take_int(self, pm_map_get(obj, "state_version"), "state_version",
                     &health->state_version) != 0 ||
        pmc_take_int(self, pm_map_get(obj, "providers"), "providers", &health->providers) != 0 ||
        pmc_take_int(self, pm_map_get(obj, "models"), "models", &health->models) != 0 ||
        pmc_take_int(self, pm_map_get(obj, "jobs_running"), "jobs_running",
                     &health->jobs_running) != 0)
        goto fail;
    const msgpack_object *uptime = pm_map_get(obj, "uptime_s");
    if (uptime &&
        (uptime->type == MSGPACK_OBJECT_FLOAT64 || uptime->type == MSGPACK_OBJECT_FLOAT32)) {
        health->uptime_s = uptime->via.f64;
    } else {
        int64_t whole;
        if (pmc_take_int(self, uptime, "uptime_s", &whole) != 0)
            goto fail;
        health->uptime_s = (double)whole;
    }
    /* v1.1's keys: absent from a v1 service, checked when present. */
    const msgpack_object *protocol = pm_map_get(obj, "protocol");
    if (protocol && protocol->type != MSGPACK_OBJECT_NIL &&
        pmc_take_str(self, protocol, "protocol", &health->protocol) != 0)
        goto fail;
    const msgpack_object *status_version = pm_map_get(obj, "status_version");
    if (status_version && status_version->type != MSGPACK_OBJECT_NIL) {
        if (status_version->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            pmc_bad_reply(self, "status_version is not a non-negative integer");
            goto fail;
        }
        health->has_status_version = true;
        health->status_version = status_version->via.u64;
    }
    const msgpack_object *reload_ok = pm_map_get(obj, "reload_ok");
    const msgpack_object *reloaded_at = pm_map_get(obj, "reloaded_at");
    if (reload_ok && reload_ok->type != MSGPACK_OBJECT_NIL) {
        if (reload_ok->type != MSGPACK_OBJECT_BOOLEAN || !reloaded_at ||
            (reloaded_at->type != MSGPACK_OBJECT_FLOAT64 &&
             reloaded_at->type != MSGPACK_OBJECT_FLOAT32)) {
            pmc_bad_reply(self, "reload_ok is not a boolean with a reloaded_at time");
            goto fail;
        }
        health->has_reload = true;
        health->reload_ok = reload_ok->via.boolean;
        health->reloaded_at = reloaded_at->via.f64;
    }
    const msgpack_object *role = pm_map_get(obj, "role");
    if (role && role->type != MSGPACK_OBJECT_NIL &&
        pmc_take_str(self, role, "role", &health->role) != 0)
        goto fail;
    const msgpack_object *lag = pm_map_get(obj, "lag_versions");
    if (lag && lag->type != MSGPACK_OBJECT_NIL) {
        if (pmc_take_int(self, lag, "lag_versions", &health->lag_versions) != 0)
            goto fail;
        health->has_lag = true;
    }
    const msgpack_object *seen = pm_map_get(obj, "primary_seen_s");
    if (seen && seen->type != MSGPACK_OBJECT_NIL) {
        if (seen->type == MSGPACK_OBJECT_FLOAT64 || seen->type == MSGPACK_OBJECT_FLOAT32) {
            health->primary_seen_s = seen->via.f64;
        } else {
            int64_t whole;
            if (pmc_take_int(self, seen, "primary_seen_s", &whole) != 0)
                goto fail;
            health->primary_seen_s = (double)whole;
        }
        health->has_primary_seen = true;
    }
    *out = health;
    return 0;

fail:
    pm_health_free(&health);
    return -1;
}

/* A job count of map: required, or else read when present (0 when absent). */
static int s_take_count(pmclient_t *self, const msgpack_object *map, const char *key, bool required,
                        int64_t *out)
{
    const msgpack_object *value = pm_map_get(map, key);
    *out = 0;
    if (!value && !required)
        return 0;
    return pmc_take_int(self, value, key, out);
}

int pmc_decode_job(pmclient_t *self, const msgpack_object *obj, pm_job_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_MAP)
        return pmc_bad_reply(self, "job_status result is not a map");
    pm_job_t *job = calloc(1, sizeof *job);
    if (!job)
        return pmc_nomem(self);
    if (pmc_take_str(self, pm_map_get(obj, "job"), "job", &job->job) != 0 ||
        pmc_take_str(self, pm_map_get(obj, "state"), "state", &job->state) != 0)
        goto fail;
    /* A v1 service sends no kind and has only discovery jobs. */
    const msgpack_object *kind = pm_map_get(obj, "kind");
    if (kind) {
        if (pmc_take_str(self, kind, "kind", &job->kind) != 0)
            goto fail;
    } else if (!(job->kind = strdup("discover"))) {
        pmc_nomem(self);
        goto fail;
    }
    bool verify = strcmp(job->kind, "verify") == 0;
    bool discover = strcmp(job->kind, "discover") == 0;

    const msgpack_object *success = pm_map_get(obj, "success");
    if (!success || success->type == MSGPACK_OBJECT_NIL)
        job->success = -1;
    else if (success->type == MSGPACK_OBJECT_BOOLEAN)
        job->success = success->via.boolean ? 1 : 0;
    else {
        pmc_bad_reply(self, "success is neither a boolean nor nil");
        goto fail;
    }

    const msgpack_object *persisted = pm_map_get(obj, "persisted");
    if (!persisted || persisted->type != MSGPACK_OBJECT_BOOLEAN) {
        pmc_bad_reply(self, "persisted is not a boolean");
        goto fail;
    }
    job->persisted = persisted->via.boolean;

    const msgpack_object *providers = pm_map_get(obj, "providers");
    if (!providers || providers->type != MSGPACK_OBJECT_MAP) {
        pmc_bad_reply(self, "providers is not a map");
        goto fail;
    }
    size_t n = providers->via.map.size;
    job->providers = pmc_calloc_array(n, sizeof *job->providers);
    if (!job->providers) {
        pmc_nomem(self);
        goto fail;
    }
    job->provider_count = n;
    for (size_t i = 0; i < n; i++) {
        const msgpack_object_kv *kv = &providers->via.map.ptr[i];
        pm_job_provider_t *entry = &job->providers[i];
        if (kv->val.type != MSGPACK_OBJECT_MAP) {
            pmc_bad_reply(self, "a job provider entry is not a map");
            goto fail;
        }
        /* Each kind's counts are required; those of the other kind (and every count of a
         * kind this library does not know) are read when present. */
        const msgpack_object *val = &kv->val;
        if (pmc_take_str(self, &kv->key, "job provider key", &entry->key) != 0 ||
            pmc_take_str(self, pm_map_get(val, "state"), "job provider state", &entry->state) !=
                0 ||
            s_take_count(self, val, "discovered", discover, &entry->discovered) != 0 ||
            s_take_count(self, val, "validated", discover, &entry->validated) != 0 ||
            s_take_count(self, val, "valid", discover, &entry->valid) != 0 ||
            s_take_count(self, val, "invalid", discover, &entry->invalid) != 0 ||
            s_take_count(self, val, "checked", verify, &entry->checked) != 0 ||
            s_take_count(self, val, "ok", verify, &entry->ok) != 0 ||
            s_take_count(self, val, "failed", verify, &entry->failed) != 0 ||
            s_take_count(self, val, "transient", verify, &entry->transient) != 0 ||
            pmc_take_str(self, pm_map_get(val, "message"), "job provider message",
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

/* ------------------------------------------------------------------- v1.1 model status */

/* A time or latency: a msgpack float (or integer), NAN for nil. The key must be there: the
 * contract always sends it, so its absence means the reply is not the contract's. */
static int s_take_time(pmclient_t *self, const msgpack_object *map, const char *key, double *out)
{
    const msgpack_object *value = pm_map_get(map, key);
    *out = NAN;
    if (!value) {
        pmc_set_error(self, PMCLIENT_ERR_BAD_REPLY,
                      "reply does not match the contract: %s is missing", key);
        return -1;
    }
    switch (value->type) {
    case MSGPACK_OBJECT_NIL:
        return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *out = value->via.f64;
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *out = (double)value->via.u64;
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (double)value->via.i64;
        return 0;
    default:
        pmc_set_error(self, PMCLIENT_ERR_BAD_REPLY,
                      "reply does not match the contract: %s is neither a number nor nil", key);
        return -1;
    }
}

/* last_error: nil (*has = false) or {"class": str, "status": int or nil, "message": str}. */
static int s_take_status_error(pmclient_t *self, const msgpack_object *map, bool *has,
                               pm_status_error_t *out)
{
    const msgpack_object *value = pm_map_get(map, "last_error");
    *has = false;
    if (!value)
        return pmc_bad_reply(self, "last_error is missing");
    if (value->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (value->type != MSGPACK_OBJECT_MAP)
        return pmc_bad_reply(self, "last_error is neither a map nor nil");
    if (pmc_take_str(self, pm_map_get(value, "class"), "last_error.class", &out->error_class) !=
            0 ||
        pmc_take_str(self, pm_map_get(value, "message"), "last_error.message", &out->message) != 0)
        return -1;
    const msgpack_object *status = pm_map_get(value, "status");
    out->status = 0;
    if (status && status->type != MSGPACK_OBJECT_NIL &&
        pmc_take_int(self, status, "last_error.status", &out->status) != 0)
        return -1;
    *has = true;
    return 0;
}

/* meta: a map of the known keys, each optional; keys not known are ignored. */
static int s_take_meta(pmclient_t *self, const msgpack_object *map, pm_model_meta_t *out)
{
    const msgpack_object *meta = pm_map_get(map, "meta");
    if (!meta || meta->type != MSGPACK_OBJECT_MAP)
        return pmc_bad_reply(self, "meta is not a map");
    const msgpack_object *value = pm_map_get(meta, "context_length");
    if (value) {
        if (pmc_take_int(self, value, "meta.context_length", &out->context_length) != 0)
            return -1;
        out->has_context_length = true;
    }
    if ((value = pm_map_get(meta, "max_output_tokens"))) {
        if (pmc_take_int(self, value, "meta.max_output_tokens", &out->max_output_tokens) != 0)
            return -1;
        out->has_max_output_tokens = true;
    }
    if ((value = pm_map_get(meta, "created"))) {
        if (pmc_take_int(self, value, "meta.created", &out->created) != 0)
            return -1;
        out->has_created = true;
    }
    if ((value = pm_map_get(meta, "owned_by")) &&
        pmc_take_str(self, value, "meta.owned_by", &out->owned_by) != 0)
        return -1;
    return 0;
}

static int s_take_bool(pmclient_t *self, const msgpack_object *map, const char *key, bool *out)
{
    const msgpack_object *value = pm_map_get(map, key);
    if (!value || value->type != MSGPACK_OBJECT_BOOLEAN) {
        pmc_set_error(self, PMCLIENT_ERR_BAD_REPLY,
                      "reply does not match the contract: %s is not a boolean", key);
        return -1;
    }
    *out = value->via.boolean;
    return 0;
}

static int s_decode_record(pmclient_t *self, const msgpack_object *obj, pm_model_status_t *record)
{
    if (obj->type != MSGPACK_OBJECT_MAP)
        return pmc_bad_reply(self, "a status record is not a map");
    if (pmc_take_str(self, pm_map_get(obj, "provider"), "provider", &record->provider) != 0 ||
        pmc_take_str(self, pm_map_get(obj, "model"), "model", &record->model) != 0 ||
        pmc_take_str(self, pm_map_get(obj, "state"), "state", &record->state) != 0 ||
        s_take_bool(self, obj, "in_valid_models", &record->in_valid_models) != 0)
        return -1;
    const msgpack_object *listed = pm_map_get(obj, "listed");
    if (!listed || (listed->type != MSGPACK_OBJECT_NIL && listed->type != MSGPACK_OBJECT_BOOLEAN))
        return pmc_bad_reply(self, "listed is neither a boolean nor nil");
    record->listed = listed->type == MSGPACK_OBJECT_NIL ? -1 : listed->via.boolean ? 1 : 0;
    if (s_take_time(self, obj, "first_seen_at", &record->first_seen_at) != 0 ||
        s_take_time(self, obj, "last_listed_at", &record->last_listed_at) != 0 ||
        s_take_time(self, obj, "last_checked_at", &record->last_checked_at) != 0 ||
        s_take_time(self, obj, "last_ok_at", &record->last_ok_at) != 0 ||
        s_take_time(self, obj, "latency_ms", &record->latency_ms) != 0 ||
        pmc_take_int(self, pm_map_get(obj, "failures"), "failures", &record->failures) != 0 ||
        s_take_status_error(self, obj, &record->has_last_error, &record->last_error) != 0 ||
        s_take_meta(self, obj, &record->meta) != 0)
        return -1;
    return 0;
}

int pmc_decode_status_list(pmclient_t *self, const msgpack_object *obj, pm_status_list_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_ARRAY)
        return pmc_bad_reply(self, "model_status result is not an array");
    pm_status_list_t *list = calloc(1, sizeof *list);
    if (!list)
        return pmc_nomem(self);
    size_t n = obj->via.array.size;
    list->records = pmc_calloc_array(n, sizeof *list->records);
    if (!list->records) {
        free(list);
        return pmc_nomem(self);
    }
    /* count covers every slot from the start, so that the free function releases what a
     * failing record left half-filled (the slots are zeroed). */
    list->count = n;
    for (size_t i = 0; i < n; i++) {
        if (s_decode_record(self, &obj->via.array.ptr[i], &list->records[i]) != 0) {
            pm_status_list_free(&list);
            return -1;
        }
    }
    *out = list;
    return 0;
}

static int s_decode_provider_status(pmclient_t *self, const msgpack_object *obj,
                                    pm_provider_status_t *entry)
{
    if (obj->type != MSGPACK_OBJECT_MAP)
        return pmc_bad_reply(self, "a provider_status entry is not a map");
    if (pmc_take_str(self, pm_map_get(obj, "provider"), "provider", &entry->provider) != 0 ||
        pmc_take_str(self, pm_map_get(obj, "state"), "state", &entry->state) != 0 ||
        s_take_time(self, obj, "last_list_at", &entry->last_list_at) != 0 ||
        s_take_time(self, obj, "last_list_ok_at", &entry->last_list_ok_at) != 0)
        return -1;
    const msgpack_object *listed = pm_map_get(obj, "models_listed");
    if (!listed)
        return pmc_bad_reply(self, "models_listed is missing");
    if (listed->type != MSGPACK_OBJECT_NIL) {
        if (pmc_take_int(self, listed, "models_listed", &entry->models_listed) != 0)
            return -1;
        entry->has_models_listed = true;
    }
    return s_take_status_error(self, obj, &entry->has_last_error, &entry->last_error);
}

int pmc_decode_provider_status_list(pmclient_t *self, const msgpack_object *obj,
                                    pm_provider_status_list_t **out)
{
    *out = NULL;
    if (!obj || obj->type != MSGPACK_OBJECT_ARRAY)
        return pmc_bad_reply(self, "provider_status result is not an array");
    pm_provider_status_list_t *list = calloc(1, sizeof *list);
    if (!list)
        return pmc_nomem(self);
    size_t n = obj->via.array.size;
    list->providers = pmc_calloc_array(n, sizeof *list->providers);
    if (!list->providers) {
        free(list);
        return pmc_nomem(self);
    }
    list->count = n;
    for (size_t i = 0; i < n; i++) {
        if (s_decode_provider_status(self, &obj->via.array.ptr[i], &list->providers[i]) != 0) {
            pm_provider_status_list_free(&list);
            return -1;
        }
    }
    *out = list;
    return 0;
}
