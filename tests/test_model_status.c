/*
 * test_model_status: the pure model status table (protocol-v1.1 "Model status").
 *
 * Every state and transition with exact thresholds, the counting rules of probe outcomes and
 * lists, prune plans under each policy, ignore globs, verify targets, the contract's iteration
 * order, transitions vs timestamp-only updates, and the dirty marks the journal relies on.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "model_status.h"
#include "registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------ helpers */

typedef struct {
    registry_t *reg;
    model_status_t *st;
} fixture_t;

/* A provider with a key (unless key is NULL), valid models (long names; short = "s-" long)
 * and invalid models. */
static provider_t *make_provider(const char *pkey, const char *api_key, const char *const *valid,
                                 size_t nvalid, const char *const *invalid, size_t ninvalid)
{
    provider_t *p = provider_new(pkey, pkey, "http://127.0.0.1:1/v1");
    assert_non_null(p);
    if (api_key)
        assert_int_equal(provider_set_api_key(p, api_key), 0);
    for (size_t i = 0; i < nvalid; i++) {
        char short_name[64];
        int n = snprintf(short_name, sizeof short_name, "s-%s", valid[i]);
        assert_true(n > 0 && (size_t)n < sizeof short_name);
        assert_int_equal(provider_put_model(p, valid[i], short_name), 0);
    }
    if (ninvalid)
        assert_int_equal(provider_set_invalid_models(p, invalid, ninvalid), 0);
    return p;
}

static void put(registry_t *reg, provider_t *p)
{
    assert_int_equal(registry_put(reg, &p), 0);
}

static const char *const VALID3[] = {"a", "b", "c"};
static const char *const INVALID1[] = {"x"};

/* One provider "p1" with key, valid a b c, invalid x; synced at t=100; its first batch taken. */
static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->reg = registry_new();
    assert_non_null(f->reg);
    put(f->reg, make_provider("p1", "sk-test-secret", VALID3, 3, INVALID1, 1));
    f->st = model_status_new(NULL);
    assert_non_null(f->st);
    assert_int_equal(model_status_sync(f->st, f->reg, 100.0), 0);
    status_changes_t c;
    assert_int_equal(model_status_take_changes(f->st, "p1", &c), 0);
    assert_int_equal(c.count, 4);
    status_changes_clear(&c);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    model_status_destroy(&f->st);
    assert_null(f->st);
    model_status_destroy(&f->st); /* safe twice */
    registry_destroy(&f->reg);
    free(f);
    return 0;
}

static status_state_t state_of(fixture_t *f, const char *pkey, const char *model)
{
    const status_record_t *r = model_status_record(f->st, pkey, model);
    return r ? r->state : STATUS_NIL;
}

static void list(fixture_t *f, const char *pkey, const char *const *models, size_t n, double now)
{
    assert_int_equal(model_status_list_ok(f->st, pkey, n, models, NULL, now), 0);
}

static void probe(fixture_t *f, const char *model, status_probe_outcome_t outcome, int http,
                  double now)
{
    assert_int_equal(
        model_status_probe(f->st, "p1", model, outcome, http, 12.5, "upstream said no", now), 0);
}

/* Takes p1's batch and checks it is exactly the expected transitions ("model:from>to", from
 * "nil" for a first sighting). */
static void expect_changes(fixture_t *f, const char *pkey, const char *const *expected, size_t n)
{
    uint64_t before = model_status_version(f->st);
    status_changes_t c;
    assert_int_equal(model_status_take_changes(f->st, pkey, &c), 0);
    assert_int_equal(c.count, n);
    for (size_t i = 0; i < n; i++) {
        char text[256];
        const char *from =
            c.changes[i].from == STATUS_NIL ? "nil" : status_state_name(c.changes[i].from);
        snprintf(text, sizeof text, "%s:%s>%s", c.changes[i].model, from,
                 status_state_name(c.changes[i].to));
        assert_string_equal(text, expected[i]);
    }
    /* One bump per non-empty batch, none for an empty one. */
    assert_int_equal(model_status_version(f->st), before + (n > 0 ? 1 : 0));
    assert_int_equal(c.status_version, model_status_version(f->st));
    status_changes_clear(&c);
}

static void expect_no_changes(fixture_t *f, const char *pkey)
{
    expect_changes(f, pkey, NULL, 0);
}

/* Replaces p1 in f->reg with valid / invalid lists (short names "s-" long unless given). */
static void set_p1(fixture_t *f, const char *const *valid, const char *const *shorts, size_t nvalid,
                   const char *const *invalid, size_t ninvalid)
{
    registry_t *next = registry_clone(f->reg);
    assert_non_null(next);
    provider_t *p = registry_edit(next, "p1");
    assert_non_null(p);
    provider_clear_models(p);
    for (size_t i = 0; i < nvalid; i++) {
        char short_name[64];
        snprintf(short_name, sizeof short_name, "s-%s", valid[i]);
        assert_int_equal(provider_put_model(p, valid[i], shorts ? shorts[i] : short_name), 0);
    }
    assert_int_equal(provider_set_invalid_models(p, invalid, ninvalid), 0);
    registry_destroy(&f->reg);
    f->reg = next;
}

/* ------------------------------------------------------------------------------ tests */

