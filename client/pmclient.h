/*
 * pmclient: the C client library of the provider-manager service (libpmclient).
 *
 * One function per operation of wire contract v1 (proto/PROTOCOL.md) and of v1.1's model
 * status (model_status, provider_status, verify_models), typed results with one free function
 * each, and a raw escape hatch for tools. Requests follow the zguide's "Lazy Pirate" pattern:
 * a REQ socket, a poll with a timeout on every attempt, and on a timeout the socket is closed
 * and reopened so that a dead or restarted service never makes a call hang. Reads (model_status
 * and provider_status too) are resent up to the retry limit; writes (set_provider,
 * remove_provider, set_short_name, persist_provider_configs, discover_models, verify_models)
 * are sent once only, because a write whose reply was lost may have been applied. Keys of a
 * reply that the library does not know are ignored (v1.1 adds some to v1's results).
 *
 * Conventions (CZMQ CLASS style):
 *   - every call returns 0 on success and -1 on failure; then pmclient_error_code() gives a
 *     stable code word and pmclient_error_message() a message, both borrowed until the next
 *     call on the same client. Code words: the contract's ("bad_request", "unknown_op",
 *     "not_found", "invalid_model", "conflict", "unauthorized", "unavailable", "internal")
 *     and the client's own: "timeout" (no reply in time), "transport" (a socket could not be
 *     set up or used), "bad_reply" (the reply did not have the contract's shape), "nomem".
 *   - results are returned through out parameters and belong to the caller, who frees each
 *     with its own x_free(&x) function (safe on NULL, sets the pointer to NULL). Out
 *     parameters are set to NULL / 0 when a call fails.
 *   - a pmclient_t is not thread-safe: use one per thread (like a ZeroMQ socket). Each client
 *     owns its ZeroMQ context (one I/O thread), so it shares nothing with other clients.
 *
 * CURVE key files (written by pmclient_curve_keygen / `pmctl keygen`, read by
 * pmclient_set_curve_files and by the daemon): text, lines of `public-key = "<z85>"` and, in
 * the secret file only, `secret-key = "<z85>"`; '#' starts a comment, quotes are optional,
 * other lines are ignored (the layout is that of CZMQ's zcert files, so those work too).
 */
#ifndef PMCLIENT_H
#define PMCLIENT_H

#include "pmclient_version.h" /* PMCLIENT_VERSION_MAJOR .. _PATCH, PMCLIENT_VERSION */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PMCLIENT_DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"
#define PMCLIENT_DEFAULT_EVENTS_ENDPOINT "tcp://127.0.0.1:5556"
#define PMCLIENT_DEFAULT_TIMEOUT_MS 2000 /* per attempt */
#define PMCLIENT_DEFAULT_RETRIES 3       /* attempts of a read, in total */
#define PMCLIENT_MAX_RETRIES 100
#define PMCLIENT_MAX_TIMEOUT_MS 3600000
#define PMCLIENT_MAX_REQUEST_SIZE (1024 * 1024)    /* the service refuses larger requests */
#define PMCLIENT_MAX_REPLY_SIZE (64 * 1024 * 1024) /* ZMQ_MAXMSGSIZE of the client socket */
#define PMCLIENT_MAX_ENDPOINT_LEN 1024
#define PMCLIENT_Z85_KEY_LEN 40 /* a CURVE key in Z85, without its NUL */

/* Client-side error code words (besides the contract's). */
#define PMCLIENT_ERR_TIMEOUT "timeout"
#define PMCLIENT_ERR_TRANSPORT "transport"
#define PMCLIENT_ERR_BAD_REPLY "bad_reply"
#define PMCLIENT_ERR_NOMEM "nomem"

typedef struct pmclient_t pmclient_t;

/* ------------------------------------------------------------------------- typed results */

/* One ProviderConfig. api_key is NULL when the service sent nil. valid_models is the pair of
 * parallel arrays model_long / model_short (service order); invalid_models likewise. */
typedef struct {
    char *provider; /* registry key */
    char *name;
    char *base_api_url;
    char *api_key;
    size_t model_count;
    char **model_long;
    char **model_short;
    size_t invalid_count;
    char **invalid_models;
} pm_provider_t;
void pm_provider_free(pm_provider_t **self_p);

/* values / items: the providers in registry order. */
typedef struct {
    size_t count;
    pm_provider_t **providers;
} pm_provider_list_t;
void pm_provider_list_free(pm_provider_list_t **self_p);

