/*
 * test_builtin_providers: the built-in baseline table (the seed's PROVIDER_DATA).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "builtin_providers.h"
#include "registry.h"

#include <string.h>

static bool s_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void test_table_has_the_seed_baseline(void **state)
{
    (void)state;
    static const char *const expected[][3] = {
        {"openai", "https://api.openai.com/v1", "OPENAI_API_KEY"},
        {"anthropic", "https://api.anthropic.com/v1/", "ANTHROPIC_API_KEY"},
        {"gemini", "https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"},
        {"groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"},
        {"mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"},
        {"deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"},
        {"together", "https://api.together.ai/v1", "TOGETHER_API_KEY"},
        {"openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"},
        {"xai", "https://api.x.ai/v1", "XAI_API_KEY"},
        {"fireworks", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"},
        {"cerebras", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"},
        {"perplexity", "https://api.perplexity.ai", "PERPLEXITY_API_KEY"},
        {"ollama", "http://localhost:11434/v1", "OLLAMA_API_KEY"},
        {"vllm", "http://localhost:8000/v1", "VLLM_API_KEY"},
        {"lmstudio", "http://localhost:1234/v1", "LMSTUDIO_API_KEY"},
    };
    size_t count = 0;
    const builtin_provider_t *table = builtin_providers(&count);
    assert_non_null(table);
    assert_int_equal(count, sizeof expected / sizeof expected[0]);
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        const builtin_provider_t *entry = builtin_provider_find(expected[i][0]);
        assert_non_null(entry);
        assert_string_equal(entry->key, expected[i][0]);
        assert_string_equal(entry->base_api_url, expected[i][1]);
        assert_string_equal(entry->api_key_env, expected[i][2]);
    }
    /* OpenAI comes first, as in the seed's table. */
    assert_string_equal(table[0].key, "openai");
}

static void test_every_entry_is_well_formed(void **state)
{
    (void)state;
    size_t count = 0;
    const builtin_provider_t *table = builtin_providers(&count);
    assert_true(count >= 15);
    for (size_t i = 0; i < count; i++) {
        const builtin_provider_t *entry = &table[i];
        assert_non_null(entry->key);
        assert_true(provider_key_valid(entry->key, strlen(entry->key)));
        assert_non_null(entry->name);
        assert_true(strlen(entry->name) > 0);
        assert_true(strlen(entry->name) <= REGISTRY_MAX_NAME_LEN);
        assert_true(strncmp(entry->base_api_url, "http://", 7) == 0 ||
                    strncmp(entry->base_api_url, "https://", 8) == 0);
        assert_true(strlen(entry->base_api_url) <= REGISTRY_MAX_URL_LEN);
        assert_true(s_ends_with(entry->api_key_env, "_API_KEY"));
        for (const char *c = entry->api_key_env; *c; c++)
            assert_true((*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_');
        for (size_t j = 0; j < i; j++) {
            assert_string_not_equal(table[j].key, entry->key);
            assert_string_not_equal(table[j].api_key_env, entry->api_key_env);
        }
        /* Remote services use TLS; only the local servers are plain http on localhost. */
        if (strncmp(entry->base_api_url, "http://", 7) == 0)
            assert_true(strncmp(entry->base_api_url, "http://localhost:", 17) == 0);
    }
}

static void test_find(void **state)
{
    (void)state;
    size_t count = 0;
    const builtin_provider_t *table = builtin_providers(&count);
    for (size_t i = 0; i < count; i++)
        assert_ptr_equal(builtin_provider_find(table[i].key), &table[i]);
    assert_null(builtin_provider_find("nope"));
    assert_null(builtin_provider_find(""));
    assert_null(builtin_provider_find(NULL));
    assert_null(builtin_provider_find("OpenAI")); /* keys are exact, lower-case */
    assert_null(builtin_provider_find("openai "));
    /* count is optional */
    assert_ptr_equal(builtin_providers(NULL), table);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_has_the_seed_baseline),
        cmocka_unit_test(test_every_entry_is_well_formed),
        cmocka_unit_test(test_find),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
