/*
 * clone: the Clone pattern's state machine (protocol v1.1 "Snapshot and replicable events",
 * readings 1-3), without any I/O. The one implementation of "keep a replica of the registry":
 * libpmclient's local replica (client/pmclient_replica.c) and the daemon's read-replica mode
 * (service/follower.c) both drive it from their own threads and sockets.
 *
 * The owner feeds it what arrived (snapshot replies, event bodies of topic "providers") and
 * the clock; it answers with verdicts and keeps the current sealed registry. It never blocks,
 * never allocates per read, and is not thread-safe (one owner thread); what readers on other
 * threads see is published by the owner (registry_ref on the sealed registry).
 */
#ifndef PM_CLONE_H
#define PM_CLONE_H

#include "registry.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLONE_MAX_EPOCH_LEN 63
#define CLONE_BACKOFF_MIN_MS 50

typedef struct clone_t clone_t;

/* Why a (re-)snapshot is needed. */
typedef enum {
    CLONE_CAUSE_NONE = 0,
    CLONE_CAUSE_START,           /* no snapshot yet */
    CLONE_CAUSE_GAP,             /* an event more than one above the last applied */
    CLONE_CAUSE_EPOCH,           /* the primary restarted */
    CLONE_CAUSE_BACKWARDS,       /* a version went backwards */
    CLONE_CAUSE_HEARTBEAT_AHEAD, /* a heartbeat above the last applied */
    CLONE_CAUSE_SILENCE,         /* 3 x heartbeat_ms without event nor heartbeat */
    CLONE_CAUSE_BAD_EVENT        /* a changed event that could not be applied (counted as gap) */
} clone_cause_t;

/* What one event body did. */
typedef enum {
    CLONE_EVENT_IGNORED = 0, /* another kind (models, ...), malformed, or already held */
    CLONE_EVENT_APPLIED,     /* a `changed` event applied: clone_registry() is new */
    CLONE_EVENT_HEARTBEAT,   /* a heartbeat (contact noted) */
    CLONE_EVENT_RESYNC       /* a re-snapshot is needed now (clone_want_snapshot) */
} clone_event_t;

typedef struct {
    uint64_t snapshots;   /* applied, the first included */
    uint64_t resnapshots; /* asked for after the first, whatever the cause */
    uint64_t gaps, epoch_changes, backwards, heartbeats_ahead, silences;
    uint64_t snapshot_failures; /* clone_snapshot_failed calls */
    uint64_t events_applied;
    uint64_t heartbeats;
} clone_counters_t;

/* heartbeat_ms: the primary's; silence after 3 x it. backoff_max_ms: longest wait between
 * failed snapshots (raised to CLONE_BACKOFF_MIN_MS when below it). NULL on allocation failure
 * or a value <= 0. Every now_ms below is the owner's monotonic clock in milliseconds. */
clone_t *clone_new(int heartbeat_ms, int backoff_max_ms);
void clone_destroy(clone_t **self_p);

/* True when a snapshot should be asked for now (needed, and the backoff after a failure has
 * passed). Also where silence is noticed: call it at least every few tens of ms. It keeps
 * answering true until clone_apply_snapshot or clone_snapshot_failed: an owner that asks
 * asynchronously remembers its request in flight itself. While the request is in flight, the
 * owner should leave the events queued on its SUB socket and feed them after the reply (events
 * fed while a snapshot is pending are ignored: a change published in between would be lost and
 * seen as a gap later), as the Clone pattern does. */
bool clone_want_snapshot(clone_t *self, int64_t now_ms);

/* A whole reply body of the `snapshot` op ({"id"?, "ok": true, "result": {...}}). 0 when
 * applied (the new registry, version, epoch are current), -1 when it is not a good snapshot
 * reply (then as clone_snapshot_failed). */
int clone_apply_snapshot(clone_t *self, const void *reply, size_t size, int64_t now_ms);

/* A snapshot request failed or timed out: retry after a growing backoff. */
void clone_snapshot_failed(clone_t *self, int64_t now_ms);

/* One message body of topic "providers" (the second frame). */
clone_event_t clone_on_event(clone_t *self, const void *body, size_t size, int64_t now_ms);

/* The current state: NULL before the first snapshot; borrowed (sealed; registry_ref it to keep
 * it past the next clone call). */
registry_t *clone_registry(const clone_t *self);
bool clone_synced(const clone_t *self);
int64_t clone_version(const clone_t *self);         /* -1 before the first snapshot */
const char *clone_epoch(const clone_t *self);       /* "" before the first snapshot */
int64_t clone_primary_version(const clone_t *self); /* highest announced; -1: none yet */
int64_t clone_status_version(const clone_t *self);  /* last seen (snapshot, heartbeat); -1: none */
int64_t clone_last_contact_ms(const clone_t *self); /* snapshot, event, heartbeat; -1: never */
clone_cause_t clone_pending(const clone_t *self);   /* NONE when no snapshot is needed */
void clone_counters(const clone_t *self, clone_counters_t *out);

/* The keys the last applied `changed` event touched, in the event's order (valid until the
 * next clone_on_event or clone_apply_snapshot; count 0 after any other verdict). */
const char *const *clone_changed_keys(const clone_t *self, size_t *count);

/* A wire ProviderConfig map (as the service packs it) -> a new provider_t, the caller's
 * (provider_destroy). provider, name, base_api_url: str; api_key: str, nil or absent;
 * valid_models: map str -> str, invalid_models: array of str, each absent meaning empty; no
 * string may hold a NUL (the service packs C strings). When expected_key is not NULL the
 * config's provider must be it. NULL when malformed or out of memory. */
provider_t *clone_provider_from_config(const msgpack_object *config, const char *expected_key,
                                       size_t expected_len);

#endif
