/*
 * wire: registry values, argument checks and error replies in the wire format. See wire.h.
 */
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void s_pack_key(msgpack_packer *pk, const char *key)
{
    pm_pack_str(pk, key);
}

void wire_pack_provider(msgpack_packer *pk, const provider_t *provider)
{
    msgpack_pack_map(pk, 6);
    s_pack_key(pk, "provider");
    pm_pack_str(pk, provider_key(provider));
    s_pack_key(pk, "name");
    pm_pack_str(pk, provider_name(provider));
    s_pack_key(pk, "base_api_url");
    pm_pack_str(pk, provider_base_api_url(provider));
    s_pack_key(pk, "api_key");
    pm_pack_str(pk, provider_api_key(provider)); /* nil when none */

    size_t models = provider_model_count(provider);
    s_pack_key(pk, "valid_models");
    msgpack_pack_map(pk, (uint32_t)models);
    for (size_t i = 0; i < models; i++) {
        pm_pack_str(pk, provider_model_long(provider, i));
        pm_pack_str(pk, provider_model_short(provider, i));
    }
    size_t invalid = provider_invalid_count(provider);
    s_pack_key(pk, "invalid_models");
    msgpack_pack_array(pk, (uint32_t)invalid);
    for (size_t i = 0; i < invalid; i++)
        pm_pack_str(pk, provider_invalid_at(provider, i));
}

int wire_required_str(const pm_request_t *req, const char *name, size_t max, pm_str_t *out,
                      char *err, size_t err_size)
{
    int rc = pm_arg_str(req, name, out, err, err_size);
    if (rc < 0)
        return -1;
    if (rc == 0)
        return pm_arg_require(name, err, err_size);
    if (out->len == 0) {
        snprintf(err, err_size, "argument '%s' must not be empty", name);
        return -1;
    }
    if (out->len > max) {
        snprintf(err, err_size, "argument '%s' is longer than %zu bytes", name, max);
        return -1;
    }
    return 0;
}

static bool s_http_url(pm_str_t url)
{
    return (url.len > 7 && strncmp(url.ptr, "http://", 7) == 0) ||
           (url.len > 8 && strncmp(url.ptr, "https://", 8) == 0);
}

