/*
 * config: the daemon's settings (defaults < config file < PM_* environment < flags) and the
 * seed's five-step provider layering (see config.h).
 *
 * The command line is parsed and validated first, before anything else is read, so that a
 * usage error is reported as such and --help works even with a broken config file. Every
 * number goes through strtol/strtod with full checks and a range; every message names where
 * the bad value came from (flag, variable, or file:line:col). Warnings about unknown config
 * keys go to stderr: this module runs once at start-up, before the logger is set up.
 */
#include "config.h"

#include "builtin_providers.h"
#include "provider_spec.h"

#include <yaml.h>

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#ifndef PM_VERSION
#error "PM_VERSION comes from CMake project(VERSION): build with CMake"
#endif

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

#define CONFIG_MAX_ENDPOINT_LEN 1024
#define CONFIG_MAX_PATH_LEN (PATH_MAX - 64) /* room for "/openaicompat-providers.yaml.tmp.." */
#define CONFIG_MAX_SHOWN_VALUE 64           /* bytes of a rejected value quoted in a message */

/* ------------------------------------------------------------------------ messages */

static void s_set_error(char *err, size_t err_size, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

static void s_set_error(char *err, size_t err_size, const char *format, ...)
{
    if (!err || err_size == 0)
        return;
    va_list args;
    va_start(args, format);
    int n = vsnprintf(err, err_size, format, args);
    va_end(args);
    if (n < 0)
        err[0] = '\0';
}

static void s_stderr_warn(void *arg, const char *message)
{
    (void)arg;
    fprintf(stderr, "provider-manager: warning: %s\n", message);
}

static const char *s_real_getenv(const char *name)
{
    return getenv(name);
}

/* --------------------------------------------------------------------- value parsers */

/* A whole decimal integer in [min, max]; no leading space, no trailing garbage. */
static int s_parse_long(const char *text, long min, long max, long *out)
{
    if (!text || text[0] == '\0' || isspace((unsigned char)text[0]))
        return -1;
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < min || value > max)
        return -1;
    *out = value;
    return 0;
}

static int s_parse_double(const char *text, double min, double max, double *out)
{
    if (!text || text[0] == '\0' || isspace((unsigned char)text[0]))
        return -1;
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !isfinite(value) || value < min || value > max)
        return -1;
    *out = value;
    return 0;
}

static int s_parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

static int s_parse_log_level(const char *text, log_level_t *out)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(text, names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    }
    return -1;
}

/* Replaces *field with a copy of value. 0, or -1 on allocation failure (field unchanged). */
static int s_set_string(char **field, const char *value)
{
    char *copy = strdup(value);
    if (!copy)
        return -1;
    free(*field);
    *field = copy;
    return 0;
}

/* --------------------------------------------------------------- discovery settings */

typedef enum { S_KIND_INT, S_KIND_LONG, S_KIND_DOUBLE, S_KIND_BOOL } s_kind_t;

typedef struct {
    const char *key; /* under discovery: in the config file */
    size_t offset;   /* in config_discovery_t */
    s_kind_t kind;
    double min;
    double max;
    const char *help;
} s_discovery_key_t;

static const s_discovery_key_t s_discovery_keys[] = {
    {"cache_duration", offsetof(config_discovery_t, cache_duration_s), S_KIND_DOUBLE, 0, 31536000,
     "seconds a provider's listed models stay fresh (default 3600)"},
    {"max_tokens", offsetof(config_discovery_t, max_tokens), S_KIND_INT, 1, 100000,
     "max_tokens of a validation probe (default 16)"},
    {"per_provider_limit", offsetof(config_discovery_t, per_provider_limit), S_KIND_INT, 1, 256,
     "requests in flight per provider (default 4)"},
    {"connect_timeout_ms", offsetof(config_discovery_t, connect_timeout_ms), S_KIND_INT, 1, 600000,
     "TCP/TLS connect timeout (default 5000)"},
    {"request_timeout_ms", offsetof(config_discovery_t, request_timeout_ms), S_KIND_INT, 1, 3600000,
     "total time of one HTTP request (default 30000)"},
    {"max_retries", offsetof(config_discovery_t, max_retries), S_KIND_INT, 0, 100,
     "retries of a transient failure (default 3)"},
    {"retry_budget_ms", offsetof(config_discovery_t, retry_budget_ms), S_KIND_INT, 0, 3600000,
     "total time spent retrying one request (default 30000)"},
    {"interval_minutes", offsetof(config_discovery_t, interval_minutes), S_KIND_INT, 0, 525600,
     "periodic discovery every N minutes, 0 = off (default 0)"},
    {"on_start", offsetof(config_discovery_t, on_start), S_KIND_BOOL, 0, 1,
     "run a discovery at start-up (default false)"},
    {"list_interval_minutes", offsetof(config_discovery_t, list_interval_minutes), S_KIND_DOUBLE, 0,
     525600,
     "re-list providers with a key every N minutes, fractions allowed, 0 = off "
     "(default 60)"},
    {"verify_interval_minutes", offsetof(config_discovery_t, verify_interval_minutes),
     S_KIND_DOUBLE, 0, 525600,
     "verify (probe) models every N minutes, fractions allowed, 0 = off (default 0)"},
    {"fail_threshold", offsetof(config_discovery_t, fail_threshold), S_KIND_INT, 1, 1000000,
     "consecutive definitive probe failures that make a model failing (default 3)"},
    {"gone_threshold", offsetof(config_discovery_t, gone_threshold), S_KIND_INT, 1, 1000000,
     "consecutive successful lists without a model that make it gone (default 2)"},
    {"list_max_bytes", offsetof(config_discovery_t, list_max_bytes), S_KIND_LONG, 1024, 1073741824,
     "largest model list response accepted (default 16777216)"},
    {"probe_max_bytes", offsetof(config_discovery_t, probe_max_bytes), S_KIND_LONG, 1024, 67108864,
     "largest probe response accepted (default 65536)"},
};

static void s_discovery_defaults(config_discovery_t *discovery)
{
    discovery->cache_duration_s = REGISTRY_DEFAULT_CACHE_DURATION;
    discovery->max_tokens = 16;
    discovery->per_provider_limit = 4;
    discovery->connect_timeout_ms = 5000;
    discovery->request_timeout_ms = 30000;
    discovery->max_retries = 3;
    discovery->retry_budget_ms = 30000;
    discovery->interval_minutes = 0;
    discovery->on_start = false;
    discovery->list_interval_minutes = 60;
    discovery->verify_interval_minutes = 0;
    discovery->fail_threshold = 3;
    discovery->gone_threshold = 2;
    discovery->prune = CONFIG_PRUNE_NONE;
    discovery->list_max_bytes = 16L * 1024 * 1024;
    discovery->probe_max_bytes = 64L * 1024;
}

