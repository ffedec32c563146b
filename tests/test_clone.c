/*
 * test_clone: unit tests of the Clone pattern's state machine (replica/clone.h). Every body is
 * packed here with msgpack-c, as the service packs it: a snapshot reply, `changed` events with
 * their configs, heartbeats, other kinds and broken bytes. The clock is the argument, so
 * silence and backoff are tested without sleeping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clone.h"

#define HEARTBEAT_MS 100
#define BACKOFF_MAX_MS 400
#define EPOCH "9f3c2a61d07be514"
#define OTHER_EPOCH "00112233aabbccdd"

/* ---------------------------------------------------------------------- body builders */

/* A body packed into a buffer that the test frees with body_free. */
typedef struct {
    msgpack_sbuffer buffer;
    msgpack_packer pk;
} body_t;

static void body_init(body_t *body)
{
    msgpack_sbuffer_init(&body->buffer);
    msgpack_packer_init(&body->pk, &body->buffer, msgpack_sbuffer_write);
}

static void body_free(body_t *body)
{
    msgpack_sbuffer_destroy(&body->buffer);
}

static void pack_str(msgpack_packer *pk, const char *text)
{
    size_t len = strlen(text);
    assert_int_equal(msgpack_pack_str(pk, len), 0);
    assert_int_equal(msgpack_pack_str_body(pk, text, len), 0);
}

/* A ProviderConfig as the service packs it (service/wire.c): api_key nil when NULL; models
 * are "long=short" pairs ("long" alone: short = long); invalid is NULL-terminated. */
static void pack_config(msgpack_packer *pk, const char *key, const char *api_key,
                        const char *const *models, size_t model_count, const char *const *invalid,
                        size_t invalid_count)
{
    msgpack_pack_map(pk, 6);
    pack_str(pk, "provider");
    pack_str(pk, key);
    pack_str(pk, "name");
    char name[64];
    snprintf(name, sizeof name, "Name of %s", key);
    pack_str(pk, name);
    pack_str(pk, "base_api_url");
    char url[96];
    snprintf(url, sizeof url, "https://%s.example/v1", key);
    pack_str(pk, url);
    pack_str(pk, "api_key");
    if (api_key)
        pack_str(pk, api_key);
    else
        msgpack_pack_nil(pk);
    pack_str(pk, "valid_models");
    msgpack_pack_map(pk, model_count);
    for (size_t i = 0; i < model_count; i++) {
        const char *eq = strchr(models[i], '=');
        if (eq) {
            assert_int_equal(msgpack_pack_str(pk, (size_t)(eq - models[i])), 0);
            assert_int_equal(msgpack_pack_str_body(pk, models[i], (size_t)(eq - models[i])), 0);
            pack_str(pk, eq + 1);
        } else {
            pack_str(pk, models[i]);
            pack_str(pk, models[i]);
        }
    }
    pack_str(pk, "invalid_models");
    msgpack_pack_array(pk, invalid_count);
    for (size_t i = 0; i < invalid_count; i++)
        pack_str(pk, invalid[i]);
}

static const char *const OPENAI_MODELS[] = {"gpt-4o=4o", "gpt-4o-mini"};
static const char *const OPENAI_INVALID[] = {"gpt-2"};
static const char *const ANTHROPIC_MODELS[] = {"claude-3-opus=opus"};
static const char *const GROQ_MODELS[] = {"llama3-70b", "gpt-4o"};

static void pack_openai(msgpack_packer *pk, const char *api_key)
{
    pack_config(pk, "openai", api_key, OPENAI_MODELS, 2, OPENAI_INVALID, 1);
}

static void pack_anthropic(msgpack_packer *pk)
{
    pack_config(pk, "anthropic", NULL, ANTHROPIC_MODELS, 1, NULL, 0);
}

/* {"id": 1, "ok": true, "result": {"state_version", "status_version", "epoch", "providers":
 * [openai, anthropic]}}. */
static void snapshot_body(body_t *body, int64_t version, int64_t status_version, const char *epoch)
{
    body_init(body);
    msgpack_packer *pk = &body->pk;
    msgpack_pack_map(pk, 3);
    pack_str(pk, "id");
    msgpack_pack_int(pk, 1);
    pack_str(pk, "ok");
    msgpack_pack_true(pk);
    pack_str(pk, "result");
    msgpack_pack_map(pk, 4);
    pack_str(pk, "state_version");
    msgpack_pack_int64(pk, version);
    pack_str(pk, "status_version");
    msgpack_pack_int64(pk, status_version);
    pack_str(pk, "epoch");
    pack_str(pk, epoch);
    pack_str(pk, "providers");
    msgpack_pack_array(pk, 2);
    pack_openai(pk, "sk-openai");
    pack_anthropic(pk);
}

/* Starts a changed event's map; the caller packs "providers" and "configs" (2 entries). */
static void changed_head(body_t *body, int64_t version, const char *epoch)
{
    body_init(body);
    msgpack_pack_map(&body->pk, 5);
    pack_str(&body->pk, "event");
    pack_str(&body->pk, "changed");
    pack_str(&body->pk, "state_version");
    msgpack_pack_int64(&body->pk, version);
    pack_str(&body->pk, "epoch");
    pack_str(&body->pk, epoch);
}

