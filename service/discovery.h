/*
 * discovery: model discovery jobs (the seed's ProviderManager.discover_models and
 * ModelDiscoveryService), coordinated inside the writer thread.
 *
 * The coordinator (this module) lives in the writer thread. It owns a PUSH socket that hands
 * list and probe requests to the worker pool (discovery_worker.h) and a PULL socket that
 * collects their results; the writer polls discovery_socket() beside its command socket.
 * It keeps, per provider being discovered, one task (list, then probe every listed model not
 * already invalid, at most per_provider_limit requests in flight for that provider), and per
 * caller request one job that references tasks: a request for a provider already being
 * discovered joins that provider's running task instead of starting a second one.
 *
 * Queued: at most workers * DISCOVERY_MAX_TRANSFERS / per_provider_limit tasks run at once
 * (so that every running task's requests fit in the workers' transfer slots); a task beyond
 * that waits, in state "queued", until a running one ends, and then starts from the
 * provider as the registry holds it at that moment.
 *
 * force_refresh when joining: a job asking for force_refresh must never be satisfied by a
 * cached list. Joining a queued task makes that task list when it starts; joining a task that
 * is validating the cached list restarts that task from a fresh list (every job waiting for
 * it then gets the fresh result; answers to the abandoned probes are dropped); joining a
 * task that is listing, or validating a list it fetched from the provider, shares that list,
 * which is as fresh as a forced one.
 *
 * Verify jobs (protocol v1.1 verify_models, and the scheduled list / verify runs) use the
 * same tasks, queue and workers: each provider is re-listed, then the models the observer
 * names are probed; they never join or are joined. The observer (discovery_observer_t) sees
 * every list from a provider, every probe and the end of every provider's part of a job, so
 * that the writer's model status table can follow; without one, behaviour is v1's.
 *
 * It never touches the registry: when a provider's task has finished successfully it hands the
 * writer a discovery_update_t to apply (merge_valid_models, replace invalid_models, cache), and
 * when a job has finished it tells the writer whether to persist; the writer reports back with
 * discovery_job_persisted(). Messages are the seed's, word for word.
 */
#ifndef PM_DISCOVERY_H
#define PM_DISCOVERY_H

#include "config.h"
#include "discovery_classify.h"
#include "model_meta.h"
#include "registry.h"
#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

#define DISCOVERY_MAX_JOBS_KEPT 64 /* finished jobs kept for job_status, oldest dropped */
#define DISCOVERY_JOB_ID_SIZE 32

typedef struct discovery_t discovery_t;

/* The two kinds of job (job_status "kind"). */
typedef enum { DISCOVERY_JOB_DISCOVER = 0, DISCOVERY_JOB_VERIFY } discovery_job_kind_t;

/* Hooks through which the model status table (the writer's) follows discovery and
 * verification. All are called in the writer thread, from inside discovery_start*(),
 * discovery_handle() or discovery_tick(); any may be NULL. Strings are borrowed for the call.
 * Without an observer the coordinator behaves exactly as v1 (and verify jobs probe the
 * provider's valid_models, plus invalid_models with include_invalid). */
typedef struct {
    void *ctx;
    /* A successful list of provider key, fetched from the provider (a cached list does not
     * call it): every entry in listed order (ignored ones too), with its metadata. */
    void (*on_list_ok)(void *ctx, const char *key, size_t n, const char *const *models,
                       const model_meta_t *metas, double now);
    /* A failed list: verdict (auth / transient / error), http status (0: none), message
     * without secrets. */
    void (*on_list_failed)(void *ctx, const char *key, discovery_verdict_t verdict,
                           long http_status, const char *message, double now);
    /* A finished probe of a discovery or verify job (after retries). message: "" when the
     * probe answered, else the worker's error text (no secrets). latency_ms: of the last
     * attempt (for a valid verdict, the successful one). */
    void (*on_probe)(void *ctx, const char *key, const char *model, discovery_verdict_t verdict,
                     long http_status, double latency_ms, const char *message, double now);
    /* Verify jobs, after the list: which models to probe. The observer fills *out with
     * malloc'd strings (the coordinator frees them): valid_models not gone, models pruned as
     * failing, plus invalid_models when include_invalid; restricted to `only` when the job
     * named models (only_count > 0). 0, or -1 (the provider's part then fails). */
    int (*verify_targets)(void *ctx, const char *key, bool include_invalid, const char *const *only,
                          size_t only_count, char ***out, size_t *out_count);
    /* Ignored models (reading 2): never probed, and counted in none of discovered /
     * validated / valid / invalid (nor checked / ok / failed / transient). */
    bool (*is_ignored)(void *ctx, const char *key, const char *model);
    /* One provider's part of one job has ended (ok, error or skipped): the batch boundary.
     * Called once per job waiting for that provider, before the job can complete. by: the
     * caller who started the job ("scheduler" for scheduled runs), NULL when unknown. */
    void (*on_part_done)(void *ctx, const char *key, const char *job_id, int job_kind,
                         const char *by);
} discovery_observer_t;

/* Installs observer (copied; NULL removes it). */
void discovery_set_observer(discovery_t *self, const discovery_observer_t *observer);

/* Counting hooks for the metrics, called in the writer thread like the observer's; any may be
 * NULL. on_upstream: every final worker result of a running task (after retries), list or
 * probe, with its verdict and the latency of its last attempt (ms; 0 when no request was
 * made). on_job_done: a job has finished for good (its persist, if any, included). */
