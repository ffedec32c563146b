/*
 * model_status: the model status table of protocol-v1.1 "Model status" (pure C, no I/O).
 *
 * Holds, per provider, a provider status (ok / no_key / auth_failed / unreachable / error /
 * unknown) and, per (provider, long name), a status record with every field of the contract
 * plus the internal facts the state is derived from (consecutive absences from successful
 * lists, the prune flag and the short name kept for the model's return, the position in the
 * last list). Records of one provider live in an insertion-ordered table with O(1) lookup by
 * long name.
 *
 * The state of a record is never set directly: it is ONE function of the facts (s_derive in
 * model_status.c), re-evaluated after every change of a fact, so the same rules hold whatever
 * fed them (sync with the registry, a list, a probe, a settings reload, a restore):
 *   in valid_models:  gone (absent >= gone_threshold), else failing (failures >=
 *                     fail_threshold), else valid;
 *   pruned:           gone / failing by the same rules, else valid (it is due to return);
 *   in invalid_models: invalid;  listed and matching an ignore glob: ignored;
 *   listed: unverified;  otherwise the record disappears (and publishes nothing).
 *
 * Every state change is a transition {model, from (nil allowed), to}, queued per provider
 * until the writer takes the provider's batch (model_status_take_changes, which bumps
 * status_version once per non-empty batch). Timestamps, latency, counts and metadata change
 * without a transition. Every change of a record or provider status also marks it dirty, so
 * the journal (status_store) writes O(changed records) per batch (model_status_take_dirty).
 *
 * The writer's sequence for one provider's part of a job (one batch): feed the facts
 * (list_ok / list_failed / probe), apply model_status_prune_plan if it is not empty (one
 * ProviderConfig change) and model_status_sync, then model_status_take_changes (one `models`
 * event when not empty), model_status_take_dirty and status_store_append, all before the job
 * reads `done`. After any other ProviderConfig change: model_status_sync, then the same.
 *
 * Threads: owned by the writer thread only; no locking. No API key is ever stored here: the
 * key is only looked at (present or not) during model_status_sync.
 *
 * Times are unix seconds as double; STATUS_TIME_NIL (NaN) is the contract's nil for times and
 * latency_ms (test with status_time_is_nil).
 */
#ifndef PM_MODEL_STATUS_H
#define PM_MODEL_STATUS_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model_meta.h"
#include "registry.h"

#define STATUS_DEFAULT_FAIL_THRESHOLD 3
#define STATUS_DEFAULT_GONE_THRESHOLD 2
#define STATUS_MAX_IGNORE_PATTERNS 1024 /* per list (global, or one provider's) */
#define STATUS_MAX_MESSAGE_LEN 1024     /* last_error.message is cut to this many bytes */

#define STATUS_TIME_NIL ((double)NAN)
static inline bool status_time_is_nil(double t)
{
    return isnan(t);
}

/* Record states. STATUS_NIL is "no record" (the `from` of a first-seen transition). */
typedef enum {
    STATUS_NIL = 0,
    STATUS_VALID,
    STATUS_INVALID,
    STATUS_FAILING,
    STATUS_GONE,
    STATUS_UNVERIFIED,
    STATUS_IGNORED,
    STATUS_STATE_COUNT
} status_state_t;

/* A set of states for filters: STATUS_MASK(STATUS_VALID) | ... */
#define STATUS_MASK(state) (1u << (unsigned)(state))
#define STATUS_MASK_ALL                                                                            \
    (STATUS_MASK(STATUS_VALID) | STATUS_MASK(STATUS_INVALID) | STATUS_MASK(STATUS_FAILING) |       \
     STATUS_MASK(STATUS_GONE) | STATUS_MASK(STATUS_UNVERIFIED) | STATUS_MASK(STATUS_IGNORED))

/* "valid", ...; NULL for STATUS_NIL or out of range. Static strings. */
const char *status_state_name(status_state_t state);
/* The state of a wire name (not NUL-terminated), 0; -1 when unknown (a bad_request). */
int status_state_from_name(const char *name, size_t len, status_state_t *out);

typedef enum {
    STATUS_PROVIDER_UNKNOWN = 0, /* has a key, never listed */
    STATUS_PROVIDER_OK,
    STATUS_PROVIDER_NO_KEY,
    STATUS_PROVIDER_AUTH_FAILED,
    STATUS_PROVIDER_UNREACHABLE,
    STATUS_PROVIDER_ERROR,
    STATUS_PROVIDER_STATE_COUNT
} status_provider_state_t;

/* "ok", "no_key", ...; "unknown" for out of range. Static strings. */
const char *status_provider_state_name(status_provider_state_t state);

