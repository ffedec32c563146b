/*
 * test_provider_spec: unit tests of the layering (registry/provider_spec.h): a spec creates a
 * provider or changes the given fields of an existing one, merge and replace modes for
 * valid_models, invalid_models replaced, pinning, and all-or-nothing failures.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry_fixture.h"

/* ---------------------------------------------------------------------------- layering */

static void test_apply_spec_new_and_merge(void **state)
{
    (void)state;
    registry_t *reg = make_fixture();
    provider_spec_t spec;

    /* A new provider without name and URL: the key as name, "" as URL; appended. */
    spec_init(&spec, "mistral", NULL, NULL);
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_MERGE_MODELS, true), 0);
    provider_spec_clear(&spec);
    assert_null(spec.key);
    assert_int_equal(registry_count(reg), 5);
    const provider_t *mistral = registry_at(reg, 4);
    assert_string_equal(provider_key(mistral), "mistral");
    assert_string_equal(provider_name(mistral), "mistral");
    assert_string_equal(provider_base_api_url(mistral), "");
    assert_null(provider_api_key(mistral));
    assert_int_equal(provider_model_count(mistral), 0);
    assert_true(provider_pinned(mistral));

    /* Per-field merge on an existing provider: only the given fields change. */
    spec_init(&spec, "openai", NULL, "https://proxy.test/v1");
    spec.has_api_key = true;
    spec.api_key = xstrdup("sk-test-0001");
    const model_pair_t merge[] = {{"gpt-4o", "omni"}, {"o3", NULL}, {"o4-mini", "o4m"}};
    spec_models(&spec, merge, COUNT_OF(merge));
    const char *invalid[] = {"davinci", "babbage", "davinci"};
    spec_invalid(&spec, invalid, COUNT_OF(invalid));
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_MERGE_MODELS, false), 0);
    provider_spec_clear(&spec);
    const provider_t *openai = registry_get(reg, "openai", 6);
    assert_ptr_equal(openai, registry_at(reg, 0));
    assert_string_equal(provider_name(openai), "OpenAI");
    assert_string_equal(provider_base_api_url(openai), "https://proxy.test/v1");
    assert_string_equal(provider_stored_api_key(openai), "sk-test-0001");
    assert_false(provider_pinned(openai));
    const model_pair_t merged[] = {
        {"gpt-4o-2024-08-06", "4o"}, {"gpt-4o-mini-2024-07-18", "4o-mini"},
        {"gpt-4o", "omni"},          {"o3", NULL},
        {"o4-mini", "o4m"},
    };
    expect_models(openai, merged, COUNT_OF(merged));
    assert_int_equal(provider_invalid_count(openai), 2);
    assert_string_equal(provider_invalid_at(openai, 0), "davinci");
    assert_string_equal(provider_invalid_at(openai, 1), "babbage");
    assert_int_equal(registry_model_count(reg), COUNT_OF(FIXTURE_MERGED) + 2);

    /* api_key given as nil clears the stored key; pinned is never unmarked; invalid_models not
     * given are kept; the environment's key is not the stored one. */
    spec_init(&spec, "mistral", "Mistral AI", NULL);
    spec.has_api_key = true;
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_MERGE_MODELS, false), 0);
    provider_spec_clear(&spec);
    assert_string_equal(provider_name(registry_get(reg, "mistral", 7)), "Mistral AI");
    assert_true(provider_pinned(registry_get(reg, "mistral", 7)));
    provider_t *editable = registry_edit(reg, "openai");
    assert_int_equal(provider_set_env_api_key(editable, "sk-env-9999"), 0);
    spec_init(&spec, "openai", NULL, NULL);
    spec.has_api_key = true;
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_MERGE_MODELS, false), 0);
    provider_spec_clear(&spec);
    openai = registry_get(reg, "openai", 6);
    assert_null(provider_stored_api_key(openai));
    assert_string_equal(provider_api_key(openai), "sk-env-9999");
    assert_int_equal(provider_invalid_count(openai), 2);

    /* Merging short names over several first holders at once (one index rebuild). */
    const model_pair_t three[] = {{"a", "s"}, {"b", "s"}, {"c", "s"}};
    put_provider(reg, "multi", "Multi", "https://m.test", three, 3);
    spec_init(&spec, "multi", NULL, NULL);
    const model_pair_t shorts[] = {{"a", "x"}, {"b", "y"}};
    spec_models(&spec, shorts, 2);
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_MERGE_MODELS, false), 0);
    provider_spec_clear(&spec);
    const provider_t *multi = registry_get(reg, "multi", 5);
    assert_string_equal(provider_find_model(multi, "s", 1), "c");
    assert_string_equal(provider_find_model(multi, "x", 1), "a");
    assert_string_equal(provider_find_model(multi, "y", 1), "b");

    assert_int_equal(registry_seal(reg), 0);
    expect_resolved(reg, "omni", "openai", "gpt-4o");
    expect_resolved(reg, "o4m", "openai", "o4-mini");
    expect_resolved(reg, "s", "multi", "c");
    registry_destroy(&reg);
}

