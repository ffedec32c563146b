/*
 * test_status_ops: argument checks and results of model_status, provider_status and
 * verify_models as the writer answers them (the job start itself is test_discovery's).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "status_ops.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    registry_t *reg;
    model_status_t *table;
} fixture_t;

typedef struct {
    msgpack_sbuffer request;
    pm_request_t req;
    msgpack_sbuffer reply;
    msgpack_packer pk;
    pm_reply_t rep;
} call_t;

static int s_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->reg = registry_new();
    provider_t *p = provider_new("p", "P", "http://127.0.0.1:9/v1");
    provider_t *bare = provider_new("bare", "Bare", "http://127.0.0.1:9/v1");
    assert_non_null(p);
    assert_non_null(bare);
    assert_int_equal(provider_set_api_key(p, "sk-test-ops"), 0);
    assert_int_equal(provider_put_model(p, "a", NULL), 0);
    assert_int_equal(provider_put_model(p, "b", NULL), 0);
    const char *invalid[] = {"z"};
    assert_int_equal(provider_set_invalid_models(p, invalid, 1), 0);
    assert_int_equal(registry_put(f->reg, &p), 0);
    assert_int_equal(registry_put(f->reg, &bare), 0);
    assert_int_equal(registry_seal(f->reg), 0);
    f->table = model_status_new(NULL);
    assert_non_null(f->table);
    assert_int_equal(model_status_sync(f->table, f->reg, 100.0), 0);
    const char *listed[] = {"a", "b", "z", "new"};
    assert_int_equal(model_status_list_ok(f->table, "p", 4, listed, NULL, 101.0), 0);
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    model_status_destroy(&f->table);
    registry_destroy(&f->reg);
    free(f);
    return 0;
}

/* Packs {"op": op, "id": 7, "args": <args_packer output>} and decodes it. */
typedef void (*args_fn)(msgpack_packer *pk);

static void s_call(fixture_t *f, call_t *c, const char *op, args_fn args)
{
    msgpack_sbuffer_init(&c->request);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &c->request, msgpack_sbuffer_write);
    assert_int_equal(pm_request_begin(&pk, op, true, 7), 0);
    args(&pk);
    char err[256];
    assert_int_equal(pm_request_decode(&c->req, c->request.data, c->request.size, err, sizeof err),
                     PM_OK);
    msgpack_sbuffer_init(&c->reply);
    msgpack_packer_init(&c->pk, &c->reply, msgpack_sbuffer_write);
    if (strcmp(op, "model_status") == 0)
        status_ops_model_status(f->table, f->reg, &c->req, &c->pk);
    else if (strcmp(op, "provider_status") == 0)
        status_ops_provider_status(f->table, f->reg, &c->req, &c->pk);
    else /* verify_models: only the checks that answer before a job starts */
        status_ops_verify_models(NULL, f->reg, &c->req, NULL, 100.0, &c->pk);
    assert_int_equal(pm_reply_decode(&c->rep, c->reply.data, c->reply.size, err, sizeof err), 0);
    assert_non_null(c->rep.id);
    assert_int_equal(c->rep.id->via.u64, 7);
}

static void s_done(call_t *c)
{
    pm_reply_clear(&c->rep);
    msgpack_sbuffer_destroy(&c->reply);
    pm_request_clear(&c->req);
    msgpack_sbuffer_destroy(&c->request);
}

static void s_assert_error(fixture_t *f, const char *op, args_fn args, pm_error_t code,
                           const char *message)
{
    call_t c;
    s_call(f, &c, op, args);
    assert_false(c.rep.ok);
    assert_int_equal(c.rep.code, code);
    assert_int_equal(c.rep.message.len, strlen(message));
    assert_memory_equal(c.rep.message.ptr, message, strlen(message));
    s_done(&c);
}

/* The models of a model_status result, joined with ',' (and their states after ':'). */
static void s_records(fixture_t *f, args_fn args, char *out, size_t out_size)
{
    call_t c;
    s_call(f, &c, "model_status", args);
    assert_true(c.rep.ok);
    assert_int_equal(c.rep.result->type, MSGPACK_OBJECT_ARRAY);
    out[0] = '\0';
    for (uint32_t i = 0; i < c.rep.result->via.array.size; i++) {
        const msgpack_object *rec = &c.rep.result->via.array.ptr[i];
        const msgpack_object *model = pm_map_get(rec, "model");
        const msgpack_object *st = pm_map_get(rec, "state");
        assert_non_null(model);
        assert_non_null(st);
        size_t len = strlen(out);
        snprintf(out + len, out_size - len, "%s%.*s:%.*s", i ? "," : "", (int)model->via.str.size,
                 model->via.str.ptr, (int)st->via.str.size, st->via.str.ptr);
    }
    s_done(&c);
}