static void test_first_seen_transitions_from_nil(void **state)
{
    (void)state;
    registry_t *reg = registry_new();
    assert_non_null(reg);
    put(reg, make_provider("p1", "sk-1", VALID3, 3, INVALID1, 1));
    put(reg, make_provider("p2", NULL, NULL, 0, NULL, 0));
    model_status_t *st = model_status_new(NULL);
    assert_non_null(st);
    assert_int_equal(model_status_version(st), 0);
    assert_int_equal(model_status_sync(st, reg, 50.0), 0);
    fixture_t f = {reg, st};
    const char *const want[] = {"a:nil>valid", "b:nil>valid", "c:nil>valid", "x:nil>invalid"};
    expect_changes(&f, "p1", want, 4);
    expect_no_changes(&f, "p2");
    const status_record_t *a = model_status_record(st, "p1", "a");
    assert_non_null(a);
    assert_true(a->in_valid_models);
    assert_int_equal(a->listed, STATUS_LISTED_NIL);
    assert_true(a->first_seen_at == 50.0);
    assert_true(status_time_is_nil(a->last_listed_at));
    assert_true(status_time_is_nil(a->last_checked_at));
    assert_true(status_time_is_nil(a->last_ok_at));
    assert_true(status_time_is_nil(a->latency_ms));
    assert_int_equal(a->failures, 0);
    assert_int_equal(a->last_error.error_class, STATUS_ERROR_NONE);
    const status_record_t *x = model_status_record(st, "p1", "x");
    assert_false(x->in_valid_models);
    assert_int_equal(x->state, STATUS_INVALID);
    /* Provider status from the key alone. */
    assert_int_equal(model_status_provider(st, "p1")->state, STATUS_PROVIDER_UNKNOWN);
    assert_int_equal(model_status_provider(st, "p2")->state, STATUS_PROVIDER_NO_KEY);
    assert_false(model_status_provider(st, "p1")->has_models_listed);
    /* A second sync with nothing new changes nothing. */
    assert_int_equal(model_status_sync(st, reg, 60.0), 0);
    expect_no_changes(&f, "p1");
    assert_true(model_status_record(st, "p1", "a")->first_seen_at == 50.0);
    size_t counts[STATUS_STATE_COUNT];
    model_status_counts(st, counts);
    assert_int_equal(counts[STATUS_VALID], 3);
    assert_int_equal(counts[STATUS_INVALID], 1);
    assert_int_equal(model_status_record_count(st), 4);
    model_status_destroy(&st);
    registry_destroy(&reg);
}

static void test_failing_after_exactly_threshold_and_recovery(void **state)
{
    fixture_t *f = *state;
    probe(f, "a", STATUS_PROBE_MODEL_FAIL, 404, 200.0);
    probe(f, "a", STATUS_PROBE_MODEL_FAIL, 404, 201.0);
    const status_record_t *a = model_status_record(f->st, "p1", "a");
    assert_int_equal(a->state, STATUS_VALID);
    assert_int_equal(a->failures, 2);
    assert_int_equal(a->last_error.error_class, STATUS_ERROR_MODEL);
    assert_int_equal(a->last_error.http_status, 404);
    assert_string_equal(a->last_error.message, "upstream said no");
    assert_true(a->last_checked_at == 201.0);
    expect_no_changes(f, "p1");
    probe(f, "a", STATUS_PROBE_MODEL_FAIL, 404, 202.0);
    assert_int_equal(state_of(f, "p1", "a"), STATUS_FAILING);
    assert_int_equal(model_status_record(f->st, "p1", "a")->failures, 3);
    const char *const want1[] = {"a:valid>failing"};
    expect_changes(f, "p1", want1, 1);
    /* A failing model stays in valid_models (resolution unchanged with prune off). */
    assert_true(model_status_record(f->st, "p1", "a")->in_valid_models);
    probe(f, "a", STATUS_PROBE_OK, 0, 203.0);
    a = model_status_record(f->st, "p1", "a");
    assert_int_equal(a->state, STATUS_VALID);
    assert_int_equal(a->failures, 0);
    assert_true(a->last_ok_at == 203.0);
    assert_true(a->latency_ms == 12.5);
    assert_int_equal(a->last_error.error_class, STATUS_ERROR_NONE);
    assert_null(a->last_error.message);
    const char *const want2[] = {"a:failing>valid"};
    expect_changes(f, "p1", want2, 1);
}

static void test_transient_and_auth_never_count_nor_reset(void **state)
{
    fixture_t *f = *state;
    probe(f, "b", STATUS_PROBE_MODEL_FAIL, 400, 200.0);
    probe(f, "b", STATUS_PROBE_MODEL_FAIL, 400, 201.0);
    probe(f, "b", STATUS_PROBE_TRANSIENT, 429, 202.0);
    const status_record_t *b = model_status_record(f->st, "p1", "b");
    assert_int_equal(b->failures, 2);
    assert_int_equal(b->last_error.error_class, STATUS_ERROR_TRANSIENT);
    assert_int_equal(b->last_error.http_status, 429);
    probe(f, "b", STATUS_PROBE_TRANSIENT, 0, 203.0); /* a timeout: no HTTP status */
    assert_int_equal(b->last_error.http_status, 0);
    probe(f, "b", STATUS_PROBE_ERROR, 0, 204.0);
    assert_int_equal(b->last_error.error_class, STATUS_ERROR_ERROR);
    probe(f, "b", STATUS_PROBE_AUTH, 401, 205.0);
    b = model_status_record(f->st, "p1", "b");
    assert_int_equal(b->failures, 2);
    assert_int_equal(b->state, STATUS_VALID);
    assert_int_equal(b->last_error.error_class, STATUS_ERROR_AUTH);
    assert_true(b->last_checked_at == 205.0);
    assert_true(status_time_is_nil(b->last_ok_at));
    const status_provider_t *ps = model_status_provider(f->st, "p1");
    assert_int_equal(ps->state, STATUS_PROVIDER_AUTH_FAILED);
    assert_int_equal(ps->last_error.error_class, STATUS_ERROR_AUTH);
    assert_int_equal(ps->last_error.http_status, 401);
    expect_no_changes(f, "p1");
    /* The count survived: one more definitive failure is the third. */
    probe(f, "b", STATUS_PROBE_MODEL_FAIL, 400, 206.0);
    assert_int_equal(state_of(f, "p1", "b"), STATUS_FAILING);
    const char *const want[] = {"b:valid>failing"};
    expect_changes(f, "p1", want, 1);
    /* An unknown model or provider changes nothing. */
    assert_int_equal(model_status_probe(f->st, "p1", "nope", STATUS_PROBE_OK, 0, 1.0, NULL, 207.0),
                     -1);
    assert_int_equal(model_status_probe(f->st, "p9", "a", STATUS_PROBE_OK, 0, 1.0, NULL, 207.0),
                     -1);
    assert_null(model_status_record(f->st, "p1", "nope"));
}

