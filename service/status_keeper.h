/*
 * status_keeper: the writer thread's side of model status (protocol v1.1 "Model status").
 *
 * It owns the status table (model_status) and its journal (status_store), feeds the table from
 * discovery (it implements the discovery observer), and turns what changed into the three
 * things the contract asks for, in this order:
 *   1. prune changes: models that entered a pruned state leave valid_models and recovered ones
 *      come back, as ONE ProviderConfig change per provider and job (the writer applies them
 *      to its next registry, persists and bumps state_version as for any change);
 *   2. the journal: every record and provider status changed since the last commit is appended
 *      (O(changed), fsynced) BEFORE anything is published or a job can read `done`;
 *   3. events: one `models` event per provider and batch with exactly its transitions, and a
 *      status_version bump per event.
 *
 * A batch is one provider's part of one job (its list and its probes), or one committed batch
 * of writer requests (set_provider, remove_provider, ...). Lives in the writer thread only.
 */
#ifndef PM_STATUS_KEEPER_H
#define PM_STATUS_KEEPER_H

#include "discovery.h"
#include "model_status.h"
#include "registry.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STATUS_KEEPER_EVENTS_TOPIC "models"

typedef struct status_keeper_t status_keeper_t;

/* Publishes one event: topic and msgpack body (borrowed for the call). */
typedef void(status_keeper_publish_fn)(void *arg, const char *topic, const void *body, size_t size);

/* Opens (or creates) the status journal in data_dir, replays it into a new table with the
 * given settings (NULL: defaults) and syncs the table with reg (sealed) without publishing
 * (the first-seen transitions of a start-up are journalled, not published). NULL with err on
 * failure (an unreadable journal, out of memory). */
status_keeper_t *status_keeper_new(const char *data_dir, const model_status_settings_t *settings,
                                   const registry_t *reg, double now, char *err, size_t err_size);
/* Closes the journal and frees. Safe on NULL and twice. */
void status_keeper_destroy(status_keeper_t **self_p);

/* The table, for reads (model_status / provider_status / health counts). Borrowed. */
const model_status_t *status_keeper_table(const status_keeper_t *self);
uint64_t status_keeper_version(const status_keeper_t *self);

/* The registry the observer's decisions use (verify targets): the writer's current one,
 * borrowed until the next call. */
void status_keeper_set_registry(status_keeper_t *self, const registry_t *reg);

/* Fills out with callbacks into this keeper (ctx = self). */
void status_keeper_observer(status_keeper_t *self, discovery_observer_t *out);

/* Providers whose job part ended since the last call, each once, and in *bys the name of the
 * caller who started each one's job (NULL entries: none named): the caller owns the arrays
 * and the strings (free each, then the arrays). 0, or -1 on allocation failure. */
int status_keeper_take_parts(status_keeper_t *self, char ***keys, char ***bys, size_t *count);

/* Applies the prune policy's plan of provider key to next (mutable): removals and returns.
 * 1 when next changed (one ProviderConfig change), 0 when the plan was empty or the provider
 * is unknown, -1 on allocation failure (next unchanged for this provider). */
int status_keeper_apply_prune(status_keeper_t *self, registry_t *next, const char *key);

/* After the writer made reg (sealed) current: sync the table with it, journal everything that
 * changed, then publish one `models` event per provider with transitions. only[only_count]:
 * the providers whose batch ends now (the parts of jobs that ended); the transitions of other
 * providers stay queued for their own batch (a job's part still running). only NULL: every
 * provider (a batch of writer requests). 1 when status_version moved, 0 when not, -1 when the
 * journal could not be written (then nothing of this commit is published: subscribers see a
 * status_version gap; the table keeps its state, and the next commit writes the journal as a
 * whole snapshot). */
int status_keeper_commit(status_keeper_t *self, const registry_t *reg, double now,
                         const char *const *only, size_t only_count,
                         status_keeper_publish_fn *publish, void *publish_arg);

/* Reload: new thresholds, prune policy and ignore globs; the transitions they cause are
 * committed with the next status_keeper_commit. 0, or -1 (old settings kept). */
int status_keeper_set_settings(status_keeper_t *self, const model_status_settings_t *settings);

#endif