/* A list of strings (keys, valid_scoped_models, available models). */
typedef struct {
    size_t count;
    char **items;
} pm_strings_t;
void pm_strings_free(pm_strings_t **self_p);

/* merged_models: entry i is (provider[i], model_long[i], model_short[i]). */
typedef struct {
    size_t count;
    char **provider;
    char **model_long;
    char **model_short;
} pm_merged_t;
void pm_merged_free(pm_merged_t **self_p);

/* find_model: match i is the provider providers[i] (key inside) and its long name
 * model_long[i]. */
typedef struct {
    size_t count;
    pm_provider_t **providers;
    char **model_long;
} pm_matches_t;
void pm_matches_free(pm_matches_t **self_p);

/* health. */
typedef struct {
    char *status; /* "ok" */
    char *version;
    int64_t state_version;
    int64_t providers;
    int64_t models;
    double uptime_s;
    int64_t jobs_running;
    /* v1.1 (a v1 service sends neither): the protocol version ("1.1"), NULL when absent, and
     * the status_version, valid when has_status_version. */
    char *protocol;
    bool has_status_version;
    uint64_t status_version;
    /* v1.1 reload (SIGHUP): has_reload is false until the service's first reload (or from a
     * service that does not report it); then reloaded_at (unix seconds) and its outcome. */
    bool has_reload;
    double reloaded_at;
    bool reload_ok;
    /* v1.1 read replicas: role is "primary" or "replica" (NULL from a service that does not
     * say); a replica also reports lag_versions (has_lag) and primary_seen_s, the seconds
     * since it last heard from its primary (has_primary_seen false before it ever did). */
    char *role;
    bool has_lag;
    int64_t lag_versions;
    bool has_primary_seen;
    double primary_seen_s;
} pm_health_t;
void pm_health_free(pm_health_t **self_p);

/* One provider's progress inside a job. A discovery job's entries carry discovered,
 * validated, valid and invalid; a verify job's (kind "verify") carry discovered (the models
 * listed), checked, ok, failed and transient in their place. The counts a job's kind does not
 * carry are 0. */
typedef struct {
    char *key;
    char *state; /* "queued", "listing", "validating", "ok", "skipped", "error" */
    int64_t discovered;
    int64_t validated;
    int64_t valid;
    int64_t invalid;
    char *message;
    int64_t checked;   /* verify: probes that finished */
    int64_t ok;        /* verify: ... that answered */
    int64_t failed;    /* verify: ... that gave a definitive model failure */
    int64_t transient; /* verify: ... that gave a transient outcome (429, 5xx, timeout) */
} pm_job_provider_t;

/* job_status. success is -1 while unknown (nil), else 0 or 1. kind is "discover" or
 * "verify" (a v1 service, which sends no kind, has only discovery jobs: "discover"). */
typedef struct {
    char *job;
    char *state; /* "running" or "done" */
    int success;
    bool persisted;
    size_t provider_count;
    pm_job_provider_t *providers;
    size_t message_count;
    char **messages;
    char *kind;
} pm_job_t;
void pm_job_free(pm_job_t **self_p);

/* last_error of a status record or a provider status (v1.1). */
typedef struct {
    char *error_class; /* "model", "auth", "transient" or "error" */
    int64_t status;    /* the HTTP status; 0 when the service sent nil (no HTTP answer) */
    char *message;
} pm_status_error_t;

/* meta of a status record: only the keys the provider's /models entry had (has_* / NULL). */
typedef struct {
    bool has_context_length;
    int64_t context_length;
    bool has_max_output_tokens;
    int64_t max_output_tokens;
    char *owned_by; /* NULL when absent */
    bool has_created;
    int64_t created; /* unix seconds */
} pm_model_meta_t;

/* One model status record (model_status). Times are unix seconds and latency_ms is in
 * milliseconds, each NAN when the service sent nil (test with isnan()). */
typedef struct {
    char *provider;
    char *model; /* the long name */
    char *state; /* "valid", "invalid", "failing", "gone", "unverified", "ignored" */
    bool in_valid_models;
    int listed; /* in the provider's last successful list: 1, 0, or -1 (nil: never listed) */
    double first_seen_at;
    double last_listed_at;
    double last_checked_at;
    double last_ok_at;
    double latency_ms;
    int64_t failures; /* consecutive definitive model failures */
    bool has_last_error;
    pm_status_error_t last_error; /* valid when has_last_error */
    pm_model_meta_t meta;
} pm_model_status_t;