static void test_gone_after_exactly_threshold_lists(void **state)
{
    fixture_t *f = *state;
    const char *const with_all[] = {"a", "b", "c"};
    const char *const without_c[] = {"a", "b"};
    list(f, "p1", with_all, 3, 200.0);
    const status_record_t *c = model_status_record(f->st, "p1", "c");
    assert_int_equal(c->listed, STATUS_LISTED_TRUE);
    assert_true(c->last_listed_at == 200.0);
    assert_int_equal(model_status_record(f->st, "p1", "x")->listed, STATUS_LISTED_FALSE);
    expect_no_changes(f, "p1");
    list(f, "p1", without_c, 2, 210.0);
    c = model_status_record(f->st, "p1", "c");
    assert_int_equal(c->state, STATUS_VALID);
    assert_int_equal(c->listed, STATUS_LISTED_FALSE);
    assert_true(c->last_listed_at == 200.0); /* unchanged while absent */
    assert_int_equal(c->absent_count, 1);
    expect_no_changes(f, "p1");
    /* A failed list never counts. */
    assert_int_equal(model_status_list_failed(f->st, "p1", STATUS_ERROR_TRANSIENT, 0,
                                              "connection refused", 215.0),
                     0);
    assert_int_equal(state_of(f, "p1", "c"), STATUS_VALID);
    assert_int_equal(model_status_record(f->st, "p1", "c")->absent_count, 1);
    list(f, "p1", without_c, 2, 220.0);
    assert_int_equal(state_of(f, "p1", "c"), STATUS_GONE);
    const char *const want1[] = {"c:valid>gone"};
    expect_changes(f, "p1", want1, 1);
    /* Gone wins over failing; a gone model stays in valid_models with prune off. */
    assert_true(model_status_record(f->st, "p1", "c")->in_valid_models);
    list(f, "p1", with_all, 3, 230.0);
    c = model_status_record(f->st, "p1", "c");
    assert_int_equal(c->state, STATUS_VALID);
    assert_int_equal(c->absent_count, 0);
    assert_true(c->last_listed_at == 230.0);
    const char *const want2[] = {"c:gone>valid"};
    expect_changes(f, "p1", want2, 1);
}

static void test_unverified_ignored_and_disappearing(void **state)
{
    fixture_t *f = *state;
    const char *const globs[] = {"*embedding*", "tts-*"};
    const char *const p1_globs[] = {"whisper-?"};
    status_ignore_t per = {"p1", p1_globs, 1};
    model_status_settings_t s;
    model_status_settings_init(&s);
    s.ignore = globs;
    s.ignore_count = 2;
    s.provider_ignore = &per;
    s.provider_ignore_count = 1;
    assert_int_equal(model_status_set_settings(f->st, &s), 0);
    expect_no_changes(f, "p1");
    const char *const l1[] = {"a",         "new-chat", "text-embedding-3", "tts-1",
                              "whisper-1", "x",        "whisper-10"};
    list(f, "p1", l1, 7, 200.0);
    assert_int_equal(state_of(f, "p1", "new-chat"), STATUS_UNVERIFIED);
    assert_int_equal(state_of(f, "p1", "text-embedding-3"), STATUS_IGNORED);
    assert_int_equal(state_of(f, "p1", "tts-1"), STATUS_IGNORED);
    assert_int_equal(state_of(f, "p1", "whisper-1"), STATUS_IGNORED);
    assert_int_equal(state_of(f, "p1", "whisper-10"), STATUS_UNVERIFIED); /* ? is one char */
    assert_int_equal(state_of(f, "p1", "x"), STATUS_INVALID);
    assert_true(model_status_ignored(f->st, "p1", "whisper-2"));
    assert_false(model_status_ignored(f->st, "p2", "whisper-2")); /* per provider only */
    assert_true(model_status_ignored(f->st, "p2", "tts-hd"));     /* global */
    const char *const want[] = {"new-chat:nil>unverified", "text-embedding-3:nil>ignored",
                                "tts-1:nil>ignored", "whisper-1:nil>ignored",
                                "whisper-10:nil>unverified"};
    expect_changes(f, "p1", want, 5);
    /* models_listed counts every listed model, ignored ones too. */
    const status_provider_t *ps = model_status_provider(f->st, "p1");
    assert_int_equal(ps->state, STATUS_PROVIDER_OK);
    assert_true(ps->has_models_listed);
    assert_int_equal(ps->models_listed, 7);
    /* A model of valid_models is never ignored, even when a glob matches it. */
    const char *const glob_a[] = {"a", "new-*"};
    s.ignore = glob_a;
    s.ignore_count = 2;
    assert_int_equal(model_status_set_settings(f->st, &s), 0);
    assert_int_equal(state_of(f, "p1", "a"), STATUS_VALID);
    const char *const want2[] = {"new-chat:unverified>ignored",
                                 "text-embedding-3:ignored>unverified", "tts-1:ignored>unverified"};
    expect_changes(f, "p1", want2, 3);
    /* A listed model that is no longer listed disappears and publishes nothing. */
    const char *const l2[] = {"a", "b", "c"};
    list(f, "p1", l2, 3, 210.0);
    assert_null(model_status_record(f->st, "p1", "new-chat"));
    assert_null(model_status_record(f->st, "p1", "tts-1"));
    assert_non_null(model_status_record(f->st, "p1", "x")); /* invalid stays */
    expect_no_changes(f, "p1");
    size_t counts[STATUS_STATE_COUNT];
    model_status_counts(f->st, counts);
    assert_int_equal(counts[STATUS_UNVERIFIED] + counts[STATUS_IGNORED], 0);
    assert_int_equal(model_status_record_count(f->st), 4);
}