typedef enum {
    STATUS_ERROR_NONE = 0, /* last_error is nil */
    STATUS_ERROR_MODEL,
    STATUS_ERROR_AUTH,
    STATUS_ERROR_TRANSIENT,
    STATUS_ERROR_ERROR,
    STATUS_ERROR_CLASS_COUNT
} status_error_class_t;

/* "model", "auth", "transient", "error"; NULL for STATUS_ERROR_NONE / out of range. */
const char *status_error_class_name(status_error_class_t error_class);

/* last_error. http_status 0 is nil. message owned (never NULL when error_class is set). */
typedef struct {
    status_error_class_t error_class;
    int http_status;
    char *message;
} status_error_t;

typedef enum { STATUS_LISTED_NIL = 0, STATUS_LISTED_FALSE, STATUS_LISTED_TRUE } status_listed_t;

/* One status record. Read-only for callers (the table owns it); the internal fields are
 * public only so that status_store can persist and restore them. */
typedef struct {
    char *model; /* long name */
    status_state_t state;
    bool in_valid_models;
    status_listed_t listed;
    double first_seen_at; /* STATUS_TIME_NIL: nil */
    double last_listed_at;
    double last_checked_at;
    double last_ok_at;
    double latency_ms;
    long long failures; /* consecutive definitive model failures */
    status_error_t last_error;
    model_meta_t meta;
    /* Internal facts (persisted, never on the wire). */
    bool in_invalid_models;
    long long absent_count; /* consecutive successful lists without the model */
    bool pruned;            /* removed from valid_models by the prune policy */
    char *short_name;       /* kept for the return of a pruned model; NULL: none */
    long long list_index;   /* position in the provider's last successful list; -1: none */
} status_record_t;

/* One provider status. Read-only for callers. */
typedef struct {
    status_provider_state_t state;
    double last_list_at;    /* STATUS_TIME_NIL: nil */
    double last_list_ok_at; /* STATUS_TIME_NIL: nil */
    bool has_models_listed; /* false: models_listed is nil */
    long long models_listed;
    status_error_t last_error;
} status_provider_t;

/* Frees what a record / provider status / error owns and zeroes it. Safe on NULL. */
void status_record_clear(status_record_t *rec);
void status_provider_clear(status_provider_t *ps);
void status_error_clear(status_error_t *e);

/* ------------------------------------------------------------------------------ settings */

typedef enum {
    STATUS_PRUNE_NONE = 0,
    STATUS_PRUNE_GONE,
    STATUS_PRUNE_FAILING_AND_GONE
} status_prune_t;

/* One provider's own ignore globs (config providers.<key>.ignore). Borrowed by the settings. */
typedef struct {
    const char *provider;
    const char *const *patterns;
    size_t count;
} status_ignore_t;

/* Settings (config discovery.*). Everything is copied by model_status_new / _set_settings. */
typedef struct {
    long long fail_threshold; /* >= 1 */
    long long gone_threshold; /* >= 1 */
    status_prune_t prune;
    const char *const *ignore; /* global globs (fnmatch on the long name) */
    size_t ignore_count;
    const status_ignore_t *provider_ignore;
    size_t provider_ignore_count;
} model_status_settings_t;

/* Fills s with the defaults: thresholds 3 and 2, prune none, no ignore globs. */
void model_status_settings_init(model_status_settings_t *s);

/* ------------------------------------------------------------------------------ lifecycle */

typedef struct model_status_t model_status_t;

/* An empty table with a copy of the settings (NULL: defaults). NULL on allocation failure or
 * invalid settings (a threshold below 1, too many globs, an unknown prune policy). */
model_status_t *model_status_new(const model_status_settings_t *s);
/* Frees the table and sets *self_p to NULL. Safe on NULL and twice. */
void model_status_destroy(model_status_t **self_p);

/* Reload: replaces the settings (copied) and re-derives every state; the transitions this
 * causes are queued like any other. 0, or -1 (invalid settings or out of memory: the old
 * settings stay). */
int model_status_set_settings(model_status_t *self, const model_status_settings_t *s);

/* ------------------------------------------------------------------------------ facts in */

/* Reconciles with the registry after ANY ProviderConfig change (startup, set_provider,
 * remove_provider, a discovery or prune update): creates records for models of valid_models /
 * invalid_models that have none (first_seen_at = now; a transition from nil), refreshes each
 * record's in_valid_models / in_invalid_models, makes prunes planned by
 * model_status_prune_plan effective, drops providers that left the registry (their records
 * publish nothing), sets no_key / unknown from whether a key exists, and re-derives every
 * state of the registry's providers. O(models of the registry). 0, or -1 on allocation
 * failure (what was done stays consistent; call again). */