typedef struct {
    void *ctx;
    void (*on_upstream)(void *ctx, const char *key, bool probe, discovery_verdict_t verdict,
                        double latency_ms);
    void (*on_job_done)(void *ctx, discovery_job_kind_t kind, bool success);
} discovery_counters_t;

/* Installs counters (copied; NULL removes them). */
void discovery_set_counters(discovery_t *self, const discovery_counters_t *counters);

/* Binds its inproc sockets on zmq_ctx and starts `workers` worker threads. NULL on failure. */
discovery_t *discovery_new(void *zmq_ctx, const config_discovery_t *settings, int workers);
/* Stops the workers (in-flight requests are abandoned), closes the sockets. Safe on NULL. */
void discovery_destroy(discovery_t **self_p);

/* The socket the writer polls (ZMQ_POLLIN) for worker results. */
void *discovery_socket(discovery_t *self);

/* Starts a job over `current` (sealed): every provider, or only provider_key when not NULL.
 * Providers already being discovered are joined (see force_refresh above). Returns 0 with the job
 * id in job_id (DISCOVERY_JOB_ID_SIZE bytes); -1 with *code = PM_ERR_NOT_FOUND and "Provider '<p>'
 * not found" in err when provider_key is unknown, or another code. */
int discovery_start(discovery_t *self, const registry_t *current, const char *provider_key,
                    bool force_refresh, bool persist_on_success, double now, char *job_id,
                    int *code, char *err, size_t err_size);

/* Starts a verify job (protocol v1.1 verify_models) over `current`: every provider with a key,
 * or only provider_key. Each provider is re-listed (the cache is bypassed; providers without a
 * usable key are skipped with the seed's "Skipping" line), then the models the observer's
 * verify_targets returns are probed, at most per_provider_limit in flight. models/model_count
 * restrict the probes to those names (NULL/0: all). Outcomes:
 *   a failed list or a probe's 401/403: the provider's part ends in error ("Error verifying
 *     models for <p>: <error>") and the job fails; no model changes;
 *   transient probe outcomes (retries exhausted) count in "transient" and do not fail it;
 *   a probe error of any other kind counts in "checked" only;
 *   include_invalid: an invalid model that answers is handed to the writer as a
 *     discovery_update_t (valid += it, invalid -= it, the fresh list as the cache), and the
 *     job then asks for a persist even if it fails or persist_on_success is false.
 * Verify tasks are never joined, nor joined by discovery. by is kept for on_part_done (may
 * be NULL). Returns and errors as discovery_start(). */
int discovery_start_verify(discovery_t *self, const registry_t *current, const char *provider_key,
                           const char *const *models, size_t model_count, bool include_invalid,
                           bool persist_on_success, const char *by, double now, char *job_id,
                           int *code, char *err, size_t err_size);

/* One provider's successful result, for the writer to apply as one change. */
typedef struct {
    char *provider_key;
    size_t valid_count; /* merged with provider_merge_valid_models() */
    char **valid;
    size_t invalid_count; /* replaces invalid_models */
    char **invalid;
    size_t cached_count; /* the listed models: the runtime cache */
    char **cached;
    double cached_at;
} discovery_update_t;

/* A finished job that asks the writer to persist (success and persist_on_success). */
typedef struct {
    char job_id[DISCOVERY_JOB_ID_SIZE];
} discovery_persist_t;

typedef struct {
    size_t update_count;
    discovery_update_t *updates;
    size_t persist_count;
    discovery_persist_t *persists;
} discovery_outcome_t;

void discovery_outcome_clear(discovery_outcome_t *outcome);

/* Reads every result waiting on discovery_socket() (never blocks), advances tasks (pushing
 * further probes), and fills outcome. `current` is the writer's registry, used to drop an
 * update for a provider removed meanwhile. 0, or -1 on a socket error. */
int discovery_handle(discovery_t *self, const registry_t *current, double now,
                     discovery_outcome_t *outcome);

/* After the writer applied a job's updates and tried to persist: ok adds the seed's
 * "Provider configurations persisted to YAML" as the last message and sets persisted; a
 * failure adds the error (no secrets) and makes the job unsuccessful. Then the job is done. */
void discovery_job_persisted(discovery_t *self, const char *job_id, bool ok, const char *error);

/* Schedules: v1 periodic discovery (discovery.interval_minutes, on_start), and v1.1's
 * list_interval_minutes (a verify-kind job that re-lists every provider with a key and probes
 * nothing) and verify_interval_minutes (a full verify job); by "scheduler", persist_on_success
 * false (they change no ProviderConfig of their own). Each v1.1 schedule first fires one
 * interval after the first call here; a run is skipped while the previous run of the same
 * schedule is still running. Milliseconds until the writer should call discovery_tick(), or
 * -1 when nothing is scheduled. */
long discovery_next_timeout_ms(discovery_t *self, double now);
/* Starts the scheduled jobs whose time has come (and the start-up one, when on_start). */
void discovery_tick(discovery_t *self, const registry_t *current, double now);

/* Packs the job_status result map of the contract for job (not NUL-terminated) into pk, with
 * v1.1's "kind" ("discover" | "verify"); a verify job's providers carry "discovered",
 * "checked", "ok", "failed", "transient" in place of validated / valid / invalid.
 * 0, or -1 when the job is unknown (pk untouched). */
int discovery_pack_status(discovery_t *self, const char *job, size_t len, msgpack_packer *pk);

/* Jobs not yet done (for health.jobs_running). */
int discovery_running(const discovery_t *self);

#endif