/* Parses text for one discovery key into discovery. 0, or -1 (value out of range). */
static int s_set_discovery(config_discovery_t *discovery, const s_discovery_key_t *key,
                           const char *text)
{
    char *field = (char *)discovery + key->offset;
    long integer = 0;
    switch (key->kind) {
    case S_KIND_INT:
        if (s_parse_long(text, (long)key->min, (long)key->max, &integer) != 0)
            return -1;
        *(int *)(void *)field = (int)integer;
        return 0;
    case S_KIND_LONG:
        if (s_parse_long(text, (long)key->min, (long)key->max, &integer) != 0)
            return -1;
        *(long *)(void *)field = integer;
        return 0;
    case S_KIND_DOUBLE:
        return s_parse_double(text, key->min, key->max, (double *)(void *)field);
    case S_KIND_BOOL:
        return s_parse_bool(text, (bool *)(void *)field);
    }
    return -1;
}

static void s_describe_range(const s_discovery_key_t *key, char *out, size_t out_size)
{
    switch (key->kind) {
    case S_KIND_BOOL:
        snprintf(out, out_size, "true or false");
        break;
    case S_KIND_DOUBLE:
        snprintf(out, out_size, "a number from %.0f to %.0f", key->min, key->max);
        break;
    default:
        snprintf(out, out_size, "an integer from %.0f to %.0f", key->min, key->max);
        break;
    }
}

/* -------------------------------------------------------------------- command line */

typedef enum {
    OPT_CONFIG,
    OPT_ENDPOINT,
    OPT_EVENTS_ENDPOINT,
    OPT_METRICS_ENDPOINT,
    OPT_DATA_DIR,
    OPT_WORKERS,
    OPT_LOG_LEVEL,
    OPT_HEARTBEAT_MS,
    OPT_CURVE_SECRET_KEY_FILE,
    OPT_CURVE_CLIENTS_DIR,
    OPT_CURVE_READERS_DIR,
    OPT_ALLOW_INSECURE,
    OPT_REPLICA_OF,
    OPT_REPLICA_EVENTS,
    OPT_REPLICA_SERVER_KEY_FILE,
    OPT_HELP,
    OPT_VERSION,
    OPT_COUNT
} s_option_id_t;

typedef struct {
    const char *name;     /* without the leading "--" */
    const char *argument; /* NULL: a switch without a value */
    const char *env;      /* the environment variable for the same setting, or NULL */
    const char *help;
} s_option_t;

static const s_option_t s_options[OPT_COUNT] = {
    [OPT_CONFIG] = {"config", "FILE", "PM_CONFIG", "YAML config file (see the keys below)"},
    [OPT_ENDPOINT] = {"endpoint", "EP", "PM_ENDPOINT",
                      "request/reply endpoint (default " CONFIG_DEFAULT_ENDPOINT ")"},
    [OPT_EVENTS_ENDPOINT] =
        {"events-endpoint", "EP", "PM_EVENTS_ENDPOINT",
         "PUB endpoint of change events (default " CONFIG_DEFAULT_EVENTS_ENDPOINT ")"},
    [OPT_METRICS_ENDPOINT] = {"metrics-endpoint", "HOST:PORT", "PM_METRICS_ENDPOINT",
                              "serve Prometheus /metrics and /healthz over HTTP (default off; "
                              "off turns it off)"},
    [OPT_DATA_DIR] = {"data-dir", "DIR", "PM_DATA_DIR",
                      "directory of " STORE_FILE_NAME " (default " CONFIG_DEFAULT_DATA_DIR ")"},
    [OPT_WORKERS] = {"workers", "N", "PM_WORKERS", "discovery worker threads, 1 to 64 (default 4)"},
    [OPT_LOG_LEVEL] = {"log-level", "LEVEL", "PM_LOG_LEVEL",
                       "error, warn, info or debug (default info)"},
    [OPT_HEARTBEAT_MS] = {"heartbeat-ms", "MS", "PM_HEARTBEAT_MS",
                          "heartbeat event period, 10 to 60000 (default 1000)"},
    [OPT_CURVE_SECRET_KEY_FILE] = {"curve-secret-key-file", "FILE", "PM_CURVE_SECRET_KEY_FILE",
                                   "enable CURVE with this server secret key (z85)"},
    [OPT_CURVE_CLIENTS_DIR] = {"curve-clients-dir", "DIR", "PM_CURVE_CLIENTS_DIR",
                               "directory of admin client public keys (every op)"},
    [OPT_CURVE_READERS_DIR] = {"curve-readers-dir", "DIR", "PM_CURVE_READERS_DIR",
                               "directory of reader client public keys (read ops only)"},
    [OPT_ALLOW_INSECURE] = {"allow-insecure", NULL, "PM_ALLOW_INSECURE",
                            "bind a non-loopback tcp endpoint without CURVE (env: 1 or true)"},
    [OPT_REPLICA_OF] = {"replica-of", "EP", "PM_REPLICA_OF",
                        "run as a read replica of the primary's request endpoint"},
    [OPT_REPLICA_EVENTS] = {"replica-events", "EP", "PM_REPLICA_EVENTS",
                            "the primary's events endpoint (with --replica-of)"},
    [OPT_REPLICA_SERVER_KEY_FILE] = {"replica-server-key-file", "FILE",
                                     "PM_REPLICA_SERVER_KEY_FILE",
                                     "the primary's public key file (CURVE towards it)"},
    [OPT_HELP] = {"help", NULL, NULL, "print this help and exit"},
    [OPT_VERSION] = {"version", NULL, NULL, "print the version and exit"},
};

typedef struct {
    bool present[OPT_COUNT];
    const char *value[OPT_COUNT]; /* borrowed from argv */
    long workers;
    long heartbeat_ms;
    log_level_t log_level;
} s_flags_t;

