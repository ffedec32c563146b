/*
 * test_wire: ProviderConfig on the wire, the required-string reader, the set_provider argument
 * checks (every bad type, missing field and limit gives its exact bad_request message), and
 * error messages built from spans of caller text (NUL bytes and long text kept whole).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
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

/* ------------------------------------------------------------ set_provider arguments */

/* How one argument of a set_provider request is packed. */
typedef enum {
    ARG_DEFAULT, /* the valid value of the base request */
    ARG_ABSENT,
    ARG_STR, /* text, text_len */
    ARG_INT,
    ARG_NIL,
    ARG_MAP_INT_VALUE,    /* {"m": 1} */
    ARG_MAP_EMPTY_NAME,   /* {"": "m"} */
    ARG_ARRAY_EMPTY_NAME, /* [""] */
} arg_kind_t;

typedef struct {
    const char *field;
    arg_kind_t kind;
    const char *text;
    size_t text_len;
    const char *expected; /* the bad_request message */
} spec_case_t;

static const char *const s_fields[] = {"provider", "name",         "base_api_url",
                                       "api_key",  "valid_models", "invalid_models"};

/* Packs the base request {provider: groq, name: Groq, base_api_url: https://..., api_key: k,
 * valid_models: {llama: l}, invalid_models: [old]} with one field changed as c says. */
static void s_spec_request(pm_request_t *req, msgpack_sbuffer *buf, const spec_case_t *c)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    pm_request_begin(&pk, "set_provider", false, 0);
    uint32_t count = 6;
    for (size_t i = 0; i < 6; i++)
        count -= c && strcmp(c->field, s_fields[i]) == 0 && c->kind == ARG_ABSENT;
    msgpack_pack_map(&pk, count);
    for (size_t i = 0; i < 6; i++) {
        const char *field = s_fields[i];
        arg_kind_t kind = c && strcmp(c->field, field) == 0 ? c->kind : ARG_DEFAULT;
        if (kind == ARG_ABSENT)
            continue;
        pm_pack_str(&pk, field);
        switch (kind) {
        case ARG_STR:
            pm_pack_strn(&pk, c->text, c->text_len);
            break;
        case ARG_INT:
            msgpack_pack_int(&pk, 7);
            break;
        case ARG_NIL:
            msgpack_pack_nil(&pk);
            break;
        case ARG_MAP_INT_VALUE:
            msgpack_pack_map(&pk, 1);
            pm_pack_str(&pk, "m");
            msgpack_pack_int(&pk, 1);
            break;
        case ARG_MAP_EMPTY_NAME:
            msgpack_pack_map(&pk, 1);
            pm_pack_str(&pk, "");
            pm_pack_str(&pk, "m");
            break;
        case ARG_ARRAY_EMPTY_NAME:
            msgpack_pack_array(&pk, 1);
            pm_pack_str(&pk, "");
            break;
        default:
            if (i == 0) {
                pm_pack_str(&pk, "groq");
            } else if (i == 1) {
                pm_pack_str(&pk, "Groq");
            } else if (i == 2) {
                pm_pack_str(&pk, "https://api.groq.com/openai/v1");
            } else if (i == 3) {
                pm_pack_str(&pk, "gsk-test-key");
            } else if (i == 4) {
                msgpack_pack_map(&pk, 1);
                pm_pack_str(&pk, "llama");
                pm_pack_str(&pk, "l");
            } else {
                msgpack_pack_array(&pk, 1);
                pm_pack_str(&pk, "old");
            }
            break;
        }
    }
    char err[256];
    assert_int_equal(pm_request_decode(req, buf->data, buf->size, err, sizeof err), PM_OK);
}

static void test_spec_from_request_valid(void **state)
{
    (void)state;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    pm_request_t req;
    provider_spec_t spec;
    char err[256];
    s_spec_request(&req, &buf, NULL);
    assert_int_equal(wire_spec_from_request(&req, &spec, err, sizeof err), 0);
    assert_string_equal(spec.key, "groq");
    assert_string_equal(spec.name, "Groq");
    assert_string_equal(spec.base_api_url, "https://api.groq.com/openai/v1");
    assert_true(spec.has_api_key);
    assert_string_equal(spec.api_key, "gsk-test-key");
    assert_true(spec.has_valid_models);
    assert_int_equal(spec.model_count, 1);
    assert_string_equal(spec.model_long[0], "llama");
    assert_string_equal(spec.model_short[0], "l");
    assert_true(spec.has_invalid_models);
    assert_int_equal(spec.invalid_count, 1);
    assert_string_equal(spec.invalid_models[0], "old");
    provider_spec_clear(&spec);
    pm_request_clear(&req);

    /* api_key nil: an explicit "no key"; optional fields absent: not given. */
    spec_case_t nil_key = {"api_key", ARG_NIL, NULL, 0, NULL};
    buf.size = 0;
    s_spec_request(&req, &buf, &nil_key);
    assert_int_equal(wire_spec_from_request(&req, &spec, err, sizeof err), 0);
    assert_true(spec.has_api_key);
    assert_null(spec.api_key);
    provider_spec_clear(&spec);
    pm_request_clear(&req);
    spec_case_t no_models = {"valid_models", ARG_ABSENT, NULL, 0, NULL};
    buf.size = 0;
    s_spec_request(&req, &buf, &no_models);
    assert_int_equal(wire_spec_from_request(&req, &spec, err, sizeof err), 0);
    assert_false(spec.has_valid_models);
    assert_int_equal(spec.model_count, 0);
    provider_spec_clear(&spec);
    pm_request_clear(&req);
    msgpack_sbuffer_destroy(&buf);
}

