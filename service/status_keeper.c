/*
 * status_keeper: model status in the writer thread (see status_keeper.h).
 */
#include "status_keeper.h"

#include "log.h"
#include "pm_proto.h"
#include "status_store.h"
#include "status_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct status_keeper_t {
    model_status_t *table;
    status_store_t *store;
    const registry_t *reg;    /* the writer's current registry, borrowed */
    const registry_t *synced; /* the registry the table was last synced with (identity only) */
    bool journal_behind;      /* a journal write failed: the next commit writes a snapshot */
    char **parts;             /* providers whose job part ended, not yet taken */
    char **part_bys;          /* who started each part's job (NULL: nobody named) */
    size_t part_count;
    size_t part_alloc;
};

static char *s_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *copy = malloc(n);
    if (copy)
        memcpy(copy, s, n);
    return copy;
}

/* ------------------------------------------------------------------------ observer */

static status_error_class_t s_list_class(discovery_verdict_t verdict)
{
    switch (verdict) {
    case DISCOVERY_VERDICT_AUTH_ERROR:
        return STATUS_ERROR_AUTH;
    case DISCOVERY_VERDICT_TRANSIENT:
        return STATUS_ERROR_TRANSIENT; /* no usable answer: unreachable */
    default:
        return STATUS_ERROR_ERROR; /* a malformed or refused list */
    }
}

static status_probe_outcome_t s_probe_outcome(discovery_verdict_t verdict)
{
    switch (verdict) {
    case DISCOVERY_VERDICT_VALID:
        return STATUS_PROBE_OK;
    case DISCOVERY_VERDICT_INVALID_MODEL:
        return STATUS_PROBE_MODEL_FAIL;
    case DISCOVERY_VERDICT_AUTH_ERROR:
        return STATUS_PROBE_AUTH;
    case DISCOVERY_VERDICT_TRANSIENT:
        return STATUS_PROBE_TRANSIENT;
    default:
        return STATUS_PROBE_ERROR;
    }
}

static void s_on_list_ok(void *ctx, const char *key, size_t n, const char *const *models,
                         const model_meta_t *metas, double now)
{
    status_keeper_t *self = ctx;
    if (model_status_list_ok(self->table, key, n, models, metas, now) < 0)
        log_warn("status: cannot record the model list of %s", key);
}

static void s_on_list_failed(void *ctx, const char *key, discovery_verdict_t verdict,
                             long http_status, const char *message, double now)
{
    status_keeper_t *self = ctx;
    if (model_status_list_failed(self->table, key, s_list_class(verdict), (int)http_status, message,
                                 now) < 0)
        log_warn("status: cannot record the failed list of %s", key);
}

static void s_on_probe(void *ctx, const char *key, const char *model, discovery_verdict_t verdict,
                       long http_status, double latency_ms, const char *message, double now)
{
    status_keeper_t *self = ctx;
    /* A probe of a model the table does not know yet (a discovery over a cached list) is
     * recorded by the sync after the discovery update; nothing to do here then. */
    (void)model_status_probe(self->table, key, model, s_probe_outcome(verdict), (int)http_status,
                             latency_ms, message, now);
}

static int s_verify_targets(void *ctx, const char *key, bool include_invalid,
                            const char *const *only, size_t only_count, char ***out,
                            size_t *out_count)
{
    status_keeper_t *self = ctx;
    *out = NULL;
    *out_count = 0;
    const provider_t *p = self->reg ? registry_get(self->reg, key, strlen(key)) : NULL;
    if (!p)
        return 0;
    return model_status_verify_targets(self->table, p, include_invalid, only, only_count, out,
                                       out_count);
}

static bool s_is_ignored(void *ctx, const char *key, const char *model)
{
    status_keeper_t *self = ctx;
    /* A model of valid_models is never ignored (reading 2). */
    const provider_t *p = self->reg ? registry_get(self->reg, key, strlen(key)) : NULL;
    if (p && provider_model_index(p, model, strlen(model)) >= 0)
        return false;
    return model_status_ignored(self->table, key, model);
}

static void s_on_part_done(void *ctx, const char *key, const char *job_id, int job_kind,
                           const char *by)
{
    (void)job_id;
    (void)job_kind;
    status_keeper_t *self = ctx;
    for (size_t i = 0; i < self->part_count; i++)
        if (strcmp(self->parts[i], key) == 0)
            return;
    if (self->part_count == self->part_alloc) {
        size_t alloc = self->part_alloc ? self->part_alloc * 2 : 8;
        char **parts = realloc(self->parts, alloc * sizeof *parts);
        if (!parts)
            goto nomem;
        self->parts = parts;
        char **bys = realloc(self->part_bys, alloc * sizeof *bys);
        if (!bys)
            goto nomem;
        self->part_bys = bys;
        self->part_alloc = alloc;
    }
    char *copy = s_strdup(key);
    if (!copy)
        goto nomem;
    /* The audit's `by` of the change this part makes; losing it only loses the name. */
    self->part_bys[self->part_count] = by ? s_strdup(by) : NULL;
    self->parts[self->part_count++] = copy;
    return;
nomem:
    /* The transitions stay queued in the table and go out with the next commit. */
    log_warn("status: out of memory noting the end of %s's part", key);
}