static int s_parse_flags(int argc, char **argv, s_flags_t *flags, char *err, size_t err_size)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!arg)
            break;
        if (strcmp(arg, "-h") == 0) {
            flags->present[OPT_HELP] = true;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            s_set_error(err, err_size, "unexpected argument '%.*s' (see --help)",
                        CONFIG_MAX_SHOWN_VALUE, arg);
            return -1;
        }
        const char *name = arg + 2;
        const char *equals = strchr(name, '=');
        size_t name_length = equals ? (size_t)(equals - name) : strlen(name);
        int id = -1;
        for (int o = 0; o < OPT_COUNT; o++) {
            if (strlen(s_options[o].name) == name_length &&
                strncmp(s_options[o].name, name, name_length) == 0) {
                id = o;
                break;
            }
        }
        if (id < 0) {
            s_set_error(
                err, err_size, "unknown option '--%.*s' (see --help)",
                (int)(name_length > CONFIG_MAX_SHOWN_VALUE ? CONFIG_MAX_SHOWN_VALUE : name_length),
                name);
            return -1;
        }
        const s_option_t *option = &s_options[id];
        const char *value = NULL;
        if (option->argument) {
            if (equals)
                value = equals + 1;
            else if (i + 1 < argc && argv[i + 1])
                value = argv[++i];
            else {
                s_set_error(err, err_size, "option --%s requires a value (%s)", option->name,
                            option->argument);
                return -1;
            }
            if (value[0] == '\0') {
                s_set_error(err, err_size, "option --%s requires a non-empty value", option->name);
                return -1;
            }
        } else if (equals) {
            s_set_error(err, err_size, "option --%s takes no value", option->name);
            return -1;
        }
        if (id == OPT_WORKERS && s_parse_long(value, 1, CONFIG_MAX_WORKERS, &flags->workers) != 0) {
            s_set_error(err, err_size,
                        "invalid value '%.*s' for --workers: expected an integer from 1 to %d",
                        CONFIG_MAX_SHOWN_VALUE, value, CONFIG_MAX_WORKERS);
            return -1;
        }
        if (id == OPT_HEARTBEAT_MS &&
            s_parse_long(value, CONFIG_MIN_HEARTBEAT_MS, CONFIG_MAX_HEARTBEAT_MS,
                         &flags->heartbeat_ms) != 0) {
            s_set_error(err, err_size,
                        "invalid value '%.*s' for --heartbeat-ms: expected an integer from %d to "
                        "%d",
                        CONFIG_MAX_SHOWN_VALUE, value, CONFIG_MIN_HEARTBEAT_MS,
                        CONFIG_MAX_HEARTBEAT_MS);
            return -1;
        }
        if (id == OPT_LOG_LEVEL && s_parse_log_level(value, &flags->log_level) != 0) {
            s_set_error(err, err_size,
                        "invalid value '%.*s' for --log-level: expected error, warn, info or "
                        "debug",
                        CONFIG_MAX_SHOWN_VALUE, value);
            return -1;
        }
        if ((id == OPT_ENDPOINT || id == OPT_EVENTS_ENDPOINT || id == OPT_METRICS_ENDPOINT ||
             id == OPT_REPLICA_OF || id == OPT_REPLICA_EVENTS) &&
            strlen(value) > CONFIG_MAX_ENDPOINT_LEN) {
            s_set_error(err, err_size, "option --%s: longer than %d bytes", option->name,
                        CONFIG_MAX_ENDPOINT_LEN);
            return -1;
        }
        if ((id == OPT_CONFIG || id == OPT_DATA_DIR || id == OPT_CURVE_SECRET_KEY_FILE ||
             id == OPT_CURVE_CLIENTS_DIR || id == OPT_CURVE_READERS_DIR ||
             id == OPT_REPLICA_SERVER_KEY_FILE) &&
            strlen(value) > CONFIG_MAX_PATH_LEN) {
            s_set_error(err, err_size, "option --%s: longer than %d bytes", option->name,
                        CONFIG_MAX_PATH_LEN);
            return -1;
        }
        flags->present[id] = true;
        flags->value[id] = value;
    }
    return 0;
}

static int s_print_usage(FILE *out)
{
    int failed = 0;
    failed |= fputs("Usage: provider-manager [OPTION]...\n"
                    "Serves the registry of OpenAI-compatible LLM providers over ZeroMQ.\n\n"
                    "Options (--option VALUE or --option=VALUE):\n",
                    out) < 0;
    for (int i = 0; i < OPT_COUNT; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", s_options[i].name, s_options[i].argument ? " " : "",
                 s_options[i].argument ? s_options[i].argument : "");
        failed |= fprintf(out, "  %-30s %s\n", left, s_options[i].help) < 0;
    }
    failed |= fputs("\nEnvironment (a flag wins over its variable; empty means unset):\n", out) < 0;
    for (int i = 0; i < OPT_COUNT; i++) {
        if (s_options[i].env)
            failed |=
                fprintf(out, "  %-30s same as --%s\n", s_options[i].env, s_options[i].name) < 0;
    }
    failed |= fputs("  <PROVIDER>_API_KEY             API key of a provider (OPENAI_API_KEY, ...; "
                    "other keys\n"
                    "                                 upper-cased, non-alphanumerics as '_'); "
                    "wins over files\n",
                    out) < 0;
    failed |= fputs("\nConfig file keys (YAML; precedence: flags > environment > file > "
                    "defaults):\n"
                    "  endpoint, events_endpoint, metrics_endpoint, data_dir, workers, log_level,\n"
                    "  heartbeat_ms\n"
                    "  discovery:\n",
                    out) < 0;
    for (size_t i = 0; i < sizeof s_discovery_keys / sizeof s_discovery_keys[0]; i++)
        failed |=
            fprintf(out, "    %-28s %s\n", s_discovery_keys[i].key, s_discovery_keys[i].help) < 0;
    failed |=
        fputs("  security:\n"
              "    curve_secret_key_file, curve_clients_dir, curve_readers_dir, allow_insecure\n"
              "  replica:                       read replica mode (both or neither):\n"
              "    of, events, server_key_file\n"
              "  providers:                     pinned providers, same shape as the data "
              "file:\n"
              "    <key>: {name, base_api_url, api_key, valid_models: {long: short}, "
              "invalid_models: [..]}\n",
              out) < 0;
    failed |= fflush(out) != 0;
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------------- config file */

typedef struct {
    const char *path;
    yaml_document_t *doc;
    char *err;
    size_t err_size;
} s_file_t;

static bool s_is_null(const yaml_node_t *node)
{
    return node->type == YAML_SCALAR_NODE && node->tag &&
           strcmp((const char *)node->tag, YAML_NULL_TAG) == 0;
}