/* A changed event that puts groq (its models: GROQ_MODELS). */
static void changed_groq(body_t *body, int64_t version, const char *epoch)
{
    changed_head(body, version, epoch);
    pack_str(&body->pk, "providers");
    msgpack_pack_array(&body->pk, 1);
    pack_str(&body->pk, "groq");
    pack_str(&body->pk, "configs");
    msgpack_pack_array(&body->pk, 1);
    pack_config(&body->pk, "groq", "gsk-1", GROQ_MODELS, 2, NULL, 0);
}

static void heartbeat_body(body_t *body, int64_t version, int64_t status_version, const char *epoch)
{
    body_init(body);
    msgpack_pack_map(&body->pk, 4);
    pack_str(&body->pk, "event");
    pack_str(&body->pk, "heartbeat");
    pack_str(&body->pk, "state_version");
    msgpack_pack_int64(&body->pk, version);
    pack_str(&body->pk, "status_version");
    msgpack_pack_int64(&body->pk, status_version);
    pack_str(&body->pk, "epoch");
    pack_str(&body->pk, epoch);
}

static clone_event_t feed(clone_t *clone, body_t *body, int64_t now_ms)
{
    clone_event_t verdict = clone_on_event(clone, body->buffer.data, body->buffer.size, now_ms);
    body_free(body);
    return verdict;
}

static clone_event_t feed_changed_groq(clone_t *clone, int64_t version, const char *epoch,
                                       int64_t now_ms)
{
    body_t body;
    changed_groq(&body, version, epoch);
    return feed(clone, &body, now_ms);
}

static clone_event_t feed_heartbeat(clone_t *clone, int64_t version, int64_t status_version,
                                    const char *epoch, int64_t now_ms)
{
    body_t body;
    heartbeat_body(&body, version, status_version, epoch);
    return feed(clone, &body, now_ms);
}

static int apply_snapshot(clone_t *clone, int64_t version, const char *epoch, int64_t now_ms)
{
    body_t body;
    snapshot_body(&body, version, 7, epoch);
    int rc = clone_apply_snapshot(clone, body.buffer.data, body.buffer.size, now_ms);
    body_free(&body);
    return rc;
}

/* A clone holding the snapshot (version 5, EPOCH) taken at t = 1000. */
static int setup_synced(void **state)
{
    clone_t *clone = clone_new(HEARTBEAT_MS, BACKOFF_MAX_MS);
    if (!clone || apply_snapshot(clone, 5, EPOCH, 1000) != 0)
        return -1;
    *state = clone;
    return 0;
}

static int teardown(void **state)
{
    clone_t *clone = *state;
    clone_destroy(&clone);
    return 0;
}

static void expect_resolves(const registry_t *registry, const char *model_string, const char *key,
                            const char *long_name)
{
    registry_resolution_t res;
    assert_int_equal(registry_resolve(registry, model_string, strlen(model_string), &res),
                     REGISTRY_RESOLVED);
    assert_string_equal(provider_key(res.provider), key);
    assert_string_equal(res.long_name, long_name);
}

static clone_counters_t counters_of(const clone_t *clone)
{
    clone_counters_t counters;
    clone_counters(clone, &counters);
    return counters;
}

/* ------------------------------------------------------------------------ construction */

static void test_new_and_start(void **state)
{
    (void)state;
    assert_null(clone_new(0, 100));
    assert_null(clone_new(100, 0));
    assert_null(clone_new(-5, 100));
    clone_t *clone = clone_new(HEARTBEAT_MS, BACKOFF_MAX_MS);
    assert_non_null(clone);
    assert_false(clone_synced(clone));
    assert_null(clone_registry(clone));
    assert_int_equal(clone_version(clone), -1);
    assert_string_equal(clone_epoch(clone), "");
    assert_int_equal(clone_primary_version(clone), -1);
    assert_int_equal(clone_status_version(clone), -1);
    assert_int_equal(clone_last_contact_ms(clone), -1);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_START);
    assert_true(clone_want_snapshot(clone, 0));
    /* Before the first snapshot, events say nothing the snapshot will not. */
    assert_int_equal(feed_changed_groq(clone, 1, EPOCH, 10), CLONE_EVENT_IGNORED);
    assert_int_equal(feed_heartbeat(clone, 3, 2, EPOCH, 20), CLONE_EVENT_HEARTBEAT);
    assert_false(clone_synced(clone));
    assert_int_equal(clone_last_contact_ms(clone), 20);
    assert_int_equal(clone_status_version(clone), 2);
    clone_counters_t counters = counters_of(clone);
    assert_int_equal(counters.heartbeats, 1);
    assert_int_equal(counters.resnapshots, 0);
    clone_destroy(&clone);
    assert_null(clone);
    clone_destroy(&clone); /* safe twice */
    clone_destroy(NULL);
}

/* ------------------------------------------------------------------------- the snapshot */