static void test_timestamp_only_updates_are_not_transitions(void **state)
{
    fixture_t *f = *state;
    status_dirty_t d;
    assert_int_equal(model_status_take_dirty(f->st, &d), 0);
    status_dirty_clear(&d);
    probe(f, "a", STATUS_PROBE_OK, 0, 200.0);
    probe(f, "a", STATUS_PROBE_OK, 0, 201.0);
    model_meta_t metas[3] = {{.has_context_length = true, .context_length = 1000}, {0}, {0}};
    const char *const l[] = {"a", "b", "c"};
    assert_int_equal(model_status_list_ok(f->st, "p1", 3, l, metas, 202.0), 0);
    metas[0].context_length = 2000;
    assert_int_equal(model_status_list_ok(f->st, "p1", 3, l, metas, 203.0), 0);
    assert_int_equal(model_status_record(f->st, "p1", "a")->meta.context_length, 2000);
    assert_int_equal(model_status_pending_changes(f->st, "p1"), 0);
    uint64_t v = model_status_version(f->st);
    expect_no_changes(f, "p1");
    assert_int_equal(model_status_version(f->st), v);
    /* ... but they are persisted: the touched records are dirty. */
    assert_int_equal(model_status_take_dirty(f->st, &d), 0);
    assert_int_equal(d.record_count, 4); /* a b c listed, x marked unlisted */
    assert_int_equal(d.provider_count, 1);
    status_dirty_clear(&d);
}

static void test_meta_replaced_at_each_list(void **state)
{
    fixture_t *f = *state;
    char owner[] = "acme";
    model_meta_t m1 = {.has_context_length = true,
                       .context_length = 8192,
                       .owned_by = owner,
                       .has_created = true,
                       .created = 1700000000};
    const char *const l[] = {"a"};
    assert_int_equal(model_status_list_ok(f->st, "p1", 1, l, &m1, 200.0), 0);
    const status_record_t *a = model_status_record(f->st, "p1", "a");
    assert_string_equal(a->meta.owned_by, "acme");
    assert_int_equal(a->meta.created, 1700000000);
    model_meta_t m2 = {.has_max_output_tokens = true, .max_output_tokens = 512};
    assert_int_equal(model_status_list_ok(f->st, "p1", 1, l, &m2, 201.0), 0);
    a = model_status_record(f->st, "p1", "a");
    assert_false(a->meta.has_context_length);
    assert_null(a->meta.owned_by);
    assert_false(a->meta.has_created);
    assert_true(a->meta.has_max_output_tokens);
    assert_int_equal(a->meta.max_output_tokens, 512);
}

static void test_provider_status(void **state)
{
    fixture_t *f = *state;
    const status_provider_t *ps = model_status_provider(f->st, "p1");
    assert_int_equal(model_status_list_failed(f->st, "p1", STATUS_ERROR_TRANSIENT, 0,
                                              "connection refused", 200.0),
                     0);
    assert_int_equal(ps->state, STATUS_PROVIDER_UNREACHABLE);
    assert_true(ps->last_list_at == 200.0);
    assert_true(status_time_is_nil(ps->last_list_ok_at));
    assert_int_equal(ps->last_error.error_class, STATUS_ERROR_TRANSIENT);
    assert_string_equal(ps->last_error.message, "connection refused");
    assert_int_equal(
        model_status_list_failed(f->st, "p1", STATUS_ERROR_ERROR, 200, "malformed list", 201.0), 0);
    assert_int_equal(ps->state, STATUS_PROVIDER_ERROR);
    assert_int_equal(ps->last_error.http_status, 200);
    /* A transient HTTP answer: the provider is there but failing. */
    assert_int_equal(model_status_list_failed(f->st, "p1", STATUS_ERROR_TRANSIENT, 503,
                                              "service unavailable", 201.5),
                     0);
    assert_int_equal(ps->state, STATUS_PROVIDER_ERROR);
    assert_int_equal(ps->last_error.error_class, STATUS_ERROR_TRANSIENT);
    assert_int_equal(ps->last_error.http_status, 503);
    assert_true(ps->last_list_at == 201.5);
    assert_int_equal(
        model_status_list_failed(f->st, "p1", STATUS_ERROR_AUTH, 403, "forbidden", 202.0), 0);
    assert_int_equal(ps->state, STATUS_PROVIDER_AUTH_FAILED);
    const char *const l[] = {"a", "a", "b"}; /* a duplicate counts once */
    list(f, "p1", l, 3, 203.0);
    assert_int_equal(ps->state, STATUS_PROVIDER_OK);
    assert_true(ps->last_list_at == 203.0);
    assert_true(ps->last_list_ok_at == 203.0);
    assert_int_equal(ps->models_listed, 2);
    assert_int_equal(ps->last_error.error_class, STATUS_ERROR_NONE);
    /* Bad input. */
    assert_int_equal(model_status_list_failed(f->st, "p1", STATUS_ERROR_NONE, 0, "x", 1.0), -1);
    assert_int_equal(model_status_list_failed(f->st, "zz", STATUS_ERROR_AUTH, 0, "x", 1.0), -1);
    assert_int_equal(model_status_list_ok(f->st, "zz", 0, NULL, NULL, 1.0), -1);
    /* A message longer than the limit is cut, on a character boundary. */
    char big[STATUS_MAX_MESSAGE_LEN * 2];
    memset(big, 'm', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(model_status_list_failed(f->st, "p1", STATUS_ERROR_ERROR, 0, big, 204.0), 0);
    assert_int_equal(strlen(ps->last_error.message), STATUS_MAX_MESSAGE_LEN);
    /* Key removed: no_key; key back: unknown. */
    registry_t *next = registry_clone(f->reg);
    provider_t *p = registry_edit(next, "p1");
    assert_int_equal(provider_set_api_key(p, NULL), 0);
    assert_int_equal(model_status_sync(f->st, next, 205.0), 0);
    assert_int_equal(model_status_provider(f->st, "p1")->state, STATUS_PROVIDER_NO_KEY);
    assert_int_equal(model_status_sync(f->st, f->reg, 206.0), 0);
    assert_int_equal(model_status_provider(f->st, "p1")->state, STATUS_PROVIDER_UNKNOWN);
    registry_destroy(&next);
}

/* Applies a prune plan to p1 the way the writer does: one ProviderConfig change, then sync. */
static void apply_plan(fixture_t *f, const status_prune_plan_t *plan, double now)
{
    registry_t *next = registry_clone(f->reg);
    assert_non_null(next);
    provider_t *p = registry_edit(next, "p1");
    assert_non_null(p);
    size_t n = provider_model_count(p);
    char **longs = calloc(n + 1, sizeof *longs);
    char **shorts = calloc(n + 1, sizeof *shorts);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool removed = false;
        for (size_t j = 0; j < plan->remove_count; j++)
            removed |= strcmp(plan->remove[j], provider_model_long(p, i)) == 0;
        if (removed)
            continue;
        longs[k] = strdup(provider_model_long(p, i));
        shorts[k++] = strdup(provider_model_short(p, i));
    }
    provider_clear_models(p);
    for (size_t i = 0; i < k; i++) {
        assert_int_equal(provider_put_model(p, longs[i], shorts[i]), 0);
        free(longs[i]);
        free(shorts[i]);
    }
    free(longs);
    free(shorts);
    for (size_t j = 0; j < plan->return_count; j++)
        assert_int_equal(
            provider_put_model(p, plan->returns[j].long_name, plan->returns[j].short_name), 0);
    registry_destroy(&f->reg);
    f->reg = next;
    assert_int_equal(model_status_sync(f->st, f->reg, now), 0);
}

