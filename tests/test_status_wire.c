/*
 * test_status_wire: the msgpack shape of a status record, a provider status and a
 * models_changed event (floats for times, nil where the contract says nil, known meta keys).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "status_wire.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    msgpack_sbuffer buf;
    msgpack_packer pk;
    msgpack_unpacked up;
} packed_t;

static void begin(packed_t *p)
{
    msgpack_sbuffer_init(&p->buf);
    msgpack_packer_init(&p->pk, &p->buf, msgpack_sbuffer_write);
    msgpack_unpacked_init(&p->up);
}

static const msgpack_object *finish(packed_t *p)
{
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&p->up, p->buf.data, p->buf.size, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, p->buf.size);
    return &p->up.data;
}

static void end(packed_t *p)
{
    msgpack_unpacked_destroy(&p->up);
    msgpack_sbuffer_destroy(&p->buf);
}

static const msgpack_object *get(const msgpack_object *map, const char *key)
{
    assert_int_equal(map->type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            memcmp(kv->key.via.str.ptr, key, strlen(key)) == 0)
            return &kv->val;
    }
    return NULL;
}

static void assert_str(const msgpack_object *o, const char *want)
{
    assert_non_null(o);
    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
    assert_int_equal(o->via.str.size, strlen(want));
    assert_memory_equal(o->via.str.ptr, want, strlen(want));
}

static void assert_nil(const msgpack_object *o)
{
    assert_non_null(o);
    assert_int_equal(o->type, MSGPACK_OBJECT_NIL);
}

static void test_fresh_record_has_nils(void **state)
{
    (void)state;
    char model[] = "gpt-x";
    status_record_t rec = {.model = model,
                           .state = STATUS_UNVERIFIED,
                           .listed = STATUS_LISTED_NIL,
                           .first_seen_at = 100.5,
                           .last_listed_at = STATUS_TIME_NIL,
                           .last_checked_at = STATUS_TIME_NIL,
                           .last_ok_at = STATUS_TIME_NIL,
                           .latency_ms = STATUS_TIME_NIL};
    packed_t p;
    begin(&p);
    assert_int_equal(status_wire_pack_record(&p.pk, "p1", &rec), 0);
    const msgpack_object *o = finish(&p);
    assert_int_equal(o->via.map.size, 13);
    assert_str(get(o, "provider"), "p1");
    assert_str(get(o, "model"), "gpt-x");
    assert_str(get(o, "state"), "unverified");
    assert_int_equal(get(o, "in_valid_models")->type, MSGPACK_OBJECT_BOOLEAN);
    assert_false(get(o, "in_valid_models")->via.boolean);
    assert_nil(get(o, "listed"));
    assert_int_equal(get(o, "first_seen_at")->type, MSGPACK_OBJECT_FLOAT64);
    assert_true(get(o, "first_seen_at")->via.f64 == 100.5);
    assert_nil(get(o, "last_listed_at"));
    assert_nil(get(o, "last_checked_at"));
    assert_nil(get(o, "last_ok_at"));
    assert_nil(get(o, "latency_ms"));
    assert_int_equal(get(o, "failures")->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(get(o, "failures")->via.u64, 0);
    assert_nil(get(o, "last_error"));
    assert_int_equal(get(o, "meta")->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(get(o, "meta")->via.map.size, 0);
    /* Internal facts never reach the wire. */
    assert_null(get(o, "absent_count"));
    assert_null(get(o, "short_name"));
    assert_null(get(o, "pruned"));
    end(&p);
}

