/*
 * test_status_keeper: the writer's side of model status, without the writer: the observer
 * feeds the table, a job part's end is a batch, the batch is journalled before its one
 * `models` event is published, transitions of parts still running stay queued, prunes are one
 * ProviderConfig change, and what was journalled is there after a reopen.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "status_keeper.h"
#include "status_store.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_EVENTS 16

typedef struct {
    char dir[64];
    registry_t *reg; /* sealed */
    status_keeper_t *keeper;
    discovery_observer_t obs;
    size_t event_count;
    char *events[MAX_EVENTS]; /* the provider of each models_changed event, in order */
    size_t change_counts[MAX_EVENTS];
    bool journal_existed_at_publish;
} fixture_t;

/* Publisher: records each event's provider and number of changes, and whether the journal
 * already held the batch (it is written first). */
static void s_publish(void *arg, const char *topic, const void *body, size_t size)
{
    fixture_t *f = arg;
    assert_string_equal(topic, STATUS_KEEPER_EVENTS_TOPIC);
    assert_true(f->event_count < MAX_EVENTS);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, body, size, &off), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *provider = NULL, *changes = NULL;
    for (uint32_t i = 0; i < up.data.via.map.size; i++) {
        const msgpack_object_kv *kv = &up.data.via.map.ptr[i];
        if (kv->key.via.str.size == 8 && memcmp(kv->key.via.str.ptr, "provider", 8) == 0)
            provider = &kv->val;
        if (kv->key.via.str.size == 7 && memcmp(kv->key.via.str.ptr, "changes", 7) == 0)
            changes = &kv->val;
    }
    assert_non_null(provider);
    assert_non_null(changes);
    char *key = calloc(1, provider->via.str.size + 1);
    assert_non_null(key);
    memcpy(key, provider->via.str.ptr, provider->via.str.size);
    f->events[f->event_count] = key;
    f->change_counts[f->event_count] = changes->via.array.size;
    f->event_count++;
    char path[128];
    snprintf(path, sizeof path, "%s/%s", f->dir, STATUS_STORE_FILE_NAME);
    struct stat st;
    f->journal_existed_at_publish = stat(path, &st) == 0 && st.st_size > 0;
    msgpack_unpacked_destroy(&up);
}

static void s_clear_events(fixture_t *f)
{
    for (size_t i = 0; i < f->event_count; i++)
        free(f->events[i]);
    f->event_count = 0;
}

/* Two providers with keys: p (a, b) and q (x). */
static registry_t *s_registry(void)
{
    registry_t *reg = registry_new();
    assert_non_null(reg);
    provider_t *p = provider_new("p", "P", "http://127.0.0.1:9/v1");
    provider_t *q = provider_new("q", "Q", "http://127.0.0.1:9/v1");
    assert_non_null(p);
    assert_non_null(q);
    assert_int_equal(provider_set_api_key(p, "sk-test-keeper"), 0);
    assert_int_equal(provider_set_api_key(q, "sk-test-keeper"), 0);
    assert_int_equal(provider_put_model(p, "a", NULL), 0);
    assert_int_equal(provider_put_model(p, "b", "bee"), 0);
    assert_int_equal(provider_put_model(q, "x", NULL), 0);
    assert_int_equal(registry_put(reg, &p), 0);
    assert_int_equal(registry_put(reg, &q), 0);
    assert_int_equal(registry_seal(reg), 0);
    return reg;
}

static void s_open(fixture_t *f, status_prune_t prune)
{
    model_status_settings_t settings;
    model_status_settings_init(&settings);
    settings.gone_threshold = 2;
    settings.prune = prune;
    char err[256] = "";
    f->keeper = status_keeper_new(f->dir, &settings, f->reg, 100.0, err, sizeof err);
    if (!f->keeper)
        fail_msg("status_keeper_new: %s", err);
    status_keeper_observer(f->keeper, &f->obs);
}

static int s_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/pm-keeper-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->reg = s_registry();
    s_open(f, STATUS_PRUNE_NONE);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    status_keeper_destroy(&f->keeper);
    registry_destroy(&f->reg);
    s_clear_events(f);
    char path[128];
    snprintf(path, sizeof path, "%s/%s", f->dir, STATUS_STORE_FILE_NAME);
    unlink(path);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* A successful list of key holding names[n], through the observer. */
static void s_list(fixture_t *f, const char *key, const char *const *names, size_t n, double now)
{
    f->obs.on_list_ok(f->obs.ctx, key, n, names, NULL, now);
}

static void s_part_done(fixture_t *f, const char *key)
{
    f->obs.on_part_done(f->obs.ctx, key, "job-1", DISCOVERY_JOB_VERIFY, "alice");
}