static void set_prune(fixture_t *f, status_prune_t prune)
{
    model_status_settings_t s;
    model_status_settings_init(&s);
    s.prune = prune;
    assert_int_equal(model_status_set_settings(f->st, &s), 0);
}

static void make_c_gone_and_a_failing(fixture_t *f)
{
    const char *const without_c[] = {"a", "b"};
    list(f, "p1", without_c, 2, 200.0);
    list(f, "p1", without_c, 2, 201.0);
    for (int i = 0; i < 3; i++)
        probe(f, "a", STATUS_PROBE_MODEL_FAIL, 404, 202.0 + i);
    assert_int_equal(state_of(f, "p1", "c"), STATUS_GONE);
    assert_int_equal(state_of(f, "p1", "a"), STATUS_FAILING);
    const char *const want[] = {"c:valid>gone", "a:valid>failing"};
    expect_changes(f, "p1", want, 2);
}

static void test_prune_none_keeps_everything(void **state)
{
    fixture_t *f = *state;
    make_c_gone_and_a_failing(f);
    status_prune_plan_t plan;
    assert_int_equal(model_status_prune_plan(f->st, registry_get(f->reg, "p1", 2), &plan), 0);
    assert_int_equal(plan.remove_count, 0);
    assert_int_equal(plan.return_count, 0);
    status_prune_plan_clear(&plan);
}

static void test_prune_gone_and_return_with_short_name(void **state)
{
    fixture_t *f = *state;
    set_prune(f, STATUS_PRUNE_GONE);
    make_c_gone_and_a_failing(f);
    status_prune_plan_t plan;
    assert_int_equal(model_status_prune_plan(f->st, registry_get(f->reg, "p1", 2), &plan), 0);
    assert_int_equal(plan.remove_count, 1);
    assert_string_equal(plan.remove[0], "c");
    assert_int_equal(plan.return_count, 0);
    apply_plan(f, &plan, 210.0);
    status_prune_plan_clear(&plan);
    const status_record_t *c = model_status_record(f->st, "p1", "c");
    assert_non_null(c);
    assert_int_equal(c->state, STATUS_GONE);
    assert_false(c->in_valid_models);
    assert_true(c->pruned);
    assert_string_equal(c->short_name, "s-c");
    expect_no_changes(f, "p1"); /* leaving valid_models is not a state change */
    /* Planned again: nothing more to do. */
    assert_int_equal(model_status_prune_plan(f->st, registry_get(f->reg, "p1", 2), &plan), 0);
    assert_int_equal(plan.remove_count + plan.return_count, 0);
    status_prune_plan_clear(&plan);
    /* Listed again: it recovers and returns to the END of valid_models with its short name. */
    const char *const all[] = {"a", "b", "c"};
    list(f, "p1", all, 3, 220.0);
    assert_int_equal(state_of(f, "p1", "c"), STATUS_VALID);
    const char *const want[] = {"c:gone>valid"};
    expect_changes(f, "p1", want, 1);
    assert_int_equal(model_status_prune_plan(f->st, registry_get(f->reg, "p1", 2), &plan), 0);
    assert_int_equal(plan.remove_count, 0);
    assert_int_equal(plan.return_count, 1);
    assert_string_equal(plan.returns[0].long_name, "c");
    assert_string_equal(plan.returns[0].short_name, "s-c");
    apply_plan(f, &plan, 221.0);
    status_prune_plan_clear(&plan);
    const provider_t *p = registry_get(f->reg, "p1", 2);
    assert_int_equal(provider_model_count(p), 3);
    assert_string_equal(provider_model_long(p, 2), "c");
    assert_string_equal(provider_model_short(p, 2), "s-c");
    c = model_status_record(f->st, "p1", "c");
    assert_true(c->in_valid_models);
    assert_false(c->pruned);
    assert_null(c->short_name);
    expect_no_changes(f, "p1");
}