static void test_snapshot_applied(void **state)
{
    clone_t *clone = *state;
    assert_true(clone_synced(clone));
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_NONE);
    assert_false(clone_want_snapshot(clone, 1001));
    assert_int_equal(clone_version(clone), 5);
    assert_string_equal(clone_epoch(clone), EPOCH);
    assert_int_equal(clone_primary_version(clone), 5);
    assert_int_equal(clone_status_version(clone), 7);
    assert_int_equal(clone_last_contact_ms(clone), 1000);
    registry_t *registry = clone_registry(clone);
    assert_non_null(registry);
    assert_true(registry_sealed(registry));
    assert_int_equal(registry_count(registry), 2);
    assert_int_equal(registry_model_count(registry), 3);
    assert_string_equal(provider_key(registry_at(registry, 0)), "openai");
    assert_string_equal(provider_key(registry_at(registry, 1)), "anthropic");

    const provider_t *openai = registry_get(registry, "openai", 6);
    assert_string_equal(provider_name(openai), "Name of openai");
    assert_string_equal(provider_base_api_url(openai), "https://openai.example/v1");
    assert_string_equal(provider_api_key(openai), "sk-openai");
    assert_int_equal(provider_model_count(openai), 2);
    assert_string_equal(provider_model_long(openai, 0), "gpt-4o");
    assert_string_equal(provider_model_short(openai, 0), "4o");
    assert_string_equal(provider_model_short(openai, 1), "gpt-4o-mini");
    assert_int_equal(provider_invalid_count(openai), 1);
    assert_string_equal(provider_invalid_at(openai, 0), "gpt-2");
    assert_null(provider_api_key(registry_get(registry, "anthropic", 9)));

    expect_resolves(registry, "gpt-4o", "openai", "gpt-4o");
    expect_resolves(registry, "openai/4o", "openai", "gpt-4o");
    expect_resolves(registry, "opus", "anthropic", "claude-3-opus");
    registry_resolution_t res;
    assert_int_equal(registry_resolve(registry, "anthropic/gpt-4o", 16, &res),
                     REGISTRY_INVALID_FOR_PROVIDER);
    assert_int_equal(registry_resolve(registry, "llama3-70b", 10, &res), REGISTRY_INVALID_MODEL);

    clone_counters_t counters = counters_of(clone);
    assert_int_equal(counters.snapshots, 1);
    assert_int_equal(counters.resnapshots, 0);
    assert_int_equal(counters.snapshot_failures, 0);
    size_t count = 99;
    clone_changed_keys(clone, &count);
    assert_int_equal(count, 0);
}

/* A reply that is not a good snapshot changes nothing and counts as a failure. */
static void test_snapshot_bad_replies(void **state)
{
    (void)state;
    clone_t *clone = clone_new(HEARTBEAT_MS, BACKOFF_MAX_MS);
    assert_non_null(clone);
    uint64_t failures = 0;
    int64_t now = 0;

    /* Not msgpack, truncated, empty, NULL. */
    const char garbage[] = "\xc1\xc1\xc1";
    assert_int_equal(clone_apply_snapshot(clone, garbage, 3, now), -1);
    assert_int_equal(counters_of(clone).snapshot_failures, ++failures);
    body_t body;
    snapshot_body(&body, 5, 7, EPOCH);
    assert_int_equal(clone_apply_snapshot(clone, body.buffer.data, body.buffer.size - 3, now), -1);
    assert_int_equal(counters_of(clone).snapshot_failures, ++failures);
    body_free(&body);
    assert_int_equal(clone_apply_snapshot(clone, garbage, 0, now), -1);
    assert_int_equal(clone_apply_snapshot(clone, NULL, 10, now), -1);
    failures += 2;

    /* An error reply. */
    body_init(&body);
    msgpack_pack_map(&body.pk, 2);
    pack_str(&body.pk, "ok");
    msgpack_pack_false(&body.pk);
    pack_str(&body.pk, "error");
    pack_str(&body.pk, "unavailable");
    assert_int_equal(clone_apply_snapshot(clone, body.buffer.data, body.buffer.size, now), -1);
    body_free(&body);
    failures++;

    /* providers not an array; state_version negative; a config with a bad key. */
    for (int variant = 0; variant < 3; variant++) {
        body_init(&body);
        msgpack_pack_map(&body.pk, 2);
        pack_str(&body.pk, "ok");
        msgpack_pack_true(&body.pk);
        pack_str(&body.pk, "result");
        msgpack_pack_map(&body.pk, 3);
        pack_str(&body.pk, "state_version");
        msgpack_pack_int64(&body.pk, variant == 1 ? -3 : 4);
        pack_str(&body.pk, "epoch");
        pack_str(&body.pk, EPOCH);
        pack_str(&body.pk, "providers");
        if (variant == 0) {
            pack_str(&body.pk, "openai");
        } else {
            msgpack_pack_array(&body.pk, 2);
            pack_openai(&body.pk, NULL);
            pack_config(&body.pk, variant == 2 ? "Not A Key" : "groq", NULL, GROQ_MODELS, 2, NULL,
                        0);
        }
        assert_int_equal(clone_apply_snapshot(clone, body.buffer.data, body.buffer.size, now), -1);
        body_free(&body);
        failures++;
    }
    clone_counters_t counters = counters_of(clone);
    assert_int_equal(counters.snapshot_failures, failures);
    assert_int_equal(counters.snapshots, 0);
    assert_false(clone_synced(clone));
    assert_int_equal(clone_version(clone), -1);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_START);
    clone_destroy(&clone);
}

/* ------------------------------------------------------------------------- the events */

