/*
 * test_model_meta: the metadata value type (clear, deep copy, failure leaves dst intact).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "model_meta.h"

#include <stdlib.h>
#include <string.h>

static void test_copy_is_deep(void **state)
{
    (void)state;
    char owner[] = "openai";
    model_meta_t src = {.has_context_length = true,
                        .context_length = 128000,
                        .has_max_output_tokens = true,
                        .max_output_tokens = 4096,
                        .owned_by = owner,
                        .has_created = true,
                        .created = 1700000000};
    model_meta_t dst = {0};
    assert_int_equal(model_meta_copy(&dst, &src), 0);
    assert_true(dst.has_context_length);
    assert_int_equal(dst.context_length, 128000);
    assert_true(dst.has_max_output_tokens);
    assert_int_equal(dst.max_output_tokens, 4096);
    assert_true(dst.has_created);
    assert_int_equal(dst.created, 1700000000);
    assert_non_null(dst.owned_by);
    assert_ptr_not_equal(dst.owned_by, owner);
    assert_string_equal(dst.owned_by, "openai");
    owner[0] = 'X'; /* the copy owns its own text */
    assert_string_equal(dst.owned_by, "openai");
    model_meta_clear(&dst);
    assert_null(dst.owned_by);
    assert_false(dst.has_context_length);
    assert_false(dst.has_max_output_tokens);
    assert_false(dst.has_created);
}

static void test_copy_replaces_previous_value(void **state)
{
    (void)state;
    model_meta_t first = {.has_context_length = true, .context_length = 8192};
    first.owned_by = malloc(5);
    assert_non_null(first.owned_by);
    memcpy(first.owned_by, "acme", 5);
    model_meta_t empty = {0};
    /* Copying an empty value over a full one leaves every key absent and frees owned_by
     * (valgrind / ASan would report the leak otherwise). */
    assert_int_equal(model_meta_copy(&first, &empty), 0);
    assert_false(first.has_context_length);
    assert_null(first.owned_by);
    assert_int_equal(model_meta_copy(&first, &first), 0);
    model_meta_clear(&first);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    model_meta_t m = {0};
    assert_int_equal(model_meta_copy(NULL, &m), -1);
    assert_int_equal(model_meta_copy(&m, NULL), -1);
    model_meta_clear(NULL); /* safe */
    model_meta_clear(&m);
    model_meta_clear(&m); /* twice */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy_is_deep),
        cmocka_unit_test(test_copy_replaces_previous_value),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
