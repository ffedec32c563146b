/*
 * config: the daemon's settings and the five-step provider layering of the seed.
 *
 * Settings, lowest precedence first: embedded defaults, the config file (YAML, --config or
 * PM_CONFIG), environment variables PM_* (12-factor), command-line flags.
 *
 * Provider layering (the seed's Config.py order, same precedence):
 *   1. the config file's providers: section is read first and kept as overrides;
 *   2. the built-in baseline (builtin_providers);
 *   3. the persisted YAML file <data_dir>/openaicompat-providers.yaml merged over it;
 *   4. the overrides merged last;
 *   5. API keys from the environment win over everything.
 * Merge is per field; valid_models merges per model; invalid_models is replaced.
 */
#ifndef PM_CONFIG_H
#define PM_CONFIG_H

#include "log.h"
#include "registry.h"
#include "store.h"
#include <stdbool.h>

#define CONFIG_DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"
#define CONFIG_DEFAULT_EVENTS_ENDPOINT "tcp://127.0.0.1:5556"
#define CONFIG_DEFAULT_DATA_DIR "./data"
#define CONFIG_DEFAULT_WORKERS 4
#define CONFIG_MAX_WORKERS 64
/* Heartbeats on the events socket (protocol v1.1): a replica that hears nothing for three of
 * them re-synchronises, so the period bounds how stale a silent replica can be. */
#define CONFIG_DEFAULT_HEARTBEAT_MS 1000
#define CONFIG_MIN_HEARTBEAT_MS 10
#define CONFIG_MAX_HEARTBEAT_MS 60000

typedef struct {
    double cache_duration_s; /* discovery list cache, default 3600 */
    int max_tokens;          /* probe max_tokens, default 16 */
    int per_provider_limit;  /* in-flight requests per provider, default 4 */
    int connect_timeout_ms;  /* default 5000 */
    int request_timeout_ms;  /* total per HTTP request, default 30000 */
    int max_retries;         /* retries of transient failures, default 3 */
    int retry_budget_ms;     /* total time spent retrying one request, default 30000 */
    int interval_minutes;    /* periodic discovery, 0 = off */
    bool on_start;           /* run a discovery at start-up */
    long list_max_bytes;     /* default 16 MiB */
    long probe_max_bytes;    /* default 64 KiB */

    /* v1.1 schedules, in minutes (fractions allowed; 0 = never): re-listing (a verify-kind
     * job that probes nothing; default 60) and verification (probes cost money; default 0). */
    double list_interval_minutes;
    double verify_interval_minutes;

    /* v1.1 model status: consecutive definitive probe failures that make a model failing
     * (default 3), consecutive successful lists without it that make it gone (default 2),
     * and what leaves valid_models (CONFIG_PRUNE_*, default none). */
    int fail_threshold;
    int gone_threshold;
    int prune;
} config_discovery_t;

#define CONFIG_PRUNE_NONE 0
#define CONFIG_PRUNE_GONE 1
#define CONFIG_PRUNE_FAILING_AND_GONE 2
#define CONFIG_MAX_IGNORE_PATTERNS 1024 /* per list: discovery.ignore, providers.<key>.ignore */
#define CONFIG_MAX_IGNORE_PATTERN_LEN 1024

/* Ignore globs (shell patterns on the long name): never probed, never counted. */
typedef struct {
    char *provider; /* NULL: the global list (discovery.ignore) */
    size_t count;
    char **patterns;
} config_ignore_t;

typedef struct {
    char *config_path; /* NULL when none */
    char *endpoint;
    char *events_endpoint;
    char *metrics_endpoint; /* HOST:PORT of /metrics and /healthz; NULL: off */
    char *data_dir;
    int workers;
    log_level_t log_level;
    int heartbeat_ms; /* period of `heartbeat` events */
    config_discovery_t discovery;
    /* Security (CURVE): all NULL when off. */
    char *curve_secret_key_file; /* server secret key file (z85, see pmctl keygen) */
    char *curve_clients_dir;     /* directory of admin client public key files */
    char *curve_readers_dir;     /* directory of reader client public key files (v1.1) */
    bool allow_insecure;         /* bind non-loopback tcp without CURVE */
    /* Read replica (v1.1): both set or both NULL. The replica keeps a copy of the primary at
     * replica_of (its request endpoint) through its events at replica_events, and owns no
     * providers file. replica_server_key_file: the primary's public key (CURVE towards it). */
    char *replica_of;
    char *replica_events;
    char *replica_server_key_file;
    store_layer_t overrides;      /* the config file's providers: section */
    config_ignore_t ignore;       /* discovery.ignore */
    size_t provider_ignore_count; /* providers.<key>.ignore, one entry per provider */
    config_ignore_t *provider_ignore;
    bool usage_error; /* set by a failed config_load: a command-line usage error */
} config_t;

/* Fills cfg from defaults, file, environment and argv (in that precedence). getenv_fn lets
 * tests supply an environment (NULL = getenv). Returns 0; 1 when --help or --version was
 * handled (text printed to stdout, caller exits 0); -1 on a usage or config error with err
 * set (caller exits 2 for usage, see config_error_is_usage). */
typedef const char *(config_getenv_fn)(const char *name);
int config_load(config_t *cfg, int argc, char **argv, config_getenv_fn *getenv_fn, char *err,
                size_t err_size);
void config_clear(config_t *cfg);

/* After config_load() returned -1: true when the cause was the command line (unknown flag,
 * missing or bad flag value; exit 2), false for a config file or environment error (exit 1).
 * A failed config_load leaves nothing to free in cfg but this flag. */
bool config_error_is_usage(const config_t *cfg);

/* True when endpoint is an address a socket can connect to: tcp://HOST:PORT (port 1 to 65535;
 * an IPv6 host in brackets) or ipc://PATH, without spaces or control bytes. */
bool config_endpoint_valid(const char *endpoint);

/* True in read replica mode (replica_of and replica_events set). */
static inline bool config_is_replica(const config_t *cfg)
{
    return cfg->replica_of != NULL;
}

/* Runs the five layering steps into a new sealed registry (*out). Reads the persisted file
 * from cfg->data_dir (a parse error is returned, never overwritten). Warnings go to warn.
 * 0, or -1 with err. */
int config_build_registry(const config_t *cfg, config_getenv_fn *getenv_fn, registry_t **out,
                          store_warn_fn *warn, void *warn_arg, char *err, size_t err_size);

/* The environment variable holding a provider's API key: the baseline's name when the
 * provider is built in (OPENAI_API_KEY, ...), else the key upper-cased with every
 * non-alphanumeric byte turned into '_', plus "_API_KEY". Writes into out; 0 or -1. */
int config_api_key_env_name(const char *key, char *out, size_t out_size);

/* Applies the environment's key (step 5) to one provider when its variable is set and
 * non-empty. Used at start-up and by the writer for providers created at run time. */
int config_apply_env_key(provider_t *provider, config_getenv_fn *getenv_fn);

#endif