static void test_events_at_or_below_dropped_then_next_applied(void **state)
{
    clone_t *clone = *state;
    registry_t *before = registry_ref(clone_registry(clone));
    /* Already in the snapshot: dropped, no re-snapshot. */
    assert_int_equal(feed_changed_groq(clone, 4, EPOCH, 1010), CLONE_EVENT_IGNORED);
    assert_int_equal(feed_changed_groq(clone, 5, EPOCH, 1020), CLONE_EVENT_IGNORED);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_NONE);
    assert_ptr_equal(clone_registry(clone), before);
    assert_int_equal(clone_last_contact_ms(clone), 1020);

    assert_int_equal(feed_changed_groq(clone, 6, EPOCH, 1030), CLONE_EVENT_APPLIED);
    assert_int_equal(clone_version(clone), 6);
    assert_int_equal(clone_primary_version(clone), 6);
    size_t count = 0;
    const char *const *keys = clone_changed_keys(clone, &count);
    assert_int_equal(count, 1);
    assert_string_equal(keys[0], "groq");
    registry_t *after = clone_registry(clone);
    assert_ptr_not_equal(after, before);
    assert_true(registry_sealed(after));
    assert_int_equal(registry_count(after), 3);
    /* The first hit of "gpt-4o" is still openai's; groq's own is reached by prefix. */
    expect_resolves(after, "gpt-4o", "openai", "gpt-4o");
    expect_resolves(after, "groq/gpt-4o", "groq", "gpt-4o");
    expect_resolves(after, "llama3-70b", "groq", "llama3-70b");
    assert_string_equal(provider_api_key(registry_get(after, "groq", 4)), "gsk-1");
    /* The untouched providers are shared, not copied. */
    assert_ptr_equal(registry_get(after, "openai", 6), registry_get(before, "openai", 6));
    /* A reader of the older registry is not disturbed. */
    assert_int_equal(registry_count(before), 2);
    assert_false(registry_contains(before, "groq", 4));
    registry_destroy(&before);

    /* Caught up now: an older version means the primary went backwards. */
    assert_int_equal(feed_changed_groq(clone, 3, EPOCH, 1040), CLONE_EVENT_RESYNC);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_BACKWARDS);
    clone_changed_keys(clone, &count);
    assert_int_equal(count, 0);
    assert_true(clone_want_snapshot(clone, 1040));
    clone_counters_t counters = counters_of(clone);
    assert_int_equal(counters.events_applied, 1);
    assert_int_equal(counters.backwards, 1);
    assert_int_equal(counters.resnapshots, 1);
    /* The state stays readable while the re-snapshot is pending. */
    assert_int_equal(clone_version(clone), 6);
    assert_true(clone_synced(clone));
}

static void test_gap_resyncs(void **state)
{
    clone_t *clone = *state;
    registry_t *before = clone_registry(clone);
    assert_int_equal(feed_changed_groq(clone, 7, EPOCH, 1010), CLONE_EVENT_RESYNC);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_GAP);
    assert_int_equal(clone_version(clone), 5);
    assert_int_equal(clone_primary_version(clone), 7);
    assert_ptr_equal(clone_registry(clone), before);
    assert_true(clone_want_snapshot(clone, 1010));
    /* Pending: further events wait for the snapshot and count nothing more. */
    assert_int_equal(feed_changed_groq(clone, 6, EPOCH, 1020), CLONE_EVENT_IGNORED);
    assert_int_equal(feed_changed_groq(clone, 9, EPOCH, 1030), CLONE_EVENT_IGNORED);
    assert_int_equal(clone_version(clone), 5);
    clone_counters_t counters = counters_of(clone);
    assert_int_equal(counters.gaps, 1);
    assert_int_equal(counters.resnapshots, 1);
    assert_int_equal(counters.events_applied, 0);

    /* The re-snapshot repairs it; then the stream goes on from there. */
    assert_int_equal(apply_snapshot(clone, 9, EPOCH, 1040), 0);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_NONE);
    assert_false(clone_want_snapshot(clone, 1040));
    assert_int_equal(clone_version(clone), 9);
    assert_int_equal(feed_changed_groq(clone, 10, EPOCH, 1050), CLONE_EVENT_APPLIED);
    counters = counters_of(clone);
    assert_int_equal(counters.snapshots, 2);
    assert_int_equal(counters.resnapshots, 1);
}

static void test_epoch_change_resyncs(void **state)
{
    clone_t *clone = *state;
    assert_int_equal(feed_changed_groq(clone, 6, OTHER_EPOCH, 1010), CLONE_EVENT_RESYNC);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_EPOCH);
    assert_int_equal(clone_version(clone), 5);
    assert_int_equal(counters_of(clone).epoch_changes, 1);
    /* The new run restarts at a lower version: its snapshot becomes the state and the highest
     * version announced is the new run's, not the old one's. */
    assert_int_equal(apply_snapshot(clone, 1, OTHER_EPOCH, 1020), 0);
    assert_int_equal(clone_version(clone), 1);
    assert_string_equal(clone_epoch(clone), OTHER_EPOCH);
    assert_int_equal(clone_primary_version(clone), 1);
    /* A heartbeat of the other epoch too. */
    assert_int_equal(feed_heartbeat(clone, 1, 7, EPOCH, 1030), CLONE_EVENT_RESYNC);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_EPOCH);
    assert_int_equal(counters_of(clone).epoch_changes, 2);
}