int model_status_sync(model_status_t *self, const registry_t *reg, double now);

/* A successful model list of provider `key`: models[n] long names in the provider's order
 * (duplicates ignored), metas[n] their metadata (NULL: none known). Listed models get listed
 * = true, last_listed_at = now, their meta replaced and their absence count reset; records
 * not in the list get listed = false and one more absence; new names get records
 * (first_seen_at = now). The provider becomes ok, with last_list_at = last_list_ok_at = now,
 * models_listed = number of distinct names, last_error cleared. O(n + records of the
 * provider). 0, or -1 (unknown provider: call model_status_sync first; out of memory). */
int model_status_list_ok(model_status_t *self, const char *key, size_t n, const char *const *models,
                         const model_meta_t *metas, double now);

/* A failed list: the provider's state becomes auth_failed (STATUS_ERROR_AUTH), unreachable
 * (STATUS_ERROR_TRANSIENT with http_status 0: no HTTP answer at all), or error (a transient
 * HTTP answer such as 429 / 5xx, or STATUS_ERROR_ERROR / _MODEL: a malformed answer);
 * last_list_at = now and last_error set (its class as given); last_list_ok_at unchanged; no
 * record changes (a failed list never counts toward gone). http_status 0 = nil. message is
 * copied (NULL: ""); it must hold no API key. 0, or -1 (unknown provider, bad class, OOM). */
int model_status_list_failed(model_status_t *self, const char *key,
                             status_error_class_t verdict_class, int http_status,
                             const char *message, double now);

typedef enum {
    STATUS_PROBE_OK = 0,     /* the model answered */
    STATUS_PROBE_MODEL_FAIL, /* definitive: the model does not exist / cannot chat */
    STATUS_PROBE_AUTH,       /* 401 / 403 */
    STATUS_PROBE_TRANSIENT,  /* 429, 408, 5xx, timeout, refused connection */
    STATUS_PROBE_ERROR       /* anything else that says nothing about the model */
} status_probe_outcome_t;

/* A finished probe of (key, model): last_checked_at = now always. OK: failures = 0,
 * last_ok_at = now, latency_ms set, last_error cleared. MODEL_FAIL: failures + 1, last_error
 * {model}. AUTH / TRANSIENT / ERROR never count and never reset failures: they set last_error
 * only (AUTH also makes the provider auth_failed and changes no model state). Every model
 * of the provider's lists has a record after model_status_sync / _list_ok; a probe of a model
 * without one is -1 and changes nothing. message copied, no API key. 0 / -1. */
int model_status_probe(model_status_t *self, const char *key, const char *model,
                       status_probe_outcome_t outcome, int http_status, double latency_ms,
                       const char *message, double now);

/* True when the long name matches a global or the provider's ignore glob. (A model of
 * valid_models is never ignored: callers that hold one must not ask.) */
bool model_status_ignored(const model_status_t *self, const char *key, const char *model);

/* ------------------------------------------------------------------------------ decisions */

/* The models a verification of provider p probes, in order: valid_models that are not gone,
 * then models pruned as failing (their way back), then (include_invalid) invalid_models that
 * are not ignored; only those named in only[only_count] when only is not NULL. *out is a new
 * array of new strings (the caller frees each and the array; free(NULL) when count is 0).
 * 0, or -1 on allocation failure (*out NULL, *out_count 0). */
int model_status_verify_targets(const model_status_t *self, const provider_t *p,
                                bool include_invalid, const char *const *only, size_t only_count,
                                char ***out, size_t *out_count);

/* A model to give back to valid_models, with the short name it had when it was pruned. */
typedef struct {
    char *long_name;
    char *short_name;
} status_return_t;

/* What the prune policy asks of one provider's valid_models. Owned strings. */
typedef struct {
    size_t remove_count;
    char **remove; /* long names to remove (entered a pruned state under the policy) */
    size_t return_count;
    status_return_t *returns; /* pruned models that recovered: append, in this order */
} status_prune_plan_t;

void status_prune_plan_clear(status_prune_plan_t *plan);

/* Computes provider p's plan under the current policy. The writer applies a non-empty plan as
 * ONE ProviderConfig change and then calls model_status_sync, which makes the removals
 * pruned (a removal not applied by then is forgotten). Policy none: nothing is removed, and
 * every pruned model returns. 0 (out filled, maybe empty), or -1 on allocation failure. */
int model_status_prune_plan(model_status_t *self, const provider_t *p, status_prune_plan_t *out);

/* ------------------------------------------------------------------------------ batches */

typedef struct {
    char *model;
    status_state_t from; /* STATUS_NIL: nil */
    status_state_t to;
} status_change_t;

