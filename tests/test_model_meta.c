/*
 * test_model_meta: normalisation of /models metadata: each source field, precedence in
 * either order of arrival, wrong types and bad values ignored, unknown fields dropped,
 * copy / equal / clear.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "model_meta.h"

#include <stdlib.h>
#include <string.h>

static void s_int(model_meta_t *m, const char *name, long long value)
{
    model_meta_field_t f = {
        .name = name, .name_len = strlen(name), .type = MODEL_META_INT, .int_value = value};
    assert_int_equal(model_meta_offer(m, &f), 0);
}

static void s_str(model_meta_t *m, const char *name, const char *value)
{
    model_meta_field_t f = {.name = name,
                            .name_len = strlen(name),
                            .type = MODEL_META_STR,
                            .str = value,
                            .str_len = strlen(value)};
    assert_int_equal(model_meta_offer(m, &f), 0);
}

static void s_other(model_meta_t *m, const char *name)
{
    model_meta_field_t f = {.name = name, .name_len = strlen(name), .type = MODEL_META_OTHER};
    assert_int_equal(model_meta_offer(m, &f), 0);
}

static void test_context_precedence(void **state)
{
    (void)state;
    model_meta_t m = {0};
    s_int(&m, "max_context_length", 10);
    assert_true(m.has_context_length);
    assert_int_equal(m.context_length, 10);
    s_int(&m, "context_window", 20);
    assert_int_equal(m.context_length, 20);
    s_int(&m, "context_length", 30);
    assert_int_equal(m.context_length, 30);
    /* Lower-ranked sources never override, whatever the order. */
    s_int(&m, "context_window", 40);
    s_int(&m, "max_context_length", 50);
    assert_int_equal(m.context_length, 30);
    model_meta_clear(&m);

    s_int(&m, "context_window", 131072);
    s_int(&m, "max_context_length", 7);
    assert_int_equal(m.context_length, 131072);
    model_meta_clear(&m);
}

static void test_output_tokens(void **state)
{
    (void)state;
    model_meta_t m = {0};
    s_int(&m, "max_output_tokens", 100);
    assert_true(m.has_max_output_tokens);
    assert_int_equal(m.max_output_tokens, 100);
    s_int(&m, "max_completion_tokens", 200);
    assert_int_equal(m.max_output_tokens, 200);
    s_int(&m, "max_output_tokens", 300);
    assert_int_equal(m.max_output_tokens, 200);
    model_meta_clear(&m);
}

static void test_owned_by_and_created(void **state)
{
    (void)state;
    model_meta_t m = {0};
    s_str(&m, "owned_by", "openai");
    s_int(&m, "created", 1686935002);
    assert_string_equal(m.owned_by, "openai");
    assert_true(m.has_created);
    assert_int_equal(m.created, 1686935002);
    s_int(&m, "created", 0); /* the epoch is a time */
    assert_int_equal(m.created, 0);
    model_meta_clear(&m);
    assert_null(m.owned_by);
    model_meta_clear(&m); /* twice */
}

static void test_wrong_types_and_values_ignored(void **state)
{
    (void)state;
    model_meta_t m = {0};
    s_str(&m, "context_length", "128k");
    s_other(&m, "context_window");
    s_int(&m, "max_context_length", 0);
    s_int(&m, "max_completion_tokens", -1);
    s_int(&m, "owned_by", 42);
    s_str(&m, "owned_by", "");
    s_str(&m, "created", "yesterday");
    s_int(&m, "created", -5);
    char long_owner[MODEL_META_MAX_OWNED_BY + 2];
    memset(long_owner, 'o', sizeof long_owner - 1);
    long_owner[sizeof long_owner - 1] = '\0';
    s_str(&m, "owned_by", long_owner);
    model_meta_field_t nul = {
        .name = "owned_by", .name_len = 8, .type = MODEL_META_STR, .str = "a\0b", .str_len = 3};
    assert_int_equal(model_meta_offer(&m, &nul), 0);
    assert_true(model_meta_empty(&m));
    /* Unknown fields are dropped, and not "known". */
    s_int(&m, "id", 5);
    s_int(&m, "context_lengthX", 5);
    assert_true(model_meta_empty(&m));
    assert_false(model_meta_known("object", 6));
    assert_true(model_meta_known("context_window", 14));
    assert_false(model_meta_known("context_window", 7)); /* lengths compared */
    model_meta_clear(&m);
}

static void test_copy_and_equal(void **state)
{
    (void)state;
    model_meta_t a = {0};
    model_meta_t b = {0};
    assert_true(model_meta_equal(&a, &b));
    s_int(&a, "context_length", 8192);
    s_str(&a, "owned_by", "me");
    s_int(&a, "created", 5);
    assert_false(model_meta_equal(&a, &b));
    s_str(&b, "owned_by", "stale"); /* replaced by the copy */
    assert_int_equal(model_meta_copy(&b, &a), 0);
    assert_true(model_meta_equal(&a, &b));
    assert_ptr_not_equal(a.owned_by, b.owned_by);
    model_meta_clear(&a);
    assert_string_equal(b.owned_by, "me"); /* deep */
    assert_false(model_meta_equal(&a, &b));
    s_int(&a, "context_length", 8192);
    s_str(&a, "owned_by", "you");
    s_int(&a, "created", 5);
    assert_false(model_meta_equal(&a, &b));
    model_meta_clear(&a);
    model_meta_clear(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_context_precedence),
        cmocka_unit_test(test_output_tokens),
        cmocka_unit_test(test_owned_by_and_created),
        cmocka_unit_test(test_wrong_types_and_values_ignored),
        cmocka_unit_test(test_copy_and_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
