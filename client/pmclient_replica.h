/*
 * pmclient_replica: a local replica of the service's registry inside the caller's process
 * (protocol v1.1 "Snapshot and replicable events", the zguide's Clone pattern).
 *
 * Why: a resolution over the wire costs a round trip (about 100 us on loopback) for work that
 * costs about 100 ns, and every caller fails while the one daemon restarts. A replica answers
 * the resolution calls in process, with the registry core the daemon itself uses (so the
 * results are the service's), and keeps answering from its last state while the service is
 * away.
 *
 * How: a background thread subscribes to the "providers" topic first, then asks `snapshot`
 * (through a request client, CURVE as configured), drops events at or below the snapshot's
 * state_version and applies the rest (each `changed` event carries the new configs). It takes
 * a new snapshot on a gap (an event more than one above the last applied), an epoch change, a
 * version going backwards, a heartbeat whose state_version is above the last applied one, or
 * 3 x heartbeat_ms without any event or heartbeat; a failed snapshot is retried with backoff.
 * Each applied change builds a new immutable (sealed) registry that is swapped in atomically:
 * readers never wait for an update and never see half of one.
 *
 * Threads: every pmclient_replica_* call may be made from any thread at the same time
 * (unlike pmclient_t). Results belong to the caller and are freed with the pm_*_free of
 * pmclient.h. Calls return 0 on success and -1 on failure, with the code word and message in
 * *err when err is not NULL: "invalid_model" and "bad_request" with the service's messages,
 * "unavailable" before the first snapshot (`Replica not yet synchronised with <endpoint>`),
 * "nomem".
 */
#ifndef PMCLIENT_REPLICA_H
#define PMCLIENT_REPLICA_H

#include "pmclient.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PMCLIENT_REPLICA_DEFAULT_HEARTBEAT_MS 1000 /* the service's default heartbeat_ms */
#define PMCLIENT_REPLICA_DEFAULT_BACKOFF_MAX_MS 5000
#define PMCLIENT_REPLICA_MAX_EPOCH_LEN 63
#define PMCLIENT_REPLICA_MAX_MESSAGE 512

typedef struct pmclient_replica_t pmclient_replica_t;

/* One applied change, given to the change callback. full: a snapshot replaced the whole state
 * (keys is then NULL and key_count 0); else keys are the keys the event touched. Everything
 * is borrowed for the duration of the callback. */
typedef struct {
    int64_t state_version;
    const char *epoch;
    bool full;
    size_t key_count;
    const char *const *keys;
} pmclient_replica_change_t;

/* Called on the replica's thread after each change is visible to readers. It must not block
 * for long (the replica applies nothing meanwhile) and must not destroy the replica. */
typedef void(pmclient_replica_change_fn)(const pmclient_replica_change_t *change, void *arg);

/* Options of pmclient_replica_new; a zeroed struct (or NULL) means every default. The CURVE
 * keys (Z85, PMCLIENT_Z85_KEY_LEN characters, copied) are all given or all NULL; they are used
 * for both the snapshot requests and the subscription, as with pmclient_set_curve. */
typedef struct {
    int timeout_ms;     /* per snapshot attempt; 0: PMCLIENT_DEFAULT_TIMEOUT_MS */
    int heartbeat_ms;   /* the service's heartbeat_ms; 0: PMCLIENT_REPLICA_DEFAULT_HEARTBEAT_MS */
    int backoff_max_ms; /* longest wait between failed snapshots; 0: the default (5 s) */
    const char *server_public_z85;
    const char *client_public_z85;
    const char *client_secret_z85;
    pmclient_replica_change_fn *on_change; /* NULL: none */
    void *on_change_arg;
} pmclient_replica_options_t;

/* The failure of a call: code word and message (the service's wording). */
typedef struct {
    char code[32];
    char message[PMCLIENT_REPLICA_MAX_MESSAGE];
} pmclient_replica_error_t;

/* What the replica knows about its freshness. */
typedef struct {
    bool synced;             /* a snapshot has been applied (reads are answered) */
    bool stale;              /* not synced, or no event nor heartbeat for 3 x heartbeat_ms */
    int64_t state_version;   /* the last applied; -1 before the first snapshot */
    int64_t primary_version; /* the highest the service announced (events, heartbeats) */
    int64_t versions_behind; /* primary_version - state_version, never below 0 */
    double since_contact_s;  /* seconds since the last event or heartbeat; -1: never */
    char epoch[PMCLIENT_REPLICA_MAX_EPOCH_LEN + 1]; /* of the applied state; "" when none */
    size_t providers;                               /* in the applied state */
    size_t models;
    uint64_t snapshots;         /* snapshots applied, the first one included */
    uint64_t resnapshots;       /* snapshots asked for after the first, whatever the cause */
    uint64_t gaps;              /* ... of them because of a gap */
    uint64_t epoch_changes;     /* ... because the epoch changed */
    uint64_t backwards;         /* ... because a version went backwards */
    uint64_t heartbeats_ahead;  /* ... because a heartbeat was above the last applied */
    uint64_t silences;          /* ... because of 3 x heartbeat_ms of silence */
    uint64_t snapshot_failures; /* snapshot requests that failed (then retried) */
    uint64_t events_applied;    /* changed events applied */
    uint64_t heartbeats;        /* heartbeats received */
} pmclient_replica_stats_t;