static void test_spec_from_request_errors(void **state)
{
    (void)state;
    static char long_text[5000];
    memset(long_text, 'a', sizeof long_text);
    const char *bad_key =
        "argument 'provider' must be 1 to 64 characters of a-z, 0-9, '.', '_', '-'";
    const spec_case_t cases[] = {
        {"provider", ARG_ABSENT, NULL, 0, "missing required argument 'provider'"},
        {"provider", ARG_NIL, NULL, 0, "missing required argument 'provider'"},
        {"provider", ARG_INT, NULL, 0, "argument 'provider' must be a string"},
        {"provider", ARG_STR, "", 0, bad_key},
        {"provider", ARG_STR, long_text, 65, bad_key},
        {"provider", ARG_STR, "Groq", 4, bad_key},
        {"provider", ARG_STR, "gr oq", 5, bad_key},
        {"provider", ARG_STR, "g\0q", 3, "argument 'provider' must not contain NUL bytes"},
        {"name", ARG_ABSENT, NULL, 0, "missing required argument 'name'"},
        {"name", ARG_INT, NULL, 0, "argument 'name' must be a string"},
        {"name", ARG_STR, "", 0, "argument 'name' must not be empty"},
        {"name", ARG_STR, long_text, 1025, "argument 'name' is longer than 1024 bytes"},
        {"base_api_url", ARG_ABSENT, NULL, 0, "missing required argument 'base_api_url'"},
        {"base_api_url", ARG_INT, NULL, 0, "argument 'base_api_url' must be a string"},
        {"base_api_url", ARG_STR, long_text, 2049,
         "argument 'base_api_url' is longer than 2048 bytes"},
        {"base_api_url", ARG_STR, "ftp://x", 7,
         "argument 'base_api_url' must begin with http:// or https://"},
        {"base_api_url", ARG_STR, "http://", 7,
         "argument 'base_api_url' must begin with http:// or https://"},
        {"api_key", ARG_INT, NULL, 0, "argument 'api_key' must be a string"},
        {"api_key", ARG_STR, long_text, 4097, "argument 'api_key' is longer than 4096 bytes"},
        {"valid_models", ARG_INT, NULL, 0, "argument 'valid_models' must be a map of strings"},
        {"valid_models", ARG_MAP_INT_VALUE, NULL, 0,
         "argument 'valid_models' must be a map of strings"},
        {"valid_models", ARG_MAP_EMPTY_NAME, NULL, 0,
         "argument 'valid_models' names must be 1 to 1024 bytes long"},
        {"invalid_models", ARG_STR, "old", 3,
         "argument 'invalid_models' must be an array of strings"},
        {"invalid_models", ARG_ARRAY_EMPTY_NAME, NULL, 0,
         "argument 'invalid_models' names must be 1 to 1024 bytes long"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        msgpack_sbuffer buf;
        msgpack_sbuffer_init(&buf);
        pm_request_t req;
        provider_spec_t spec;
        char err[256] = "";
        s_spec_request(&req, &buf, &cases[i]);
        int rc = wire_spec_from_request(&req, &spec, err, sizeof err);
        if (rc != -1 || strcmp(err, cases[i].expected) != 0)
            fail_msg("case %zu (%s): rc %d, \"%s\", expected \"%s\"", i, cases[i].field, rc, err,
                     cases[i].expected);
        /* Nothing allocated on a refusal. */
        assert_null(spec.key);
        assert_null(spec.model_long);
        pm_request_clear(&req);
        msgpack_sbuffer_destroy(&buf);
    }
}

/* The reply limit: up to PM_PROTO_MAX_REPLY_SIZE fits, one byte more does not, and the reply
 * sent instead is internal with the size in its message. */
static void test_reply_limit(void **state)
{
    (void)state;
    assert_true(wire_reply_fits(0));
    assert_true(wire_reply_fits(PM_PROTO_MAX_REPLY_SIZE));
    assert_false(wire_reply_fits((size_t)PM_PROTO_MAX_REPLY_SIZE + 1));
    assert_false(wire_reply_fits(SIZE_MAX));

    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_object id = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = 42};
    wire_pack_reply_too_large(&pk, &id, 70000001);
    pm_reply_t rep;
    char err[256];
    assert_int_equal(pm_reply_decode(&rep, buf.data, buf.size, err, sizeof err), 0);
    assert_false(rep.ok);
    assert_int_equal(rep.code, PM_ERR_INTERNAL);
    assert_non_null(rep.id);
    assert_int_equal(rep.id->via.u64, 42);
    const char *expected = "Reply of 70000001 bytes exceeds the 64 MiB reply limit";
    assert_int_equal(rep.message.len, strlen(expected));
    assert_memory_equal(rep.message.ptr, expected, strlen(expected));
    pm_reply_clear(&rep);
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
        cmocka_unit_test(test_spec_from_request_valid),
        cmocka_unit_test(test_spec_from_request_errors),
        cmocka_unit_test(test_error_spans_keep_text_whole),
        cmocka_unit_test(test_reply_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