static void test_heartbeat_ahead_resyncs(void **state)
{
    clone_t *clone = *state;
    assert_int_equal(feed_heartbeat(clone, 6, 8, EPOCH, 1010), CLONE_EVENT_RESYNC);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_HEARTBEAT_AHEAD);
    assert_int_equal(clone_primary_version(clone), 6);
    assert_int_equal(clone_status_version(clone), 8);
    clone_counters_t counters = counters_of(clone);
    assert_int_equal(counters.heartbeats_ahead, 1);
    assert_int_equal(counters.heartbeats, 1);
    assert_int_equal(counters.resnapshots, 1);
}

static void test_heartbeat_equal_marks_caught_up(void **state)
{
    clone_t *clone = *state;
    /* Not caught up yet: an old event is one the snapshot holds. */
    assert_int_equal(feed_changed_groq(clone, 5, EPOCH, 1010), CLONE_EVENT_IGNORED);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_NONE);
    assert_int_equal(feed_heartbeat(clone, 5, 9, EPOCH, 1020), CLONE_EVENT_HEARTBEAT);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_NONE);
    assert_int_equal(clone_status_version(clone), 9);
    assert_int_equal(clone_last_contact_ms(clone), 1020);
    /* The heartbeat confirmed version 5: the same old event now means "backwards". */
    assert_int_equal(feed_changed_groq(clone, 5, EPOCH, 1030), CLONE_EVENT_RESYNC);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_BACKWARDS);
}

static void test_silence_resyncs(void **state)
{
    clone_t *clone = *state;
    /* Contact at 1000 (the snapshot); silence is more than 3 x 100 ms after it. */
    assert_false(clone_want_snapshot(clone, 1300));
    assert_int_equal(feed_heartbeat(clone, 5, 7, EPOCH, 1250), CLONE_EVENT_HEARTBEAT);
    assert_false(clone_want_snapshot(clone, 1500));
    assert_false(clone_want_snapshot(clone, 1550));
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_NONE);
    assert_true(clone_want_snapshot(clone, 1551));
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_SILENCE);
    assert_true(clone_want_snapshot(clone, 1552)); /* until a reply or a failure */
    clone_counters_t counters = counters_of(clone);
    assert_int_equal(counters.silences, 1);
    assert_int_equal(counters.resnapshots, 1);
    /* The state is kept while the primary is away. */
    assert_int_equal(clone_version(clone), 5);
    assert_true(clone_synced(clone));
}

static void test_backoff_doubles_to_max_and_resets(void **state)
{
    (void)state;
    clone_t *clone = clone_new(HEARTBEAT_MS, BACKOFF_MAX_MS);
    assert_non_null(clone);
    /* Waits: 50, 100, 200, 400 (the maximum), 400. */
    const int64_t waits[] = {50, 100, 200, 400, 400};
    int64_t now = 0;
    for (size_t i = 0; i < sizeof waits / sizeof waits[0]; i++) {
        assert_true(clone_want_snapshot(clone, now));
        clone_snapshot_failed(clone, now);
        assert_false(clone_want_snapshot(clone, now + waits[i] - 1));
        now += waits[i];
    }
    assert_true(clone_want_snapshot(clone, now));
    assert_int_equal(counters_of(clone).snapshot_failures, 5);
    /* A bad reply counts as a failure and backs off too. */
    assert_int_equal(clone_apply_snapshot(clone, "\xc1", 1, now), -1);
    assert_false(clone_want_snapshot(clone, now + 399));
    now += 400;
    assert_int_equal(apply_snapshot(clone, 5, EPOCH, now), 0);
    /* After a success a new cause asks at once, and the next failure waits 50 again. */
    assert_int_equal(feed_changed_groq(clone, 9, EPOCH, now), CLONE_EVENT_RESYNC);
    assert_true(clone_want_snapshot(clone, now));
    clone_snapshot_failed(clone, now);
    assert_false(clone_want_snapshot(clone, now + 49));
    assert_true(clone_want_snapshot(clone, now + 50));
    clone_destroy(&clone);

    /* A maximum below the first wait does not shrink it. */
    clone = clone_new(HEARTBEAT_MS, 10);
    assert_non_null(clone);
    clone_snapshot_failed(clone, 0);
    clone_snapshot_failed(clone, 50);
    assert_false(clone_want_snapshot(clone, 99));
    assert_true(clone_want_snapshot(clone, 100));
    clone_destroy(&clone);
}

/* A changed event whose configs do not match its keys, or are malformed, or absent (a v1
 * service): not applied, re-snapshot (counted as a gap). */
