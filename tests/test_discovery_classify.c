/*
 * test_discovery_classify: the response classification table, every row (first match wins),
 * including the body phrases that turn a 400/422 into "this model does not exist".
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "discovery_classify.h"

#include <curl/curl.h>
#include <string.h>

/* ============================================================================ classify */

static void test_classify_success(void **state)
{
    (void)state;
    const char *length = "{\"choices\":[{\"finish_reason\":\"length\",\"message\":{}}]}";
    assert_int_equal(discovery_classify(200, 0, length, strlen(length)), DISCOVERY_VERDICT_VALID);
    assert_int_equal(discovery_classify(201, 0, NULL, 0), DISCOVERY_VERDICT_VALID);
    assert_int_equal(discovery_classify(299, 0, "", 0), DISCOVERY_VERDICT_VALID);
}

static void test_classify_not_found(void **state)
{
    (void)state;
    const char *body = "{\"error\":{\"message\":\"rate\"}}";
    assert_int_equal(discovery_classify(404, 0, NULL, 0), DISCOVERY_VERDICT_INVALID_MODEL);
    assert_int_equal(discovery_classify(404, 0, body, strlen(body)),
                     DISCOVERY_VERDICT_INVALID_MODEL);
}

static void s_expect(long status, const char *body, discovery_verdict_t verdict)
{
    discovery_verdict_t got = discovery_classify(status, 0, body, body ? strlen(body) : 0);
    if (got != verdict)
        fail_msg("HTTP %ld %s: got %s, expected %s", status, body ? body : "(null)",
                 discovery_verdict_name(got), discovery_verdict_name(verdict));
}

static void test_classify_bad_request_model_missing(void **state)
{
    (void)state;
    const char *missing[] = {
        "{\"error\":{\"message\":\"The model `gpt-x` does not exist\",\"type\":\"invalid\"}}",
        "{\"error\":{\"message\":\"oops\",\"code\":\"model_not_found\"}}",
        "{\"error\":{\"message\":\"Model Not Found: x\"}}",
        "{\"error\":{\"message\":\"This model is NOT SUPPORTED for chat\"}}",
        "{\"error\":{\"message\":\"Invalid model: x\"}}",
        "{\"error\":{\"message\":\"x is not a chat model\"}}",
        "{\"error\":{\"message\":\"this model does not support chat completions\"}}",
        "{\"error\":\"model x not found\"}",
        "{\"detail\":\"Unknown model x\"}",
        "{\"detail\":[{\"loc\":[\"body\",\"model\"],\"msg\":\"invalid model id\"}]}",
        "model xyz does not exist",                     /* not JSON: the raw body */
        "{\"unrelated\":\"the model does not exist\"}", /* JSON without error fields: raw */
    };
    for (size_t i = 0; i < sizeof missing / sizeof *missing; i++) {
        s_expect(400, missing[i], DISCOVERY_VERDICT_INVALID_MODEL);
        s_expect(422, missing[i], DISCOVERY_VERDICT_INVALID_MODEL);
    }
}

static void test_classify_bad_request_other(void **state)
{
    (void)state;
    const char *other[] = {
        NULL,
        "",
        "{\"error\":{\"message\":\"max_tokens is too large\"}}",
        "{\"error\":{\"message\":\"API key not found\"}}", /* no "model": not a model verdict */
        "{\"error\":{\"message\":\"bad\",\"type\":\"invalid_model_request\"}}", /* type ignored */
        "{\"error\":{\"message\":\"temperature not supported\"}}",
        "bad request",
    };
    for (size_t i = 0; i < sizeof other / sizeof *other; i++) {
        s_expect(400, other[i], DISCOVERY_VERDICT_ERROR);
        s_expect(422, other[i], DISCOVERY_VERDICT_ERROR);
    }
}