typedef struct {
    uint64_t status_version; /* after the bump; unchanged when count is 0 */
    size_t count;
    status_change_t *changes;
} status_changes_t;

void status_changes_clear(status_changes_t *c);

/* Hands over provider key's queued transitions (the batch) in the order they happened and
 * clears the queue; bumps status_version once when there was at least one. out is the
 * caller's (status_changes_clear). Unknown provider: an empty batch. 0, or -1 (out empty). */
int model_status_take_changes(model_status_t *self, const char *key, status_changes_t *out);

/* Pending transitions of provider key (0 for unknown). */
size_t model_status_pending_changes(const model_status_t *self, const char *key);

uint64_t model_status_version(const model_status_t *self);
/* Restore after a load. */
void model_status_set_version(model_status_t *self, uint64_t version);

/* What changed since the last take, for the journal. The record / provider pointers are
 * borrowed from the table and valid until the table changes next (write the journal first).
 * Removal strings are owned by the struct. */
typedef struct {
    const char *provider;
    const status_record_t *record;
} status_dirty_record_t;

typedef struct {
    const char *provider;
    const status_provider_t *status;
} status_dirty_provider_t;

typedef struct {
    char *provider;
    char *model;
} status_removal_t;

typedef struct {
    size_t provider_removal_count; /* apply first: providers dropped with all their records */
    char **provider_removals;
    size_t record_removal_count; /* then: single records that disappeared */
    status_removal_t *record_removals;
    size_t provider_count; /* then: provider statuses (full) */
    status_dirty_provider_t *providers;
    size_t record_count; /* then: records (full) */
    status_dirty_record_t *records;
} status_dirty_t;

void status_dirty_clear(status_dirty_t *d);

/* Hands over everything changed since the last take and clears the marks. O(changes).
 * 0, or -1 on allocation failure (marks kept, out empty). */
int model_status_take_dirty(model_status_t *self, status_dirty_t *out);
/* Forgets every dirty mark (after a load or a full snapshot). */
void model_status_clear_dirty(model_status_t *self);

/* ------------------------------------------------------------------------------ reads */

const status_provider_t *model_status_provider(const model_status_t *self, const char *key);
const status_record_t *model_status_record(const model_status_t *self, const char *key,
                                           const char *model);

/* Called once per record; a non-zero return stops the walk and is returned. */
typedef int (*model_status_record_fn)(const char *provider, const status_record_t *rec, void *arg);
typedef int (*model_status_provider_fn)(const char *provider, const status_provider_t *ps,
                                        void *arg);

/* The contract's model_status order: providers in registry order (only `provider` when not
 * NULL), then per provider valid_models order, invalid_models order, other listed models in
 * list order, then pruned models that are not listed (in insertion order). Only records
 * whose state is in state_mask, and only `model` (long name) when not NULL. reg must be the
 * registry the table was last synced with. Returns 0 or fn's non-zero value. */
int model_status_each(const model_status_t *self, const registry_t *reg, const char *provider,
                      const char *model, unsigned state_mask, model_status_record_fn fn, void *arg);

/* Provider statuses in registry order (only `provider` when not NULL). */
int model_status_each_provider(const model_status_t *self, const registry_t *reg,
                               const char *provider, model_status_provider_fn fn, void *arg);

/* Every provider status and record the table holds, in insertion order, registry or not
 * (what a full snapshot persists). Record walk: fn per record. */
int model_status_each_all(const model_status_t *self, model_status_provider_fn pfn,
                          model_status_record_fn rfn, void *arg);

/* Number of records in each state (counts[STATUS_NIL] is 0). O(1). */
void model_status_counts(const model_status_t *self, size_t counts[STATUS_STATE_COUNT]);
size_t model_status_record_count(const model_status_t *self);

/* ------------------------------------------------------------------------------ restore */

/* Used by status_store while replaying the journal: no transitions, no dirty marks. Deep
 * copies. A restored record of an unknown provider creates the provider (unknown). The
 * record's state is taken as stored (the next sync re-derives it). 0 / -1. */
int model_status_restore_provider(model_status_t *self, const char *key,
                                  const status_provider_t *ps);
int model_status_restore_record(model_status_t *self, const char *key, const status_record_t *rec);
void model_status_forget_provider(model_status_t *self, const char *key);
void model_status_forget_record(model_status_t *self, const char *key, const char *model);
/* Ends a replay: rebuilds each provider's list order from the restored list_index values and
 * forgets every dirty mark. 0, or -1 on allocation failure. */
int model_status_restore_finish(model_status_t *self);
/* Drops every provider and record (before a snapshot frame); keeps settings and version. */
void model_status_reset(model_status_t *self);

#endif