/* model_status: the records in the service's order. */
typedef struct {
    size_t count;
    pm_model_status_t *records;
} pm_status_list_t;
void pm_status_list_free(pm_status_list_t **self_p);

/* One provider_status entry. Times as in pm_model_status_t (NAN for nil). */
typedef struct {
    char *provider;
    char *state; /* "ok", "no_key", "auth_failed", "unreachable", "error", "unknown" */
    double last_list_at;
    double last_list_ok_at;
    bool has_models_listed;
    int64_t models_listed;
    bool has_last_error;
    pm_status_error_t last_error;
} pm_provider_status_t;

/* provider_status: the providers in registry order. */
typedef struct {
    size_t count;
    pm_provider_status_t *providers;
} pm_provider_status_list_t;
void pm_provider_status_list_free(pm_provider_status_list_t **self_p);

/* Arguments of set_provider. Strings are borrowed for the duration of the call. A NULL
 * provider / name / base_api_url is not sent (the service then answers bad_request).
 * has_api_key: send api_key, where NULL sends nil (clears the key). has_valid_models: send
 * the map model_long[i] -> model_short[i] (it replaces the whole map); model_short may be
 * NULL, or hold NULLs, meaning "the long name". has_invalid_models: send the array. */
typedef struct {
    const char *provider;
    const char *name;
    const char *base_api_url;
    bool has_api_key;
    const char *api_key;
    bool has_valid_models;
    size_t model_count;
    const char *const *model_long;
    const char *const *model_short;
    bool has_invalid_models;
    size_t invalid_count;
    const char *const *invalid_models;
} pm_provider_spec_t;

/* ------------------------------------------------------------------ the client and options */

/* Creates a client for endpoint (NULL = PMCLIENT_DEFAULT_ENDPOINT). Nothing is connected
 * yet: the socket is opened by the first call, so options may be set first and a bad
 * endpoint is reported by that call ("transport"). Returns NULL on allocation failure or
 * when the endpoint is longer than PMCLIENT_MAX_ENDPOINT_LEN. */
pmclient_t *pmclient_new(const char *endpoint);

/* Closes the socket (linger 0), terminates the client's ZeroMQ context, frees everything and
 * sets *self_p to NULL. Safe on NULL and twice. */
void pmclient_destroy(pmclient_t **self_p);

/* Time to wait for a reply on each attempt, 1..PMCLIENT_MAX_TIMEOUT_MS. 0 or -1. */
int pmclient_set_timeout(pmclient_t *self, int timeout_ms);

/* Attempts of a read in total (the zguide's REQUEST_RETRIES), 1..PMCLIENT_MAX_RETRIES.
 * Writes are always attempted once. 0 or -1. */
int pmclient_set_retries(pmclient_t *self, int retries);

/* Enables CURVE: the service's public key and this client's key pair, each a Z85 string of
 * PMCLIENT_Z85_KEY_LEN characters (copied). An open socket is reopened on the next call.
 * 0, or -1 with code "bad_request" when a key is not valid Z85 of that length. */
int pmclient_set_curve(pmclient_t *self, const char *server_public_z85,
                       const char *client_public_z85, const char *client_secret_z85);

/* Like pmclient_set_curve, reading the service's public key from server_public_file (a
 * `.pub` file) and the client's key pair from client_secret_file (a `.key` file). 0 or -1. */
int pmclient_set_curve_files(pmclient_t *self, const char *server_public_file,
                             const char *client_secret_file);

/* The endpoint given to pmclient_new (borrowed, lives as long as the client). */
const char *pmclient_endpoint(const pmclient_t *self);

/* The last failure of this client: code word and message. Borrowed until the next call on
 * this client; "" after a success. */
const char *pmclient_error_code(const pmclient_t *self);
const char *pmclient_error_message(const pmclient_t *self);

/* True when the last failure was client-side transport trouble ("timeout" or "transport"),
 * i.e. the service could not be reached, as opposed to an answer saying no. */
bool pmclient_error_is_unreachable(const pmclient_t *self);

/* Keeps a copy of the last successful reply (the whole msgpack map) so that tools can render
 * exactly what the service sent; see pmclient_last_reply. Off by default. */
void pmclient_set_keep_reply(pmclient_t *self, bool keep);

/* The last successful reply kept by pmclient_set_keep_reply (msgpack bytes, checked by the
 * library: one map, bounded depth, valid UTF-8, no bin/ext). Borrowed until the next call.
 * 0, or -1 when nothing is kept. */