static void test_full_record(void **state)
{
    (void)state;
    char model[] = "m";
    char msg[] = "model not found";
    char owner[] = "acme";
    status_record_t rec = {.model = model,
                           .state = STATUS_FAILING,
                           .in_valid_models = true,
                           .listed = STATUS_LISTED_FALSE,
                           .first_seen_at = 1.0,
                           .last_listed_at = 2.0,
                           .last_checked_at = 3.0,
                           .last_ok_at = 4.0,
                           .latency_ms = 250.0,
                           .failures = 3,
                           .last_error = {STATUS_ERROR_MODEL, 404, msg},
                           .meta = {.has_context_length = true,
                                    .context_length = 131072,
                                    .owned_by = owner,
                                    .has_created = true,
                                    .created = 1700000000}};
    packed_t p;
    begin(&p);
    assert_int_equal(status_wire_pack_record(&p.pk, "p1", &rec), 0);
    const msgpack_object *o = finish(&p);
    assert_str(get(o, "state"), "failing");
    assert_true(get(o, "in_valid_models")->via.boolean);
    assert_int_equal(get(o, "listed")->type, MSGPACK_OBJECT_BOOLEAN);
    assert_false(get(o, "listed")->via.boolean);
    assert_int_equal(get(o, "latency_ms")->type, MSGPACK_OBJECT_FLOAT64);
    assert_true(get(o, "latency_ms")->via.f64 == 250.0);
    assert_int_equal(get(o, "failures")->via.u64, 3);
    const msgpack_object *e = get(o, "last_error");
    assert_int_equal(e->via.map.size, 3);
    assert_str(get(e, "class"), "model");
    assert_int_equal(get(e, "status")->via.u64, 404);
    assert_str(get(e, "message"), "model not found");
    const msgpack_object *m = get(o, "meta");
    assert_int_equal(m->via.map.size, 3);
    assert_int_equal(get(m, "context_length")->via.u64, 131072);
    assert_str(get(m, "owned_by"), "acme");
    assert_int_equal(get(m, "created")->via.u64, 1700000000);
    assert_null(get(m, "max_output_tokens"));
    end(&p);
}

static void test_provider_status_and_error_without_status(void **state)
{
    (void)state;
    char msg[] = "connection refused";
    status_provider_t ps = {.state = STATUS_PROVIDER_UNREACHABLE,
                            .last_list_at = 7.25,
                            .last_list_ok_at = STATUS_TIME_NIL,
                            .last_error = {STATUS_ERROR_TRANSIENT, 0, msg}};
    packed_t p;
    begin(&p);
    assert_int_equal(status_wire_pack_provider(&p.pk, "p1", &ps), 0);
    const msgpack_object *o = finish(&p);
    assert_int_equal(o->via.map.size, 6);
    assert_str(get(o, "provider"), "p1");
    assert_str(get(o, "state"), "unreachable");
    assert_true(get(o, "last_list_at")->via.f64 == 7.25);
    assert_nil(get(o, "last_list_ok_at"));
    assert_nil(get(o, "models_listed"));
    assert_str(get(get(o, "last_error"), "class"), "transient");
    assert_nil(get(get(o, "last_error"), "status"));
    end(&p);
    ps.has_models_listed = true;
    ps.models_listed = 42;
    ps.state = STATUS_PROVIDER_OK;
    status_error_t none = {0};
    ps.last_error = none;
    begin(&p);
    assert_int_equal(status_wire_pack_provider(&p.pk, "p1", &ps), 0);
    o = finish(&p);
    assert_str(get(o, "state"), "ok");
    assert_int_equal(get(o, "models_listed")->via.u64, 42);
    assert_nil(get(o, "last_error"));
    end(&p);
}

static void test_changes_event(void **state)
{
    (void)state;
    char a[] = "a", b[] = "b";
    status_change_t list[2] = {{a, STATUS_NIL, STATUS_UNVERIFIED}, {b, STATUS_VALID, STATUS_GONE}};
    status_changes_t c = {.status_version = 9, .count = 2, .changes = list};
    packed_t p;
    begin(&p);
    assert_int_equal(status_wire_pack_changes(&p.pk, "p1", &c), 0);
    const msgpack_object *o = finish(&p);
    assert_str(get(o, "event"), "models_changed");
    assert_int_equal(get(o, "status_version")->via.u64, 9);
    assert_str(get(o, "provider"), "p1");
    const msgpack_object *arr = get(o, "changes");
    assert_int_equal(arr->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(arr->via.array.size, 2);
    assert_str(get(&arr->via.array.ptr[0], "model"), "a");
    assert_nil(get(&arr->via.array.ptr[0], "from"));
    assert_str(get(&arr->via.array.ptr[0], "to"), "unverified");
    assert_str(get(&arr->via.array.ptr[1], "from"), "valid");
    assert_str(get(&arr->via.array.ptr[1], "to"), "gone");
    end(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fresh_record_has_nils),
        cmocka_unit_test(test_full_record),
        cmocka_unit_test(test_provider_status_and_error_without_status),
        cmocka_unit_test(test_changes_event),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