static void test_prune_failing_and_gone(void **state)
{
    fixture_t *f = *state;
    set_prune(f, STATUS_PRUNE_FAILING_AND_GONE);
    make_c_gone_and_a_failing(f);
    status_prune_plan_t plan;
    assert_int_equal(model_status_prune_plan(f->st, registry_get(f->reg, "p1", 2), &plan), 0);
    assert_int_equal(plan.remove_count, 2);
    assert_string_equal(plan.remove[0], "a"); /* valid_models order */
    assert_string_equal(plan.remove[1], "c");
    apply_plan(f, &plan, 210.0);
    status_prune_plan_clear(&plan);
    assert_int_equal(provider_model_count(registry_get(f->reg, "p1", 2)), 1);
    assert_true(model_status_record(f->st, "p1", "a")->pruned);
    assert_int_equal(state_of(f, "p1", "a"), STATUS_FAILING);
    /* The pruned failing model is a verify target (its way back); the gone one is not. */
    char **targets;
    size_t n;
    assert_int_equal(model_status_verify_targets(f->st, registry_get(f->reg, "p1", 2), false, NULL,
                                                 0, &targets, &n),
                     0);
    assert_int_equal(n, 2);
    assert_string_equal(targets[0], "b");
    assert_string_equal(targets[1], "a");
    for (size_t i = 0; i < n; i++)
        free(targets[i]);
    free(targets);
    /* One success: failing -> valid, and it returns. */
    probe(f, "a", STATUS_PROBE_OK, 0, 211.0);
    const char *const want[] = {"a:failing>valid"};
    expect_changes(f, "p1", want, 1);
    assert_int_equal(model_status_prune_plan(f->st, registry_get(f->reg, "p1", 2), &plan), 0);
    assert_int_equal(plan.return_count, 1);
    assert_string_equal(plan.returns[0].long_name, "a");
    assert_string_equal(plan.returns[0].short_name, "s-a");
    apply_plan(f, &plan, 212.0);
    status_prune_plan_clear(&plan);
    assert_true(model_status_record(f->st, "p1", "a")->in_valid_models);
    /* Policy back to none: every pruned model returns (c still gone, returned as gone). */
    set_prune(f, STATUS_PRUNE_NONE);
    assert_int_equal(model_status_prune_plan(f->st, registry_get(f->reg, "p1", 2), &plan), 0);
    assert_int_equal(plan.remove_count, 0);
    assert_int_equal(plan.return_count, 1);
    assert_string_equal(plan.returns[0].long_name, "c");
    status_prune_plan_clear(&plan);
}

static void test_prune_not_applied_is_forgotten(void **state)
{
    fixture_t *f = *state;
    set_prune(f, STATUS_PRUNE_GONE);
    make_c_gone_and_a_failing(f);
    status_prune_plan_t plan;
    assert_int_equal(model_status_prune_plan(f->st, registry_get(f->reg, "p1", 2), &plan), 0);
    status_prune_plan_clear(&plan);
    assert_int_equal(model_status_sync(f->st, f->reg, 210.0), 0); /* the writer did not apply */
    assert_false(model_status_record(f->st, "p1", "c")->pruned);
    assert_null(model_status_record(f->st, "p1", "c")->short_name);
    assert_true(model_status_record(f->st, "p1", "c")->in_valid_models);
    /* An operator removal of a model (no plan) is not a prune: the record disappears. */
    const char *const ab[] = {"a", "b"};
    set_p1(f, ab, NULL, 2, INVALID1, 1);
    assert_int_equal(model_status_sync(f->st, f->reg, 211.0), 0);
    assert_null(model_status_record(f->st, "p1", "c"));
    expect_no_changes(f, "p1");
}