int pmclient_last_reply(const pmclient_t *self, const void **data, size_t *size);

/* -------------------------------------------------------------------------- operations */

/* get: the provider, or *out = NULL when unknown (that is a success). */
int pmclient_get(pmclient_t *self, const char *provider_name, pm_provider_t **out);

/* getitem: like get, but an unknown provider fails with "not_found". */
int pmclient_getitem(pmclient_t *self, const char *provider_name, pm_provider_t **out);

/* contains. */
int pmclient_contains(pmclient_t *self, const char *provider_name, bool *out);

/* keys: registry keys in registry order. */
int pmclient_keys(pmclient_t *self, pm_strings_t **out);

/* values / items: every provider in registry order (items' keys are the providers' keys;
 * the library checks that each pair's key matches its ProviderConfig). */
int pmclient_values(pmclient_t *self, pm_provider_list_t **out);
int pmclient_items(pmclient_t *self, pm_provider_list_t **out);

/* merged_models. */
int pmclient_merged_models(pmclient_t *self, pm_merged_t **out);

/* valid_scoped_models: "key/long (short)" strings. */
int pmclient_valid_scoped_models(pmclient_t *self, pm_strings_t **out);

/* get_api_for_model_string: the provider and the model's long name. Either out may be NULL
 * when not wanted. Fails with "invalid_model" and the service's message. */
int pmclient_resolve(pmclient_t *self, const char *model_string, pm_provider_t **provider_out,
                     char **long_name_out);

/* validate_model: the long name (caller frees). */
int pmclient_validate_model(pmclient_t *self, const char *model_string, char **long_name_out);

/* get_available_models: long names of every provider, or of filter_by_provider when not
 * NULL. */
int pmclient_available_models(pmclient_t *self, const char *filter_by_provider, pm_strings_t **out);

/* get_short_name (caller frees *out). */
int pmclient_short_name(pmclient_t *self, const char *long_name, char **out);

/* find_model: every provider that has name as a long or a short name. */
int pmclient_find_model(pmclient_t *self, const char *name, pm_matches_t **out);

/* discover_models: starts a job and returns its id at once (caller frees *job_out).
 * provider NULL means every provider. A write: not resent after a timeout. */
int pmclient_discover(pmclient_t *self, bool force_refresh, bool persist_on_success,
                      const char *provider, char **job_out);

/* model_status (v1.1): the status records, of every provider or of provider (NULL: all),
 * of one model (long name; NULL: all), in the given states. states / n_states: the "states"
 * argument; states NULL or n_states < 0 sends none (every state), n_states 0 sends [] (the
 * service then answers no record). An unknown provider is "not_found", an unknown state name
 * "bad_request". A read: resent after a timeout. */
int pmclient_model_status(pmclient_t *self, const char *provider, const char *model,
                          const char *const *states, long n_states, pm_status_list_t **out);

/* provider_status (v1.1): of every provider, or of provider (NULL: all). A v1 service answers
 * "unknown_op". A read: resent after a timeout. */
int pmclient_provider_status(pmclient_t *self, const char *provider,
                             pm_provider_status_list_t **out);

/* verify_models (v1.1): starts a verification job and returns its id at once (caller frees
 * *job_out); follow it with pmclient_job_status (kind "verify"). provider NULL: every
 * provider. models / n_models: only these long names (models NULL or n_models < 0: all).
 * include_invalid: also probe invalid_models, moving those that answer to valid_models. A
 * write: not resent after a timeout. */
int pmclient_verify_models(pmclient_t *self, const char *provider, const char *const *models,
                           long n_models, bool include_invalid, bool persist_on_success,
                           char **job_out);

/* job_status. Unknown job: "not_found". */
int pmclient_job_status(pmclient_t *self, const char *job, pm_job_t **out);

/* persist_provider_configs: the file written and the number of providers in it. Either out
 * may be NULL. A write: not resent after a timeout. */
int pmclient_persist(pmclient_t *self, char **path_out, int64_t *providers_out);

/* set_provider: creates or updates a provider; *out (may be NULL) receives the result. */
int pmclient_set_provider(pmclient_t *self, const pm_provider_spec_t *spec, pm_provider_t **out);

/* remove_provider: *removed says whether it was there. A pinned provider: "conflict". */
int pmclient_remove_provider(pmclient_t *self, const char *provider, bool *removed);