static void s_file_error(s_file_t *file, const yaml_node_t *node, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

static void s_file_error(s_file_t *file, const yaml_node_t *node, const char *format, ...)
{
    char what[512];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(what, sizeof what, format, args);
    va_end(args);
    if (n < 0)
        what[0] = '\0';
    s_set_error(file->err, file->err_size, "%s:%zu:%zu: %s", file->path, node->start_mark.line + 1,
                node->start_mark.column + 1, what);
}

static void s_file_warn_unknown(s_file_t *file, const yaml_node_t *key, const char *section)
{
    char message[PATH_MAX + 256];
    int shown = key->data.scalar.length > CONFIG_MAX_SHOWN_VALUE ? CONFIG_MAX_SHOWN_VALUE
                                                                 : (int)key->data.scalar.length;
    snprintf(message, sizeof message, "%s:%zu:%zu: unknown key '%s%.*s' ignored", file->path,
             key->start_mark.line + 1, key->start_mark.column + 1, section, shown,
             (const char *)key->data.scalar.value);
    s_stderr_warn(NULL, message);
}

/* The text of a non-null, non-empty scalar without NUL bytes, at most max_length bytes, or
 * NULL with the error set (naming key). */
static const char *s_file_text(s_file_t *file, const yaml_node_t *node, const char *key,
                               size_t max_length)
{
    if (node->type != YAML_SCALAR_NODE || s_is_null(node)) {
        s_file_error(file, node, "%s must be a value, not %s", key,
                     s_is_null(node) ? "null" : "a list or mapping");
        return NULL;
    }
    if (node->data.scalar.length == 0) {
        s_file_error(file, node, "%s must not be empty", key);
        return NULL;
    }
    if (node->data.scalar.length > max_length) {
        s_file_error(file, node, "%s is longer than %zu bytes", key, max_length);
        return NULL;
    }
    if (memchr(node->data.scalar.value, '\0', node->data.scalar.length)) {
        s_file_error(file, node, "%s must not contain NUL characters", key);
        return NULL;
    }
    return (const char *)node->data.scalar.value;
}

/* Checks that key is a string and that it did not appear before in the same mapping. */
static int s_file_check_key(s_file_t *file, const yaml_node_t *mapping,
                            const yaml_node_pair_t *pair, const yaml_node_t *key)
{
    if (key->type != YAML_SCALAR_NODE || s_is_null(key) ||
        memchr(key->data.scalar.value, '\0', key->data.scalar.length)) {
        s_file_error(file, key, "mapping keys must be strings");
        return -1;
    }
    for (const yaml_node_pair_t *earlier = mapping->data.mapping.pairs.start; earlier < pair;
         earlier++) {
        const yaml_node_t *other = yaml_document_get_node(file->doc, earlier->key);
        if (other->type == YAML_SCALAR_NODE &&
            other->data.scalar.length == key->data.scalar.length &&
            memcmp(other->data.scalar.value, key->data.scalar.value, key->data.scalar.length) ==
                0) {
            s_file_error(file, key, "duplicate key '%s'", (const char *)key->data.scalar.value);
            return -1;
        }
    }
    return 0;
}

/* A mapping section (null = empty). Returns the mapping node, NULL when null, or sets the
 * error and returns NULL with *failed. */
static const yaml_node_t *s_file_section(s_file_t *file, const yaml_node_t *node, const char *name,
                                         bool *failed)
{
    *failed = false;
    if (s_is_null(node))
        return NULL;
    if (node->type != YAML_MAPPING_NODE) {
        s_file_error(file, node, "%s must be a mapping", name);
        *failed = true;
        return NULL;
    }
    return node;
}

static void s_ignore_clear(config_ignore_t *ignore)
{
    for (size_t i = 0; i < ignore->count; i++)
        free(ignore->patterns[i]);
    free(ignore->patterns);
    free(ignore->provider);
    memset(ignore, 0, sizeof *ignore);
}

/* discovery.prune: none | gone | failing_and_gone. */
static int s_file_prune(s_file_t *file, config_t *cfg, const yaml_node_t *node)
{
    static const char *const names[] = {"none", "gone", "failing_and_gone"};
    if (node->type == YAML_SCALAR_NODE && !s_is_null(node)) {
        for (int i = 0; i < 3; i++) {
            if (strcmp((const char *)node->data.scalar.value, names[i]) == 0) {
                cfg->discovery.prune = i;
                return 0;
            }
        }
    }
    s_file_error(file, node, "discovery.prune must be none, gone or failing_and_gone");
    return -1;
}

/* An ignore list: a sequence of non-empty glob strings (null = empty). Replaces *out. */
static int s_file_ignore(s_file_t *file, const yaml_node_t *node, const char *what,
                         config_ignore_t *out)
{
    char *provider = out->provider;
    out->provider = NULL;
    s_ignore_clear(out);
    out->provider = provider;
    if (s_is_null(node))
        return 0;
    if (node->type != YAML_SEQUENCE_NODE) {
        s_file_error(file, node, "%s must be a list of glob patterns", what);
        return -1;
    }
    size_t count = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    if (count > CONFIG_MAX_IGNORE_PATTERNS) {
        s_file_error(file, node, "%s has more than %d patterns", what, CONFIG_MAX_IGNORE_PATTERNS);
        return -1;
    }
    out->patterns = calloc(count + 1, sizeof *out->patterns);
    if (!out->patterns) {
        s_set_error(file->err, file->err_size, "out of memory");
        return -1;
    }
    for (yaml_node_item_t *item = node->data.sequence.items.start;
         item < node->data.sequence.items.top; item++) {
        const yaml_node_t *entry = yaml_document_get_node(file->doc, *item);
        if (!entry || entry->type != YAML_SCALAR_NODE || s_is_null(entry) ||
            entry->data.scalar.length == 0 ||
            entry->data.scalar.length > CONFIG_MAX_IGNORE_PATTERN_LEN) {
            s_file_error(file, entry ? entry : node,
                         "%s entries must be glob patterns of 1 to %d bytes", what,
                         CONFIG_MAX_IGNORE_PATTERN_LEN);
            return -1;
        }
        out->patterns[out->count] = strdup((const char *)entry->data.scalar.value);
        if (!out->patterns[out->count]) {
            s_set_error(file->err, file->err_size, "out of memory");
            return -1;
        }
        out->count++;
    }
    return 0;
}

/* providers.<key>.ignore: read here (the store layer skips the key), one list per provider. */
static int s_file_provider_ignores(s_file_t *file, config_t *cfg, const yaml_node_t *value)
{
    if (s_is_null(value) || value->type != YAML_MAPPING_NODE)
        return 0; /* store_parse_providers reports the shape */
    for (yaml_node_pair_t *pair = value->data.mapping.pairs.start;
         pair < value->data.mapping.pairs.top; pair++) {
        const yaml_node_t *key = yaml_document_get_node(file->doc, pair->key);
        const yaml_node_t *provider = yaml_document_get_node(file->doc, pair->value);
        if (!key || key->type != YAML_SCALAR_NODE || !provider ||
            provider->type != YAML_MAPPING_NODE)
            continue;
        for (yaml_node_pair_t *field = provider->data.mapping.pairs.start;
             field < provider->data.mapping.pairs.top; field++) {
            const yaml_node_t *name = yaml_document_get_node(file->doc, field->key);
            if (!name || name->type != YAML_SCALAR_NODE ||
                strcmp((const char *)name->data.scalar.value, "ignore") != 0)
                continue;
            config_ignore_t *grown =
                realloc(cfg->provider_ignore, (cfg->provider_ignore_count + 1) * sizeof *grown);
            if (!grown) {
                s_set_error(file->err, file->err_size, "out of memory");
                return -1;
            }
            cfg->provider_ignore = grown;
            config_ignore_t *entry = &cfg->provider_ignore[cfg->provider_ignore_count++];
            memset(entry, 0, sizeof *entry);
            entry->provider = strdup((const char *)key->data.scalar.value);
            if (!entry->provider) {
                s_set_error(file->err, file->err_size, "out of memory");
                return -1;
            }
            char what[128];
            snprintf(what, sizeof what, "providers.%.64s.ignore",
                     (const char *)key->data.scalar.value);
            if (s_file_ignore(file, yaml_document_get_node(file->doc, field->value), what, entry) !=
                0)
                return -1;
        }
    }
    return 0;
}

static int s_file_discovery(s_file_t *file, config_t *cfg, const yaml_node_t *value)
{
    bool failed;
    const yaml_node_t *section = s_file_section(file, value, "discovery", &failed);
    if (!section)
        return failed ? -1 : 0;
    for (yaml_node_pair_t *pair = section->data.mapping.pairs.start;
         pair < section->data.mapping.pairs.top; pair++) {
        const yaml_node_t *key = yaml_document_get_node(file->doc, pair->key);
        const yaml_node_t *node = yaml_document_get_node(file->doc, pair->value);
        if (s_file_check_key(file, section, pair, key) != 0)
            return -1;
        const char *name = (const char *)key->data.scalar.value;
        if (strcmp(name, "prune") == 0) {
            if (s_file_prune(file, cfg, node) != 0)
                return -1;
            continue;
        }
        if (strcmp(name, "ignore") == 0) {
            if (s_file_ignore(file, node, "discovery.ignore", &cfg->ignore) != 0)
                return -1;
            continue;
        }
        const s_discovery_key_t *known = NULL;
        for (size_t i = 0; i < sizeof s_discovery_keys / sizeof s_discovery_keys[0]; i++) {
            if (strcmp(s_discovery_keys[i].key, name) == 0)
                known = &s_discovery_keys[i];
        }
        if (!known) {
            s_file_warn_unknown(file, key, "discovery.");
            continue;
        }
        char range[96];
        s_describe_range(known, range, sizeof range);
        if (node->type != YAML_SCALAR_NODE || s_is_null(node) ||
            s_set_discovery(&cfg->discovery, known, (const char *)node->data.scalar.value) != 0) {
            s_file_error(file, node, "discovery.%s must be %s", name, range);
            return -1;
        }
    }
    return 0;
}

static int s_file_security(s_file_t *file, config_t *cfg, const yaml_node_t *value)
{
    bool failed;
    const yaml_node_t *section = s_file_section(file, value, "security", &failed);
    if (!section)
        return failed ? -1 : 0;
    for (yaml_node_pair_t *pair = section->data.mapping.pairs.start;
         pair < section->data.mapping.pairs.top; pair++) {
        const yaml_node_t *key = yaml_document_get_node(file->doc, pair->key);
        const yaml_node_t *node = yaml_document_get_node(file->doc, pair->value);
        if (s_file_check_key(file, section, pair, key) != 0)
            return -1;
        const char *name = (const char *)key->data.scalar.value;
        char **target = NULL;
        if (strcmp(name, "curve_secret_key_file") == 0)
            target = &cfg->curve_secret_key_file;
        else if (strcmp(name, "curve_clients_dir") == 0)
            target = &cfg->curve_clients_dir;
        else if (strcmp(name, "curve_readers_dir") == 0)
            target = &cfg->curve_readers_dir;
        if (target) {
            if (s_is_null(node)) { /* explicitly off */
                free(*target);
                *target = NULL;
                continue;
            }
            const char *text = s_file_text(file, node, name, CONFIG_MAX_PATH_LEN);
            if (!text)
                return -1;
            if (s_set_string(target, text) != 0) {
                s_set_error(file->err, file->err_size, "out of memory");
                return -1;
            }
        } else if (strcmp(name, "allow_insecure") == 0) {
            if (node->type != YAML_SCALAR_NODE || s_is_null(node) ||
                s_parse_bool((const char *)node->data.scalar.value, &cfg->allow_insecure) != 0) {
                s_file_error(file, node, "security.allow_insecure must be true or false");
                return -1;
            }
        } else {
            s_file_warn_unknown(file, key, "security.");
        }
    }
    return 0;
}

/* replica: {of, events, server_key_file} (v1.1 read replicas). */
static int s_file_replica(s_file_t *file, config_t *cfg, const yaml_node_t *value)
{
    bool failed;
    const yaml_node_t *section = s_file_section(file, value, "replica", &failed);
    if (!section)
        return failed ? -1 : 0;
    for (yaml_node_pair_t *pair = section->data.mapping.pairs.start;
         pair < section->data.mapping.pairs.top; pair++) {
        const yaml_node_t *key = yaml_document_get_node(file->doc, pair->key);
        const yaml_node_t *node = yaml_document_get_node(file->doc, pair->value);
        if (s_file_check_key(file, section, pair, key) != 0)
            return -1;
        const char *name = (const char *)key->data.scalar.value;
        char **target = NULL;
        size_t max_length = CONFIG_MAX_ENDPOINT_LEN;
        char what[64];
        snprintf(what, sizeof what, "replica.%s", name);
        if (strcmp(name, "of") == 0) {
            target = &cfg->replica_of;
        } else if (strcmp(name, "events") == 0) {
            target = &cfg->replica_events;
        } else if (strcmp(name, "server_key_file") == 0) {
            target = &cfg->replica_server_key_file;
            max_length = CONFIG_MAX_PATH_LEN;
        } else {
            s_file_warn_unknown(file, key, "replica.");
            continue;
        }
        if (s_is_null(node)) { /* explicitly off */
            free(*target);
            *target = NULL;
            continue;
        }
        const char *text = s_file_text(file, node, what, max_length);
        if (!text)
            return -1;
        if (s_set_string(target, text) != 0) {
            s_set_error(file->err, file->err_size, "out of memory");
            return -1;
        }
    }
    return 0;
}

/* One top-level setting. 0, or -1 with the error set. */
static int s_file_setting(s_file_t *file, config_t *cfg, const char *name, const yaml_node_t *node)
{
    char **target = NULL;
    size_t max_length = CONFIG_MAX_PATH_LEN;
    if (strcmp(name, "endpoint") == 0) {
        target = &cfg->endpoint;
        max_length = CONFIG_MAX_ENDPOINT_LEN;
    } else if (strcmp(name, "events_endpoint") == 0) {
        target = &cfg->events_endpoint;
        max_length = CONFIG_MAX_ENDPOINT_LEN;
    } else if (strcmp(name, "metrics_endpoint") == 0) {
        target = &cfg->metrics_endpoint;
        max_length = CONFIG_MAX_ENDPOINT_LEN;
    } else if (strcmp(name, "data_dir") == 0) {
        target = &cfg->data_dir;
    }
    if (target) {
        const char *text = s_file_text(file, node, name, max_length);
        if (!text)
            return -1;
        if (s_set_string(target, text) != 0) {
            s_set_error(file->err, file->err_size, "out of memory");
            return -1;
        }
        return 0;
    }
    if (strcmp(name, "workers") == 0) {
        long workers = 0;
        if (node->type != YAML_SCALAR_NODE || s_is_null(node) ||
            s_parse_long((const char *)node->data.scalar.value, 1, CONFIG_MAX_WORKERS, &workers) !=
                0) {
            s_file_error(file, node, "workers must be an integer from 1 to %d", CONFIG_MAX_WORKERS);
            return -1;
        }
        cfg->workers = (int)workers;
        return 0;
    }
    if (strcmp(name, "heartbeat_ms") == 0) {
        long period = 0;
        if (node->type != YAML_SCALAR_NODE || s_is_null(node) ||
            s_parse_long((const char *)node->data.scalar.value, CONFIG_MIN_HEARTBEAT_MS,
                         CONFIG_MAX_HEARTBEAT_MS, &period) != 0) {
            s_file_error(file, node, "heartbeat_ms must be an integer from %d to %d",
                         CONFIG_MIN_HEARTBEAT_MS, CONFIG_MAX_HEARTBEAT_MS);
            return -1;
        }
        cfg->heartbeat_ms = (int)period;
        return 0;
    }
    if (strcmp(name, "log_level") == 0) {
        if (node->type != YAML_SCALAR_NODE || s_is_null(node) ||
            s_parse_log_level((const char *)node->data.scalar.value, &cfg->log_level) != 0) {
            s_file_error(file, node, "log_level must be error, warn, info or debug");
            return -1;
        }
        return 0;
    }
    return 1; /* not a setting */
}

static int s_load_file(config_t *cfg, const char *path, char *err, size_t err_size)
{
    yaml_document_t doc;
    int rc = store_load_document(path, &doc, err, err_size);
    if (rc == 1) {
        s_set_error(err, err_size, "%s: %s", path, strerror(ENOENT));
        return -1;
    }
    if (rc != 0)
        return -1;

    s_file_t file = {path, &doc, err, err_size};
    const yaml_node_t *root = yaml_document_get_root_node(&doc);
    rc = -1;
    if (!root || s_is_null(root)) {
        rc = 0; /* an empty config file: nothing to change */
        goto cleanup;
    }
    if (root->type != YAML_MAPPING_NODE) {
        s_file_error(&file, root, "the top level must be a mapping of settings");
        goto cleanup;
    }
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start;
         pair < root->data.mapping.pairs.top; pair++) {
        const yaml_node_t *key = yaml_document_get_node(&doc, pair->key);
        const yaml_node_t *value = yaml_document_get_node(&doc, pair->value);
        if (s_file_check_key(&file, root, pair, key) != 0)
            goto cleanup;
        const char *name = (const char *)key->data.scalar.value;
        int handled = s_file_setting(&file, cfg, name, value);
        if (handled < 0)
            goto cleanup;
        if (handled == 0)
            continue;
        if (strcmp(name, "discovery") == 0) {
            if (s_file_discovery(&file, cfg, value) != 0)
                goto cleanup;
        } else if (strcmp(name, "security") == 0) {
            if (s_file_security(&file, cfg, value) != 0)
                goto cleanup;
        } else if (strcmp(name, "replica") == 0) {
            if (s_file_replica(&file, cfg, value) != 0)
                goto cleanup;
        } else if (strcmp(name, "providers") == 0) {
            /* The duplicate-key check above guarantees overrides is still empty here. */
            if (store_parse_providers(path, &doc, (void *)value, &cfg->overrides, s_stderr_warn,
                                      NULL, err, err_size) != 0 ||
                s_file_provider_ignores(&file, cfg, value) != 0)
                goto cleanup;
        } else {
            s_file_warn_unknown(&file, key, "");
        }
    }
    rc = 0;

cleanup:
    yaml_document_delete(&doc);
    return rc;
}