static void test_bad_changed_event_resyncs(void **state)
{
    clone_t *clone = *state;
    registry_t *before = clone_registry(clone);
    for (int variant = 0; variant < 5; variant++) {
        body_t body;
        changed_head(&body, 6, EPOCH);
        pack_str(&body.pk, "providers");
        msgpack_pack_array(&body.pk, 1);
        pack_str(&body.pk, "groq");
        pack_str(&body.pk, "configs");
        switch (variant) {
        case 0: /* the config of another key */
            msgpack_pack_array(&body.pk, 1);
            pack_anthropic(&body.pk);
            break;
        case 1: /* valid_models not a map */
            msgpack_pack_array(&body.pk, 1);
            msgpack_pack_map(&body.pk, 4);
            pack_str(&body.pk, "provider");
            pack_str(&body.pk, "groq");
            pack_str(&body.pk, "name");
            pack_str(&body.pk, "Groq");
            pack_str(&body.pk, "base_api_url");
            pack_str(&body.pk, "https://groq.example");
            pack_str(&body.pk, "valid_models");
            msgpack_pack_array(&body.pk, 0);
            break;
        case 2: /* fewer configs than keys */
            msgpack_pack_array(&body.pk, 0);
            break;
        case 3: /* a config that is not a map */
            msgpack_pack_array(&body.pk, 1);
            pack_str(&body.pk, "groq");
            break;
        default: /* no configs at all: a version 1 service */
            msgpack_pack_nil(&body.pk);
            break;
        }
        assert_int_equal(feed(clone, &body, 1010), CLONE_EVENT_RESYNC);
        assert_int_equal(clone_pending(clone), CLONE_CAUSE_BAD_EVENT);
        assert_int_equal(clone_version(clone), 5);
        assert_ptr_equal(clone_registry(clone), before);
        assert_false(registry_contains(before, "groq", 4));
        assert_int_equal(counters_of(clone).gaps, (uint64_t)variant + 1);
        assert_int_equal(apply_snapshot(clone, 5, EPOCH, 1020), 0);
        before = clone_registry(clone);
    }
}

static void test_removal_and_several_keys(void **state)
{
    clone_t *clone = *state;
    registry_t *before = registry_ref(clone_registry(clone));
    /* One change touching two keys: anthropic removed (nil), openai replaced. */
    body_t body;
    changed_head(&body, 6, EPOCH);
    pack_str(&body.pk, "providers");
    msgpack_pack_array(&body.pk, 2);
    pack_str(&body.pk, "anthropic");
    pack_str(&body.pk, "openai");
    pack_str(&body.pk, "configs");
    msgpack_pack_array(&body.pk, 2);
    msgpack_pack_nil(&body.pk);
    pack_openai(&body.pk, NULL);
    assert_int_equal(feed(clone, &body, 1010), CLONE_EVENT_APPLIED);
    size_t count = 0;
    const char *const *keys = clone_changed_keys(clone, &count);
    assert_int_equal(count, 2);
    assert_string_equal(keys[0], "anthropic");
    assert_string_equal(keys[1], "openai");
    registry_t *after = clone_registry(clone);
    assert_int_equal(registry_count(after), 1);
    assert_false(registry_contains(after, "anthropic", 9));
    assert_null(provider_api_key(registry_get(after, "openai", 6)));
    registry_resolution_t res;
    assert_int_equal(registry_resolve(after, "opus", 4, &res), REGISTRY_INVALID_MODEL);
    /* The older registry still answers as it did. */
    expect_resolves(before, "opus", "anthropic", "claude-3-opus");
    assert_string_equal(provider_api_key(registry_get(before, "openai", 6)), "sk-openai");
    registry_destroy(&before);

    /* Removing a key that is not there is a change all the same (the version moves). */
    changed_head(&body, 7, EPOCH);
    pack_str(&body.pk, "providers");
    msgpack_pack_array(&body.pk, 1);
    pack_str(&body.pk, "mistral");
    pack_str(&body.pk, "configs");
    msgpack_pack_array(&body.pk, 1);
    msgpack_pack_nil(&body.pk);
    assert_int_equal(feed(clone, &body, 1020), CLONE_EVENT_APPLIED);
    assert_int_equal(clone_version(clone), 7);
    assert_int_equal(registry_count(clone_registry(clone)), 1);
}

static void test_other_kinds_and_malformed_ignored(void **state)
{
    clone_t *clone = *state;
    registry_t *before = clone_registry(clone);
    body_t body;
    /* A models event (its own topic, but whatever arrives here must be harmless). */
    body_init(&body);
    msgpack_pack_map(&body.pk, 3);
    pack_str(&body.pk, "event");
    pack_str(&body.pk, "models_changed");
    pack_str(&body.pk, "status_version");
    msgpack_pack_int(&body.pk, 40);
    pack_str(&body.pk, "state_version");
    msgpack_pack_int(&body.pk, 12);
    assert_int_equal(feed(clone, &body, 1010), CLONE_EVENT_IGNORED);
    /* A v1 "changed" without state_version; a string version; no event key. */
    body_init(&body);
    msgpack_pack_map(&body.pk, 1);
    pack_str(&body.pk, "event");
    pack_str(&body.pk, "changed");
    assert_int_equal(feed(clone, &body, 1020), CLONE_EVENT_IGNORED);
    body_init(&body);
    msgpack_pack_map(&body.pk, 2);
    pack_str(&body.pk, "event");
    pack_str(&body.pk, "heartbeat");
    pack_str(&body.pk, "state_version");
    pack_str(&body.pk, "9");
    assert_int_equal(feed(clone, &body, 1030), CLONE_EVENT_IGNORED);
    body_init(&body);
    msgpack_pack_map(&body.pk, 1);
    pack_str(&body.pk, "state_version");
    msgpack_pack_int(&body.pk, 12);
    assert_int_equal(feed(clone, &body, 1040), CLONE_EVENT_IGNORED);
    /* Not a map; broken bytes; a truncated event; trailing bytes; nothing. */
    body_init(&body);
    msgpack_pack_array(&body.pk, 0);
    assert_int_equal(feed(clone, &body, 1050), CLONE_EVENT_IGNORED);
    const char garbage[] = "\xdf\xff\xff\xff\xff"; /* a map claiming 4 G entries */
    assert_int_equal(clone_on_event(clone, garbage, 5, 1060), CLONE_EVENT_IGNORED);
    changed_groq(&body, 6, EPOCH);
    assert_int_equal(clone_on_event(clone, body.buffer.data, body.buffer.size - 1, 1070),
                     CLONE_EVENT_IGNORED);
    body_free(&body);
    heartbeat_body(&body, 9, 1, EPOCH);
    msgpack_pack_nil(&body.pk);
    assert_int_equal(feed(clone, &body, 1080), CLONE_EVENT_IGNORED);
    assert_int_equal(clone_on_event(clone, NULL, 0, 1090), CLONE_EVENT_IGNORED);
    assert_int_equal(clone_on_event(clone, "", 0, 1090), CLONE_EVENT_IGNORED);

    /* None of it was contact, a change or a cause. */
    assert_int_equal(clone_last_contact_ms(clone), 1000);
    assert_int_equal(clone_pending(clone), CLONE_CAUSE_NONE);
    assert_ptr_equal(clone_registry(clone), before);
    assert_int_equal(clone_version(clone), 5);
    assert_int_equal(clone_primary_version(clone), 5);
    clone_counters_t counters = counters_of(clone);
    assert_int_equal(counters.events_applied, 0);
    assert_int_equal(counters.heartbeats, 0);
    assert_int_equal(counters.resnapshots, 0);
    /* And the stream goes on. */
    assert_int_equal(feed_changed_groq(clone, 6, EPOCH, 1100), CLONE_EVENT_APPLIED);
}