/* set_short_name: *out (may be NULL) receives the updated provider. */
int pmclient_set_short_name(pmclient_t *self, const char *provider, const char *long_name,
                            const char *short_name, pm_provider_t **out);

/* health. */
int pmclient_health(pmclient_t *self, pm_health_t **out);

/* The raw escape hatch: sends {"op": op, "args": <args>, "id": n} where args is one packed
 * msgpack map (args NULL / args_size 0 send {}), and returns the whole reply map's bytes in
 * *reply (malloc'd, caller frees; checked like pmclient_last_reply's). An op the library does
 * not know as a read is sent once only. Returns 0 when the reply says ok; -1 otherwise, with
 * the service's code and message when it answered with an error, or a client-side code
 * (*reply is NULL then). */
int pmclient_call_raw(pmclient_t *self, const char *op, const void *args, size_t args_size,
                      void **reply, size_t *reply_size);

/* ---------------------------------------------------------------------------- events */

typedef struct pmclient_events_t pmclient_events_t;

/* Subscribes to the service's "providers" and "models" events at endpoint (NULL =
 * PMCLIENT_DEFAULT_EVENTS_ENDPOINT). As with any SUB socket, events published before the
 * subscription reaches the service are not seen. NULL on failure. */
pmclient_events_t *pmclient_events_new(const char *endpoint);

/* Same with CURVE (keys as in pmclient_set_curve). NULL on failure. */
pmclient_events_t *pmclient_events_new_curve(const char *endpoint, const char *server_public_z85,
                                             const char *client_public_z85,
                                             const char *client_secret_z85);

/* Waits up to timeout_ms (-1 = forever) for the next "changed" event. Returns 1 with
 * *state_version and *keys (the keys the change touched; caller frees; keys may be NULL when
 * not wanted), 0 when nothing arrived in time or a signal interrupted the wait, -1 on a
 * socket error. Malformed events and events of other kinds (models events too: see
 * pmclient_events_recv) are skipped. */
int pmclient_events_next(pmclient_events_t *self, int timeout_ms, int64_t *state_version,
                         pm_strings_t **keys);

/* One change of a models event. */
typedef struct {
    char *model;
    char *from; /* NULL: the model was not known before (nil) */
    char *to;
} pm_model_change_t;

#define PMCLIENT_EVENT_CHANGED 1        /* topic "providers", event "changed" */
#define PMCLIENT_EVENT_MODELS_CHANGED 2 /* topic "models", event "models_changed" (v1.1) */

/* An event of pmclient_events_recv. kind PMCLIENT_EVENT_CHANGED: state_version and keys (the
 * keys the change touched). kind PMCLIENT_EVENT_MODELS_CHANGED: status_version, provider and
 * the changes (state transitions of that provider's models, in the service's order). The
 * fields of the other kind are 0 / NULL. */
typedef struct {
    int kind;
    int64_t state_version;
    pm_strings_t *keys;
    uint64_t status_version;
    char *provider;
    size_t change_count;
    pm_model_change_t *changes;
} pm_event_t;
void pm_event_free(pm_event_t **self_p);

/* Waits up to timeout_ms (-1 = forever) for the next "changed" or "models_changed" event.
 * Returns 1 with *out (caller frees with pm_event_free), 0 when nothing arrived in time or a
 * signal interrupted the wait, -1 on a socket error. Malformed events, heartbeats and events
 * of other kinds are skipped; unknown keys are ignored. */
int pmclient_events_recv(pmclient_events_t *self, int timeout_ms, pm_event_t **out);

void pmclient_events_destroy(pmclient_events_t **self_p);

/* ------------------------------------------------------------------------- CURVE keys */

/* Reads a key file: the public key (always) and, when secret_z85 is not NULL, the secret
 * key. Outputs are buffers of PMCLIENT_Z85_KEY_LEN + 1 bytes. 0, or -1 with a message in
 * err. */
int pmclient_curve_read_key_file(const char *path, char *public_z85, char *secret_z85, char *err,
                                 size_t err_size);

/* Generates a CURVE key pair (zmq_curve_keypair) and writes dir/<name>.key (public and
 * secret key, mode 0600) and dir/<name>.pub (public key, mode 0644). dir is created (0700)
 * when missing; existing files are never overwritten. name: 1..64 of [A-Za-z0-9._-], not
 * starting with '.'. 0, or -1 with a message in err. */
int pmclient_curve_keygen(const char *dir, const char *name, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif

#endif
