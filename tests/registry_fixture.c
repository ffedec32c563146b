/*
 * registry_fixture: what the registry core's suites share (test_provider, test_registry,
 * test_provider_spec): the four-provider fixture of the seed's examples, its merged_models
 * order, and helpers that build providers and specs and check models and resolutions with
 * cmocka assertions. Test code only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "registry_fixture.h"

provider_t *make_provider(const char *key, const char *name, const char *url,
                          const model_pair_t *models, size_t count)
{
    provider_t *provider = provider_new(key, name, url);
    assert_non_null(provider);
    for (size_t i = 0; i < count; i++)
        assert_int_equal(provider_put_model(provider, models[i].long_name, models[i].short_name),
                         0);
    return provider;
}

void put_provider(registry_t *reg, const char *key, const char *name, const char *url,
                  const model_pair_t *models, size_t count)
{
    provider_t *provider = make_provider(key, name, url, models, count);
    assert_int_equal(registry_put(reg, &provider), 0);
    assert_null(provider);
}

const model_pair_t OPENAI_MODELS[] = {
    {"gpt-4o-2024-08-06", "4o"},
    {"gpt-4o-mini-2024-07-18", "4o-mini"},
    {"gpt-4o", NULL},
};

const model_pair_t ANTHROPIC_MODELS[] = {
    {"claude-3-5-sonnet-20241022", "sonnet"},
};

const model_pair_t TOGETHER_MODELS[] = {
    {"meta-llama/Llama-3-8B", "llama3-8b"},
    {"shared-model", NULL},
};

const model_pair_t GROQ_MODELS[] = {
    {"Llama-3-8B", NULL},
    {"shared-model", "shared"},
    {"mixtral-8x7b", "mixtral"},
};

/* The four providers most tests use, in this order; unsealed. */
registry_t *make_fixture(void)
{
    registry_t *reg = registry_new();
    assert_non_null(reg);
    put_provider(reg, "openai", "OpenAI", "https://api.openai.com/v1", OPENAI_MODELS,
                 COUNT_OF(OPENAI_MODELS));
    put_provider(reg, "anthropic", "Anthropic", "https://api.anthropic.com/v1", ANTHROPIC_MODELS,
                 COUNT_OF(ANTHROPIC_MODELS));
    put_provider(reg, "together", "Together AI", "https://api.together.xyz/v1", TOGETHER_MODELS,
                 COUNT_OF(TOGETHER_MODELS));
    put_provider(reg, "groq", "Groq", "https://api.groq.com/openai/v1", GROQ_MODELS,
                 COUNT_OF(GROQ_MODELS));
    return reg;
}

int setup_sealed(void **state)
{
    registry_t *reg = make_fixture();
    assert_int_equal(registry_seal(reg), 0);
    *state = reg;
    return 0;
}

int teardown_registry(void **state)
{
    registry_t *reg = *state;
    registry_destroy(&reg);
    assert_null(reg);
    return 0;
}

const merged_t FIXTURE_MERGED[] = {
    {"openai", "gpt-4o-2024-08-06", "4o"},
    {"openai", "gpt-4o-mini-2024-07-18", "4o-mini"},
    {"openai", "gpt-4o", "gpt-4o"},
    {"anthropic", "claude-3-5-sonnet-20241022", "sonnet"},
    {"together", "meta-llama/Llama-3-8B", "llama3-8b"},
    {"together", "shared-model", "shared-model"},
    {"groq", "Llama-3-8B", "Llama-3-8B"},
    {"groq", "shared-model", "shared"},
    {"groq", "mixtral-8x7b", "mixtral"},
};

/* Resolves text and checks a success: provider key and LONG name. */
void expect_resolved(const registry_t *reg, const char *text, const char *key,
                     const char *long_name)
{
    registry_resolution_t res;
    registry_status_t status = registry_resolve(reg, text, strlen(text), &res);
    if (status != REGISTRY_RESOLVED)
        fail_msg("'%s' did not resolve (status %d)", text, (int)status);
    assert_non_null(res.provider);
    assert_string_equal(provider_key(res.provider), key);
    assert_string_equal(res.long_name, long_name);
}

char *xstrdup(const char *s)
{
    if (!s)
        return NULL;
    char *copy = strdup(s);
    assert_non_null(copy);
    return copy;
}

void spec_init(provider_spec_t *spec, const char *key, const char *name, const char *url)
{
    memset(spec, 0, sizeof(*spec));
    spec->key = xstrdup(key);
    spec->name = xstrdup(name);
    spec->base_api_url = xstrdup(url);
}

void spec_models(provider_spec_t *spec, const model_pair_t *models, size_t count)
{
    spec->has_valid_models = true;
    spec->model_count = count;
    spec->model_long = calloc(count ? count : 1, sizeof(char *));
    spec->model_short = calloc(count ? count : 1, sizeof(char *));
    assert_non_null(spec->model_long);
    assert_non_null(spec->model_short);
    for (size_t i = 0; i < count; i++) {
        spec->model_long[i] = xstrdup(models[i].long_name);
        spec->model_short[i] = xstrdup(models[i].short_name);
    }
}

void spec_invalid(provider_spec_t *spec, const char *const *names, size_t count)
{
    spec->has_invalid_models = true;
    spec->invalid_count = count;
    spec->invalid_models = calloc(count ? count : 1, sizeof(char *));
    assert_non_null(spec->invalid_models);
    for (size_t i = 0; i < count; i++)
        spec->invalid_models[i] = xstrdup(names[i]);
}

void expect_models(const provider_t *provider, const model_pair_t *models, size_t count)
{
    assert_int_equal(provider_model_count(provider), count);
    for (size_t i = 0; i < count; i++) {
        assert_string_equal(provider_model_long(provider, i), models[i].long_name);
        assert_string_equal(provider_model_short(provider, i),
                            models[i].short_name ? models[i].short_name : models[i].long_name);
    }
}
