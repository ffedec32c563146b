/*
 * test_status_store: the model status journal — round trip of every field, removals, the
 * status_version, a torn tail cut at every byte of the last frame, corrupt CRCs, garbage,
 * compaction (explicit and automatic) and a 100,000-record load.
 *
 * Every test works in its own temporary directory, removed in the teardown.
 */
#define _XOPEN_SOURCE 700 /* nftw() for removing the temporary directory */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "model_status.h"
#include "registry.h"
#include "status_store.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    char dir[64];
    char path[128];
    registry_t *reg;
    model_status_t *st;
    status_store_t *store;
} fixture_t;

static int s_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/pm-status-store-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/%s", f->dir, STATUS_STORE_FILE_NAME);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    status_store_destroy(&f->store);
    model_status_destroy(&f->st);
    registry_destroy(&f->reg);
    nftw(f->dir, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ------------------------------------------------------------------------------ helpers */

static bool time_eq(double a, double b)
{
    return (status_time_is_nil(a) && status_time_is_nil(b)) || a == b;
}

static bool str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool error_eq(const status_error_t *a, const status_error_t *b)
{
    if (a->error_class != b->error_class)
        return false;
    if (a->error_class == STATUS_ERROR_NONE)
        return true;
    return a->http_status == b->http_status && str_eq(a->message, b->message);
}

static void assert_record_eq(const status_record_t *a, const status_record_t *b)
{
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(a->model, b->model);
    assert_int_equal(a->state, b->state);
    assert_int_equal(a->in_valid_models, b->in_valid_models);
    assert_int_equal(a->listed, b->listed);
    assert_true(time_eq(a->first_seen_at, b->first_seen_at));
    assert_true(time_eq(a->last_listed_at, b->last_listed_at));
    assert_true(time_eq(a->last_checked_at, b->last_checked_at));
    assert_true(time_eq(a->last_ok_at, b->last_ok_at));
    assert_true(time_eq(a->latency_ms, b->latency_ms));
    assert_int_equal(a->failures, b->failures);
    assert_true(error_eq(&a->last_error, &b->last_error));
    assert_int_equal(a->meta.has_context_length, b->meta.has_context_length);
    assert_int_equal(a->meta.context_length, b->meta.context_length);
    assert_int_equal(a->meta.has_max_output_tokens, b->meta.has_max_output_tokens);
    assert_int_equal(a->meta.max_output_tokens, b->meta.max_output_tokens);
    assert_true(str_eq(a->meta.owned_by, b->meta.owned_by));
    assert_int_equal(a->meta.has_created, b->meta.has_created);
    assert_int_equal(a->meta.created, b->meta.created);
    assert_int_equal(a->in_invalid_models, b->in_invalid_models);
    assert_int_equal(a->absent_count, b->absent_count);
    assert_int_equal(a->pruned, b->pruned);
    assert_true(str_eq(a->short_name, b->short_name));
    assert_int_equal(a->list_index, b->list_index);
}

typedef struct {
    const model_status_t *other;
    size_t providers, records;
} cmp_t;

static int s_cmp_provider(const char *key, const status_provider_t *ps, void *arg)
{
    cmp_t *c = arg;
    const status_provider_t *o = model_status_provider(c->other, key);
    assert_non_null(o);
    assert_int_equal(ps->state, o->state);
    assert_true(time_eq(ps->last_list_at, o->last_list_at));
    assert_true(time_eq(ps->last_list_ok_at, o->last_list_ok_at));
    assert_int_equal(ps->has_models_listed, o->has_models_listed);
    assert_int_equal(ps->models_listed, o->models_listed);
    assert_true(error_eq(&ps->last_error, &o->last_error));
    c->providers++;
    return 0;
}

static int s_cmp_record(const char *key, const status_record_t *rec, void *arg)
{
    cmp_t *c = arg;
    assert_record_eq(rec, model_status_record(c->other, key, rec->model));
    c->records++;
    return 0;
}

/* a and b hold exactly the same providers, records and version. */
static void assert_tables_eq(const model_status_t *a, const model_status_t *b)
{
    cmp_t c = {b, 0, 0};
    assert_int_equal(model_status_each_all(a, s_cmp_provider, s_cmp_record, &c), 0);
    cmp_t back = {a, 0, 0};
    assert_int_equal(model_status_each_all(b, s_cmp_provider, s_cmp_record, &back), 0);
    assert_int_equal(c.records, back.records);
    assert_int_equal(c.providers, back.providers);
    assert_int_equal(model_status_version(a), model_status_version(b));
    size_t ca[STATUS_STATE_COUNT], cb[STATUS_STATE_COUNT];
    model_status_counts(a, ca);
    model_status_counts(b, cb);
    assert_memory_equal(ca, cb, sizeof ca);
}

static const char *const VALID3[] = {"a", "b", "c"};
static const char *const INVALID1[] = {"x"};

static registry_t *make_registry(void)
{
    registry_t *reg = registry_new();
    assert_non_null(reg);
    provider_t *p = provider_new("p1", "P one", "http://127.0.0.1:1/v1");
    assert_non_null(p);
    assert_int_equal(provider_set_api_key(p, "sk-never-in-the-journal"), 0);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(provider_put_model(p, VALID3[i], NULL), 0);
    assert_int_equal(provider_set_invalid_models(p, INVALID1, 1), 0);
    assert_int_equal(registry_put(reg, &p), 0);
    p = provider_new("p2", "P two", "http://127.0.0.1:2/v1");
    assert_non_null(p);
    assert_int_equal(provider_put_model(p, "m", "short-m"), 0);
    assert_int_equal(registry_put(reg, &p), 0);
    return reg;
}

/* Takes the dirty set and appends it. */
static void commit(fixture_t *f)
{
    status_dirty_t d;
    char err[256] = "";
    assert_int_equal(model_status_take_dirty(f->st, &d), 0);
    int rc = status_store_append(f->store, f->st, &d, err, sizeof err);
    status_dirty_clear(&d);
    if (rc != 0)
        fail_msg("append: %s", err);
}

static void take_all_changes(fixture_t *f)
{
    status_changes_t c;
    assert_int_equal(model_status_take_changes(f->st, "p1", &c), 0);
    status_changes_clear(&c);
    assert_int_equal(model_status_take_changes(f->st, "p2", &c), 0);
    status_changes_clear(&c);
}

static void open_store(fixture_t *f)
{
    char err[256] = "";
    f->st = model_status_new(NULL);
    assert_non_null(f->st);
    f->store = status_store_open(f->dir, f->st, err, sizeof err);
    if (!f->store)
        fail_msg("open: %s", err);
}

/* A table rich in every field: lists with metadata, probes of every outcome, a provider
 * error, a pruned model with its short name. Frame 1: sync; frame 2: the rest. */
static void populate(fixture_t *f)
{
    f->reg = make_registry();
    open_store(f);
    assert_int_equal(model_status_sync(f->st, f->reg, 100.0), 0);
    take_all_changes(f);
    commit(f);
    model_meta_t metas[4] = {{0}};
    metas[0].has_context_length = true;
    metas[0].context_length = 128000;
    metas[0].owned_by = (char *)"acme";
    metas[1].has_max_output_tokens = true;
    metas[1].max_output_tokens = 4096;
    metas[1].has_created = true;
    metas[1].created = 1700000000;
    const char *const listed[] = {"b", "a", "new-one", "x"};
    assert_int_equal(model_status_list_ok(f->st, "p1", 4, listed, metas, 200.25), 0);
    assert_int_equal(model_status_list_ok(f->st, "p1", 4, listed, metas, 201.5), 0);
    assert_int_equal(model_status_probe(f->st, "p1", "a", STATUS_PROBE_OK, 0, 87.5, NULL, 202.0),
                     0);
    assert_int_equal(model_status_probe(f->st, "p1", "b", STATUS_PROBE_MODEL_FAIL, 404, 0,
                                        "The model `b` does not exist", 203.0),
                     0);
    assert_int_equal(model_status_probe(f->st, "p1", "b", STATUS_PROBE_TRANSIENT, 0, 0,
                                        "timeout \xc3\xa9", 204.0),
                     0);
    assert_int_equal(
        model_status_list_failed(f->st, "p2", STATUS_ERROR_AUTH, 401, "Unauthorized", 205.0), 0);
    model_status_settings_t s;
    model_status_settings_init(&s);
    s.prune = STATUS_PRUNE_GONE;
    assert_int_equal(model_status_set_settings(f->st, &s), 0);
    status_prune_plan_t plan;
    assert_int_equal(model_status_prune_plan(f->st, registry_get(f->reg, "p1", 2), &plan), 0);
    assert_int_equal(plan.remove_count, 1); /* c: absent from two lists */
    registry_t *next = registry_clone(f->reg);
    provider_t *p = registry_edit(next, "p1");
    provider_clear_models(p);
    assert_int_equal(provider_put_model(p, "a", NULL), 0);
    assert_int_equal(provider_put_model(p, "b", NULL), 0);
    registry_destroy(&f->reg);
    f->reg = next;
    status_prune_plan_clear(&plan);
    assert_int_equal(model_status_sync(f->st, f->reg, 206.0), 0);
    assert_true(model_status_record(f->st, "p1", "c")->pruned);
    take_all_changes(f);
    commit(f);
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    off_t size = file_size(path);
    unsigned char *data = malloc((size_t)size + 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)size, fp), (size_t)size);
    fclose(fp);
    *len = (size_t)size;
    return data;
}