void status_keeper_observer(status_keeper_t *self, discovery_observer_t *out)
{
    memset(out, 0, sizeof *out);
    out->ctx = self;
    out->on_list_ok = s_on_list_ok;
    out->on_list_failed = s_on_list_failed;
    out->on_probe = s_on_probe;
    out->verify_targets = s_verify_targets;
    out->is_ignored = s_is_ignored;
    out->on_part_done = s_on_part_done;
}

int status_keeper_take_parts(status_keeper_t *self, char ***keys, char ***bys, size_t *count)
{
    *keys = self->parts;
    *bys = self->part_bys;
    *count = self->part_count;
    self->parts = NULL;
    self->part_bys = NULL;
    self->part_count = 0;
    self->part_alloc = 0;
    return 0;
}

/* ------------------------------------------------------------------------ prune */

int status_keeper_apply_prune(status_keeper_t *self, registry_t *next, const char *key)
{
    const provider_t *p = registry_get(next, key, strlen(key));
    if (!p)
        return 0;
    status_prune_plan_t plan = {0};
    if (model_status_prune_plan(self->table, p, &plan) < 0)
        return -1;
    int rc = 0;
    if (plan.remove_count == 0 && plan.return_count == 0)
        goto done;
    provider_t *edited = registry_edit(next, key);
    if (!edited) {
        rc = -1;
        goto done;
    }
    /* Rebuild valid_models without the removed models (their order kept), then append the
     * returning ones with the short names they had: "a returning model goes to the end". */
    size_t count = provider_model_count(edited);
    char **longs = calloc(count + 1, sizeof *longs);
    char **shorts = calloc(count + 1, sizeof *shorts);
    size_t kept = 0;
    if (!longs || !shorts) {
        free(longs);
        free(shorts);
        rc = -1;
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        const char *long_name = provider_model_long(edited, i);
        bool removed = false;
        for (size_t r = 0; r < plan.remove_count && !removed; r++)
            removed = strcmp(plan.remove[r], long_name) == 0;
        if (removed)
            continue;
        longs[kept] = s_strdup(long_name);
        shorts[kept] = s_strdup(provider_model_short(edited, i));
        if (!longs[kept] || !shorts[kept]) {
            free(longs[kept]);
            free(shorts[kept]);
            rc = -1;
            break;
        }
        kept++;
    }
    if (rc == 0) {
        provider_clear_models(edited);
        for (size_t i = 0; i < kept && rc == 0; i++)
            rc = provider_put_model(edited, longs[i], shorts[i]);
        for (size_t i = 0; i < plan.return_count && rc == 0; i++)
            rc = provider_put_model(edited, plan.returns[i].long_name, plan.returns[i].short_name);
    }
    for (size_t i = 0; i < kept; i++) {
        free(longs[i]);
        free(shorts[i]);
    }
    free(longs);
    free(shorts);
    if (rc == 0) {
        rc = 1;
        log_info("status: %s: %zu model(s) pruned from valid_models, %zu returned", key,
                 plan.remove_count, plan.return_count);
    }
done:
    status_prune_plan_clear(&plan);
    return rc;
}

/* ------------------------------------------------------------------------ commit */

static int s_pack_event(msgpack_sbuffer *buf, const char *key, const status_changes_t *changes)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    return status_wire_pack_changes(&pk, key, changes);
}

static bool s_among(const char *key, const char *const *only, size_t only_count)
{
    if (!only)
        return true;
    for (size_t i = 0; i < only_count; i++)
        if (strcmp(only[i], key) == 0)
            return true;
    return false;
}

