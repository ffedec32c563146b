/*
 * test_registry: unit tests of the registry core (service/registry.h): the seed's
 * ProviderConfig / ProviderManager semantics (dict-like reads, merged_models order, model
 * resolution with protocol-v1's two corrections, find_model, merge_valid_models,
 * invalid_models, the discovery cache), copy-on-write sharing, layering by provider specs,
 * and scale (100,000 models in one provider, 100,000 across 100 providers).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provider_spec.h"
#include "registry.h"

#define LARGE_MODELS 100000
#define MANY_PROVIDERS 100
#define MODELS_PER_PROVIDER 1000

typedef struct {
    const char *long_name;
    const char *short_name; /* NULL: the long name */
} model_pair_t;

typedef struct {
    const char *key;
    const char *long_name;
    const char *short_name;
} merged_t;

/* ------------------------------------------------------------------------------ helpers */

static provider_t *make_provider(const char *key, const char *name, const char *url,
                                 const model_pair_t *models, size_t count)
{
    provider_t *provider = provider_new(key, name, url);
    assert_non_null(provider);
    for (size_t i = 0; i < count; i++)
        assert_int_equal(provider_put_model(provider, models[i].long_name, models[i].short_name),
                         0);
    return provider;
}

static void put_provider(registry_t *reg, const char *key, const char *name, const char *url,
                         const model_pair_t *models, size_t count)
{
    provider_t *provider = make_provider(key, name, url, models, count);
    assert_int_equal(registry_put(reg, &provider), 0);
    assert_null(provider);
}

static const model_pair_t OPENAI_MODELS[] = {
    {"gpt-4o-2024-08-06", "4o"},
    {"gpt-4o-mini-2024-07-18", "4o-mini"},
    {"gpt-4o", NULL},
};
static const model_pair_t ANTHROPIC_MODELS[] = {
    {"claude-3-5-sonnet-20241022", "sonnet"},
};
static const model_pair_t TOGETHER_MODELS[] = {
    {"meta-llama/Llama-3-8B", "llama3-8b"},
    {"shared-model", NULL},
};
static const model_pair_t GROQ_MODELS[] = {
    {"Llama-3-8B", NULL},
    {"shared-model", "shared"},
    {"mixtral-8x7b", "mixtral"},
};

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* The four providers most tests use, in this order; unsealed. */
static registry_t *make_fixture(void)
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

static int setup_sealed(void **state)
{
    registry_t *reg = make_fixture();
    assert_int_equal(registry_seal(reg), 0);
    *state = reg;
    return 0;
}

static int teardown_registry(void **state)
{
    registry_t *reg = *state;
    registry_destroy(&reg);
    assert_null(reg);
    return 0;
}

