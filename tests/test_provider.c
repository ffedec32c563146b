/*
 * test_provider: unit tests of one provider (registry/provider.h), the seed's ProviderConfig:
 * key validity, fields and api keys (stored and environment), deep clones and references,
 * valid_models lookups (long, short, first hit), put / merge semantics, get_short_name,
 * invalid_models and the discovery cache, and the calls the registry and the layering build
 * on (batch puts, clones without models, shared, stored model entries).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashtab.h"
#include "registry_fixture.h"

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

/* ------------------------------------------------ calls the registry and layering build on */

static void test_put_models_batch(void **state)
{
    (void)state;
    provider_t *p = make_provider("p", "P", "https://p.test", GROQ_MODELS, COUNT_OF(GROQ_MODELS));
    /* "shared-model" (first holder of "shared") is renamed and a new model takes "shared":
     * the short index is rebuilt once, and first hits follow the new order. */
    const char *longs[] = {"shared-model", "new-model", "Llama-3-8B"};
    const char *shorts[] = {"sm", "shared", NULL};
    assert_int_equal(provider_put_models(p, longs, shorts, 3), 0);
    const model_pair_t expected[] = {{"Llama-3-8B", NULL},
                                     {"shared-model", "sm"},
                                     {"mixtral-8x7b", "mixtral"},
                                     {"new-model", "shared"}};
    expect_models(p, expected, COUNT_OF(expected));
    assert_string_equal(provider_find_model(p, "shared", 6), "new-model");
    assert_string_equal(provider_find_model(p, "sm", 2), "shared-model");
    assert_int_equal(provider_first_hit(p, "shared", 6), 3);

    /* No short names at all: every model is its own short name. */
    const char *plain[] = {"plain-a", "plain-b"};
    assert_int_equal(provider_put_models(p, plain, NULL, 2), 0);
    assert_string_equal(provider_model_short(p, 5), "plain-b");
    assert_int_equal(provider_put_models(p, NULL, NULL, 0), 0);

    /* A NULL long name fails; the models before it stay and the indexes agree with them. */
    const char *broken[] = {"kept", NULL, "never"};
    const char *broken_shorts[] = {"mixtral", NULL, NULL};
    assert_int_equal(provider_put_models(p, broken, broken_shorts, 3), -1);
    assert_int_equal(provider_model_count(p), 7);
    assert_int_equal(provider_model_index(p, "kept", 4), 6);
    assert_int_equal(provider_model_index(p, "never", 5), -1);
    assert_string_equal(provider_find_model(p, "mixtral", 7), "mixtral-8x7b");
    provider_destroy(&p);
}

static void test_clone_without_models_and_shared(void **state)
{
    (void)state;
    provider_t *p =
        make_provider("openai", "OpenAI", "https://api.openai.com/v1", OPENAI_MODELS, 3);
    assert_int_equal(provider_set_api_key(p, "sk-stored-0001"), 0);
    const char *invalid[] = {"gpt-3"};
    assert_int_equal(provider_set_invalid_models(p, invalid, 1), 0);
    provider_set_pinned(p, true);
    assert_false(provider_shared(p));

    provider_t *bare = provider_clone_without_models(p);
    assert_non_null(bare);
    assert_int_equal(provider_model_count(bare), 0);
    assert_null(provider_find_model(bare, "4o", 2));
    assert_string_equal(provider_key(bare), "openai");
    assert_string_equal(provider_name(bare), "OpenAI");
    assert_string_equal(provider_stored_api_key(bare), "sk-stored-0001");
    assert_true(provider_is_invalid(bare, "gpt-3", 5));
    assert_true(provider_pinned(bare));
    assert_int_equal(provider_model_count(p), 3); /* the original keeps its models */

    provider_t *ref = provider_ref(p);
    assert_true(provider_shared(p));
    provider_destroy(&ref);
    assert_false(provider_shared(p));
    provider_destroy(&bare);
    provider_destroy(&p);
}

static void test_model_entry_and_explicit_shorts(void **state)
{
    (void)state;
    provider_t *p =
        make_provider("openai", "OpenAI", "https://api.openai.com/v1", OPENAI_MODELS, 3);
    assert_int_equal(provider_explicit_short_count(p), 2);
    provider_model_entry_t entry;
    provider_model_entry(p, 0, &entry);
    assert_string_equal(entry.long_name, "gpt-4o-2024-08-06");
    assert_int_equal(entry.long_len, strlen("gpt-4o-2024-08-06"));
    assert_int_equal(entry.long_hash, hashtab_hash("gpt-4o-2024-08-06", entry.long_len));
    assert_string_equal(entry.short_name, "4o");
    assert_int_equal(entry.short_len, 2);
    assert_int_equal(entry.short_hash, hashtab_hash("4o", 2));
    /* A short name equal to the long one is stored as none. */
    provider_model_entry(p, 2, &entry);
    assert_null(entry.short_name);
    assert_int_equal(entry.short_len, entry.long_len);
    assert_int_equal(entry.short_hash, entry.long_hash);
    assert_int_equal(provider_put_model(p, "gpt-4o", "omni"), 0);
    assert_int_equal(provider_explicit_short_count(p), 3);
    assert_int_equal(provider_put_model(p, "gpt-4o-2024-08-06", NULL), 0);
    assert_int_equal(provider_explicit_short_count(p), 2);
    provider_destroy(&p);
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
        cmocka_unit_test(test_put_models_batch),
        cmocka_unit_test(test_clone_without_models_and_shared),
        cmocka_unit_test(test_model_entry_and_explicit_shorts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