int status_keeper_commit(status_keeper_t *self, const registry_t *reg, double now,
                         const char *const *only, size_t only_count,
                         status_keeper_publish_fn *publish, void *publish_arg)
{
    self->reg = reg;
    /* A sync walks the whole registry: only when it changed, never per discovery result (a
     * sealed registry is immutable, and the writer holds it while it is current, so the same
     * pointer means the same content). */
    if (reg != self->synced) {
        if (model_status_sync(self->table, reg, now) < 0)
            log_warn("status: out of memory syncing with the registry");
        else
            self->synced = reg;
    }

    /* Take every provider's batch: each non-empty one bumps status_version once. */
    size_t n = registry_count(reg);
    msgpack_sbuffer *events = n ? calloc(n, sizeof *events) : NULL;
    if (n && !events)
        return -1;
    uint64_t before = model_status_version(self->table);
    for (size_t i = 0; i < n; i++) {
        msgpack_sbuffer_init(&events[i]);
        const char *key = provider_key(registry_at(reg, i));
        if (model_status_pending_changes(self->table, key) == 0 || !s_among(key, only, only_count))
            continue;
        status_changes_t changes = {0};
        if (model_status_take_changes(self->table, key, &changes) < 0) {
            log_warn("status: out of memory taking the changes of %s", key);
            continue;
        }
        if (changes.count > 0 && s_pack_event(&events[i], key, &changes) < 0)
            events[i].size = 0;
        status_changes_clear(&changes);
    }

    /* Journal first: what a subscriber is told, and what a job reports done, is on disk. */
    int rc = 0;
    status_dirty_t dirty = {0};
    if (model_status_take_dirty(self->table, &dirty) < 0) {
        rc = -1;
    } else if (self->journal_behind) {
        /* A batch was lost to a failed write: the dirty marks it carried are gone, so only a
         * whole snapshot brings the journal level with the table again. */
        char err[512];
        if (status_store_compact(self->store, self->table, err, sizeof err) < 0) {
            log_error("status: cannot write the status journal: %s", err);
            rc = -1;
        } else {
            self->journal_behind = false;
            log_info("status: journal written again (a full snapshot after a failed write)");
        }
    } else {
        char err[512];
        int stored = status_store_append(self->store, self->table, &dirty, err, sizeof err);
        if (stored < 0) {
            log_error("status: cannot write the status journal: %s", err);
            self->journal_behind = true;
            rc = -1;
        } else if (stored > 0) {
            log_warn("status: journal compaction failed (the batch is durable): %s", err);
        }
    }
    status_dirty_clear(&dirty);

    for (size_t i = 0; i < n; i++) {
        if (rc == 0 && events[i].size > 0)
            publish(publish_arg, STATUS_KEEPER_EVENTS_TOPIC, events[i].data, events[i].size);
        msgpack_sbuffer_destroy(&events[i]);
    }
    free(events);
    if (rc < 0)
        return -1;
    return model_status_version(self->table) != before ? 1 : 0;
}

/* ------------------------------------------------------------------------ life cycle */

status_keeper_t *status_keeper_new(const char *data_dir, const model_status_settings_t *settings,
                                   const registry_t *reg, double now, char *err, size_t err_size)
{
    status_keeper_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    self->table = model_status_new(settings);
    if (!self->table) {
        snprintf(err, err_size, "invalid model status settings");
        goto fail;
    }
    self->store = status_store_open(data_dir, self->table, err, err_size);
    if (!self->store)
        goto fail;
    self->reg = reg;
    if (model_status_sync(self->table, reg, now) < 0) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    self->synced = reg;
    /* Start-up transitions (models first seen in the providers file) are journalled but not
     * published: nobody can be subscribed yet. */
    for (size_t i = 0; i < registry_count(reg); i++) {
        status_changes_t changes = {0};
        if (model_status_take_changes(self->table, provider_key(registry_at(reg, i)), &changes) ==
            0)
            status_changes_clear(&changes);
    }
    status_dirty_t dirty = {0};
    if (model_status_take_dirty(self->table, &dirty) < 0 ||
        status_store_append(self->store, self->table, &dirty, err, err_size) < 0) {
        status_dirty_clear(&dirty);
        goto fail;
    }
    status_dirty_clear(&dirty);
    return self;
fail:
    status_keeper_destroy(&self);
    return NULL;
}

void status_keeper_destroy(status_keeper_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    status_keeper_t *self = *self_p;
    status_store_destroy(&self->store);
    model_status_destroy(&self->table);
    for (size_t i = 0; i < self->part_count; i++) {
        free(self->parts[i]);
        free(self->part_bys[i]);
    }
    free(self->parts);
    free(self->part_bys);
    free(self);
    *self_p = NULL;
}

const model_status_t *status_keeper_table(const status_keeper_t *self)
{
    return self->table;
}

uint64_t status_keeper_version(const status_keeper_t *self)
{
    return model_status_version(self->table);
}

void status_keeper_set_registry(status_keeper_t *self, const registry_t *reg)
{
    self->reg = reg;
}

int status_keeper_set_settings(status_keeper_t *self, const model_status_settings_t *settings)
{
    if (model_status_set_settings(self->table, settings) < 0)
        return -1;
    self->synced = NULL; /* new ignore globs / thresholds: the next commit syncs again */
    return 0;
}