/* ------------------------------------------------------------------- configs directly */

/* Unpacks body's object into unpacked (kept alive by the caller). */
static const msgpack_object *unpack(body_t *body, msgpack_unpacked *unpacked)
{
    msgpack_unpacked_init(unpacked);
    size_t offset = 0;
    assert_int_equal(msgpack_unpack_next(unpacked, body->buffer.data, body->buffer.size, &offset),
                     MSGPACK_UNPACK_SUCCESS);
    return &unpacked->data;
}

/* A good config of "groq" with one field changed: field is the key to replace (dropped when
 * value_type is -1; a name no config has changes nothing); value_type 0 = nil, 1 = integer,
 * 2 = the str value with a NUL inside, 3 = empty array, 4 = {"m": 1}. */
static provider_t *config_with(const char *field, int value_type, const char *value,
                               const char *expected)
{
    static const char *const fields[] = {"provider", "name",         "base_api_url",
                                         "api_key",  "valid_models", "invalid_models"};
    body_t body;
    body_init(&body);
    size_t count = value_type == -1 ? 5 : 6;
    msgpack_pack_map(&body.pk, count);
    for (size_t i = 0; i < 6; i++) {
        bool replaced = strcmp(fields[i], field) == 0;
        if (replaced && value_type == -1)
            continue;
        pack_str(&body.pk, fields[i]);
        if (replaced) {
            switch (value_type) {
            case 0:
                msgpack_pack_nil(&body.pk);
                break;
            case 1:
                msgpack_pack_int(&body.pk, 3);
                break;
            case 2:
                /* value and its terminating NUL: a str with a NUL inside */
                assert_int_equal(msgpack_pack_str(&body.pk, strlen(value) + 1), 0);
                assert_int_equal(msgpack_pack_str_body(&body.pk, value, strlen(value) + 1), 0);
                break;
            case 3:
                msgpack_pack_array(&body.pk, 0);
                break;
            default:
                msgpack_pack_map(&body.pk, 1);
                pack_str(&body.pk, "m");
                msgpack_pack_int(&body.pk, 1);
                break;
            }
        } else if (i == 0) {
            pack_str(&body.pk, "groq");
        } else if (i == 3) {
            pack_str(&body.pk, "gsk");
        } else if (i == 4) {
            msgpack_pack_map(&body.pk, 1);
            pack_str(&body.pk, "m1");
            pack_str(&body.pk, "s1");
        } else if (i == 5) {
            msgpack_pack_array(&body.pk, 1);
            pack_str(&body.pk, "bad-1");
        } else {
            pack_str(&body.pk, "text");
        }
    }
    msgpack_unpacked unpacked;
    const msgpack_object *obj = unpack(&body, &unpacked);
    provider_t *provider =
        clone_provider_from_config(obj, expected, expected ? strlen(expected) : 0);
    msgpack_unpacked_destroy(&unpacked);
    body_free(&body);
    return provider;
}

