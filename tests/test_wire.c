/*
 * test_wire: ProviderConfig on the wire, the required-string reader and error messages built
 * from spans of caller text (NUL bytes and long text kept whole).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "wire.h"

#include <string.h>

static void s_unpack(const msgpack_sbuffer *buf, msgpack_unpacked *up)
{
    msgpack_unpacked_init(up);
    assert_int_equal(msgpack_unpack_next(up, buf->data, buf->size, NULL), MSGPACK_UNPACK_SUCCESS);
}

static void s_assert_str(const msgpack_object *obj, const char *expected)
{
    assert_non_null(obj);
    assert_int_equal(obj->type, MSGPACK_OBJECT_STR);
    assert_int_equal(obj->via.str.size, strlen(expected));
    assert_memory_equal(obj->via.str.ptr, expected, strlen(expected));
}

static void test_provider_config_shape(void **state)
{
    (void)state;
    provider_t *p = provider_new("openai", "OpenAI", "https://api.openai.com/v1");
    assert_non_null(p);
    assert_int_equal(provider_put_model(p, "gpt-4o", "4o"), 0);
    assert_int_equal(provider_put_model(p, "gpt-4o-mini", NULL), 0);
    const char *invalid[] = {"davinci"};
    assert_int_equal(provider_set_invalid_models(p, invalid, 1), 0);
    const char *cached[] = {"gpt-4o", "davinci"};
    assert_int_equal(provider_set_cached_models(p, cached, 2, 100.0), 0);
    assert_int_equal(provider_set_api_key(p, "sk-stored-000000000000"), 0);
    assert_int_equal(provider_set_env_api_key(p, "sk-environment-1111111111"), 0);

    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    wire_pack_provider(&pk, p);
    msgpack_unpacked up;
    s_unpack(&buf, &up);
    const msgpack_object *root = &up.data;
    assert_int_equal(root->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(root->via.map.size, 6); /* no runtime-only field */
    s_assert_str(pm_map_get(root, "provider"), "openai");
    s_assert_str(pm_map_get(root, "name"), "OpenAI");
    s_assert_str(pm_map_get(root, "base_api_url"), "https://api.openai.com/v1");
    s_assert_str(pm_map_get(root, "api_key"), "sk-environment-1111111111"); /* effective */
    const msgpack_object *models = pm_map_get(root, "valid_models");
    assert_int_equal(models->via.map.size, 2);
    s_assert_str(&models->via.map.ptr[0].key, "gpt-4o");
    s_assert_str(&models->via.map.ptr[0].val, "4o");
    s_assert_str(&models->via.map.ptr[1].key, "gpt-4o-mini");
    s_assert_str(&models->via.map.ptr[1].val, "gpt-4o-mini");
    const msgpack_object *bad = pm_map_get(root, "invalid_models");
    assert_int_equal(bad->via.array.size, 1);
    s_assert_str(&bad->via.array.ptr[0], "davinci");
    msgpack_unpacked_destroy(&up);

    /* No key at all: nil. */
    assert_int_equal(provider_set_env_api_key(p, NULL), 0);
    assert_int_equal(provider_set_api_key(p, NULL), 0);
    buf.size = 0;
    wire_pack_provider(&pk, p);
    s_unpack(&buf, &up);
    assert_int_equal(pm_map_get(&up.data, "api_key")->type, MSGPACK_OBJECT_NIL);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&buf);
    provider_destroy(&p);
}

/* Decodes a request {"op": "get", "args": args_json-ish} built by the caller's packer. */
static void s_request(pm_request_t *req, msgpack_sbuffer *buf, const char *name, const char *value,
                      size_t len)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, "get", false, 0);
    msgpack_pack_map(&pk, 1);
    pm_pack_str(&pk, name);
    pm_pack_strn(&pk, value, len);
    char err[256];
    assert_int_equal(pm_request_decode(req, buf->data, buf->size, err, sizeof err), PM_OK);
}

static void test_required_str(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    pm_request_t req;
    pm_str_t out;
    char err[256];

    s_request(&req, &buf, "provider", "groq", 4);
    assert_int_equal(wire_required_str(&req, "provider", 64, &out, err, sizeof err), 0);
    assert_int_equal(out.len, 4);
    assert_memory_equal(out.ptr, "groq", 4);
    assert_int_equal(wire_required_str(&req, "name", 64, &out, err, sizeof err), -1);
    assert_string_equal(err, "missing required argument 'name'");
    assert_int_equal(wire_required_str(&req, "provider", 3, &out, err, sizeof err), -1);
    assert_string_equal(err, "argument 'provider' is longer than 3 bytes");
    pm_request_clear(&req);

    buf.size = 0;
    s_request(&req, &buf, "provider", "", 0);
    assert_int_equal(wire_required_str(&req, "provider", 64, &out, err, sizeof err), -1);
    assert_string_equal(err, "argument 'provider' must not be empty");
    pm_request_clear(&req);
    msgpack_sbuffer_destroy(&buf);
}

static void test_error_spans_keep_text_whole(void **state)
{
    (void)state;
    char long_text[3000];
    memset(long_text, 'x', sizeof long_text);
    pm_str_t first = {"a\0b", 3}, second = {long_text, sizeof long_text};
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    wire_pack_error_spans(&pk, NULL, PM_ERR_INVALID_MODEL, "Invalid model for provider %s: %s",
                          first, second);
    pm_reply_t rep;
    char err[256];
    assert_int_equal(pm_reply_decode(&rep, buf.data, buf.size, err, sizeof err), 0);
    assert_false(rep.ok);
    assert_int_equal(rep.code, PM_ERR_INVALID_MODEL);
    size_t expected = strlen("Invalid model for provider ") + 3 + 2 + sizeof long_text;
    assert_int_equal(rep.message.len, expected);
    assert_memory_equal(rep.message.ptr, "Invalid model for provider a\0b: xxx", 35);
    pm_reply_clear(&rep);
    msgpack_sbuffer_destroy(&buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_provider_config_shape),
        cmocka_unit_test(test_required_str),
        cmocka_unit_test(test_error_spans_keep_text_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