/* ---------------------------------------------------------------------- environment */

static const char *s_env(config_getenv_fn *getenv_fn, const char *name)
{
    const char *value = getenv_fn(name);
    return value && value[0] != '\0' ? value : NULL;
}

/* Discovery settings that also have an environment variable (v1.1 schedules). */
static const struct {
    const char *env;
    const char *key; /* in s_discovery_keys */
} s_discovery_env[] = {
    {"PM_DISCOVERY_LIST_INTERVAL_MINUTES", "list_interval_minutes"},
    {"PM_DISCOVERY_VERIFY_INTERVAL_MINUTES", "verify_interval_minutes"},
    {"PM_DISCOVERY_FAIL_THRESHOLD", "fail_threshold"},
    {"PM_DISCOVERY_GONE_THRESHOLD", "gone_threshold"},
};

static int s_apply_discovery_env(config_t *cfg, config_getenv_fn *getenv_fn, char *err,
                                 size_t err_size)
{
    for (size_t i = 0; i < sizeof s_discovery_env / sizeof s_discovery_env[0]; i++) {
        const char *value = s_env(getenv_fn, s_discovery_env[i].env);
        if (!value)
            continue;
        const s_discovery_key_t *known = NULL;
        for (size_t k = 0; k < sizeof s_discovery_keys / sizeof s_discovery_keys[0]; k++)
            if (strcmp(s_discovery_keys[k].key, s_discovery_env[i].key) == 0)
                known = &s_discovery_keys[k];
        if (!known)
            continue;
        if (s_set_discovery(&cfg->discovery, known, value) != 0) {
            char range[96];
            s_describe_range(known, range, sizeof range);
            s_set_error(err, err_size, "%s must be %s, not '%.*s'", s_discovery_env[i].env, range,
                        CONFIG_MAX_SHOWN_VALUE, value);
            return -1;
        }
    }
    return 0;
}