static void test_classify_auth(void **state)
{
    (void)state;
    /* Even when the body talks about a model, 401/403 fail the provider. */
    s_expect(401, "{\"error\":{\"message\":\"model not found\"}}", DISCOVERY_VERDICT_AUTH_ERROR);
    s_expect(401, NULL, DISCOVERY_VERDICT_AUTH_ERROR);
    s_expect(403, "forbidden", DISCOVERY_VERDICT_AUTH_ERROR);
}

static void test_classify_transient_status(void **state)
{
    (void)state;
    const long statuses[] = {408, 409, 425, 429, 500, 502, 503, 504, 599};
    for (size_t i = 0; i < sizeof statuses / sizeof *statuses; i++)
        s_expect(statuses[i], "{\"error\":{\"message\":\"model not found\"}}",
                 DISCOVERY_VERDICT_TRANSIENT);
}

static void test_classify_transport(void **state)
{
    (void)state;
    const int transient[] = {CURLE_OPERATION_TIMEDOUT,   CURLE_COULDNT_CONNECT,
                             CURLE_COULDNT_RESOLVE_HOST, CURLE_SEND_ERROR,
                             CURLE_RECV_ERROR,           CURLE_GOT_NOTHING,
                             CURLE_PARTIAL_FILE,         CURLE_SSL_CONNECT_ERROR};
    for (size_t i = 0; i < sizeof transient / sizeof *transient; i++) {
        assert_int_equal(discovery_classify(0, transient[i], NULL, 0), DISCOVERY_VERDICT_TRANSIENT);
        /* A failed transfer is judged by its curl code, whatever status was seen. */
        assert_int_equal(discovery_classify(200, transient[i], NULL, 0),
                         DISCOVERY_VERDICT_TRANSIENT);
    }
    const int fatal[] = {CURLE_PEER_FAILED_VERIFICATION, CURLE_URL_MALFORMAT,
                         CURLE_UNSUPPORTED_PROTOCOL, CURLE_WRITE_ERROR, CURLE_FILESIZE_EXCEEDED};
    for (size_t i = 0; i < sizeof fatal / sizeof *fatal; i++)
        assert_int_equal(discovery_classify(200, fatal[i], NULL, 0), DISCOVERY_VERDICT_ERROR);
}

static void test_classify_anything_else(void **state)
{
    (void)state;
    const long statuses[] = {0, 100, 199, 301, 302, 304, 402, 405, 410, 418, 451, 499, 600};
    for (size_t i = 0; i < sizeof statuses / sizeof *statuses; i++)
        s_expect(statuses[i], "{\"error\":{\"message\":\"model not found\"}}",
                 DISCOVERY_VERDICT_ERROR);
    assert_string_equal(discovery_verdict_name(DISCOVERY_VERDICT_INVALID_MODEL), "invalid_model");
}

static void test_verdict_names(void **state)
{
    (void)state;
    assert_string_equal(discovery_verdict_name(DISCOVERY_VERDICT_VALID), "valid");
    assert_string_equal(discovery_verdict_name(DISCOVERY_VERDICT_INVALID_MODEL), "invalid_model");
    assert_string_equal(discovery_verdict_name(DISCOVERY_VERDICT_AUTH_ERROR), "auth");
    assert_string_equal(discovery_verdict_name(DISCOVERY_VERDICT_TRANSIENT), "transient");
    assert_string_equal(discovery_verdict_name(DISCOVERY_VERDICT_ERROR), "error");
    assert_string_equal(discovery_verdict_name((discovery_verdict_t)99), "error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify_success),
        cmocka_unit_test(test_classify_not_found),
        cmocka_unit_test(test_classify_bad_request_model_missing),
        cmocka_unit_test(test_classify_bad_request_other),
        cmocka_unit_test(test_classify_auth),
        cmocka_unit_test(test_classify_transient_status),
        cmocka_unit_test(test_classify_transport),
        cmocka_unit_test(test_classify_anything_else),
        cmocka_unit_test(test_verdict_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