static void s_args_empty(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 0);
}
static void s_args_provider_int(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pm_pack_str(pk, "provider");
    msgpack_pack_int(pk, 5);
}
static void s_args_provider_nope(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pm_pack_str(pk, "provider");
    pm_pack_str(pk, "nope");
}
static void s_args_states_bogus(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pm_pack_str(pk, "states");
    msgpack_pack_array(pk, 2);
    pm_pack_str(pk, "valid");
    pm_pack_str(pk, "bogus");
}
static void s_args_states_empty(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pm_pack_str(pk, "states");
    msgpack_pack_array(pk, 0);
}
static void s_args_states_valid(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    pm_pack_str(pk, "provider");
    pm_pack_str(pk, "p");
    pm_pack_str(pk, "states");
    msgpack_pack_array(pk, 1);
    pm_pack_str(pk, "valid");
}
static void s_args_model_b(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pm_pack_str(pk, "model");
    pm_pack_str(pk, "b");
}
static void s_args_models_str(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pm_pack_str(pk, "models");
    pm_pack_str(pk, "a");
}
static void s_args_models_empty_name(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pm_pack_str(pk, "models");
    msgpack_pack_array(pk, 1);
    pm_pack_str(pk, "");
}
static void s_args_include_invalid_int(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    pm_pack_str(pk, "include_invalid");
    msgpack_pack_int(pk, 1);
}

static void test_model_status_results_in_contract_order(void **state)
{
    fixture_t *f = *state;
    char got[256];
    /* valid_models order, invalid_models order, then other listed models in list order. */
    s_records(f, s_args_empty, got, sizeof got);
    assert_string_equal(got, "a:valid,b:valid,z:invalid,new:unverified");
    s_records(f, s_args_states_valid, got, sizeof got);
    assert_string_equal(got, "a:valid,b:valid");
    s_records(f, s_args_model_b, got, sizeof got);
    assert_string_equal(got, "b:valid");
    s_records(f, s_args_states_empty, got, sizeof got);
    assert_string_equal(got, "");
}

static void test_model_status_bad_input(void **state)
{
    fixture_t *f = *state;
    s_assert_error(f, "model_status", s_args_provider_int, PM_ERR_BAD_REQUEST,
                   "argument 'provider' must be a string");
    s_assert_error(f, "model_status", s_args_states_bogus, PM_ERR_BAD_REQUEST,
                   "argument 'states' has an unknown state 'bogus'");
    s_assert_error(f, "model_status", s_args_provider_nope, PM_ERR_NOT_FOUND,
                   "Provider 'nope' not found");
}

static void test_provider_status(void **state)
{
    fixture_t *f = *state;
    call_t c;
    s_call(f, &c, "provider_status", s_args_empty);
    assert_true(c.rep.ok);
    assert_int_equal(c.rep.result->via.array.size, 2);
    const msgpack_object *p = &c.rep.result->via.array.ptr[0];
    const msgpack_object *bare = &c.rep.result->via.array.ptr[1];
    assert_memory_equal(pm_map_get(p, "state")->via.str.ptr, "ok", 2);
    assert_memory_equal(pm_map_get(bare, "state")->via.str.ptr, "no_key", 6);
    assert_int_equal(pm_map_get(p, "models_listed")->via.u64, 4);
    s_done(&c);
    s_assert_error(f, "provider_status", s_args_provider_int, PM_ERR_BAD_REQUEST,
                   "argument 'provider' must be a string");
    s_assert_error(f, "provider_status", s_args_provider_nope, PM_ERR_NOT_FOUND,
                   "Provider 'nope' not found");
}

static void test_verify_models_bad_input(void **state)
{
    fixture_t *f = *state;
    s_assert_error(f, "verify_models", s_args_provider_int, PM_ERR_BAD_REQUEST,
                   "argument 'provider' must be a string");
    s_assert_error(f, "verify_models", s_args_models_str, PM_ERR_BAD_REQUEST,
                   "argument 'models' must be an array of strings");
    s_assert_error(f, "verify_models", s_args_models_empty_name, PM_ERR_BAD_REQUEST,
                   "argument 'models' names must be 1 to 1024 bytes long");
    s_assert_error(f, "verify_models", s_args_include_invalid_int, PM_ERR_BAD_REQUEST,
                   "argument 'include_invalid' must be a boolean");
    s_assert_error(f, "verify_models", s_args_provider_nope, PM_ERR_NOT_FOUND,
                   "Provider 'nope' not found");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_model_status_results_in_contract_order, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_model_status_bad_input, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_provider_status, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_verify_models_bad_input, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