static int s_apply_env(config_t *cfg, config_getenv_fn *getenv_fn, char *err, size_t err_size)
{
    if (s_apply_discovery_env(cfg, getenv_fn, err, err_size) != 0)
        return -1;
    static const struct {
        s_option_id_t id;
        size_t offset;
        size_t max_length;
    } strings[] = {
        {OPT_ENDPOINT, offsetof(config_t, endpoint), CONFIG_MAX_ENDPOINT_LEN},
        {OPT_EVENTS_ENDPOINT, offsetof(config_t, events_endpoint), CONFIG_MAX_ENDPOINT_LEN},
        {OPT_METRICS_ENDPOINT, offsetof(config_t, metrics_endpoint), CONFIG_MAX_ENDPOINT_LEN},
        {OPT_DATA_DIR, offsetof(config_t, data_dir), CONFIG_MAX_PATH_LEN},
        {OPT_CURVE_SECRET_KEY_FILE, offsetof(config_t, curve_secret_key_file), CONFIG_MAX_PATH_LEN},
        {OPT_CURVE_CLIENTS_DIR, offsetof(config_t, curve_clients_dir), CONFIG_MAX_PATH_LEN},
        {OPT_CURVE_READERS_DIR, offsetof(config_t, curve_readers_dir), CONFIG_MAX_PATH_LEN},
        {OPT_REPLICA_OF, offsetof(config_t, replica_of), CONFIG_MAX_ENDPOINT_LEN},
        {OPT_REPLICA_EVENTS, offsetof(config_t, replica_events), CONFIG_MAX_ENDPOINT_LEN},
        {OPT_REPLICA_SERVER_KEY_FILE, offsetof(config_t, replica_server_key_file),
         CONFIG_MAX_PATH_LEN},
    };
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        const char *name = s_options[strings[i].id].env;
        const char *value = s_env(getenv_fn, name);
        if (!value)
            continue;
        if (strlen(value) > strings[i].max_length) {
            s_set_error(err, err_size, "%s: longer than %zu bytes", name, strings[i].max_length);
            return -1;
        }
        if (s_set_string((char **)(void *)((char *)cfg + strings[i].offset), value) != 0) {
            s_set_error(err, err_size, "out of memory");
            return -1;
        }
    }
    const char *value = s_env(getenv_fn, "PM_WORKERS");
    if (value) {
        long workers = 0;
        if (s_parse_long(value, 1, CONFIG_MAX_WORKERS, &workers) != 0) {
            s_set_error(err, err_size,
                        "invalid value '%.*s' for PM_WORKERS: expected an integer from 1 to %d",
                        CONFIG_MAX_SHOWN_VALUE, value, CONFIG_MAX_WORKERS);
            return -1;
        }
        cfg->workers = (int)workers;
    }
    value = s_env(getenv_fn, "PM_HEARTBEAT_MS");
    if (value) {
        long period = 0;
        if (s_parse_long(value, CONFIG_MIN_HEARTBEAT_MS, CONFIG_MAX_HEARTBEAT_MS, &period) != 0) {
            s_set_error(err, err_size,
                        "invalid value '%.*s' for PM_HEARTBEAT_MS: expected an integer from %d "
                        "to %d",
                        CONFIG_MAX_SHOWN_VALUE, value, CONFIG_MIN_HEARTBEAT_MS,
                        CONFIG_MAX_HEARTBEAT_MS);
            return -1;
        }
        cfg->heartbeat_ms = (int)period;
    }
    value = s_env(getenv_fn, "PM_LOG_LEVEL");
    if (value && s_parse_log_level(value, &cfg->log_level) != 0) {
        s_set_error(err, err_size,
                    "invalid value '%.*s' for PM_LOG_LEVEL: expected error, warn, info or debug",
                    CONFIG_MAX_SHOWN_VALUE, value);
        return -1;
    }
    value = s_env(getenv_fn, "PM_ALLOW_INSECURE");
    if (value && s_parse_bool(value, &cfg->allow_insecure) != 0) {
        s_set_error(err, err_size,
                    "invalid value '%.*s' for PM_ALLOW_INSECURE: expected 1, true, 0 or false",
                    CONFIG_MAX_SHOWN_VALUE, value);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------- loading */

static int s_apply_flags(config_t *cfg, const s_flags_t *flags, char *err, size_t err_size)
{
    static const struct {
        s_option_id_t id;
        size_t offset;
    } strings[] = {
        {OPT_ENDPOINT, offsetof(config_t, endpoint)},
        {OPT_EVENTS_ENDPOINT, offsetof(config_t, events_endpoint)},
        {OPT_METRICS_ENDPOINT, offsetof(config_t, metrics_endpoint)},
        {OPT_DATA_DIR, offsetof(config_t, data_dir)},
        {OPT_CURVE_SECRET_KEY_FILE, offsetof(config_t, curve_secret_key_file)},
        {OPT_CURVE_CLIENTS_DIR, offsetof(config_t, curve_clients_dir)},
        {OPT_CURVE_READERS_DIR, offsetof(config_t, curve_readers_dir)},
        {OPT_REPLICA_OF, offsetof(config_t, replica_of)},
        {OPT_REPLICA_EVENTS, offsetof(config_t, replica_events)},
        {OPT_REPLICA_SERVER_KEY_FILE, offsetof(config_t, replica_server_key_file)},
    };
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        if (!flags->present[strings[i].id])
            continue;
        if (s_set_string((char **)(void *)((char *)cfg + strings[i].offset),
                         flags->value[strings[i].id]) != 0) {
            s_set_error(err, err_size, "out of memory");
            return -1;
        }
    }
    if (flags->present[OPT_WORKERS])
        cfg->workers = (int)flags->workers;
    if (flags->present[OPT_LOG_LEVEL])
        cfg->log_level = flags->log_level;
    if (flags->present[OPT_HEARTBEAT_MS])
        cfg->heartbeat_ms = (int)flags->heartbeat_ms;
    if (flags->present[OPT_ALLOW_INSECURE])
        cfg->allow_insecure = true;
    return 0;
}