static const merged_t FIXTURE_MERGED[] = {
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
static void expect_resolved(const registry_t *reg, const char *text, const char *key,
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

/* Resolves text and checks a failure: status, prefix (NULL for INVALID_MODEL) and the model
 * span, which must point into text at model_offset. */
static void expect_invalid(const registry_t *reg, const char *text, registry_status_t status,
                           const char *prefix, size_t model_offset)
{
    registry_resolution_t res;
    assert_int_equal(registry_resolve(reg, text, strlen(text), &res), status);
    assert_null(res.provider);
    assert_null(res.long_name);
    if (prefix)
        assert_string_equal(res.prefix, prefix);
    else
        assert_null(res.prefix);
    assert_ptr_equal(res.model, text + model_offset);
    assert_int_equal(res.model_len, strlen(text) - model_offset);
}

/* get_available_models(filter) composed from the API, as the service does it. */
static size_t available_models(const registry_t *reg, const char *filter, const char **out,
                               size_t max)
{
    size_t n = 0;
    for (size_t p = 0; p < registry_count(reg); p++) {
        const provider_t *provider = registry_at(reg, p);
        if (filter && strcmp(provider_key(provider), filter) != 0)
            continue;
        for (size_t m = 0; m < provider_model_count(provider); m++) {
            assert_true(n < max);
            out[n++] = provider_model_long(provider, m);
        }
    }
    return n;
}

static char *xstrdup(const char *s)
{
    if (!s)
        return NULL;
    char *copy = strdup(s);
    assert_non_null(copy);
    return copy;
}

static void spec_init(provider_spec_t *spec, const char *key, const char *name, const char *url)
{
    memset(spec, 0, sizeof(*spec));
    spec->key = xstrdup(key);
    spec->name = xstrdup(name);
    spec->base_api_url = xstrdup(url);
}

static void spec_models(provider_spec_t *spec, const model_pair_t *models, size_t count)
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

static void spec_invalid(provider_spec_t *spec, const char *const *names, size_t count)
{
    spec->has_invalid_models = true;
    spec->invalid_count = count;
    spec->invalid_models = calloc(count ? count : 1, sizeof(char *));
    assert_non_null(spec->invalid_models);
    for (size_t i = 0; i < count; i++)
        spec->invalid_models[i] = xstrdup(names[i]);
}

static void expect_models(const provider_t *provider, const model_pair_t *models, size_t count)
{
    assert_int_equal(provider_model_count(provider), count);
    for (size_t i = 0; i < count; i++) {
        assert_string_equal(provider_model_long(provider, i), models[i].long_name);
        assert_string_equal(provider_model_short(provider, i),
                            models[i].short_name ? models[i].short_name : models[i].long_name);
    }
}

/* ---------------------------------------------------------------------- provider basics */

static void test_key_valid(void **state)
{
    (void)state;
    char longest[REGISTRY_MAX_KEY_LEN + 2];
    memset(longest, 'k', sizeof(longest));
    longest[REGISTRY_MAX_KEY_LEN] = '\0';
    assert_true(provider_key_valid("openai", 6));
    assert_true(provider_key_valid("a", 1));
    assert_true(provider_key_valid("x.y_z-9", 7));
    assert_true(provider_key_valid(longest, REGISTRY_MAX_KEY_LEN));
    assert_false(provider_key_valid(longest, REGISTRY_MAX_KEY_LEN + 1));
    assert_false(provider_key_valid("", 0));
    assert_false(provider_key_valid(NULL, 0));
    assert_false(provider_key_valid("OpenAI", 6));
    assert_false(provider_key_valid("a b", 3));
    assert_false(provider_key_valid("a/b", 3));
    assert_false(provider_key_valid("a\0b", 3));
    /* Only the span counts: "open" of "open AI". */
    assert_true(provider_key_valid("open AI", 4));

    assert_null(provider_new("Open AI", "x", "https://x"));
    assert_null(provider_new("", "x", "https://x"));
    assert_null(provider_new(NULL, "x", "https://x"));
    longest[REGISTRY_MAX_KEY_LEN] = 'k';
    longest[REGISTRY_MAX_KEY_LEN + 1] = '\0';
    assert_null(provider_new(longest, "x", "https://x"));
}

static void test_provider_fields_and_api_keys(void **state)
{
    (void)state;
    provider_t *p = provider_new("openai", "OpenAI", "https://api.openai.com/v1");
    assert_non_null(p);
    assert_string_equal(provider_key(p), "openai");
    assert_string_equal(provider_name(p), "OpenAI");
    assert_string_equal(provider_base_api_url(p), "https://api.openai.com/v1");
    assert_null(provider_api_key(p));
    assert_null(provider_stored_api_key(p));
    assert_false(provider_api_key_from_env(p));
    assert_false(provider_pinned(p));
    assert_int_equal(provider_model_count(p), 0);
    assert_int_equal(provider_invalid_count(p), 0);

    assert_int_equal(provider_set_name(p, "Open AI Inc"), 0);
    assert_int_equal(provider_set_base_api_url(p, "https://example.test/v1"), 0);
    assert_string_equal(provider_name(p), "Open AI Inc");
    assert_string_equal(provider_base_api_url(p), "https://example.test/v1");

    assert_int_equal(provider_set_api_key(p, "sk-stored-1234"), 0);
    assert_string_equal(provider_api_key(p), "sk-stored-1234");
    assert_string_equal(provider_stored_api_key(p), "sk-stored-1234");
    assert_false(provider_api_key_from_env(p));

    /* The environment wins for the effective key; the stored one is what gets persisted. */
    assert_int_equal(provider_set_env_api_key(p, "sk-env-5678"), 0);
    assert_string_equal(provider_api_key(p), "sk-env-5678");
    assert_string_equal(provider_stored_api_key(p), "sk-stored-1234");
    assert_true(provider_api_key_from_env(p));

    assert_int_equal(provider_set_env_api_key(p, NULL), 0);
    assert_string_equal(provider_api_key(p), "sk-stored-1234");
    assert_false(provider_api_key_from_env(p));
    assert_int_equal(provider_set_api_key(p, NULL), 0);
    assert_null(provider_api_key(p));
    assert_null(provider_stored_api_key(p));

    provider_set_pinned(p, true);
    assert_true(provider_pinned(p));
    provider_set_pinned(p, false);
    assert_false(provider_pinned(p));

    provider_destroy(&p);
    assert_null(p);
    provider_destroy(&p); /* safe twice */
    provider_destroy(NULL);
}

static void test_provider_clone_is_deep(void **state)
{
    (void)state;
    provider_t *p = make_provider("groq", "Groq", "https://api.groq.com/openai/v1", GROQ_MODELS,
                                  COUNT_OF(GROQ_MODELS));
    const char *invalid[] = {"whisper-large-v3"};
    const char *cached[] = {"Llama-3-8B", "whisper-large-v3"};
    assert_int_equal(provider_set_api_key(p, "sk-a"), 0);
    assert_int_equal(provider_set_env_api_key(p, "sk-b"), 0);
    assert_int_equal(provider_set_invalid_models(p, invalid, 1), 0);
    assert_int_equal(provider_set_cached_models(p, cached, 2, 1000.0), 0);
    provider_set_cache_duration(p, 60.0);
    provider_set_pinned(p, true);

    provider_t *c = provider_clone(p);
    assert_non_null(c);
    assert_ptr_not_equal(c, p);
    assert_string_equal(provider_key(c), "groq");
    assert_string_equal(provider_name(c), "Groq");
    assert_string_equal(provider_stored_api_key(c), "sk-a");
    assert_string_equal(provider_api_key(c), "sk-b");
    assert_true(provider_pinned(c));
    expect_models(c, GROQ_MODELS, COUNT_OF(GROQ_MODELS));
    assert_string_equal(provider_find_model(c, "shared", 6), "shared-model");
    assert_true(provider_is_invalid(c, "whisper-large-v3", 16));
    assert_int_equal(provider_cached_count(c), 2);
    assert_string_equal(provider_cached_at(c, 1), "whisper-large-v3");
    assert_true(provider_cache_timestamp(c) == 1000.0);
    assert_true(provider_cache_duration(c) == 60.0);

    /* Changing the clone leaves the original alone. */
    assert_int_equal(provider_set_name(c, "Changed"), 0);
    assert_int_equal(provider_put_model(c, "shared-model", "sm"), 0);
    assert_int_equal(provider_put_model(c, "new-one", NULL), 0);
    assert_int_equal(provider_set_invalid_models(c, NULL, 0), 0);
    assert_string_equal(provider_name(p), "Groq");
    expect_models(p, GROQ_MODELS, COUNT_OF(GROQ_MODELS));
    assert_null(provider_find_model(p, "sm", 2));
    assert_string_equal(provider_find_model(c, "sm", 2), "shared-model");
    assert_null(provider_find_model(c, "shared", 6));
    assert_true(provider_is_invalid(p, "whisper-large-v3", 16));
    assert_false(provider_is_invalid(c, "whisper-large-v3", 16));

    provider_destroy(&c);
    provider_destroy(&p);
}

static void test_provider_ref_keeps_provider_alive(void **state)
{
    (void)state;
    registry_t *reg = registry_new();
    provider_t *p = provider_new("mistral", "Mistral", "https://api.mistral.ai/v1");
    provider_t *mine = provider_ref(p);
    assert_ptr_equal(mine, p);
    assert_int_equal(registry_put(reg, &p), 0);
    assert_null(p);
    registry_destroy(&reg);
    assert_null(reg);
    /* The registry's reference is gone; ours still holds the provider. */
    assert_string_equal(provider_name(mine), "Mistral");
    provider_destroy(&mine);
    assert_null(mine);
}

/* ---------------------------------------------------------------- valid_models (one) */

static void test_model_lookups_and_spans(void **state)
{
    (void)state;
    provider_t *p = make_provider("openai", "OpenAI", "https://api.openai.com/v1", OPENAI_MODELS,
                                  COUNT_OF(OPENAI_MODELS));
    expect_models(p, OPENAI_MODELS, COUNT_OF(OPENAI_MODELS));
    assert_int_equal(provider_model_index(p, "gpt-4o-2024-08-06", 17), 0);
    assert_int_equal(provider_model_index(p, "gpt-4o", 6), 2);
    assert_int_equal(provider_model_index(p, "4o", 2), -1); /* a short name is not a long one */
    /* Spans: not NUL-terminated text. */
    assert_int_equal(provider_model_index(p, "gpt-4o-mini-2024-07-18", 6), 2);
    assert_int_equal(provider_model_index(p, "gpt-4o\0junk", 7), -1);
    assert_int_equal(provider_model_index(p, "", 0), -1);

    assert_string_equal(provider_find_model(p, "4o", 2), "gpt-4o-2024-08-06");
    assert_string_equal(provider_find_model(p, "4o-mini", 7), "gpt-4o-mini-2024-07-18");
    assert_string_equal(provider_find_model(p, "gpt-4o", 6), "gpt-4o");
    assert_null(provider_find_model(p, "4O", 2));
    assert_int_equal(provider_first_hit(p, "4o-mini", 7), 1);
    assert_int_equal(provider_first_hit(p, "gpt-4o", 6), 2);
    assert_int_equal(provider_first_hit(p, "nope", 4), -1);
    provider_destroy(&p);
}

static void test_first_hit_within_provider(void **state)
{
    (void)state;
    /* "x" is the short name of model 0 and the long name of model 1. */
    const model_pair_t models[] = {{"A", "x"}, {"x", "y"}, {"z", "y"}};
    provider_t *p = make_provider("p", "P", "https://p.test", models, COUNT_OF(models));
    assert_int_equal(provider_first_hit(p, "x", 1), 0);       /* merged_models order */
    assert_string_equal(provider_find_model(p, "x", 1), "x"); /* find_model: long first */
    assert_int_equal(provider_first_hit(p, "y", 1), 1);
    assert_string_equal(provider_find_model(p, "y", 1), "x"); /* first short holder */
    assert_int_equal(provider_first_hit(p, "A", 1), 0);

    registry_t *reg = registry_new();
    assert_int_equal(registry_put(reg, &p), 0);
    assert_int_equal(registry_seal(reg), 0);
    /* Unprefixed: the seed's first hit over merged_models -> model 0's long name. */
    expect_resolved(reg, "x", "p", "A");
    expect_resolved(reg, "y", "p", "x");
    /* Prefixed: an exact long-name match wins over a short-name match. */
    expect_resolved(reg, "p/x", "p", "x");
    expect_resolved(reg, "p/y", "p", "x");
    expect_resolved(reg, "P/A", "p", "A");
    registry_destroy(&reg);
}

static void test_put_model_replaces_short_in_place(void **state)
{
    (void)state;
    const model_pair_t models[] = {{"a", "s"}, {"b", "s"}, {"c", NULL}};
    provider_t *p = make_provider("p", "P", "https://p.test", models, COUNT_OF(models));
    assert_string_equal(provider_find_model(p, "s", 1), "a");

    /* "a" was the first holder of "s": the next one takes over. */
    assert_int_equal(provider_put_model(p, "a", "t"), 0);
    const model_pair_t step1[] = {{"a", "t"}, {"b", "s"}, {"c", NULL}};
    expect_models(p, step1, COUNT_OF(step1));
    assert_string_equal(provider_find_model(p, "s", 1), "b");
    assert_string_equal(provider_find_model(p, "t", 1), "a");
    assert_int_equal(provider_first_hit(p, "s", 1), 1);

    /* A later holder of "t" does not take it over. */
    assert_int_equal(provider_put_model(p, "c", "t"), 0);
    assert_string_equal(provider_find_model(p, "t", 1), "a");
    /* An earlier model taking a short name becomes its first holder. */
    assert_int_equal(provider_put_model(p, "a", NULL), 0);
    assert_string_equal(provider_model_short(p, 0), "a");
    assert_string_equal(provider_find_model(p, "t", 1), "c");
    assert_int_equal(provider_put_model(p, "a", "t"), 0);
    assert_string_equal(provider_find_model(p, "t", 1), "a");

    /* A short name equal to the long name. */
    assert_int_equal(provider_put_model(p, "b", "b"), 0);
    assert_string_equal(provider_model_short(p, 1), "b");
    assert_null(provider_find_model(p, "s", 1));
    assert_int_equal(provider_first_hit(p, "s", 1), -1);
    assert_int_equal(provider_model_count(p), 3);

    /* A model that is not the first holder of its old short name (no rebuild): taking a short
     * name held by a later model makes it the first holder; one held by an earlier model
     * does not. */
    const model_pair_t more[] = {{"m0", "u"}, {"m1", "s"}, {"m2", "s"}, {"m3", "t"}, {"m4", "s"}};
    provider_t *q = make_provider("q", "Q", "https://q.test", more, COUNT_OF(more));
    assert_int_equal(provider_put_model(q, "m2", "t"), 0);
    assert_string_equal(provider_find_model(q, "t", 1), "m2");
    assert_int_equal(provider_first_hit(q, "t", 1), 2);
    assert_string_equal(provider_find_model(q, "s", 1), "m1");
    assert_int_equal(provider_put_model(q, "m4", "u"), 0);
    assert_string_equal(provider_find_model(q, "u", 1), "m0");
    assert_int_equal(provider_put_model(q, "m4", "new"), 0);
    assert_string_equal(provider_find_model(q, "new", 3), "m4");
    assert_string_equal(provider_find_model(q, "u", 1), "m0");
    provider_destroy(&q);

    provider_clear_models(p);
    assert_int_equal(provider_model_count(p), 0);
    assert_null(provider_find_model(p, "a", 1));
    assert_null(provider_find_model(p, "t", 1));
    assert_int_equal(provider_put_model(p, "d", "t"), 0);
    assert_string_equal(provider_find_model(p, "t", 1), "d");
    assert_int_equal(provider_model_index(p, "d", 1), 0);
    provider_destroy(&p);
}

static void test_merge_valid_models_keeps_short_names(void **state)
{
    (void)state;
    const model_pair_t models[] = {{"gpt-4o-2024-08-06", "4o"}};
    provider_t *p = make_provider("openai", "OpenAI", "https://api.openai.com/v1", models, 1);
    const char *discovered[] = {"gpt-4o-2024-08-06", "gpt-4.1", "o3", "gpt-4.1"};
    assert_int_equal(provider_merge_valid_models(p, discovered, COUNT_OF(discovered)), 0);
    const model_pair_t expected[] = {{"gpt-4o-2024-08-06", "4o"}, {"gpt-4.1", NULL}, {"o3", NULL}};
    expect_models(p, expected, COUNT_OF(expected));
    assert_string_equal(provider_find_model(p, "4o", 2), "gpt-4o-2024-08-06");
    assert_string_equal(provider_find_model(p, "o3", 2), "o3");
    /* Nothing is removed by a merge. */
    const char *fewer[] = {"o3"};
    assert_int_equal(provider_merge_valid_models(p, fewer, 1), 0);
    expect_models(p, expected, COUNT_OF(expected));
    assert_int_equal(provider_merge_valid_models(p, NULL, 0), 0);
    provider_destroy(&p);
}

static void test_get_short_name(void **state)
{
    (void)state;
    const char *name = "gpt-4o-2024-08-06";
    assert_ptr_equal(provider_get_short_name(name), name);
    assert_string_equal(provider_get_short_name("meta-llama/Llama-3-8B"), "meta-llama/Llama-3-8B");
}

/* ---------------------------------------------------------- invalid_models and cache */

static void test_invalid_models_set_replace_dedupe(void **state)
{
    (void)state;
    provider_t *p = provider_new("openai", "OpenAI", "https://api.openai.com/v1");
    const char *first[] = {"b-model", "a-model", "b-model", "c-model", "a-model"};
    assert_int_equal(provider_set_invalid_models(p, first, COUNT_OF(first)), 0);
    assert_int_equal(provider_invalid_count(p), 3);
    assert_string_equal(provider_invalid_at(p, 0), "b-model");
    assert_string_equal(provider_invalid_at(p, 1), "a-model");
    assert_string_equal(provider_invalid_at(p, 2), "c-model");
    assert_true(provider_is_invalid(p, "a-model", 7));
    assert_true(provider_is_invalid(p, "c-model-and-more", 7));
    assert_false(provider_is_invalid(p, "d-model", 7));
    assert_false(provider_is_invalid(p, "a-mode", 6));

    const char *second[] = {"x-model"};
    assert_int_equal(provider_set_invalid_models(p, second, 1), 0);
    assert_int_equal(provider_invalid_count(p), 1);
    assert_string_equal(provider_invalid_at(p, 0), "x-model");
    assert_false(provider_is_invalid(p, "a-model", 7));
    assert_true(provider_is_invalid(p, "x-model", 7));

    assert_int_equal(provider_set_invalid_models(p, NULL, 0), 0);
    assert_int_equal(provider_invalid_count(p), 0);
    assert_false(provider_is_invalid(p, "x-model", 7));

    /* A NULL entry is refused and leaves the list as it was. */
    assert_int_equal(provider_set_invalid_models(p, second, 1), 0);
    const char *broken[] = {"y-model", NULL};
    assert_int_equal(provider_set_invalid_models(p, broken, 2), -1);
    assert_int_equal(provider_invalid_count(p), 1);
    assert_true(provider_is_invalid(p, "x-model", 7));
    provider_destroy(&p);
}

static void test_cache_freshness(void **state)
{
    (void)state;
    provider_t *p = provider_new("openai", "OpenAI", "https://api.openai.com/v1");
    assert_true(provider_cache_duration(p) == REGISTRY_DEFAULT_CACHE_DURATION);
    assert_true(provider_cache_timestamp(p) == 0.0);
    assert_int_equal(provider_cached_count(p), 0);
    assert_false(provider_cache_fresh(p, 0.0));
    assert_false(provider_cache_fresh(p, 100.0));

    const char *listed[] = {"gpt-4o", "o3"};
    assert_int_equal(provider_set_cached_models(p, listed, 2, 1000.0), 0);
    assert_int_equal(provider_cached_count(p), 2);
    assert_string_equal(provider_cached_at(p, 0), "gpt-4o");
    assert_string_equal(provider_cached_at(p, 1), "o3");
    assert_true(provider_cache_timestamp(p) == 1000.0);
    assert_true(provider_cache_fresh(p, 1000.0));
    assert_true(provider_cache_fresh(p, 4599.5));
    assert_false(provider_cache_fresh(p, 4600.0));

    provider_set_cache_duration(p, 10.0);
    assert_true(provider_cache_fresh(p, 1009.0));
    assert_false(provider_cache_fresh(p, 1010.0));

    /* An empty listing is still a listing. */
    assert_int_equal(provider_set_cached_models(p, NULL, 0, 2000.0), 0);
    assert_int_equal(provider_cached_count(p), 0);
    assert_true(provider_cache_fresh(p, 2005.0));
    assert_false(provider_cache_fresh(p, 2010.0));
    provider_destroy(&p);
}

/* ------------------------------------------------------------------ dict-like reads */

static void test_dict_get_getitem_contains(void **state)
{
    const registry_t *reg = *state;
    const provider_t *openai = registry_get(reg, "openai", 6);
    assert_non_null(openai);
    assert_string_equal(provider_name(openai), "OpenAI");
    assert_string_equal(provider_base_api_url(openai), "https://api.openai.com/v1");
    assert_ptr_equal(registry_get(reg, "groq", 4), registry_at(reg, 3));
    /* get / getitem of an unknown provider: NULL (the service maps getitem to not_found). */
    assert_null(registry_get(reg, "mistral", 7));
    assert_null(registry_get(reg, "OPENAI", 6)); /* keys are exact */
    assert_null(registry_get(reg, "", 0));
    assert_null(registry_get(reg, "openai2", 7));
    /* Spans into a larger buffer. */
    assert_ptr_equal(registry_get(reg, "openai/gpt-4o", 6), openai);
    assert_true(registry_contains(reg, "anthropic", 9));
    assert_true(registry_contains(reg, "together", 8));
    assert_false(registry_contains(reg, "anthropi", 8));
    assert_false(registry_contains(reg, "mistral", 7));
}

static void test_get_provider_config_and_names(void **state)
{
    const registry_t *reg = *state;
    /* get_provider_config == get: valid and invalid names. */
    const provider_t *together = registry_get(reg, "together", 8);
    assert_non_null(together);
    assert_string_equal(provider_key(together), "together");
    assert_string_equal(provider_name(together), "Together AI");
    assert_null(registry_get(reg, "nope", 4));
    /* get_all_provider_names / keys: registry order. */
    const char *expected[] = {"openai", "anthropic", "together", "groq"};
    assert_int_equal(registry_count(reg), COUNT_OF(expected));
    for (size_t i = 0; i < COUNT_OF(expected); i++)
        assert_string_equal(provider_key(registry_at(reg, i)), expected[i]);
}

static void test_keys_values_items_order(void **state)
{
    (void)state;
    registry_t *reg = registry_new();
    const char *keys[] = {"zeta", "alpha", "mid", "beta"};
    for (size_t i = 0; i < COUNT_OF(keys); i++)
        put_provider(reg, keys[i], keys[i], "https://x.test", NULL, 0);
    assert_int_equal(registry_count(reg), 4);
    /* items: (key, config) pairs, in insertion order, not sorted. */
    for (size_t i = 0; i < COUNT_OF(keys); i++) {
        const provider_t *value = registry_at(reg, i);
        assert_string_equal(provider_key(value), keys[i]);
        assert_string_equal(provider_name(value), keys[i]);
        assert_ptr_equal(registry_get(reg, keys[i], strlen(keys[i])), value);
    }
    assert_int_equal(registry_seal(reg), 0);
    assert_true(registry_sealed(reg));
    assert_int_equal(registry_seal(reg), 0); /* sealing twice is harmless */
    for (size_t i = 0; i < COUNT_OF(keys); i++)
        assert_string_equal(provider_key(registry_at(reg, i)), keys[i]);
    registry_destroy(&reg);
}

/* ------------------------------------------------------------- cross-provider reads */

static void test_merged_models_order(void **state)
{
    const registry_t *reg = *state;
    size_t n = 0;
    for (size_t p = 0; p < registry_count(reg); p++) {
        const provider_t *provider = registry_at(reg, p);
        for (size_t m = 0; m < provider_model_count(provider); m++, n++) {
            assert_true(n < COUNT_OF(FIXTURE_MERGED));
            assert_string_equal(provider_key(provider), FIXTURE_MERGED[n].key);
            assert_string_equal(provider_model_long(provider, m), FIXTURE_MERGED[n].long_name);
            assert_string_equal(provider_model_short(provider, m), FIXTURE_MERGED[n].short_name);
        }
    }
    assert_int_equal(n, COUNT_OF(FIXTURE_MERGED));
    assert_int_equal(registry_model_count(reg), COUNT_OF(FIXTURE_MERGED));
}

static void test_valid_scoped_models_format(void **state)
{
    const registry_t *reg = *state;
    const char *expected[] = {
        "openai/gpt-4o-2024-08-06 (4o)",
        "openai/gpt-4o-mini-2024-07-18 (4o-mini)",
        "openai/gpt-4o (gpt-4o)",
        "anthropic/claude-3-5-sonnet-20241022 (sonnet)",
        "together/meta-llama/Llama-3-8B (llama3-8b)",
        "together/shared-model (shared-model)",
        "groq/Llama-3-8B (Llama-3-8B)",
        "groq/shared-model (shared)",
        "groq/mixtral-8x7b (mixtral)",
    };
    size_t n = 0;
    char line[256];
    for (size_t p = 0; p < registry_count(reg); p++) {
        const provider_t *provider = registry_at(reg, p);
        for (size_t m = 0; m < provider_model_count(provider); m++, n++) {
            int len = snprintf(line, sizeof(line), "%s/%s (%s)", provider_key(provider),
                               provider_model_long(provider, m), provider_model_short(provider, m));
            assert_true(len > 0 && (size_t)len < sizeof(line));
            assert_true(n < COUNT_OF(expected));
            assert_string_equal(line, expected[n]);
        }
    }
    assert_int_equal(n, COUNT_OF(expected));
}

static void test_get_available_models(void **state)
{
    const registry_t *reg = *state;
    const char *out[16];
    size_t n = available_models(reg, NULL, out, COUNT_OF(out));
    assert_int_equal(n, COUNT_OF(FIXTURE_MERGED));
    for (size_t i = 0; i < n; i++)
        assert_string_equal(out[i], FIXTURE_MERGED[i].long_name);
    n = available_models(reg, "groq", out, COUNT_OF(out));
    assert_int_equal(n, 3);
    assert_string_equal(out[0], "Llama-3-8B");
    assert_string_equal(out[1], "shared-model");
    assert_string_equal(out[2], "mixtral-8x7b");
    assert_int_equal(available_models(reg, "mistral", out, COUNT_OF(out)), 0);
}

static void test_find_model_across_providers(void **state)
{
    const registry_t *reg = *state;
    struct {
        const char *name;
        size_t hits;
        const char *keys[2];
        const char *longs[2];
    } cases[] = {
        {"shared-model", 2, {"together", "groq"}, {"shared-model", "shared-model"}},
        {"shared", 1, {"groq"}, {"shared-model"}},
        {"llama3-8b", 1, {"together"}, {"meta-llama/Llama-3-8B"}},
        {"Llama-3-8B", 1, {"groq"}, {"Llama-3-8B"}},
        {"4o", 1, {"openai"}, {"gpt-4o-2024-08-06"}},
        {"nothing", 0, {NULL}, {NULL}},
    };
    for (size_t c = 0; c < COUNT_OF(cases); c++) {
        size_t hits = 0;
        for (size_t p = 0; p < registry_count(reg); p++) {
            const provider_t *provider = registry_at(reg, p);
            const char *long_name =
                provider_find_model(provider, cases[c].name, strlen(cases[c].name));
            if (!long_name)
                continue;
            assert_true(hits < cases[c].hits);
            assert_string_equal(provider_key(provider), cases[c].keys[hits]);
            assert_string_equal(long_name, cases[c].longs[hits]);
            hits++;
        }
        assert_int_equal(hits, cases[c].hits);
    }
}

/* ---------------------------------------------------------------------- resolution */

static void test_resolve_prefixed(void **state)
{
    const registry_t *reg = *state;
    expect_resolved(reg, "openai/gpt-4o", "openai", "gpt-4o");
    expect_resolved(reg, "openai/gpt-4o-2024-08-06", "openai", "gpt-4o-2024-08-06");
    expect_resolved(reg, "OpenAI/gpt-4o", "openai", "gpt-4o"); /* prefix lower-cased */
    expect_resolved(reg, "groq/shared-model", "groq", "shared-model");
    expect_resolved(reg, "together/meta-llama/Llama-3-8B", "together", "meta-llama/Llama-3-8B");
}

static void test_resolve_unprefixed_long_and_short(void **state)
{
    const registry_t *reg = *state;
    expect_resolved(reg, "gpt-4o", "openai", "gpt-4o");
    expect_resolved(reg, "gpt-4o-mini-2024-07-18", "openai", "gpt-4o-mini-2024-07-18");
    expect_resolved(reg, "4o-mini", "openai", "gpt-4o-mini-2024-07-18");
    expect_resolved(reg, "sonnet", "anthropic", "claude-3-5-sonnet-20241022");
    expect_resolved(reg, "mixtral", "groq", "mixtral-8x7b");
    expect_resolved(reg, "shared", "groq", "shared-model");
    /* "/gpt-4o": empty prefix, the whole text first, then "gpt-4o". */
    expect_resolved(reg, "/gpt-4o", "openai", "gpt-4o");
    /* Not NUL-terminated. */
    registry_resolution_t res;
    const char buffer[] = "openai/gpt-4oXYZ";
    assert_int_equal(registry_resolve(reg, buffer, 13, &res), REGISTRY_RESOLVED);
    assert_string_equal(res.long_name, "gpt-4o");
}

static void test_resolve_invalid_strings(void **state)
{
    const registry_t *reg = *state;
    expect_invalid(reg, "openai/nope", REGISTRY_INVALID_FOR_PROVIDER, "openai", 7);
    /* The known prefix decides even when another provider has the model. */
    expect_invalid(reg, "OPENAI/sonnet", REGISTRY_INVALID_FOR_PROVIDER, "openai", 7);
    expect_invalid(reg, "groq/llama3-8b", REGISTRY_INVALID_FOR_PROVIDER, "groq", 5);
    expect_invalid(reg, "openai/", REGISTRY_INVALID_FOR_PROVIDER, "openai", 7);
    expect_invalid(reg, "nope", REGISTRY_INVALID_MODEL, NULL, 0);
    expect_invalid(reg, "GPT-4O", REGISTRY_INVALID_MODEL, NULL, 0); /* names are exact */
    expect_invalid(reg, "unknown/nope", REGISTRY_INVALID_MODEL, NULL, 8);
    expect_invalid(reg, "Unknown/x/y", REGISTRY_INVALID_MODEL, NULL, 8);
    expect_invalid(reg, "", REGISTRY_INVALID_MODEL, NULL, 0);
    expect_invalid(reg, "/", REGISTRY_INVALID_MODEL, NULL, 1);

    /* A prefix longer than any key cannot be a provider: the after-slash model is used. */
    char text[REGISTRY_MAX_KEY_LEN + 32];
    memset(text, 'o', REGISTRY_MAX_KEY_LEN + 1);
    snprintf(text + REGISTRY_MAX_KEY_LEN + 1, sizeof(text) - REGISTRY_MAX_KEY_LEN - 1, "/gpt-4o");
    expect_resolved(reg, text, "openai", "gpt-4o");
    snprintf(text + REGISTRY_MAX_KEY_LEN + 1, sizeof(text) - REGISTRY_MAX_KEY_LEN - 1, "/none");
    expect_invalid(reg, text, REGISTRY_INVALID_MODEL, NULL, REGISTRY_MAX_KEY_LEN + 2);

    registry_resolution_t res;
    assert_int_equal(registry_resolve(reg, NULL, 0, &res), REGISTRY_INVALID_MODEL);
    assert_int_equal(res.model_len, 0);
}

static void test_validate_model(void **state)
{
    const registry_t *reg = *state;
    /* validate_model returns the long name of get_api_for_model_string. */
    struct {
        const char *text;
        const char *long_name;
    } ok[] = {
        {"openai/4o", "gpt-4o-2024-08-06"},
        {"4o", "gpt-4o-2024-08-06"},
        {"together/llama3-8b", "meta-llama/Llama-3-8B"},
        {"llama3-8b", "meta-llama/Llama-3-8B"},
    };
    for (size_t i = 0; i < COUNT_OF(ok); i++) {
        registry_resolution_t res;
        assert_int_equal(registry_resolve(reg, ok[i].text, strlen(ok[i].text), &res),
                         REGISTRY_RESOLVED);
        assert_string_equal(res.long_name, ok[i].long_name);
    }
    registry_resolution_t res;
    assert_int_not_equal(registry_resolve(reg, "openai/o9", 9, &res), REGISTRY_RESOLVED);
    assert_int_not_equal(registry_resolve(reg, "o9", 2, &res), REGISTRY_RESOLVED);
}

static void test_correction_short_name_with_prefix_returns_long(void **state)
{
    const registry_t *reg = *state;
    expect_resolved(reg, "openai/4o", "openai", "gpt-4o-2024-08-06");
    expect_resolved(reg, "OpenAI/4o-mini", "openai", "gpt-4o-mini-2024-07-18");
    expect_resolved(reg, "groq/shared", "groq", "shared-model");
    expect_resolved(reg, "anthropic/sonnet", "anthropic", "claude-3-5-sonnet-20241022");
}

static void test_correction_slash_model_id(void **state)
{
    const registry_t *reg = *state;
    /* "meta-llama" is not a provider: the whole string is tried first and is together's model
     * id, although groq has the after-slash "Llama-3-8B" as a long name. */
    assert_null(registry_get(reg, "meta-llama", 10));
    expect_resolved(reg, "meta-llama/Llama-3-8B", "together", "meta-llama/Llama-3-8B");
    expect_resolved(reg, "META-LLAMA/Llama-3-8B", "groq", "Llama-3-8B"); /* whole is exact */
    expect_resolved(reg, "someone/Llama-3-8B", "groq", "Llama-3-8B");
    expect_resolved(reg, "x/meta-llama/Llama-3-8B", "together", "meta-llama/Llama-3-8B");
    expect_resolved(reg, "someone/llama3-8b", "together", "meta-llama/Llama-3-8B");

    /* A known prefix still wins over the whole-string model id. */
    registry_t *other = registry_new();
    put_provider(other, "together", "Together AI", "https://api.together.xyz/v1", TOGETHER_MODELS,
                 COUNT_OF(TOGETHER_MODELS));
    const model_pair_t meta[] = {{"Llama-3-70B", NULL}};
    put_provider(other, "meta-llama", "Meta", "https://meta.test/v1", meta, 1);
    assert_int_equal(registry_seal(other), 0);
    expect_invalid(other, "meta-llama/Llama-3-8B", REGISTRY_INVALID_FOR_PROVIDER, "meta-llama", 11);
    expect_resolved(other, "meta-llama/Llama-3-70B", "meta-llama", "Llama-3-70B");
    registry_destroy(&other);
}

static void test_first_hit_across_providers(void **state)
{
    const registry_t *reg = *state;
    const char *long_name = NULL;
    /* "shared-model" is together's (earlier) and groq's. */
    const provider_t *hit = registry_first_hit(reg, "shared-model", 12, &long_name);
    assert_non_null(hit);
    assert_string_equal(provider_key(hit), "together");
    assert_string_equal(long_name, "shared-model");
    expect_resolved(reg, "shared-model", "together", "shared-model");
    assert_null(registry_first_hit(reg, "nothing", 7, &long_name));
    assert_null(long_name);

    /* A name that is a short name in an earlier provider and a long name in a later one. */
    registry_t *r = registry_new();
    const model_pair_t first[] = {{"B", "x"}};
    const model_pair_t second[] = {{"x", NULL}, {"C", "B"}};
    put_provider(r, "q", "Q", "https://q.test", first, 1);
    put_provider(r, "p", "P", "https://p.test", second, 2);
    assert_int_equal(registry_seal(r), 0);
    expect_resolved(r, "x", "q", "B");
    expect_resolved(r, "B", "q", "B");
    expect_resolved(r, "p/x", "p", "x");
    expect_resolved(r, "p/B", "p", "C");
    expect_resolved(r, "C", "p", "C");
    registry_destroy(&r);

    /* The unsealed fallback gives the same answers as the sealed index. */
    registry_t *unsealed = registry_clone(reg);
    for (size_t i = 0; i < COUNT_OF(FIXTURE_MERGED); i++) {
        const char *names[] = {FIXTURE_MERGED[i].long_name, FIXTURE_MERGED[i].short_name};
        for (size_t j = 0; j < 2; j++) {
            const char *a = NULL, *b = NULL;
            const provider_t *pa = registry_first_hit(reg, names[j], strlen(names[j]), &a);
            const provider_t *pb = registry_first_hit(unsealed, names[j], strlen(names[j]), &b);
            assert_non_null(pa);
            assert_ptr_equal(pa, pb);
            assert_ptr_equal(a, b);
        }
    }
    registry_destroy(&unsealed);
}

/* -------------------------------------------------------------- mutation and sharing */

static void test_put_replaces_in_place(void **state)
{
    (void)state;
    registry_t *reg = make_fixture();
    const model_pair_t models[] = {{"claude-3-opus", "opus"}};
    put_provider(reg, "anthropic", "Anthropic 2", "https://a2.test/v1", models, 1);
    assert_int_equal(registry_count(reg), 4);
    assert_string_equal(provider_key(registry_at(reg, 1)), "anthropic");
    assert_string_equal(provider_name(registry_at(reg, 1)), "Anthropic 2");
    assert_ptr_equal(registry_get(reg, "anthropic", 9), registry_at(reg, 1));
    assert_int_equal(registry_model_count(reg), COUNT_OF(FIXTURE_MERGED));
    assert_int_equal(registry_seal(reg), 0);
    expect_resolved(reg, "opus", "anthropic", "claude-3-opus");
    expect_invalid(reg, "sonnet", REGISTRY_INVALID_MODEL, NULL, 0);
    registry_destroy(&reg);
}

static void test_remove_keeps_order(void **state)
{
    (void)state;
    registry_t *reg = make_fixture();
    assert_int_equal(registry_remove(reg, "anthropic"), 1);
    assert_int_equal(registry_count(reg), 3);
    const char *expected[] = {"openai", "together", "groq"};
    for (size_t i = 0; i < COUNT_OF(expected); i++) {
        assert_string_equal(provider_key(registry_at(reg, i)), expected[i]);
        /* the key index follows the shifted positions */
        assert_ptr_equal(registry_get(reg, expected[i], strlen(expected[i])), registry_at(reg, i));
    }
    assert_false(registry_contains(reg, "anthropic", 9));
    assert_int_equal(registry_remove(reg, "anthropic"), 0);
    assert_int_equal(registry_remove(reg, "mistral"), 0);
    assert_int_equal(registry_model_count(reg), COUNT_OF(FIXTURE_MERGED) - 1);

    put_provider(reg, "anthropic", "Anthropic", "https://api.anthropic.com/v1", NULL, 0);
    assert_string_equal(provider_key(registry_at(reg, 3)), "anthropic"); /* appended */
    assert_int_equal(registry_remove(reg, "groq"), 1);
    assert_int_equal(registry_remove(reg, "openai"), 1);
    assert_int_equal(registry_count(reg), 2);
    assert_string_equal(provider_key(registry_at(reg, 0)), "together");
    assert_string_equal(provider_key(registry_at(reg, 1)), "anthropic");
    assert_int_equal(registry_model_count(reg), COUNT_OF(TOGETHER_MODELS));
    assert_int_equal(registry_seal(reg), 0);
    expect_invalid(reg, "gpt-4o", REGISTRY_INVALID_MODEL, NULL, 0);
    expect_resolved(reg, "shared-model", "together", "shared-model");
    registry_destroy(&reg);
}

static void test_copy_on_write(void **state)
{
    (void)state;
    registry_t *r1 = make_fixture();
    assert_int_equal(registry_seal(r1), 0);
    registry_t *r2 = registry_clone(r1);
    assert_non_null(r2);
    assert_false(registry_sealed(r2));
    assert_true(registry_sealed(r1));
    assert_int_equal(registry_count(r2), registry_count(r1));
    for (size_t i = 0; i < registry_count(r1); i++)
        assert_ptr_equal(registry_at(r2, i), registry_at(r1, i)); /* shared, not copied */
    assert_int_equal(registry_model_count(r2), COUNT_OF(FIXTURE_MERGED));

    const provider_t *r1_openai = registry_get(r1, "openai", 6);
    const provider_t *groq = registry_get(r1, "groq", 4);
    provider_t *edited = registry_edit(r2, "openai");
    assert_non_null(edited);
    assert_ptr_not_equal(edited, r1_openai); /* shared: cloned first */
    assert_ptr_equal(registry_get(r2, "openai", 6), edited);
    assert_ptr_equal(registry_at(r2, 0), edited); /* same position */
    assert_ptr_equal(registry_get(r2, "groq", 4), groq);
    assert_int_equal(provider_set_name(edited, "Changed"), 0);
    assert_int_equal(provider_put_model(edited, "o3", NULL), 0);
    assert_int_equal(provider_put_model(edited, "gpt-4o", "omni"), 0);
    assert_int_equal(registry_model_count(r2), COUNT_OF(FIXTURE_MERGED) + 1);

    /* The original is untouched. */
    assert_string_equal(provider_name(r1_openai), "OpenAI");
    expect_models(r1_openai, OPENAI_MODELS, COUNT_OF(OPENAI_MODELS));
    assert_int_equal(registry_model_count(r1), COUNT_OF(FIXTURE_MERGED));
    expect_invalid(r1, "o3", REGISTRY_INVALID_MODEL, NULL, 0);
    expect_invalid(r1, "openai/omni", REGISTRY_INVALID_FOR_PROVIDER, "openai", 7);

    /* Editing again: only r2 holds it now, no second clone. */
    assert_ptr_equal(registry_edit(r2, "openai"), edited);
    assert_null(registry_edit(r2, "mistral"));

    assert_int_equal(registry_seal(r2), 0);
    expect_resolved(r2, "o3", "openai", "o3");
    expect_resolved(r2, "omni", "openai", "gpt-4o");
    expect_resolved(r1, "gpt-4o", "openai", "gpt-4o");

    /* Once r1 is gone, r3's groq is held once: edit returns it without cloning. */
    registry_t *r3 = registry_clone(r2);
    registry_destroy(&r1);
    registry_destroy(&r2);
    assert_ptr_equal(registry_edit(r3, "groq"), groq);
    assert_string_equal(provider_name(groq), "Groq");

    /* registry_ref: the registry lives until the last reference goes. */
    registry_t *extra = registry_ref(r3);
    registry_destroy(&r3);
    assert_null(r3);
    assert_int_equal(registry_count(extra), 4);
    registry_destroy(&extra);
    registry_destroy(&extra); /* safe on NULL */
}

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

static void test_max_providers(void **state)
{
    (void)state;
    registry_t *reg = registry_new();
    char key[32];
    for (int i = 0; i < REGISTRY_MAX_PROVIDERS; i++) {
        provider_spec_t spec = {0};
        snprintf(key, sizeof(key), "k%04d", i);
        spec.key = key; /* borrowed: not cleared */
        assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_MERGE_MODELS, false), 0);
    }
    assert_int_equal(registry_count(reg), REGISTRY_MAX_PROVIDERS);
    provider_spec_t spec = {0};
    spec.key = "one-too-many";
    assert_int_equal(provider_spec_apply(&spec, reg, PROVIDER_SPEC_MERGE_MODELS, false), -1);
    provider_t *extra = provider_new("one-too-many", "x", "https://x.test");
    assert_int_equal(registry_put(reg, &extra), -1);
    assert_non_null(extra); /* still ours */
    provider_destroy(&extra);
    /* Replacing an existing one is still fine. */
    extra = provider_new("k0100", "replaced", "https://x.test");
    assert_int_equal(registry_put(reg, &extra), 0);
    assert_string_equal(provider_name(registry_at(reg, 100)), "replaced");
    assert_int_equal(registry_count(reg), REGISTRY_MAX_PROVIDERS);
    assert_int_equal(registry_seal(reg), 0);
    assert_ptr_equal(registry_get(reg, "k4095", 5), registry_at(reg, 4095));
    registry_destroy(&reg);
}

