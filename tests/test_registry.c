/*
 * test_registry: unit tests of the registry (registry/registry.h), the seed's ProviderManager:
 * dict-like reads, merged_models order, model resolution with protocol-v1's two corrections,
 * find_model across providers, first hit, copy-on-write sharing, limits, and scale (100,000
 * models in one provider, 100,000 across 100 providers).
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

#define LARGE_MODELS 100000
#define MANY_PROVIDERS 100
#define MODELS_PER_PROVIDER 1000

/* ------------------------------------------------------------------------------ helpers */

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
        cmocka_unit_test(test_max_providers),
        cmocka_unit_test(test_large_single_provider),
        cmocka_unit_test(test_large_many_providers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