static int s_set_defaults(config_t *cfg)
{
    cfg->workers = CONFIG_DEFAULT_WORKERS;
    cfg->heartbeat_ms = CONFIG_DEFAULT_HEARTBEAT_MS;
    cfg->log_level = LOG_INFO;
    s_discovery_defaults(&cfg->discovery);
    cfg->endpoint = strdup(CONFIG_DEFAULT_ENDPOINT);
    cfg->events_endpoint = strdup(CONFIG_DEFAULT_EVENTS_ENDPOINT);
    cfg->data_dir = strdup(CONFIG_DEFAULT_DATA_DIR);
    return cfg->endpoint && cfg->events_endpoint && cfg->data_dir ? 0 : -1;
}

bool config_endpoint_valid(const char *endpoint)
{
    if (!endpoint)
        return false;
    size_t len = strlen(endpoint);
    if (len == 0 || len > CONFIG_MAX_ENDPOINT_LEN)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)endpoint[i];
        if (c <= ' ' || c == 0x7f)
            return false; /* no spaces nor control bytes in an address */
    }
    if (strncmp(endpoint, "ipc://", 6) == 0)
        return endpoint[6] != '\0';
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return false;
    const char *host = endpoint + 6;
    const char *colon = strrchr(host, ':');
    if (!colon || colon == host)
        return false;
    if (host[0] == '[' && colon[-1] != ']')
        return false;
    long port = 0;
    return s_parse_long(colon + 1, 1, 65535, &port) == 0;
}

/* Read replica settings: both endpoints or neither, each one a ZeroMQ address this daemon can
 * connect to; the primary's key only makes sense for a replica that has a key pair of its own
 * (its CURVE identity towards the primary is its server key pair). */
static int s_check_replica(config_t *cfg, char *err, size_t err_size)
{
    bool of = cfg->replica_of != NULL, events = cfg->replica_events != NULL;
    if (of != events) {
        s_set_error(err, err_size,
                    "a read replica needs both --replica-of and --replica-events (config "
                    "replica.of, replica.events); only %s was given",
                    of ? "--replica-of" : "--replica-events");
        return -1;
    }
    const struct {
        const char *name;
        const char *value;
    } endpoints[] = {{"--replica-of", cfg->replica_of}, {"--replica-events", cfg->replica_events}};
    for (size_t i = 0; of && i < 2; i++) {
        if (!config_endpoint_valid(endpoints[i].value)) {
            s_set_error(err, err_size,
                        "invalid endpoint '%.*s' for %s: expected tcp://HOST:PORT or ipc://PATH",
                        CONFIG_MAX_SHOWN_VALUE, endpoints[i].value, endpoints[i].name);
            return -1;
        }
    }
    if (of && strcmp(cfg->replica_of, cfg->replica_events) == 0) {
        s_set_error(err, err_size,
                    "--replica-of and --replica-events must be two different endpoints");
        return -1;
    }
    if (cfg->replica_server_key_file && !of) {
        s_set_error(err, err_size,
                    "--replica-server-key-file is only for a read replica "
                    "(--replica-of, --replica-events)");
        return -1;
    }
    if (cfg->replica_server_key_file &&
        (!cfg->curve_secret_key_file || !*cfg->curve_secret_key_file)) {
        s_set_error(err, err_size,
                    "--replica-server-key-file needs --curve-secret-key-file: the replica's own "
                    "key pair is its identity towards the primary");
        return -1;
    }
    return 0;
}

int config_load(config_t *cfg, int argc, char **argv, config_getenv_fn *getenv_fn, char *err,
                size_t err_size)
{
    s_flags_t flags;
    memset(cfg, 0, sizeof *cfg);
    memset(&flags, 0, sizeof flags);
    if (!getenv_fn)
        getenv_fn = s_real_getenv;

    if (s_parse_flags(argc, argv, &flags, err, err_size) != 0) {
        cfg->usage_error = true;
        return -1;
    }
    if (flags.present[OPT_HELP] || flags.present[OPT_VERSION]) {
        int printed = flags.present[OPT_HELP]
                          ? s_print_usage(stdout)
                          : (printf("provider-manager %s\n", PM_VERSION) < 0 || fflush(stdout));
        if (printed != 0) {
            s_set_error(err, err_size, "cannot write to standard output");
            return -1;
        }
        return 1;
    }
    if (s_set_defaults(cfg) != 0) {
        s_set_error(err, err_size, "out of memory");
        goto fail;
    }
    const char *path =
        flags.present[OPT_CONFIG] ? flags.value[OPT_CONFIG] : s_env(getenv_fn, "PM_CONFIG");
    if (path) {
        if (strlen(path) > CONFIG_MAX_PATH_LEN) {
            s_set_error(err, err_size, "PM_CONFIG: longer than %d bytes", CONFIG_MAX_PATH_LEN);
            goto fail;
        }
        if (s_set_string(&cfg->config_path, path) != 0) {
            s_set_error(err, err_size, "out of memory");
            goto fail;
        }
        if (s_load_file(cfg, path, err, err_size) != 0)
            goto fail;
    }
    if (s_apply_env(cfg, getenv_fn, err, err_size) != 0)
        goto fail;
    if (s_apply_flags(cfg, &flags, err, err_size) != 0)
        goto fail;
    if (s_check_replica(cfg, err, err_size) != 0)
        goto fail;
    return 0;

fail:
    config_clear(cfg);
    return -1;
}