/* --------------------------------------------------------------------------- scale */

static void test_large_single_provider(void **state)
{
    (void)state;
    provider_t *p = provider_new("big", "Big", "https://big.test/v1");
    char name[32], short_name[32];
    for (size_t i = 0; i < LARGE_MODELS; i++) {
        snprintf(name, sizeof(name), "model-%06zu", i);
        snprintf(short_name, sizeof(short_name), "s-%06zu", i);
        assert_int_equal(provider_put_model(p, name, i % 10 == 0 ? short_name : NULL), 0);
    }
    assert_int_equal(provider_model_count(p), LARGE_MODELS);
    assert_int_equal(provider_model_index(p, "model-099999", 12), 99999);
    assert_int_equal(provider_model_index(p, "model-000000", 12), 0);
    assert_int_equal(provider_model_index(p, "model-100000", 12), -1);
    assert_string_equal(provider_find_model(p, "s-050000", 8), "model-050000");
    assert_null(provider_find_model(p, "s-050001", 8));
    assert_string_equal(provider_model_short(p, 77), "model-000077");
    assert_string_equal(provider_model_short(p, 70), "s-000070");

    /* Discovery's path: merge 100,000 names, half of them new. */
    const char **names = calloc(LARGE_MODELS, sizeof(*names));
    char *storage = malloc((size_t)LARGE_MODELS * 16);
    assert_non_null(names);
    assert_non_null(storage);
    for (size_t i = 0; i < LARGE_MODELS; i++) {
        snprintf(storage + i * 16, 16, "model-%06zu", i + LARGE_MODELS / 2);
        names[i] = storage + i * 16;
    }
    assert_int_equal(provider_merge_valid_models(p, names, LARGE_MODELS), 0);
    assert_int_equal(provider_model_count(p), LARGE_MODELS + LARGE_MODELS / 2);
    assert_string_equal(provider_model_long(p, LARGE_MODELS), "model-100000");
    assert_string_equal(provider_model_short(p, LARGE_MODELS), "model-100000");
    assert_string_equal(provider_model_short(p, 60000), "s-060000"); /* existing kept */
    free(names);
    free(storage);

    registry_t *reg = registry_new();
    assert_int_equal(registry_put(reg, &p), 0);
    assert_int_equal(registry_model_count(reg), LARGE_MODELS + LARGE_MODELS / 2);
    assert_int_equal(registry_seal(reg), 0);
    expect_resolved(reg, "model-149999", "big", "model-149999");
    expect_resolved(reg, "s-099990", "big", "model-099990");
    expect_resolved(reg, "big/s-000010", "big", "model-000010");
    expect_invalid(reg, "big/model-150000", REGISTRY_INVALID_FOR_PROVIDER, "big", 4);
    expect_invalid(reg, "model-150000", REGISTRY_INVALID_MODEL, NULL, 0);
    registry_destroy(&reg);
}