/* Starts a replica of the service at endpoint (requests; NULL: PMCLIENT_DEFAULT_ENDPOINT)
 * whose events are published at events_endpoint (NULL: PMCLIENT_DEFAULT_EVENTS_ENDPOINT).
 * Returns at once; the first snapshot comes in the background (pmclient_replica_wait).
 * NULL on allocation failure, an endpoint longer than PMCLIENT_MAX_ENDPOINT_LEN or that
 * ZeroMQ does not accept, invalid options or keys, or when the thread could not start. */
pmclient_replica_t *pmclient_replica_new(const char *endpoint, const char *events_endpoint,
                                         const pmclient_replica_options_t *options);

/* Stops the thread (within about one snapshot timeout), frees everything, sets *self_p to
 * NULL. Safe on NULL and twice. */
void pmclient_replica_destroy(pmclient_replica_t **self_p);

/* Waits until the replica is synced and has applied state_version >= min_version (of its
 * current epoch), or timeout_ms passed (-1: forever). 0 when reached, -1 on timeout. */
int pmclient_replica_wait(pmclient_replica_t *self, int64_t min_version, int timeout_ms);

/* Freshness and counters. Never blocks for long. 0, or -1 on NULL arguments. */
int pmclient_replica_stats(pmclient_replica_t *self, pmclient_replica_stats_t *out);

/* ----------------------------------------------------------- reads, answered in process */

/* get_api_for_model_string: the provider and the model's long name (either out may be NULL). */
int pmclient_replica_get_api_for_model_string(pmclient_replica_t *self, const char *model_string,
                                              pm_provider_t **provider_out, char **long_name_out,
                                              pmclient_replica_error_t *err);

/* The limits of the registry core (the service's): a resolution's strings always fit. */
#define PMCLIENT_REPLICA_MAX_KEY_LEN 64
#define PMCLIENT_REPLICA_MAX_NAME_LEN 1024
#define PMCLIENT_REPLICA_MAX_URL_LEN 2048
#define PMCLIENT_REPLICA_MAX_API_KEY_LEN 4096

/* What a caller needs to call a model: the provider's key, endpoint and key, and the long
 * name. Filled in place, without allocating: the hot path of a caller that resolves on every
 * request (get_api_for_model_string copies the whole ProviderConfig, every model included). */
typedef struct {
    char provider[PMCLIENT_REPLICA_MAX_KEY_LEN + 1];
    char long_name[PMCLIENT_REPLICA_MAX_NAME_LEN + 1];
    char base_api_url[PMCLIENT_REPLICA_MAX_URL_LEN + 1];
    bool has_api_key;
    char api_key[PMCLIENT_REPLICA_MAX_API_KEY_LEN + 1]; /* "" when !has_api_key */
    int64_t state_version;                              /* of the state that answered */
} pmclient_replica_target_t;

/* get_api_for_model_string's rules and errors, the answer in *out (no allocation). */
int pmclient_replica_resolve(pmclient_replica_t *self, const char *model_string,
                             pmclient_replica_target_t *out, pmclient_replica_error_t *err);

/* validate_model: the long name (caller frees). */
int pmclient_replica_validate_model(pmclient_replica_t *self, const char *model_string,
                                    char **long_name_out, pmclient_replica_error_t *err);

/* find_model: every provider that has name as a long or a short name, in registry order. */
int pmclient_replica_find_model(pmclient_replica_t *self, const char *name, pm_matches_t **out,
                                pmclient_replica_error_t *err);

/* get: the provider, or *out = NULL when unknown (a success). */
int pmclient_replica_get(pmclient_replica_t *self, const char *provider_name, pm_provider_t **out,
                         pmclient_replica_error_t *err);

/* contains. */
int pmclient_replica_contains(pmclient_replica_t *self, const char *provider_name, bool *out,
                              pmclient_replica_error_t *err);

/* keys: registry keys in registry order. */
int pmclient_replica_keys(pmclient_replica_t *self, pm_strings_t **out,
                          pmclient_replica_error_t *err);

/* get_available_models: long names of every provider, or of filter_by_provider when neither
 * NULL nor "" (an unknown provider: an empty list, as the service answers). */
int pmclient_replica_available_models(pmclient_replica_t *self, const char *filter_by_provider,
                                      pm_strings_t **out, pmclient_replica_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
