/*
 * status_wire: msgpack encoding of status records, provider statuses and models_changed
 * events (see status_wire.h).
 */
#include "status_wire.h"

#include "pm_proto.h"

/* A time or latency: a float, or nil (NaN in the table). */
static int s_pack_time(msgpack_packer *pk, double t)
{
    if (status_time_is_nil(t))
        return msgpack_pack_nil(pk);
    return msgpack_pack_double(pk, t);
}

static int s_pack_bool(msgpack_packer *pk, bool b)
{
    return b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

int status_wire_pack_error(msgpack_packer *pk, const status_error_t *e)
{
    const char *class_name = e ? status_error_class_name(e->error_class) : NULL;
    if (!class_name)
        return msgpack_pack_nil(pk);
    if (msgpack_pack_map(pk, 3) != 0 || pm_pack_str(pk, "class") != 0 ||
        pm_pack_str(pk, class_name) != 0 || pm_pack_str(pk, "status") != 0)
        return -1;
    if ((e->http_status > 0 ? msgpack_pack_int(pk, e->http_status) : msgpack_pack_nil(pk)) != 0)
        return -1;
    if (pm_pack_str(pk, "message") != 0 || pm_pack_str(pk, e->message ? e->message : "") != 0)
        return -1;
    return 0;
}

int status_wire_pack_meta(msgpack_packer *pk, const model_meta_t *m)
{
    uint32_t n = (uint32_t)m->has_context_length + (uint32_t)m->has_max_output_tokens +
                 (uint32_t)(m->owned_by != NULL) + (uint32_t)m->has_created;
    if (msgpack_pack_map(pk, n) != 0)
        return -1;
    if (m->has_context_length && (pm_pack_str(pk, "context_length") != 0 ||
                                  msgpack_pack_long_long(pk, m->context_length) != 0))
        return -1;
    if (m->has_max_output_tokens && (pm_pack_str(pk, "max_output_tokens") != 0 ||
                                     msgpack_pack_long_long(pk, m->max_output_tokens) != 0))
        return -1;
    if (m->owned_by && (pm_pack_str(pk, "owned_by") != 0 || pm_pack_str(pk, m->owned_by) != 0))
        return -1;
    if (m->has_created &&
        (pm_pack_str(pk, "created") != 0 || msgpack_pack_long_long(pk, m->created) != 0))
        return -1;
    return 0;
}

int status_wire_pack_record(msgpack_packer *pk, const char *provider, const status_record_t *rec)
{
    const char *state = status_state_name(rec->state);
    if (!provider || !state)
        return -1;
    if (msgpack_pack_map(pk, 13) != 0 || pm_pack_str(pk, "provider") != 0 ||
        pm_pack_str(pk, provider) != 0 || pm_pack_str(pk, "model") != 0 ||
        pm_pack_str(pk, rec->model) != 0 || pm_pack_str(pk, "state") != 0 ||
        pm_pack_str(pk, state) != 0 || pm_pack_str(pk, "in_valid_models") != 0 ||
        s_pack_bool(pk, rec->in_valid_models) != 0 || pm_pack_str(pk, "listed") != 0)
        return -1;
    int rc = rec->listed == STATUS_LISTED_NIL ? msgpack_pack_nil(pk)
                                              : s_pack_bool(pk, rec->listed == STATUS_LISTED_TRUE);
    if (rc != 0 || pm_pack_str(pk, "first_seen_at") != 0 ||
        s_pack_time(pk, rec->first_seen_at) != 0 || pm_pack_str(pk, "last_listed_at") != 0 ||
        s_pack_time(pk, rec->last_listed_at) != 0 || pm_pack_str(pk, "last_checked_at") != 0 ||
        s_pack_time(pk, rec->last_checked_at) != 0 || pm_pack_str(pk, "last_ok_at") != 0 ||
        s_pack_time(pk, rec->last_ok_at) != 0 || pm_pack_str(pk, "latency_ms") != 0 ||
        s_pack_time(pk, rec->latency_ms) != 0 || pm_pack_str(pk, "failures") != 0 ||
        msgpack_pack_long_long(pk, rec->failures) != 0 || pm_pack_str(pk, "last_error") != 0 ||
        status_wire_pack_error(pk, &rec->last_error) != 0 || pm_pack_str(pk, "meta") != 0 ||
        status_wire_pack_meta(pk, &rec->meta) != 0)
        return -1;
    return 0;
}

int status_wire_pack_provider(msgpack_packer *pk, const char *provider, const status_provider_t *ps)
{
    if (!provider)
        return -1;
    if (msgpack_pack_map(pk, 6) != 0 || pm_pack_str(pk, "provider") != 0 ||
        pm_pack_str(pk, provider) != 0 || pm_pack_str(pk, "state") != 0 ||
        pm_pack_str(pk, status_provider_state_name(ps->state)) != 0 ||
        pm_pack_str(pk, "last_list_at") != 0 || s_pack_time(pk, ps->last_list_at) != 0 ||
        pm_pack_str(pk, "last_list_ok_at") != 0 || s_pack_time(pk, ps->last_list_ok_at) != 0 ||
        pm_pack_str(pk, "models_listed") != 0)
        return -1;
    int rc = ps->has_models_listed ? msgpack_pack_long_long(pk, ps->models_listed)
                                   : msgpack_pack_nil(pk);
    if (rc != 0 || pm_pack_str(pk, "last_error") != 0 ||
        status_wire_pack_error(pk, &ps->last_error) != 0)
        return -1;
    return 0;
}

int status_wire_pack_changes(msgpack_packer *pk, const char *provider,
                             const status_changes_t *changes)
{
    if (!provider || !changes || changes->count > UINT32_MAX)
        return -1;
    if (msgpack_pack_map(pk, 4) != 0 || pm_pack_str(pk, "event") != 0 ||
        pm_pack_str(pk, "models_changed") != 0 || pm_pack_str(pk, "status_version") != 0 ||
        msgpack_pack_uint64(pk, changes->status_version) != 0 || pm_pack_str(pk, "provider") != 0 ||
        pm_pack_str(pk, provider) != 0 || pm_pack_str(pk, "changes") != 0 ||
        msgpack_pack_array(pk, (uint32_t)changes->count) != 0)
        return -1;
    for (size_t i = 0; i < changes->count; i++) {
        const status_change_t *c = &changes->changes[i];
        const char *to = status_state_name(c->to);
        if (!to)
            return -1;
        /* from nil: a first sighting (status_state_name(STATUS_NIL) is NULL, packed nil). */
        if (msgpack_pack_map(pk, 3) != 0 || pm_pack_str(pk, "model") != 0 ||
            pm_pack_str(pk, c->model) != 0 || pm_pack_str(pk, "from") != 0 ||
            pm_pack_str(pk, status_state_name(c->from)) != 0 || pm_pack_str(pk, "to") != 0 ||
            pm_pack_str(pk, to) != 0)
            return -1;
    }
    return 0;
}