static void test_verify_targets(void **state)
{
    fixture_t *f = *state;
    const char *const globs[] = {"y*"};
    model_status_settings_t s;
    model_status_settings_init(&s);
    s.ignore = globs;
    s.ignore_count = 1;
    assert_int_equal(model_status_set_settings(f->st, &s), 0);
    const char *const invalid2[] = {"x", "yy"};
    set_p1(f, VALID3, NULL, 3, invalid2, 2);
    assert_int_equal(model_status_sync(f->st, f->reg, 150.0), 0);
    const char *const without_b[] = {"a", "c"};
    list(f, "p1", without_b, 2, 200.0);
    list(f, "p1", without_b, 2, 201.0);
    assert_int_equal(state_of(f, "p1", "b"), STATUS_GONE);
    const provider_t *p = registry_get(f->reg, "p1", 2);
    char **t;
    size_t n;
    assert_int_equal(model_status_verify_targets(f->st, p, false, NULL, 0, &t, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(t[0], "a");
    assert_string_equal(t[1], "c");
    for (size_t i = 0; i < n; i++)
        free(t[i]);
    free(t);
    /* include_invalid adds invalid models, never ignored ones. */
    assert_int_equal(model_status_verify_targets(f->st, p, true, NULL, 0, &t, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(t[2], "x");
    for (size_t i = 0; i < n; i++)
        free(t[i]);
    free(t);
    /* only: other names ignored. */
    const char *const only[] = {"c", "x", "b", "unknown"};
    assert_int_equal(model_status_verify_targets(f->st, p, true, only, 4, &t, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(t[0], "c");
    assert_string_equal(t[1], "x");
    for (size_t i = 0; i < n; i++)
        free(t[i]);
    free(t);
    assert_int_equal(model_status_verify_targets(f->st, p, false, only, 0, &t, &n), 0);
    assert_int_equal(n, 0);
    assert_null(t);
}

typedef struct {
    char text[1024];
} walk_t;

static int s_walk(const char *provider, const status_record_t *rec, void *arg)
{
    walk_t *w = arg;
    size_t len = strlen(w->text);
    snprintf(w->text + len, sizeof w->text - len, "%s/%s ", provider, rec->model);
    return 0;
}

static int s_walk_provider(const char *provider, const status_provider_t *ps, void *arg)
{
    walk_t *w = arg;
    size_t len = strlen(w->text);
    snprintf(w->text + len, sizeof w->text - len, "%s=%s ", provider,
             status_provider_state_name(ps->state));
    return 0;
}

static int s_stop(const char *provider, const status_record_t *rec, void *arg)
{
    (void)provider;
    (void)rec;
    (*(int *)arg)++;
    return 7;
}

static void test_iteration_order_and_filters(void **state)
{
    fixture_t *f = *state;
    const char *const v2[] = {"m2", "m1"};
    put(f->reg, make_provider("p0", "sk-0", v2, 2, NULL, 0));
    assert_int_equal(model_status_sync(f->st, f->reg, 150.0), 0);
    /* p1 lists unknown models in an order that is not alphabetical, and pruned c. */
    const char *const l[] = {"zz", "x", "a", "b", "mm"};
    list(f, "p1", l, 5, 200.0);
    list(f, "p1", l, 5, 201.0);
    set_prune(f, STATUS_PRUNE_GONE);
    status_prune_plan_t plan;
    assert_int_equal(model_status_prune_plan(f->st, registry_get(f->reg, "p1", 2), &plan), 0);
    apply_plan(f, &plan, 202.0);
    status_prune_plan_clear(&plan);
    /* Registry order: p1 first (put first), then p0. */
    walk_t w = {{0}};
    assert_int_equal(model_status_each(f->st, f->reg, NULL, NULL, STATUS_MASK_ALL, s_walk, &w), 0);
    assert_string_equal(w.text, "p1/a p1/b p1/x p1/zz p1/mm p1/c p0/m2 p0/m1 ");
    memset(&w, 0, sizeof w);
    assert_int_equal(model_status_each(f->st, f->reg, "p1", NULL,
                                       STATUS_MASK(STATUS_UNVERIFIED) | STATUS_MASK(STATUS_GONE),
                                       s_walk, &w),
                     0);
    assert_string_equal(w.text, "p1/zz p1/mm p1/c ");
    memset(&w, 0, sizeof w);
    assert_int_equal(model_status_each(f->st, f->reg, NULL, "m1", STATUS_MASK_ALL, s_walk, &w), 0);
    assert_string_equal(w.text, "p0/m1 ");
    memset(&w, 0, sizeof w);
    assert_int_equal(model_status_each(f->st, f->reg, NULL, "nope", STATUS_MASK_ALL, s_walk, &w),
                     0);
    assert_string_equal(w.text, "");
    assert_int_equal(model_status_each(f->st, f->reg, NULL, NULL, 0, s_walk, &w), 0);
    assert_string_equal(w.text, ""); /* states: [] */
    int calls = 0;
    assert_int_equal(model_status_each(f->st, f->reg, NULL, NULL, STATUS_MASK_ALL, s_stop, &calls),
                     7);
    assert_int_equal(calls, 1);
    memset(&w, 0, sizeof w);
    assert_int_equal(model_status_each_provider(f->st, f->reg, NULL, s_walk_provider, &w), 0);
    assert_string_equal(w.text, "p1=ok p0=unknown ");
}

static void test_dirty_tracking_and_removals(void **state)
{
    fixture_t *f = *state;
    status_dirty_t d;
    assert_int_equal(model_status_take_dirty(f->st, &d), 0);
    assert_int_equal(d.record_count, 4); /* the first sync created 4 records */
    assert_int_equal(d.provider_count, 1);
    status_dirty_clear(&d);
    assert_int_equal(model_status_take_dirty(f->st, &d), 0);
    assert_int_equal(
        d.record_count + d.provider_count + d.record_removal_count + d.provider_removal_count, 0);
    status_dirty_clear(&d);
    /* One probe: exactly one record, however often it changes. */
    probe(f, "b", STATUS_PROBE_MODEL_FAIL, 404, 200.0);
    probe(f, "b", STATUS_PROBE_MODEL_FAIL, 404, 201.0);
    assert_int_equal(model_status_take_dirty(f->st, &d), 0);
    assert_int_equal(d.record_count, 1);
    assert_string_equal(d.records[0].provider, "p1");
    assert_string_equal(d.records[0].record->model, "b");
    assert_int_equal(d.records[0].record->failures, 2);
    assert_int_equal(d.provider_count, 0);
    status_dirty_clear(&d);
    /* A record that disappears is a removal; a provider that leaves is a provider removal. */
    const char *const ab[] = {"a", "b"};
    set_p1(f, ab, NULL, 2, INVALID1, 1);
    put(f->reg, make_provider("p2", "sk-2", VALID3, 3, NULL, 0));
    assert_int_equal(model_status_sync(f->st, f->reg, 202.0), 0);
    assert_int_equal(model_status_take_dirty(f->st, &d), 0);
    assert_int_equal(d.record_removal_count, 1);
    assert_string_equal(d.record_removals[0].provider, "p1");
    assert_string_equal(d.record_removals[0].model, "c");
    assert_int_equal(d.record_count, 3); /* p2's new records */
    assert_int_equal(d.provider_count, 1);
    status_dirty_clear(&d);
    registry_t *next = registry_clone(f->reg);
    assert_int_equal(registry_remove(next, "p2"), 1);
    registry_destroy(&f->reg);
    f->reg = next;
    assert_int_equal(model_status_sync(f->st, f->reg, 203.0), 0);
    assert_null(model_status_provider(f->st, "p2"));
    expect_no_changes(f, "p2");
    assert_int_equal(model_status_take_dirty(f->st, &d), 0);
    assert_int_equal(d.provider_removal_count, 1);
    assert_string_equal(d.provider_removals[0], "p2");
    assert_int_equal(d.record_count + d.record_removal_count, 0);
    status_dirty_clear(&d);
    assert_int_equal(model_status_record_count(f->st), 3);
}

static void test_include_invalid_override_moves_to_valid(void **state)
{
    fixture_t *f = *state;
    probe(f, "x", STATUS_PROBE_OK, 0, 200.0);
    assert_int_equal(state_of(f, "p1", "x"), STATUS_INVALID);
    const char *const abcx[] = {"a", "b", "c", "x"};
    set_p1(f, abcx, NULL, 4, NULL, 0); /* the writer moves it */
    assert_int_equal(model_status_sync(f->st, f->reg, 201.0), 0);
    assert_int_equal(state_of(f, "p1", "x"), STATUS_VALID);
    const char *const want[] = {"x:invalid>valid"};
    expect_changes(f, "p1", want, 1);
}

static void test_other_transitions(void **state)
{
    fixture_t *f = *state;
    /* failing -> gone: absence wins over failures. */
    for (int i = 0; i < 3; i++)
        probe(f, "a", STATUS_PROBE_MODEL_FAIL, 404, 200.0 + i);
    const char *const bc[] = {"b", "c", "new"};
    list(f, "p1", bc, 3, 210.0);
    list(f, "p1", bc, 3, 211.0);
    assert_int_equal(state_of(f, "p1", "a"), STATUS_GONE);
    const char *const want1[] = {"a:valid>failing", "new:nil>unverified", "a:failing>gone"};
    expect_changes(f, "p1", want1, 3);
    /* gone -> failing: listed again, but its failures still stand. */
    const char *const abc[] = {"a", "b", "c", "new"};
    list(f, "p1", abc, 4, 212.0);
    assert_int_equal(state_of(f, "p1", "a"), STATUS_FAILING);
    const char *const want2[] = {"a:gone>failing"};
    expect_changes(f, "p1", want2, 1);
    /* unverified -> valid (discovery adds it), valid -> unverified (the operator removes a
     * listed model from valid_models), unverified -> invalid, invalid -> nil is silent. */
    const char *const v4[] = {"a", "b", "c", "new"};
    set_p1(f, v4, NULL, 4, INVALID1, 1);
    assert_int_equal(model_status_sync(f->st, f->reg, 213.0), 0);
    const char *const v3[] = {"a", "b", "c"};
    set_p1(f, v3, NULL, 3, INVALID1, 1);
    assert_int_equal(model_status_sync(f->st, f->reg, 214.0), 0);
    const char *const inv2[] = {"x", "new"};
    set_p1(f, v3, NULL, 3, inv2, 2);
    assert_int_equal(model_status_sync(f->st, f->reg, 215.0), 0);
    const char *const want3[] = {"new:unverified>valid", "new:valid>unverified",
                                 "new:unverified>invalid"};
    expect_changes(f, "p1", want3, 3);
    set_p1(f, v3, NULL, 3, NULL, 0); /* x (unlisted) leaves invalid_models */
    assert_int_equal(model_status_sync(f->st, f->reg, 216.0), 0);
    assert_null(model_status_record(f->st, "p1", "x"));
    const char *const want4[] = {"new:invalid>unverified"};
    expect_changes(f, "p1", want4, 1);
    /* The failures count of a model survives its trip out of valid_models and back. */
    assert_int_equal(model_status_record(f->st, "p1", "a")->failures, 3);
}

static void test_names_and_bad_settings(void **state)
{
    (void)state;
    status_state_t s;
    assert_int_equal(status_state_from_name("failing", 7, &s), 0);
    assert_int_equal(s, STATUS_FAILING);
    assert_int_equal(status_state_from_name("failingx", 8, &s), -1);
    assert_int_equal(status_state_from_name("fail", 4, &s), -1);
    assert_int_equal(status_state_from_name(NULL, 0, &s), -1);
    for (unsigned i = 1; i < STATUS_STATE_COUNT; i++) {
        const char *name = status_state_name((status_state_t)i);
        assert_int_equal(status_state_from_name(name, strlen(name), &s), 0);
        assert_int_equal(s, i);
    }
    assert_null(status_state_name(STATUS_NIL));
    assert_string_equal(status_provider_state_name(STATUS_PROVIDER_AUTH_FAILED), "auth_failed");
    assert_string_equal(status_error_class_name(STATUS_ERROR_TRANSIENT), "transient");
    assert_null(status_error_class_name(STATUS_ERROR_NONE));
    model_status_settings_t bad;
    model_status_settings_init(&bad);
    bad.fail_threshold = 0;
    assert_null(model_status_new(&bad));
    model_status_settings_init(&bad);
    bad.ignore_count = 1; /* with a NULL list */
    assert_null(model_status_new(&bad));
    model_status_t *st = model_status_new(NULL);
    assert_non_null(st);
    bad.ignore_count = 0;
    bad.gone_threshold = -1;
    assert_int_equal(model_status_set_settings(st, &bad), -1);
    model_status_destroy(&st);
}

static void test_threshold_one_and_restore(void **state)
{
    fixture_t *f = *state;
    model_status_settings_t s;
    model_status_settings_init(&s);
    s.fail_threshold = 1;
    s.gone_threshold = 1;
    assert_int_equal(model_status_set_settings(f->st, &s), 0);
    probe(f, "a", STATUS_PROBE_MODEL_FAIL, 404, 200.0);
    assert_int_equal(state_of(f, "p1", "a"), STATUS_FAILING);
    const char *const ab[] = {"a", "b"};
    list(f, "p1", ab, 2, 201.0);
    assert_int_equal(state_of(f, "p1", "c"), STATUS_GONE);
    /* Restore a record into a fresh table: copied as stored, no transitions, not dirty. */
    model_status_t *other = model_status_new(&s);
    assert_non_null(other);
    assert_int_equal(
        model_status_restore_record(other, "p1", model_status_record(f->st, "p1", "a")), 0);
    assert_int_equal(model_status_restore_provider(other, "p1", model_status_provider(f->st, "p1")),
                     0);
    assert_int_equal(model_status_restore_finish(other), 0);
    const status_record_t *a = model_status_record(other, "p1", "a");
    assert_int_equal(a->state, STATUS_FAILING);
    assert_int_equal(a->failures, 1);
    assert_string_equal(a->last_error.message, "upstream said no");
    assert_int_equal(model_status_pending_changes(other, "p1"), 0);
    status_dirty_t d;
    assert_int_equal(model_status_take_dirty(other, &d), 0);
    assert_int_equal(d.record_count + d.provider_count, 0);
    status_dirty_clear(&d);
    assert_int_equal(model_status_provider(other, "p1")->state, STATUS_PROVIDER_OK);
    model_status_forget_record(other, "p1", "a");
    assert_null(model_status_record(other, "p1", "a"));
    model_status_forget_provider(other, "p1");
    assert_null(model_status_provider(other, "p1"));
    assert_int_equal(model_status_take_dirty(other, &d), 0);
    assert_int_equal(d.record_removal_count + d.provider_removal_count, 0);
    status_dirty_clear(&d);
    model_status_destroy(&other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_seen_transitions_from_nil),
        cmocka_unit_test_setup_teardown(test_failing_after_exactly_threshold_and_recovery, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_transient_and_auth_never_count_nor_reset, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_gone_after_exactly_threshold_lists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unverified_ignored_and_disappearing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timestamp_only_updates_are_not_transitions, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_meta_replaced_at_each_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_provider_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune_none_keeps_everything, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune_gone_and_return_with_short_name, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_prune_failing_and_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune_not_applied_is_forgotten, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_targets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iteration_order_and_filters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dirty_tracking_and_removals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_include_invalid_override_moves_to_valid, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_other_transitions, setup, teardown),
        cmocka_unit_test(test_names_and_bad_settings),
        cmocka_unit_test_setup_teardown(test_threshold_one_and_restore, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