/* The parts that ended, each with who started its job ("alice", from s_part_done). */
static size_t s_take_parts(fixture_t *f, char ***parts)
{
    size_t count = 0;
    char **bys = NULL;
    assert_int_equal(status_keeper_take_parts(f->keeper, parts, &bys, &count), 0);
    for (size_t i = 0; i < count; i++) {
        assert_non_null(bys);
        assert_string_equal(bys[i], "alice");
        free(bys[i]);
    }
    free(bys);
    return count;
}

static void s_free_parts(char **parts, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(parts[i]);
    free(parts);
}

static status_state_t s_state(fixture_t *f, const char *key, const char *model)
{
    const status_record_t *rec = model_status_record(status_keeper_table(f->keeper), key, model);
    return rec ? rec->state : STATUS_NIL;
}

/* Start-up: records for every model, journalled, nothing published, nothing pending. */
static void test_startup_journals_without_events(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(s_state(f, "p", "a"), STATUS_VALID);
    assert_int_equal(s_state(f, "q", "x"), STATUS_VALID);
    assert_int_equal(status_keeper_commit(f->keeper, f->reg, 101.0, NULL, 0, s_publish, f), 0);
    assert_int_equal(f->event_count, 0);
    char path[128];
    snprintf(path, sizeof path, "%s/%s", f->dir, STATUS_STORE_FILE_NAME);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size > 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

/* One event per provider and batch: q's list transitions stay queued while its part runs,
 * p's part ends and only p is published, after the journal holds it. */
static void test_one_event_per_part_and_journal_first(void **state)
{
    fixture_t *f = *state;
    const char *p_list[] = {"a", "new-p"};
    const char *q_list[] = {"x", "new-q"};
    s_list(f, "p", p_list, 2, 110.0);
    s_list(f, "q", q_list, 2, 110.0);
    s_part_done(f, "p");
    s_part_done(f, "p"); /* a second job waiting for the same part: still one part */
    char **parts;
    size_t count = s_take_parts(f, &parts);
    assert_int_equal(count, 1);
    assert_string_equal(parts[0], "p");
    uint64_t before = status_keeper_version(f->keeper);
    assert_int_equal(status_keeper_commit(f->keeper, f->reg, 111.0, (const char *const *)parts,
                                          count, s_publish, f),
                     1);
    s_free_parts(parts, count);
    assert_int_equal(f->event_count, 1);
    assert_string_equal(f->events[0], "p");
    assert_int_equal(f->change_counts[0], 1); /* new-p: nil -> unverified */
    assert_true(f->journal_existed_at_publish);
    assert_int_equal(status_keeper_version(f->keeper), before + 1);

    /* q's part ends later: its queued transition goes out in its own event. */
    s_part_done(f, "q");
    count = s_take_parts(f, &parts);
    assert_int_equal(status_keeper_commit(f->keeper, f->reg, 112.0, (const char *const *)parts,
                                          count, s_publish, f),
                     1);
    s_free_parts(parts, count);
    assert_int_equal(f->event_count, 2);
    assert_string_equal(f->events[1], "q");
    assert_int_equal(f->change_counts[1], 1);

    /* An empty `only` list publishes nothing, even with transitions pending. */
    s_list(f, "q", (const char *const[]){"x"}, 1, 113.0);
    static const char *const none[1] = {NULL};
    assert_int_equal(status_keeper_commit(f->keeper, f->reg, 114.0, none, 0, s_publish, f), 0);
    assert_int_equal(f->event_count, 2);
}

/* Gone after two successful lists without b; with prune gone the plan removes b from
 * valid_models as one change, and b keeps its short name for its return. Everything is there
 * after a reopen of the journal. */
static void test_prune_and_reopen(void **state)
{
    fixture_t *f = *state;
    status_keeper_destroy(&f->keeper);
    s_open(f, STATUS_PRUNE_GONE);
    const char *list[] = {"a"};
    s_list(f, "p", list, 1, 120.0);
    s_list(f, "p", list, 1, 121.0);
    assert_int_equal(s_state(f, "p", "b"), STATUS_GONE);
    s_part_done(f, "p");
    char **parts;
    size_t count = s_take_parts(f, &parts);
    registry_t *next = registry_clone(f->reg);
    assert_non_null(next);
    assert_int_equal(status_keeper_apply_prune(f->keeper, next, "p"), 1);
    assert_int_equal(status_keeper_apply_prune(f->keeper, next, "q"), 0);
    assert_int_equal(status_keeper_apply_prune(f->keeper, next, "nope"), 0);
    assert_int_equal(registry_seal(next), 0);
    const provider_t *p = registry_get(next, "p", 1);
    assert_int_equal(provider_model_count(p), 1);
    assert_string_equal(provider_model_long(p, 0), "a");
    registry_destroy(&f->reg);
    f->reg = next;
    assert_int_equal(status_keeper_commit(f->keeper, f->reg, 122.0, (const char *const *)parts,
                                          count, s_publish, f),
                     1);
    s_free_parts(parts, count);
    const status_record_t *b = model_status_record(status_keeper_table(f->keeper), "p", "b");
    assert_non_null(b);
    assert_int_equal(b->state, STATUS_GONE);
    assert_false(b->in_valid_models);

    /* Reopen: the journal gives the same record back. */
    status_keeper_destroy(&f->keeper);
    s_open(f, STATUS_PRUNE_GONE);
    b = model_status_record(status_keeper_table(f->keeper), "p", "b");
    assert_non_null(b);
    assert_int_equal(b->state, STATUS_GONE);
    assert_true(b->pruned);
    assert_non_null(b->short_name);
    assert_string_equal(b->short_name, "bee");

    /* b is listed again: the plan returns it, at the end, with its short name. */
    const char *back[] = {"a", "b"};
    s_list(f, "p", back, 2, 130.0);
    next = registry_clone(f->reg);
    assert_non_null(next);
    assert_int_equal(status_keeper_apply_prune(f->keeper, next, "p"), 1);
    assert_int_equal(registry_seal(next), 0);
    p = registry_get(next, "p", 1);
    assert_int_equal(provider_model_count(p), 2);
    assert_string_equal(provider_model_long(p, 1), "b");
    assert_string_equal(provider_model_short(p, 1), "bee");
    registry_destroy(&next);
}

/* The observer's decisions: verify targets come from the current registry; a model of
 * valid_models is never ignored. */
static void test_observer_targets_and_ignored(void **state)
{
    fixture_t *f = *state;
    status_keeper_destroy(&f->keeper);
    model_status_settings_t settings;
    model_status_settings_init(&settings);
    const char *globs[] = {"b", "*-embedding"};
    settings.ignore = globs;
    settings.ignore_count = 2;
    char err[256] = "";
    f->keeper = status_keeper_new(f->dir, &settings, f->reg, 100.0, err, sizeof err);
    assert_non_null(f->keeper);
    status_keeper_observer(f->keeper, &f->obs);
    assert_false(f->obs.is_ignored(f->obs.ctx, "p", "b")); /* in valid_models */
    assert_true(f->obs.is_ignored(f->obs.ctx, "p", "text-embedding"));
    assert_false(f->obs.is_ignored(f->obs.ctx, "p", "chat"));
    char **targets = NULL;
    size_t n = 0;
    assert_int_equal(f->obs.verify_targets(f->obs.ctx, "p", false, NULL, 0, &targets, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(targets[0], "a");
    assert_string_equal(targets[1], "b");
    s_free_parts(targets, n);
    assert_int_equal(f->obs.verify_targets(f->obs.ctx, "nope", false, NULL, 0, &targets, &n), 0);
    assert_int_equal(n, 0);
    free(targets);
}

/* A failed journal write publishes nothing; the next commit writes a whole snapshot, so the
 * change that failed is on disk after all and survives a reopen. */
static void test_failed_journal_write_is_caught_up(void **state)
{
    fixture_t *f = *state;
    char path[128];
    snprintf(path, sizeof path, "%s/%s", f->dir, STATUS_STORE_FILE_NAME);
    assert_int_equal(unlink(path), 0); /* the append opens the journal without creating it */
    s_list(f, "p", (const char *const[]){"a", "b", "lost-once"}, 3, 110.0);
    s_part_done(f, "p");
    char **parts;
    size_t count = s_take_parts(f, &parts);
    assert_int_equal(status_keeper_commit(f->keeper, f->reg, 111.0, (const char *const *)parts,
                                          count, s_publish, f),
                     -1);
    s_free_parts(parts, count);
    assert_int_equal(f->event_count, 0);

    s_list(f, "q", (const char *const[]){"x", "later"}, 2, 112.0);
    s_part_done(f, "q");
    count = s_take_parts(f, &parts);
    assert_int_equal(status_keeper_commit(f->keeper, f->reg, 113.0, (const char *const *)parts,
                                          count, s_publish, f),
                     1);
    s_free_parts(parts, count);
    assert_int_equal(f->event_count, 1);
    assert_string_equal(f->events[0], "q");

    status_keeper_destroy(&f->keeper);
    s_open(f, STATUS_PRUNE_NONE);
    assert_int_equal(s_state(f, "p", "lost-once"), STATUS_UNVERIFIED);
    assert_int_equal(s_state(f, "q", "later"), STATUS_UNVERIFIED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_startup_journals_without_events, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_one_event_per_part_and_journal_first, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_prune_and_reopen, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_observer_targets_and_ignored, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_failed_journal_write_is_caught_up, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