void config_clear(config_t *cfg)
{
    if (!cfg)
        return;
    free(cfg->config_path);
    free(cfg->endpoint);
    free(cfg->events_endpoint);
    free(cfg->metrics_endpoint);
    free(cfg->data_dir);
    free(cfg->curve_secret_key_file);
    free(cfg->curve_clients_dir);
    free(cfg->curve_readers_dir);
    free(cfg->replica_of);
    free(cfg->replica_events);
    free(cfg->replica_server_key_file);
    store_layer_clear(&cfg->overrides);
    s_ignore_clear(&cfg->ignore);
    for (size_t i = 0; i < cfg->provider_ignore_count; i++)
        s_ignore_clear(&cfg->provider_ignore[i]);
    free(cfg->provider_ignore);
    memset(cfg, 0, sizeof *cfg);
}

bool config_error_is_usage(const config_t *cfg)
{
    return cfg && cfg->usage_error;
}

/* ------------------------------------------------------------------------ layering */

int config_api_key_env_name(const char *key, char *out, size_t out_size)
{
    static const char suffix[] = "_API_KEY";
    if (!key || !out || out_size == 0)
        return -1;
    const builtin_provider_t *builtin = builtin_provider_find(key);
    if (builtin) {
        size_t length = strlen(builtin->api_key_env);
        if (length >= out_size)
            return -1;
        memcpy(out, builtin->api_key_env, length + 1);
        return 0;
    }
    size_t length = strlen(key);
    if (length == 0 || length + sizeof suffix > out_size)
        return -1;
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)key[i];
        out[i] = isalnum(c) && c < 0x80 ? (char)toupper(c) : '_';
    }
    memcpy(out + length, suffix, sizeof suffix);
    return 0;
}

/* The environment's key for provider key, or NULL when unset or empty. */
static const char *s_env_key(const char *key, config_getenv_fn *getenv_fn, char *name,
                             size_t name_size)
{
    if (config_api_key_env_name(key, name, name_size) != 0)
        return NULL;
    return s_env(getenv_fn, name);
}

int config_apply_env_key(provider_t *provider, config_getenv_fn *getenv_fn)
{
    char name[REGISTRY_MAX_KEY_LEN + 16];
    if (!provider)
        return -1;
    if (!getenv_fn)
        getenv_fn = s_real_getenv;
    const char *value = s_env_key(provider_key(provider), getenv_fn, name, sizeof name);
    if (!value)
        return 0;
    if (strlen(value) > REGISTRY_MAX_API_KEY_LEN)
        return -1;
    return provider_set_env_api_key(provider, value);
}

static int s_apply_layer(registry_t *reg, const store_layer_t *layer, bool pinned,
                         const char *origin, char *err, size_t err_size)
{
    for (size_t i = 0; i < layer->count; i++) {
        if (provider_spec_apply(&layer->specs[i], reg, PROVIDER_SPEC_MERGE_MODELS, pinned) != 0) {
            s_set_error(
                err, err_size,
                "cannot apply provider '%s' from %s: out of memory or over a registry limit",
                layer->specs[i].key, origin);
            return -1;
        }
    }
    return 0;
}

int config_build_registry(const config_t *cfg, config_getenv_fn *getenv_fn, registry_t **out,
                          store_warn_fn *warn, void *warn_arg, char *err, size_t err_size)
{
    char path[PATH_MAX];
    store_layer_t persisted = {0, NULL};
    registry_t *reg = NULL;
    int rc = -1;

    *out = NULL;
    if (!getenv_fn)
        getenv_fn = s_real_getenv;
    reg = registry_new();
    if (!reg) {
        s_set_error(err, err_size, "out of memory");
        goto cleanup;
    }
    /* Step 1, the config file's providers:, was read by config_load (cfg->overrides). */

    /* Step 2: the built-in baseline. */
    size_t count = 0;
    const builtin_provider_t *builtins = builtin_providers(&count);
    for (size_t i = 0; i < count; i++) {
        provider_spec_t spec;
        memset(&spec, 0, sizeof spec);
        /* provider_spec_apply only reads the spec; the casts do not let anything write. */
        spec.key = (char *)builtins[i].key;
        spec.name = (char *)builtins[i].name;
        spec.base_api_url = (char *)builtins[i].base_api_url;
        if (provider_spec_apply(&spec, reg, PROVIDER_SPEC_MERGE_MODELS, true) != 0) {
            s_set_error(err, err_size, "cannot apply the built-in provider '%s': out of memory",
                        builtins[i].key);
            goto cleanup;
        }
    }

    /* Step 3: the persisted file; a file we cannot parse stops start-up and is left alone. */
    if (!cfg->data_dir) {
        s_set_error(err, err_size, "the data directory is not set");
        goto cleanup;
    }
    if (store_path(cfg->data_dir, path, sizeof path) != 0) {
        s_set_error(err, err_size, "%s: %s", cfg->data_dir, strerror(ENAMETOOLONG));
        goto cleanup;
    }
    if (store_load(path, &persisted, warn, warn_arg, err, err_size) != 0)
        goto cleanup;
    if (s_apply_layer(reg, &persisted, false, path, err, err_size) != 0)
        goto cleanup;

    /* Step 4: the config file's providers win over the file, and are pinned. */
    if (s_apply_layer(reg, &cfg->overrides, true,
                      cfg->config_path ? cfg->config_path : "the config file", err, err_size) != 0)
        goto cleanup;

    /* Step 5: keys from the environment win over everything (kept apart from the stored key,
     * which is what gets persisted). */
    size_t providers = registry_count(reg);
    for (size_t i = 0; i < providers; i++) {
        char name[REGISTRY_MAX_KEY_LEN + 16];
        const char *key = provider_key(registry_at(reg, i));
        const char *value = s_env_key(key, getenv_fn, name, sizeof name);
        if (!value)
            continue;
        if (strlen(value) > REGISTRY_MAX_API_KEY_LEN) {
            s_set_error(err, err_size, "%s: longer than %d bytes", name, REGISTRY_MAX_API_KEY_LEN);
            goto cleanup;
        }
        provider_t *provider = registry_edit(reg, key);
        if (!provider || provider_set_env_api_key(provider, value) != 0) {
            s_set_error(err, err_size, "out of memory");
            goto cleanup;
        }
    }
    if (registry_seal(reg) != 0) {
        s_set_error(err, err_size, "out of memory");
        goto cleanup;
    }
    *out = reg;
    reg = NULL;
    rc = 0;

cleanup:
    store_layer_clear(&persisted);
    registry_destroy(&reg);
    return rc;
}