static void test_provider_from_config(void **state)
{
    (void)state;
    /* The untouched config. */
    provider_t *provider = config_with("none", 0, NULL, "groq");
    assert_non_null(provider);
    assert_string_equal(provider_key(provider), "groq");
    assert_string_equal(provider_name(provider), "text");
    assert_string_equal(provider_api_key(provider), "gsk");
    assert_int_equal(provider_model_count(provider), 1);
    assert_string_equal(provider_model_short(provider, 0), "s1");
    assert_true(provider_is_invalid(provider, "bad-1", 5));
    provider_destroy(&provider);

    /* api_key nil or absent: no key. valid_models / invalid_models absent: empty. */
    provider = config_with("api_key", 0, NULL, NULL);
    assert_non_null(provider);
    assert_null(provider_api_key(provider));
    provider_destroy(&provider);
    provider = config_with("api_key", -1, NULL, NULL);
    assert_non_null(provider);
    assert_null(provider_api_key(provider));
    provider_destroy(&provider);
    provider = config_with("valid_models", -1, NULL, NULL);
    assert_non_null(provider);
    assert_int_equal(provider_model_count(provider), 0);
    provider_destroy(&provider);
    provider = config_with("invalid_models", -1, NULL, NULL);
    assert_non_null(provider);
    assert_int_equal(provider_invalid_count(provider), 0);
    provider_destroy(&provider);

    /* Refused: another key than expected; a missing or non-str field; an invalid key; a NUL
     * inside a string; wrong container types; a non-str model or short name. */
    assert_null(config_with("none", 0, NULL, "openai"));
    assert_null(config_with("none", 0, NULL, "gro"));
    assert_null(config_with("provider", -1, NULL, NULL));
    assert_null(config_with("name", -1, NULL, NULL));
    assert_null(config_with("base_api_url", 0, NULL, NULL));
    assert_null(config_with("name", 1, NULL, NULL));
    assert_null(config_with("api_key", 1, NULL, NULL));
    assert_null(config_with("api_key", 3, NULL, NULL));
    assert_null(config_with("name", 2, "x", NULL));
    assert_null(config_with("api_key", 2, "sk", NULL));
    assert_null(config_with("valid_models", 3, NULL, NULL));
    assert_null(config_with("valid_models", 4, NULL, NULL));
    assert_null(config_with("invalid_models", 4, NULL, NULL));
    assert_null(config_with("invalid_models", 0, NULL, NULL));
    assert_null(config_with("valid_models", 0, NULL, NULL));
    assert_null(clone_provider_from_config(NULL, NULL, 0));

    /* A key the registry refuses. */
    body_t body;
    body_init(&body);
    pack_config(&body.pk, "Upper Case", NULL, NULL, 0, NULL, 0);
    msgpack_unpacked unpacked;
    assert_null(clone_provider_from_config(unpack(&body, &unpacked), NULL, 0));
    msgpack_unpacked_destroy(&unpacked);
    body_free(&body);
    /* invalid_models holding a non-str. */
    body_init(&body);
    msgpack_pack_map(&body.pk, 4);
    pack_str(&body.pk, "provider");
    pack_str(&body.pk, "groq");
    pack_str(&body.pk, "name");
    pack_str(&body.pk, "Groq");
    pack_str(&body.pk, "base_api_url");
    pack_str(&body.pk, "https://groq.example");
    pack_str(&body.pk, "invalid_models");
    msgpack_pack_array(&body.pk, 2);
    pack_str(&body.pk, "ok");
    msgpack_pack_int(&body.pk, 1);
    assert_null(clone_provider_from_config(unpack(&body, &unpacked), NULL, 0));
    msgpack_unpacked_destroy(&unpacked);
    body_free(&body);
}

/* NULL everywhere: no crash, neutral answers. */
static void test_null_arguments(void **state)
{
    (void)state;
    assert_false(clone_want_snapshot(NULL, 0));
    clone_snapshot_failed(NULL, 0);
    assert_int_equal(clone_apply_snapshot(NULL, "", 0, 0), -1);
    assert_int_equal(clone_on_event(NULL, "", 0, 0), CLONE_EVENT_IGNORED);
    assert_null(clone_registry(NULL));
    assert_false(clone_synced(NULL));
    assert_int_equal(clone_version(NULL), -1);
    assert_string_equal(clone_epoch(NULL), "");
    assert_int_equal(clone_pending(NULL), CLONE_CAUSE_NONE);
    size_t count = 5;
    assert_null(clone_changed_keys(NULL, &count));
    assert_int_equal(count, 0);
    clone_counters_t counters;
    memset(&counters, 0xff, sizeof counters);
    clone_counters(NULL, &counters);
    assert_int_equal(counters.snapshots, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_and_start),
        cmocka_unit_test_setup_teardown(test_snapshot_applied, setup_synced, teardown),
        cmocka_unit_test(test_snapshot_bad_replies),
        cmocka_unit_test_setup_teardown(test_events_at_or_below_dropped_then_next_applied,
                                        setup_synced, teardown),
        cmocka_unit_test_setup_teardown(test_gap_resyncs, setup_synced, teardown),
        cmocka_unit_test_setup_teardown(test_epoch_change_resyncs, setup_synced, teardown),
        cmocka_unit_test_setup_teardown(test_heartbeat_ahead_resyncs, setup_synced, teardown),
        cmocka_unit_test_setup_teardown(test_heartbeat_equal_marks_caught_up, setup_synced,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_silence_resyncs, setup_synced, teardown),
        cmocka_unit_test(test_backoff_doubles_to_max_and_resets),
        cmocka_unit_test_setup_teardown(test_bad_changed_event_resyncs, setup_synced, teardown),
        cmocka_unit_test_setup_teardown(test_removal_and_several_keys, setup_synced, teardown),
        cmocka_unit_test_setup_teardown(test_other_kinds_and_malformed_ignored, setup_synced,
                                        teardown),
        cmocka_unit_test(test_provider_from_config),
        cmocka_unit_test(test_null_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