int wire_spec_from_request(const pm_request_t *req, provider_spec_t *spec, char *err,
                           size_t err_size)
{
    /* Cleared first, so that the caller may clear it on every path. */
    memset(spec, 0, sizeof *spec);
    pm_str_t key, name, url, api_key;
    if (wire_required_str(req, "provider", REGISTRY_MAX_KEY_LEN, &key, err, err_size) < 0) {
        if (pm_arg_str(req, "provider", &key, err, err_size) == 1)
            goto bad_key; /* present but too long */
        return -1;
    }
    if (!provider_key_valid(key.ptr, key.len))
        goto bad_key;
    if (wire_required_str(req, "name", WIRE_MAX_NAME_LEN, &name, err, err_size) < 0 ||
        wire_required_str(req, "base_api_url", WIRE_MAX_URL_LEN, &url, err, err_size) < 0)
        return -1;
    if (!s_http_url(url)) {
        snprintf(err, err_size, "argument 'base_api_url' must begin with http:// or https://");
        return -1;
    }
    int has_key = pm_arg_str_or_nil(req, "api_key", &api_key, err, err_size);
    if (has_key < 0)
        return -1;
    if (has_key == 1 && api_key.len > WIRE_MAX_API_KEY_LEN) {
        snprintf(err, err_size, "argument 'api_key' is longer than %d bytes", WIRE_MAX_API_KEY_LEN);
        return -1;
    }
    const msgpack_object *models = NULL, *invalid = NULL;
    if (pm_arg_str_map(req, "valid_models", &models, err, err_size) < 0 ||
        pm_arg_str_array(req, "invalid_models", &invalid, err, err_size) < 0)
        return -1;

    /* Check every model name before allocating anything. */
    if (models) {
        const msgpack_object_map *map = &models->via.map;
        if (map->size > REGISTRY_MAX_MODELS) {
            snprintf(err, err_size, "argument 'valid_models' has too many entries");
            return -1;
        }
        for (uint32_t i = 0; i < map->size; i++) {
            const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
            if (k->via.str.size == 0 || k->via.str.size > WIRE_MAX_NAME_LEN ||
                v->via.str.size == 0 || v->via.str.size > WIRE_MAX_NAME_LEN) {
                snprintf(err, err_size, "argument 'valid_models' names must be 1 to %d bytes long",
                         WIRE_MAX_NAME_LEN);
                return -1;
            }
        }
    }
    if (invalid) {
        const msgpack_object_array *arr = &invalid->via.array;
        for (uint32_t i = 0; i < arr->size; i++) {
            if (arr->ptr[i].via.str.size == 0 || arr->ptr[i].via.str.size > WIRE_MAX_NAME_LEN) {
                snprintf(err, err_size,
                         "argument 'invalid_models' names must be 1 to %d bytes long",
                         WIRE_MAX_NAME_LEN);
                return -1;
            }
        }
    }

    spec->key = pm_str_dup(key);
    spec->name = pm_str_dup(name);
    spec->base_api_url = pm_str_dup(url);
    if (!spec->key || !spec->name || !spec->base_api_url)
        goto nomem;
    if (has_key > 0) {
        spec->has_api_key = true;
        if (has_key == 1 && !(spec->api_key = pm_str_dup(api_key)))
            goto nomem;
    }
    if (models) {
        const msgpack_object_map *map = &models->via.map;
        spec->has_valid_models = true;
        spec->model_long = calloc(map->size + 1, sizeof(char *));
        spec->model_short = calloc(map->size + 1, sizeof(char *));
        if (!spec->model_long || !spec->model_short)
            goto nomem;
        for (uint32_t i = 0; i < map->size; i++) {
            const msgpack_object *k = &map->ptr[i].key, *v = &map->ptr[i].val;
            spec->model_long[i] = pm_str_dup((pm_str_t){k->via.str.ptr, k->via.str.size});
            if (!spec->model_long[i])
                goto nomem;
            spec->model_count = i + 1;
            spec->model_short[i] = pm_str_dup((pm_str_t){v->via.str.ptr, v->via.str.size});
            if (!spec->model_short[i])
                goto nomem;
        }
    }
    if (invalid) {
        const msgpack_object_array *arr = &invalid->via.array;
        spec->has_invalid_models = true;
        spec->invalid_models = calloc(arr->size + 1, sizeof(char *));
        if (!spec->invalid_models)
            goto nomem;
        for (uint32_t i = 0; i < arr->size; i++) {
            const msgpack_object *s = &arr->ptr[i];
            spec->invalid_models[i] = pm_str_dup((pm_str_t){s->via.str.ptr, s->via.str.size});
            if (!spec->invalid_models[i])
                goto nomem;
            spec->invalid_count = i + 1;
        }
    }
    return 0;

bad_key:
    snprintf(err, err_size,
             "argument 'provider' must be 1 to %d characters of a-z, 0-9, '.', '_', '-'",
             REGISTRY_MAX_KEY_LEN);
    return -1;
nomem:
    provider_spec_clear(spec);
    snprintf(err, err_size, "out of memory");
    return -2;
}

bool wire_reply_fits(size_t size)
{
    return size <= PM_PROTO_MAX_REPLY_SIZE;
}

void wire_pack_reply_too_large(msgpack_packer *pk, const msgpack_object *id, size_t size)
{
    /* v1's error codes are fixed and none says "too large"; internal is the service's own
     * limit, and the message says which. */
    char text[96];
    snprintf(text, sizeof text, "Reply of %zu bytes exceeds the 64 MiB reply limit", size);
    pm_reply_error(pk, id, PM_ERR_INTERNAL, text);
}

void wire_pack_error_spans(msgpack_packer *pk, const msgpack_object *id, pm_error_t code,
                           const char *format, pm_str_t first, pm_str_t second)
{
    /* Caller input is bounded by the message size limit, so the message is too; build it in
     * a buffer sized for the worst case rather than truncating the caller's text. */
    size_t cap = strlen(format) + first.len + second.len + 1;
    char small[512];
    char *text = cap <= sizeof small ? small : malloc(cap);
    if (!text) {
        pm_reply_error(pk, id, PM_ERR_INTERNAL, "out of memory");
        return;
    }
    size_t used = 0;
    int spans = 0;
    for (const char *f = format; *f; f++) {
        if (f[0] == '%' && f[1] == 's' && spans < 2) {
            pm_str_t span = spans++ == 0 ? first : second;
            if (span.len)
                memcpy(text + used, span.ptr, span.len);
            used += span.len;
            f++;
        } else {
            text[used++] = *f;
        }
    }
    text[used] = '\0';
    pm_reply_error_n(pk, id, code, text, used);
    if (text != small)
        free(text);
}