static void write_file(const char *path, const unsigned char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_TRUNC | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

/* Opens a second table from the same journal (the first store must be closed). */
static model_status_t *reload(fixture_t *f, status_store_t **store_out)
{
    char err[256] = "";
    model_status_t *st = model_status_new(NULL);
    assert_non_null(st);
    status_store_t *store = status_store_open(f->dir, st, err, sizeof err);
    if (!store)
        fail_msg("reopen: %s", err);
    *store_out = store;
    return st;
}

/* ------------------------------------------------------------------------------ tests */

static void test_round_trip_every_field(void **state)
{
    fixture_t *f = *state;
    populate(f);
    uint64_t version = model_status_version(f->st);
    assert_true(version >= 2);
    status_store_destroy(&f->store);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    status_store_t *store2;
    model_status_t *st2 = reload(f, &store2);
    assert_int_equal(status_store_truncated_bytes(store2), 0);
    assert_tables_eq(f->st, st2);
    /* The restored table needs no write and publishes nothing: no dirty marks, no changes. */
    status_dirty_t d;
    assert_int_equal(model_status_take_dirty(st2, &d), 0);
    assert_int_equal(d.record_count + d.provider_count, 0);
    status_dirty_clear(&d);
    assert_int_equal(model_status_pending_changes(st2, "p1"), 0);
    /* Synced with the same registry it changes nothing either. */
    assert_int_equal(model_status_sync(st2, f->reg, 300.0), 0);
    assert_int_equal(model_status_pending_changes(st2, "p1"), 0);
    /* The restored list order still drives iteration. */
    assert_string_equal(model_status_record(st2, "p1", "new-one")->model, "new-one");
    assert_int_equal(model_status_record(st2, "p1", "new-one")->list_index, 2);
    /* No API key anywhere in the journal. */
    size_t len;
    unsigned char *data = read_file(f->path, &len);
    for (size_t i = 0; i + 8 <= len; i++)
        assert_false(memcmp(data + i, "sk-never", 8) == 0);
    free(data);
    status_store_destroy(&store2);
    model_status_destroy(&st2);
}

static void test_removals_round_trip(void **state)
{
    fixture_t *f = *state;
    populate(f);
    /* new-one disappears (no longer listed), p2 leaves the registry. */
    const char *const listed[] = {"a", "b"};
    assert_int_equal(model_status_list_ok(f->st, "p1", 2, listed, NULL, 300.0), 0);
    assert_null(model_status_record(f->st, "p1", "new-one"));
    registry_t *next = registry_clone(f->reg);
    assert_int_equal(registry_remove(next, "p2"), 1);
    registry_destroy(&f->reg);
    f->reg = next;
    assert_int_equal(model_status_sync(f->st, f->reg, 301.0), 0);
    take_all_changes(f);
    uint64_t before = status_store_size(f->store);
    commit(f);
    assert_true(status_store_size(f->store) > before);
    status_store_destroy(&f->store);
    status_store_t *store2;
    model_status_t *st2 = reload(f, &store2);
    assert_null(model_status_record(st2, "p1", "new-one"));
    assert_null(model_status_provider(st2, "p2"));
    assert_tables_eq(f->st, st2);
    status_store_destroy(&store2);
    model_status_destroy(&st2);
}

static void test_nothing_written_without_changes(void **state)
{
    fixture_t *f = *state;
    populate(f);
    uint64_t size = status_store_size(f->store);
    assert_int_equal(size, (uint64_t)file_size(f->path));
    commit(f); /* nothing dirty, same version */
    assert_int_equal(status_store_size(f->store), size);
    /* A timestamp-only update writes only that record: a small frame. */
    assert_int_equal(model_status_probe(f->st, "p1", "a", STATUS_PROBE_OK, 0, 1.0, NULL, 400.0), 0);
    commit(f);
    uint64_t grown = status_store_size(f->store) - size;
    assert_true(grown > 0 && grown < 200);
}

/* Cuts the journal at every byte offset inside its last frame: the load keeps every earlier
 * frame, truncates the rest, and the next append follows good data. */
static void test_torn_tail_at_every_offset(void **state)
{
    fixture_t *f = *state;
    populate(f);
    size_t good_len;
    unsigned char *good = read_file(f->path, &good_len);
    assert_int_equal(good_len, status_store_size(f->store));
    /* A third frame. */
    assert_int_equal(model_status_probe(f->st, "p1", "b", STATUS_PROBE_MODEL_FAIL, 404, 0,
                                        "still missing", 500.0),
                     0);
    commit(f);
    status_store_destroy(&f->store);
    size_t full_len;
    unsigned char *full = read_file(f->path, &full_len);
    assert_true(full_len > good_len);
    assert_memory_equal(full, good, good_len);
    /* The table as the first two frames leave it: what every cut must come back to. */
    write_file(f->path, good, good_len);
    status_store_t *s1;
    model_status_t *before_last = reload(f, &s1);
    status_store_destroy(&s1);
    for (size_t cut = good_len; cut < full_len; cut++) {
        write_file(f->path, full, cut);
        status_store_t *store;
        model_status_t *st = reload(f, &store);
        assert_int_equal(status_store_truncated_bytes(store), cut - good_len);
        assert_int_equal(status_store_size(store), good_len);
        assert_int_equal(file_size(f->path), (off_t)good_len);
        assert_tables_eq(before_last, st);
        status_store_destroy(&store);
        model_status_destroy(&st);
    }
    /* Whole again: the third frame is there. */
    write_file(f->path, full, full_len);
    status_store_t *store;
    model_status_t *st = reload(f, &store);
    assert_int_equal(model_status_record(st, "p1", "b")->failures, 2);
    assert_string_equal(model_status_record(st, "p1", "b")->last_error.message, "still missing");
    status_store_destroy(&store);
    model_status_destroy(&st);
    model_status_destroy(&before_last);
    free(full);
    free(good);
}

static void test_corrupt_crc_and_garbage(void **state)
{
    fixture_t *f = *state;
    populate(f);
    status_store_destroy(&f->store);
    size_t len;
    unsigned char *data = read_file(f->path, &len);
    uint32_t first_len =
        ((uint32_t)data[0] << 24) | ((uint32_t)data[1] << 16) | ((uint32_t)data[2] << 8) | data[3];
    size_t first_end = STATUS_STORE_FRAME_HEADER + first_len;
    assert_true(first_end < len);
    /* A flipped byte in the second frame: only the first frame survives. */
    data[first_end + STATUS_STORE_FRAME_HEADER + 5] ^= 0x40;
    write_file(f->path, data, len);
    status_store_t *store;
    model_status_t *st = reload(f, &store);
    assert_int_equal(status_store_size(store), first_end);
    assert_int_equal(status_store_truncated_bytes(store), len - first_end);
    assert_int_equal(model_status_record(st, "p1", "a")->listed, STATUS_LISTED_NIL);
    assert_int_equal(model_status_record_count(st), 5); /* a b c x (p1) + m (p2) */
    /* Appends after a truncation are read back. */
    assert_int_equal(model_status_probe(st, "p1", "a", STATUS_PROBE_OK, 0, 5.0, NULL, 600.0), 0);
    status_dirty_t d;
    assert_int_equal(model_status_take_dirty(st, &d), 0);
    assert_int_equal(status_store_append(store, st, &d, NULL, 0), 0);
    status_dirty_clear(&d);
    status_store_destroy(&store);
    status_store_t *store2;
    model_status_t *st2 = reload(f, &store2);
    assert_true(model_status_record(st2, "p1", "a")->last_ok_at == 600.0);
    assert_tables_eq(st, st2);
    status_store_destroy(&store2);
    model_status_destroy(&st2);
    model_status_destroy(&st);
    /* A CRC that matches nothing in the header. */
    data[first_end + STATUS_STORE_FRAME_HEADER + 5] ^= 0x40;
    data[first_end + 4] ^= 0x01;
    write_file(f->path, data, len);
    st = reload(f, &store);
    assert_int_equal(status_store_size(store), first_end);
    status_store_destroy(&store);
    model_status_destroy(&st);
    /* Garbage, and a huge length field: an empty table, the file cut to nothing. */
    for (size_t i = 0; i < len; i++)
        data[i] = (unsigned char)(i * 131 + 7);
    write_file(f->path, data, len);
    st = reload(f, &store);
    assert_int_equal(model_status_record_count(st), 0);
    assert_int_equal(status_store_size(store), 0);
    assert_int_equal(file_size(f->path), 0);
    status_store_destroy(&store);
    model_status_destroy(&st);
    /* A frame whose CRC is right but whose payload is not a batch is refused whole. */
    const unsigned char payload[] = {0x93, 0x01, 0x02, 0x03}; /* [1, 2, 3] */
    unsigned char frame[STATUS_STORE_FRAME_HEADER + sizeof payload];
    uint32_t crc = status_store_crc32(payload, sizeof payload);
    frame[0] = frame[1] = frame[2] = 0;
    frame[3] = (unsigned char)sizeof payload;
    frame[4] = (unsigned char)(crc >> 24);
    frame[5] = (unsigned char)(crc >> 16);
    frame[6] = (unsigned char)(crc >> 8);
    frame[7] = (unsigned char)crc;
    memcpy(frame + STATUS_STORE_FRAME_HEADER, payload, sizeof payload);
    write_file(f->path, frame, sizeof frame);
    st = reload(f, &store);
    assert_int_equal(status_store_size(store), 0);
    status_store_destroy(&store);
    model_status_destroy(&st);
    free(data);
}

static void test_crc32_known_value(void **state)
{
    (void)state;
    /* The standard check value of CRC-32/ISO-HDLC. */
    assert_int_equal(status_store_crc32("123456789", 9), 0xCBF43926U);
    assert_int_equal(status_store_crc32("", 0), 0);
    /* Every length and alignment of the four-bytes-per-step loop and its tail agrees with a
     * bit-at-a-time reference. */
    unsigned char buf[80];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(i * 37 + 11);
    for (size_t start = 0; start < 4; start++) {
        for (size_t len = 0; start + len <= sizeof buf; len++) {
            uint32_t crc = 0xFFFFFFFFU;
            for (size_t i = start; i < start + len; i++) {
                crc ^= buf[i];
                for (int k = 0; k < 8; k++)
                    crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320U : crc >> 1;
            }
            assert_int_equal(status_store_crc32(buf + start, len), crc ^ 0xFFFFFFFFU);
        }
    }
}

static void test_compaction_keeps_everything(void **state)
{
    fixture_t *f = *state;
    populate(f);
    char err[256] = "";
    assert_int_equal(status_store_compact(f->store, f->st, err, sizeof err), 0);
    assert_int_equal(status_store_size(f->store), status_store_snapshot_size(f->store));
    assert_int_equal(status_store_size(f->store), (uint64_t)file_size(f->path));
    /* Batches after a snapshot replay on top of it. */
    assert_int_equal(model_status_probe(f->st, "p1", "a", STATUS_PROBE_OK, 0, 3.0, NULL, 700.0), 0);
    commit(f);
    status_store_destroy(&f->store);
    status_store_t *store;
    model_status_t *st = reload(f, &store);
    assert_tables_eq(f->st, st);
    assert_true(status_store_snapshot_size(store) > 0);
    status_store_destroy(&store);
    model_status_destroy(&st);
    /* No temporary file is left behind. */
    char cmd[256];
    snprintf(cmd, sizeof cmd, "test -z \"$(ls %s | grep tmp)\"", f->dir);
    assert_int_equal(system(cmd), 0);
}

static void test_automatic_compaction(void **state)
{
    fixture_t *f = *state;
    populate(f);
    /* Many small batches: the journal passes 1 MiB and is compacted to one snapshot. */
    double now = 1000.0;
    bool compacted = false;
    char message[STATUS_MAX_MESSAGE_LEN + 1];
    memset(message, 'e', sizeof message - 1);
    message[sizeof message - 1] = '\0';
    for (int i = 0; i < 20000 && !compacted; i++) {
        now += 1.0;
        assert_int_equal(model_status_probe(f->st, "p1", i % 2 ? "a" : "b",
                                            i % 3 ? STATUS_PROBE_OK : STATUS_PROBE_TRANSIENT, 0,
                                            (double)i, message, now),
                         0);
        uint64_t before = status_store_size(f->store);
        commit(f);
        compacted = status_store_size(f->store) < before;
    }
    assert_true(compacted);
    assert_true(status_store_size(f->store) < (uint64_t)STATUS_STORE_MIN_COMPACT_BYTES);
    assert_int_equal(status_store_size(f->store), status_store_snapshot_size(f->store));
    status_store_destroy(&f->store);
    status_store_t *store;
    model_status_t *st = reload(f, &store);
    assert_tables_eq(f->st, st);
    status_store_destroy(&store);
    model_status_destroy(&st);
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_load_100000_records(void **state)
{
    fixture_t *f = *state;
    f->reg = registry_new();
    assert_non_null(f->reg);
    char name[64];
    for (int p = 0; p < 100; p++) {
        char key[16];
        snprintf(key, sizeof key, "prov%03d", p);
        provider_t *pv = provider_new(key, key, "http://127.0.0.1:1/v1");
        assert_non_null(pv);
        assert_int_equal(provider_set_api_key(pv, "sk-x"), 0);
        for (int m = 0; m < 1000; m++) {
            snprintf(name, sizeof name, "vendor/model-%04d", m);
            assert_int_equal(provider_put_model(pv, name, NULL), 0);
        }
        assert_int_equal(registry_put(f->reg, &pv), 0);
    }
    open_store(f);
    assert_int_equal(model_status_sync(f->st, f->reg, 100.0), 0);
    assert_int_equal(model_status_record_count(f->st), 100000);
    commit(f); /* one big batch; over 1 MiB, so it is compacted into a snapshot at once */
    assert_true(status_store_snapshot_size(f->store) > 0);
    /* A batch of 1,000 changes afterwards costs a small fraction of the snapshot. */
    uint64_t before = status_store_size(f->store);
    for (int m = 0; m < 1000; m++) {
        snprintf(name, sizeof name, "vendor/model-%04d", m);
        assert_int_equal(
            model_status_probe(f->st, "prov007", name, STATUS_PROBE_OK, 0, 42.0, NULL, 200.0), 0);
    }
    commit(f);
    uint64_t batch = status_store_size(f->store) - before;
    assert_true(batch * 10 < status_store_snapshot_size(f->store));
    status_store_destroy(&f->store);
    double t0 = s_now();
    status_store_t *store;
    model_status_t *st = reload(f, &store);
    double elapsed = s_now() - t0;
    print_message("100,000 records: snapshot %llu bytes, batch of 1,000 %llu bytes, load %.3f s\n",
                  (unsigned long long)status_store_snapshot_size(store), (unsigned long long)batch,
                  elapsed);
    assert_int_equal(model_status_record_count(st), 100000);
    assert_true(model_status_record(st, "prov007", "vendor/model-0999")->latency_ms == 42.0);
    assert_tables_eq(f->st, st);
    status_store_destroy(&store);
    model_status_destroy(&st);
}

static void test_open_errors(void **state)
{
    fixture_t *f = *state;
    char err[256] = "";
    model_status_t *st = model_status_new(NULL);
    assert_non_null(st);
    /* The journal's name taken by a directory: a clear error, no crash. */
    assert_int_equal(mkdir(f->path, 0700), 0);
    assert_null(status_store_open(f->dir, st, err, sizeof err));
    assert_non_null(strstr(err, STATUS_STORE_FILE_NAME));
    rmdir(f->path);
    assert_null(status_store_open("/nonexistent-dir/for/sure", st, err, sizeof err));
    assert_non_null(strstr(err, "No such file"));
    assert_null(status_store_open(NULL, st, err, sizeof err));
    /* An existing journal with loose permissions is tightened to 0600. */
    int fd = open(f->path, O_WRONLY | O_CREAT, 0644);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(chmod(f->path, 0644), 0);
    status_store_t *store = status_store_open(f->dir, st, err, sizeof err);
    assert_non_null(store);
    struct stat sb;
    assert_int_equal(stat(f->path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_string_equal(status_store_path(store), f->path);
    status_store_destroy(&store);
    status_store_destroy(&store); /* safe twice */
    model_status_destroy(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_every_field, setup, teardown),
        cmocka_unit_test_setup_teardown(test_removals_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nothing_written_without_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_at_every_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_crc_and_garbage, setup, teardown),
        cmocka_unit_test(test_crc32_known_value),
        cmocka_unit_test_setup_teardown(test_compaction_keeps_everything, setup, teardown),
        cmocka_unit_test_setup_teardown(test_automatic_compaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_100000_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