static void test_large_many_providers(void **state)
{
    (void)state;
    registry_t *reg = registry_new();
    char key[16], name[32];
    for (size_t p = 0; p < MANY_PROVIDERS; p++) {
        snprintf(key, sizeof(key), "p%03zu", p);
        provider_t *provider = provider_new(key, key, "https://many.test/v1");
        assert_non_null(provider);
        for (size_t m = 0; m + 1 < MODELS_PER_PROVIDER; m++) {
            snprintf(name, sizeof(name), "p%03zu-m%03zu", p, m);
            assert_int_equal(provider_put_model(provider, name, NULL), 0);
        }
        /* Every provider has "common" except the last, which alone has "only-last". */
        const char *last = p + 1 == MANY_PROVIDERS ? "only-last" : "common";
        assert_int_equal(provider_put_model(provider, last, NULL), 0);
        assert_int_equal(registry_put(reg, &provider), 0);
    }
    assert_int_equal(registry_model_count(reg), MANY_PROVIDERS * MODELS_PER_PROVIDER);

    /* The unsealed fallback and the sealed index agree. */
    const char *long_name = NULL;
    const provider_t *hit = registry_first_hit(reg, "only-last", 9, &long_name);
    assert_non_null(hit);
    assert_string_equal(provider_key(hit), "p099");
    assert_int_equal(registry_seal(reg), 0);
    assert_ptr_equal(registry_first_hit(reg, "only-last", 9, &long_name), hit);
    assert_string_equal(long_name, "only-last");
    expect_resolved(reg, "only-last", "p099", "only-last");
    expect_resolved(reg, "common", "p000", "common");
    expect_resolved(reg, "p050-m123", "p050", "p050-m123");
    expect_resolved(reg, "p099-m998", "p099", "p099-m998");
    expect_resolved(reg, "p098/common", "p098", "common");
    expect_invalid(reg, "p099/common", REGISTRY_INVALID_FOR_PROVIDER, "p099", 5);
    expect_invalid(reg, "p100-m000", REGISTRY_INVALID_MODEL, NULL, 0);

    /* registry_model_count after removals, replacements, merges, edits. */
    registry_t *next = registry_clone(reg);
    size_t expected = MANY_PROVIDERS * MODELS_PER_PROVIDER;
    assert_int_equal(registry_remove(next, "p010"), 1);
    expected -= MODELS_PER_PROVIDER;
    assert_int_equal(registry_model_count(next), expected);

    const model_pair_t five[] = {{"a", NULL}, {"b", NULL}, {"c", NULL}, {"d", NULL}, {"e", NULL}};
    put_provider(next, "p020", "p020", "https://many.test/v1", five, 5);
    expected = expected - MODELS_PER_PROVIDER + 5;
    assert_int_equal(registry_model_count(next), expected);

    provider_spec_t spec;
    spec_init(&spec, "p030", NULL, NULL);
    const model_pair_t merge[] = {{"p030-m000", "zero"}, {"new-1", NULL}, {"new-2", NULL}};
    spec_models(&spec, merge, 3);
    assert_int_equal(provider_spec_apply(&spec, next, PROVIDER_SPEC_MERGE_MODELS, false), 0);
    provider_spec_clear(&spec);
    expected += 2;
    assert_int_equal(registry_model_count(next), expected);

    spec_init(&spec, "p040", NULL, NULL);
    spec_models(&spec, merge, 3);
    assert_int_equal(provider_spec_apply(&spec, next, PROVIDER_SPEC_REPLACE_MODELS, false), 0);
    provider_spec_clear(&spec);
    expected = expected - MODELS_PER_PROVIDER + 3;
    assert_int_equal(registry_model_count(next), expected);

    provider_t *edited = registry_edit(next, "p050");
    provider_clear_models(edited);
    expected -= MODELS_PER_PROVIDER;
    assert_int_equal(registry_model_count(next), expected);
    assert_int_equal(provider_put_model(edited, "fifty", NULL), 0);
    expected += 1;
    assert_int_equal(registry_model_count(next), expected);
    assert_int_equal(registry_remove(next, "p060"), 1);
    expected -= MODELS_PER_PROVIDER;
    assert_int_equal(registry_model_count(next), expected);

    assert_int_equal(registry_seal(next), 0);
    assert_int_equal(registry_model_count(next), expected);
    assert_int_equal(registry_model_count(reg), MANY_PROVIDERS * MODELS_PER_PROVIDER);
    expect_resolved(next, "only-last", "p099", "only-last");
    expect_resolved(next, "zero", "p030", "p030-m000");
    expect_resolved(next, "new-1", "p030", "new-1"); /* p030 comes before p040 */
    expect_resolved(next, "fifty", "p050", "fifty");
    expect_invalid(next, "p050-m001", REGISTRY_INVALID_MODEL, NULL, 0);
    expect_invalid(next, "p010-m001", REGISTRY_INVALID_MODEL, NULL, 0);
    expect_resolved(reg, "p050-m001", "p050", "p050-m001"); /* the original is unchanged */
    registry_destroy(&next);
    registry_destroy(&reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_valid),
        cmocka_unit_test(test_provider_fields_and_api_keys),
        cmocka_unit_test(test_provider_clone_is_deep),
        cmocka_unit_test(test_provider_ref_keeps_provider_alive),
        cmocka_unit_test(test_model_lookups_and_spans),
        cmocka_unit_test(test_first_hit_within_provider),
        cmocka_unit_test(test_put_model_replaces_short_in_place),
        cmocka_unit_test(test_merge_valid_models_keeps_short_names),
        cmocka_unit_test(test_get_short_name),
        cmocka_unit_test(test_invalid_models_set_replace_dedupe),
        cmocka_unit_test(test_cache_freshness),
        cmocka_unit_test_setup_teardown(test_dict_get_getitem_contains, setup_sealed,
                                        teardown_registry),
        cmocka_unit_test_setup_teardown(test_get_provider_config_and_names, setup_sealed,
                                        teardown_registry),
        cmocka_unit_test(test_keys_values_items_order),
        cmocka_unit_test_setup_teardown(test_merged_models_order, setup_sealed, teardown_registry),
        cmocka_unit_test_setup_teardown(test_valid_scoped_models_format, setup_sealed,
                                        teardown_registry),
        cmocka_unit_test_setup_teardown(test_get_available_models, setup_sealed, teardown_registry),
        cmocka_unit_test_setup_teardown(test_find_model_across_providers, setup_sealed,
                                        teardown_registry),
        cmocka_unit_test_setup_teardown(test_resolve_prefixed, setup_sealed, teardown_registry),
        cmocka_unit_test_setup_teardown(test_resolve_unprefixed_long_and_short, setup_sealed,
                                        teardown_registry),
        cmocka_unit_test_setup_teardown(test_resolve_invalid_strings, setup_sealed,
                                        teardown_registry),
        cmocka_unit_test_setup_teardown(test_validate_model, setup_sealed, teardown_registry),
        cmocka_unit_test_setup_teardown(test_correction_short_name_with_prefix_returns_long,
                                        setup_sealed, teardown_registry),
        cmocka_unit_test_setup_teardown(test_correction_slash_model_id, setup_sealed,
                                        teardown_registry),
        cmocka_unit_test_setup_teardown(test_first_hit_across_providers, setup_sealed,
                                        teardown_registry),
        cmocka_unit_test(test_put_replaces_in_place),
        cmocka_unit_test(test_remove_keeps_order),
        cmocka_unit_test(test_copy_on_write),
        cmocka_unit_test(test_apply_spec_new_and_merge),
        cmocka_unit_test(test_apply_spec_replace_models),
        cmocka_unit_test(test_apply_spec_failure_is_atomic),
        cmocka_unit_test(test_max_providers),
        cmocka_unit_test(test_large_single_provider),
        cmocka_unit_test(test_large_many_providers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