static void test_apply_spec_replace_models(void **state)
{
    (void)state;
    registry_t *reg = make_fixture();
    provider_spec_t spec;
    spec_init(&spec, "groq", "Groq Cloud", "https://api.groq.com/openai/v1");
    const model_pair_t models[] = {{"llama-3.3-70b", "l70"}, {"mixtral-8x7b", NULL}};
    spec_models(&spec, models, COUNT_OF(models));
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_REPLACE_MODELS, false), 0);
    provider_spec_clear(&spec);
    const provider_t *groq = registry_get(reg, "groq", 4);
    assert_ptr_equal(groq, registry_at(reg, 3));
    assert_string_equal(provider_name(groq), "Groq Cloud");
    expect_models(groq, models, COUNT_OF(models));
    assert_null(provider_find_model(groq, "shared", 6));
    assert_null(provider_find_model(groq, "mixtral", 7));
    assert_int_equal(registry_model_count(reg), COUNT_OF(FIXTURE_MERGED) - 1);

    /* Replace mode without valid_models keeps the models. */
    spec_init(&spec, "groq", NULL, NULL);
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_REPLACE_MODELS, false), 0);
    provider_spec_clear(&spec);
    expect_models(registry_get(reg, "groq", 4), models, COUNT_OF(models));

    /* An empty map replaces everything with nothing. */
    spec_init(&spec, "groq", NULL, NULL);
    spec_models(&spec, NULL, 0);
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_REPLACE_MODELS, false), 0);
    provider_spec_clear(&spec);
    assert_int_equal(provider_model_count(registry_get(reg, "groq", 4)), 0);
    assert_int_equal(registry_model_count(reg), COUNT_OF(FIXTURE_MERGED) - 3);
    registry_destroy(&reg);
}

static void test_apply_spec_failure_is_atomic(void **state)
{
    (void)state;
    registry_t *reg = make_fixture();
    const provider_t *openai = registry_get(reg, "openai", 6);
    provider_spec_t spec;

    spec_init(&spec, "Bad Key", "Bad", "https://bad.test");
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_MERGE_MODELS, true), -1);
    provider_spec_clear(&spec);
    spec_init(&spec, NULL, "Bad", "https://bad.test");
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_MERGE_MODELS, true), -1);
    provider_spec_clear(&spec);
    assert_int_equal(registry_count(reg), 4);
    assert_false(registry_contains(reg, "Bad Key", 7));

    /* A bad entry late in the spec: the name given earlier in it is not applied either. */
    spec_init(&spec, "openai", "Renamed", NULL);
    const model_pair_t models[] = {{"o3", NULL}, {"o4", NULL}};
    spec_models(&spec, models, 2);
    free(spec.model_long[1]);
    spec.model_long[1] = NULL;
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_REPLACE_MODELS, true), -1);
    provider_spec_clear(&spec);
    assert_ptr_equal(registry_get(reg, "openai", 6), openai);
    assert_string_equal(provider_name(openai), "OpenAI");
    assert_false(provider_pinned(openai));
    expect_models(openai, OPENAI_MODELS, COUNT_OF(OPENAI_MODELS));
    assert_int_equal(registry_model_count(reg), COUNT_OF(FIXTURE_MERGED));

    spec_init(&spec, "openai", "Renamed", NULL);
    spec.has_invalid_models = true;
    spec.invalid_count = 2; /* but no array */
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_MERGE_MODELS, false), -1);
    spec.has_invalid_models = false;
    spec.invalid_count = 0;
    provider_spec_clear(&spec);
    assert_string_equal(provider_name(registry_get(reg, "openai", 6)), "OpenAI");
    registry_destroy(&reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_apply_spec_new_and_merge),
        cmocka_unit_test(test_apply_spec_replace_models),
        cmocka_unit_test(test_apply_spec_failure_is_atomic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
