/*
 * wire: registry values and error replies in the wire format. See wire.h.
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
