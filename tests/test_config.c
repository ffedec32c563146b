/*
 * test_config: settings precedence (flags > environment > file > defaults), the config file,
 * and the seed's five-step provider layering.
 *
 * The environment is a fake (config_getenv_fn) so that tests never touch the real one.
 */
#define _XOPEN_SOURCE 700 /* nftw() for removing the temporary directory */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "builtin_providers.h"
#include "config.h"
#include "registry.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- fake environment */

#define FAKE_ENV_MAX 16
static const char *s_env_names[FAKE_ENV_MAX];
static const char *s_env_values[FAKE_ENV_MAX];
static size_t s_env_count;

static const char *s_fake_getenv(const char *name)
{
    for (size_t i = 0; i < s_env_count; i++) {
        if (strcmp(s_env_names[i], name) == 0)
            return s_env_values[i];
    }
    return NULL;
}

static void s_setenv(const char *name, const char *value)
{
    assert_true(s_env_count < FAKE_ENV_MAX);
    s_env_names[s_env_count] = name;
    s_env_values[s_env_count] = value;
    s_env_count++;
}

/* ------------------------------------------------------------------------- fixture */

typedef struct {
    char dir[256];         /* mkdtemp() under /tmp: short, which keeps the paths below in bounds */
    char config[PATH_MAX]; /* <dir>/pm.yaml */
    char data[PATH_MAX];   /* <dir>/data */
    char store[PATH_MAX];  /* <dir>/data/openaicompat-providers.yaml */
    char err[1024];
    config_t cfg;
    int warnings;
} fixture_t;

static int s_remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/pm-test-config-XXXXXX");
    if (!mkdtemp(fx->dir)) {
        free(fx);
        return -1;
    }
    snprintf(fx->config, sizeof fx->config, "%s/pm.yaml", fx->dir);
    snprintf(fx->data, sizeof fx->data, "%s/data", fx->dir);
    if (mkdir(fx->data, 0700) != 0 || store_path(fx->data, fx->store, sizeof fx->store) != 0) {
        free(fx);
        return -1;
    }
    s_env_count = 0;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *fx = *state;
    config_clear(&fx->cfg);
    nftw(fx->dir, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    s_env_count = 0;
    return 0;
}

static void s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static char *s_slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *data = malloc(1 << 16);
    assert_non_null(data);
    size_t n = fread(data, 1, (1 << 16) - 1, f);
    data[n] = '\0';
    fclose(f);
    return data;
}

/* Runs config_load with a NULL-terminated list of arguments (argv[0] added here). */
static int s_load_args(fixture_t *fx, const char *first, ...)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = (char *)"provider-manager";
    va_list args;
    va_start(args, first);
    for (const char *arg = first; arg; arg = va_arg(args, const char *)) {
        assert_true(argc < 31);
        argv[argc++] = (char *)arg;
    }
    va_end(args);
    argv[argc] = NULL;
    config_clear(&fx->cfg);
    fx->err[0] = '\0';
    return config_load(&fx->cfg, argc, argv, s_fake_getenv, fx->err, sizeof fx->err);
}

/* Redirects a standard stream into a file until s_capture_end (returns the text; caller
 * frees). */
typedef struct {
    int fd;
    int saved;
    char path[PATH_MAX];
} capture_t;

static void s_capture_begin(capture_t *c, FILE *stream, const fixture_t *fx, const char *name)
{
    fflush(stream);
    c->fd = fileno(stream);
    snprintf(c->path, sizeof c->path, "%s/%s", fx->dir, name);
    int out = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(out >= 0);
    c->saved = dup(c->fd);
    assert_true(c->saved >= 0);
    assert_true(dup2(out, c->fd) >= 0);
    close(out);
}

static char *s_capture_end(capture_t *c, FILE *stream)
{
    fflush(stream);
    assert_true(dup2(c->saved, c->fd) >= 0);
    close(c->saved);
    return s_slurp(c->path);
}

/* ------------------------------------------------------------------------ settings */

static void test_defaults(void **state)
{
    fixture_t *fx = *state;
    assert_int_equal(s_load_args(fx, NULL), 0);
    config_t *c = &fx->cfg;
    assert_null(c->config_path);
    assert_string_equal(c->endpoint, CONFIG_DEFAULT_ENDPOINT);
    assert_string_equal(c->endpoint, "tcp://127.0.0.1:5555");
    assert_string_equal(c->events_endpoint, "tcp://127.0.0.1:5556");
    assert_string_equal(c->data_dir, "./data");
    assert_int_equal(c->workers, 4);
    assert_int_equal(c->log_level, LOG_INFO);
    assert_true(c->discovery.cache_duration_s == 3600.0);
    assert_int_equal(c->discovery.max_tokens, 16);
    assert_int_equal(c->discovery.per_provider_limit, 4);
    assert_int_equal(c->discovery.connect_timeout_ms, 5000);
    assert_int_equal(c->discovery.request_timeout_ms, 30000);
    assert_int_equal(c->discovery.max_retries, 3);
    assert_int_equal(c->discovery.retry_budget_ms, 30000);
    assert_int_equal(c->discovery.interval_minutes, 0);
    assert_false(c->discovery.on_start);
    assert_int_equal(c->discovery.list_max_bytes, 16L * 1024 * 1024);
    assert_int_equal(c->discovery.probe_max_bytes, 64L * 1024);
    assert_null(c->curve_secret_key_file);
    assert_null(c->curve_clients_dir);
    assert_false(c->allow_insecure);
    assert_int_equal(c->overrides.count, 0);
}

static void test_precedence_flags_env_file_defaults(void **state)
{
    fixture_t *fx = *state;
    s_write(fx->config, "endpoint: tcp://127.0.0.1:6001\n"
                        "events_endpoint: tcp://127.0.0.1:6002\n"
                        "workers: 2\n"
                        "log_level: warn\n");

    /* File over defaults. */
    assert_int_equal(s_load_args(fx, "--config", fx->config, NULL), 0);
    assert_string_equal(fx->cfg.config_path, fx->config);
    assert_string_equal(fx->cfg.endpoint, "tcp://127.0.0.1:6001");
    assert_string_equal(fx->cfg.events_endpoint, "tcp://127.0.0.1:6002");
    assert_int_equal(fx->cfg.workers, 2);
    assert_int_equal(fx->cfg.log_level, LOG_WARN);
    assert_string_equal(fx->cfg.data_dir, "./data"); /* not in the file: default */

    /* Environment over file (and PM_CONFIG names the file). */
    s_setenv("PM_CONFIG", fx->config);
    s_setenv("PM_ENDPOINT", "tcp://127.0.0.1:7001");
    s_setenv("PM_WORKERS", "3");
    assert_int_equal(s_load_args(fx, NULL), 0);
    assert_string_equal(fx->cfg.config_path, fx->config);
    assert_string_equal(fx->cfg.endpoint, "tcp://127.0.0.1:7001");
    assert_string_equal(fx->cfg.events_endpoint, "tcp://127.0.0.1:6002"); /* file */
    assert_int_equal(fx->cfg.workers, 3);
    assert_int_equal(fx->cfg.log_level, LOG_WARN);

    /* Flags over environment. */
    assert_int_equal(s_load_args(fx, "--endpoint", "tcp://127.0.0.1:8001", "--workers", "5",
                                 "--log-level", "debug", NULL),
                     0);
    assert_string_equal(fx->cfg.endpoint, "tcp://127.0.0.1:8001");
    assert_int_equal(fx->cfg.workers, 5);
    assert_int_equal(fx->cfg.log_level, LOG_DEBUG);
    assert_string_equal(fx->cfg.events_endpoint, "tcp://127.0.0.1:6002");
}

static void test_flag_equals_form(void **state)
{
    fixture_t *fx = *state;
    assert_int_equal(s_load_args(fx, "--endpoint=tcp://127.0.0.1:9001", "--workers=7",
                                 "--events-endpoint=ipc:///tmp/x=y", "--data-dir=/var/lib/pm",
                                 "--log-level=error", "--curve-secret-key-file=/k/server.key",
                                 "--curve-clients-dir", "/k/clients", "--allow-insecure", NULL),
                     0);
    assert_string_equal(fx->cfg.endpoint, "tcp://127.0.0.1:9001");
    assert_int_equal(fx->cfg.workers, 7);
    assert_string_equal(fx->cfg.events_endpoint, "ipc:///tmp/x=y"); /* split at the first = */
    assert_string_equal(fx->cfg.data_dir, "/var/lib/pm");
    assert_int_equal(fx->cfg.log_level, LOG_ERROR);
    assert_string_equal(fx->cfg.curve_secret_key_file, "/k/server.key");
    assert_string_equal(fx->cfg.curve_clients_dir, "/k/clients");
    assert_true(fx->cfg.allow_insecure);
}

static void test_bad_flags_are_usage_errors(void **state)
{
    fixture_t *fx = *state;
    struct {
        const char *args[4];
        const char *words;
    } cases[] = {
        {{"--workers", "0"}, "--workers"},
        {{"--workers", "abc"}, "'abc'"},
        {{"--workers", "99999"}, "1 to 64"},
        {{"--workers", "65"}, "--workers"},
        {{"--workers", "-3"}, "--workers"},
        {{"--workers", "4x"}, "--workers"},
        {{"--workers", " 4"}, "--workers"},
        {{"--workers", "99999999999999999999999"}, "--workers"},
        {{"--workers=", NULL}, "non-empty"},
        {{"--workers", NULL}, "requires a value"},
        {{"--log-level", "loud"}, "--log-level"},
        {{"--bogus", NULL}, "unknown option '--bogus'"},
        {{"--bogus=1", NULL}, "unknown option '--bogus'"},
        {{"-x", NULL}, "unexpected argument '-x'"},
        {{"positional", NULL}, "unexpected argument"},
        {{"--allow-insecure=yes", NULL}, "takes no value"},
        {{"--help=1", NULL}, "takes no value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = s_load_args(fx, cases[i].args[0], cases[i].args[1], cases[i].args[2], NULL);
        if (rc != -1)
            fail_msg("case %zu (%s) accepted", i, cases[i].args[0]);
        assert_true(config_error_is_usage(&fx->cfg));
        if (!strstr(fx->err, cases[i].words))
            fail_msg("case %zu: '%s' does not say '%s'", i, fx->err, cases[i].words);
        assert_null(fx->cfg.endpoint); /* nothing left behind */
    }
    /* The limits themselves are fine. */
    assert_int_equal(s_load_args(fx, "--workers", "1", NULL), 0);
    assert_int_equal(fx->cfg.workers, 1);
    assert_int_equal(s_load_args(fx, "--workers", "64", NULL), 0);
    assert_int_equal(fx->cfg.workers, CONFIG_MAX_WORKERS);
    assert_false(config_error_is_usage(&fx->cfg));
}

static void test_help_and_version(void **state)
{
    fixture_t *fx = *state;
    capture_t capture;
    s_capture_begin(&capture, stdout, fx, "help.txt");
    int rc = s_load_args(fx, "--help", NULL);
    char *text = s_capture_end(&capture, stdout);
    assert_int_equal(rc, 1);
    static const char *const expected[] = {"--config FILE",
                                           "--endpoint EP",
                                           "--events-endpoint EP",
                                           "--data-dir DIR",
                                           "--workers N",
                                           "--log-level LEVEL",
                                           "--curve-secret-key-file FILE",
                                           "--curve-clients-dir DIR",
                                           "--allow-insecure",
                                           "--help",
                                           "--version",
                                           "PM_CONFIG",
                                           "PM_ENDPOINT",
                                           "PM_EVENTS_ENDPOINT",
                                           "PM_DATA_DIR",
                                           "PM_WORKERS",
                                           "PM_LOG_LEVEL",
                                           "PM_CURVE_SECRET_KEY_FILE",
                                           "PM_CURVE_CLIENTS_DIR",
                                           "PM_ALLOW_INSECURE",
                                           "_API_KEY",
                                           "endpoint",
                                           "events_endpoint",
                                           "data_dir",
                                           "workers",
                                           "log_level",
                                           "discovery:",
                                           "cache_duration",
                                           "max_tokens",
                                           "per_provider_limit",
                                           "connect_timeout_ms",
                                           "request_timeout_ms",
                                           "max_retries",
                                           "retry_budget_ms",
                                           "interval_minutes",
                                           "on_start",
                                           "list_max_bytes",
                                           "probe_max_bytes",
                                           "security:",
                                           "curve_secret_key_file",
                                           "curve_clients_dir",
                                           "allow_insecure",
                                           "providers:"};
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        if (!strstr(text, expected[i]))
            fail_msg("--help does not mention '%s'", expected[i]);
    }
    free(text);

    /* --help wins even over a broken config file, and reads nothing. */
    s_setenv("PM_CONFIG", "/nonexistent/pm.yaml");
    s_capture_begin(&capture, stdout, fx, "help2.txt");
    rc = s_load_args(fx, "--workers", "3", "--help", NULL);
    free(s_capture_end(&capture, stdout));
    assert_int_equal(rc, 1);

    s_capture_begin(&capture, stdout, fx, "version.txt");
    rc = s_load_args(fx, "--version", NULL);
    text = s_capture_end(&capture, stdout);
    assert_int_equal(rc, 1);
    assert_string_equal(text, "provider-manager " PM_VERSION "\n");
    free(text);
}

static void test_config_file_errors(void **state)
{
    fixture_t *fx = *state;
    char missing[PATH_MAX];
    snprintf(missing, sizeof missing, "%s/missing.yaml", fx->dir);

    /* An explicitly given file that does not exist. */
    assert_int_equal(s_load_args(fx, "--config", missing, NULL), -1);
    assert_false(config_error_is_usage(&fx->cfg));
    assert_non_null(strstr(fx->err, missing));
    assert_non_null(strstr(fx->err, strerror(ENOENT)));
    s_setenv("PM_CONFIG", missing);
    assert_int_equal(s_load_args(fx, NULL), -1);
    assert_non_null(strstr(fx->err, missing));

    struct {
        const char *text;
        const char *where;
        const char *words;
    } cases[] = {
        {"endpoint: [unclosed\n", ":2:1: ", ""},
        {"workers: 0\n", ":1:10: ", "workers must be an integer from 1 to 64"},
        {"workers: many\n", ":1:10: ", "workers"},
        {"workers: ~\n", ":1:10: ", "workers"},
        {"log_level: chatty\n", ":1:12: ", "log_level"},
        {"endpoint: ''\n", ":1:11: ", "endpoint must not be empty"},
        {"endpoint: {a: b}\n", ":1:11: ", "endpoint"},
        {"discovery:\n  max_tokens: 0\n", ":2:15: ", "discovery.max_tokens must be an integer"},
        {"discovery:\n  cache_duration: -1\n", ":2:19: ", "discovery.cache_duration"},
        {"discovery:\n  on_start: maybe\n", ":2:13: ", "true or false"},
        {"discovery: 5\n", ":1:12: ", "discovery must be a mapping"},
        {"security:\n  allow_insecure: 2\n", ":2:19: ", "allow_insecure"},
        {"providers:\n  Bad Key: {}\n", ":2:3: ", "invalid provider key"},
        {"providers: [a]\n", ":1:12: ", "providers"},
        {"workers: 2\nworkers: 3\n", ":2:1: ", "duplicate key 'workers'"},
        {"- a\n", ":1:1: ", "top level"},
        {"a: *x\n", ":1:4: ", ""},
    };
    s_env_count = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_write(fx->config, cases[i].text);
        if (s_load_args(fx, "--config", fx->config, NULL) != -1)
            fail_msg("case %zu accepted: %s", i, cases[i].text);
        assert_false(config_error_is_usage(&fx->cfg));
        char prefix[PATH_MAX + 32];
        snprintf(prefix, sizeof prefix, "%s%s", fx->config, cases[i].where);
        if (strncmp(fx->err, prefix, strlen(prefix)) != 0)
            fail_msg("case %zu: '%s' does not start with '%s'", i, fx->err, prefix);
        if (!strstr(fx->err, cases[i].words))
            fail_msg("case %zu: '%s' does not say '%s'", i, fx->err, cases[i].words);
    }
}

static void test_config_file_sections(void **state)
{
    fixture_t *fx = *state;
    s_write(fx->config, "# provider-manager settings\n"
                        "data_dir: /srv/pm\n"
                        "discovery:\n"
                        "  cache_duration: 90.5\n"
                        "  max_tokens: 8\n"
                        "  per_provider_limit: 2\n"
                        "  connect_timeout_ms: 1000\n"
                        "  request_timeout_ms: 2000\n"
                        "  max_retries: 0\n"
                        "  retry_budget_ms: 500\n"
                        "  interval_minutes: 60\n"
                        "  on_start: yes\n"
                        "  list_max_bytes: 1048576\n"
                        "  probe_max_bytes: 4096\n"
                        "  shiny_new_knob: 1\n"
                        "security:\n"
                        "  curve_secret_key_file: /etc/pm/server.key\n"
                        "  curve_clients_dir: /etc/pm/clients\n"
                        "  allow_insecure: false\n"
                        "colour: blue\n"
                        "providers:\n"
                        "  openai:\n"
                        "    base_api_url: https://proxy.example/v1\n"
                        "    frobnicate: 1\n"
                        "  mine:\n"
                        "    name: Mine\n"
                        "    base_api_url: http://localhost:9/v1\n"
                        "    api_key: sk-config\n");
    capture_t capture;
    s_capture_begin(&capture, stderr, fx, "warnings.txt");
    int rc = s_load_args(fx, "--config", fx->config, NULL);
    char *warnings = s_capture_end(&capture, stderr);
    if (rc != 0)
        fail_msg("%s", fx->err);
    config_t *c = &fx->cfg;
    assert_string_equal(c->data_dir, "/srv/pm");
    assert_true(c->discovery.cache_duration_s == 90.5);
    assert_int_equal(c->discovery.max_tokens, 8);
    assert_int_equal(c->discovery.per_provider_limit, 2);
    assert_int_equal(c->discovery.connect_timeout_ms, 1000);
    assert_int_equal(c->discovery.request_timeout_ms, 2000);
    assert_int_equal(c->discovery.max_retries, 0);
    assert_int_equal(c->discovery.retry_budget_ms, 500);
    assert_int_equal(c->discovery.interval_minutes, 60);
    assert_true(c->discovery.on_start);
    assert_int_equal(c->discovery.list_max_bytes, 1048576);
    assert_int_equal(c->discovery.probe_max_bytes, 4096);
    assert_string_equal(c->curve_secret_key_file, "/etc/pm/server.key");
    assert_string_equal(c->curve_clients_dir, "/etc/pm/clients");
    assert_false(c->allow_insecure);
    assert_int_equal(c->overrides.count, 2);
    assert_string_equal(c->overrides.specs[0].key, "openai");
    assert_string_equal(c->overrides.specs[0].base_api_url, "https://proxy.example/v1");
    assert_null(c->overrides.specs[0].name);
    assert_string_equal(c->overrides.specs[1].key, "mine");
    assert_string_equal(c->overrides.specs[1].api_key, "sk-config");

    /* Three unknown keys, each named with its position, none fatal. */
    assert_non_null(strstr(warnings, ":15:3: unknown key 'discovery.shiny_new_knob' ignored"));
    assert_non_null(strstr(warnings, ":20:1: unknown key 'colour' ignored"));
    assert_non_null(strstr(warnings, ":24:5: unknown key 'frobnicate' ignored"));
    free(warnings);

    /* An empty config file changes nothing. */
    s_write(fx->config, "");
    assert_int_equal(s_load_args(fx, "--config", fx->config, NULL), 0);
    assert_int_equal(fx->cfg.workers, 4);
}

static void test_environment_settings(void **state)
{
    fixture_t *fx = *state;
    s_setenv("PM_EVENTS_ENDPOINT", "tcp://127.0.0.1:7002");
    s_setenv("PM_DATA_DIR", "/env/data");
    s_setenv("PM_LOG_LEVEL", "error");
    s_setenv("PM_CURVE_SECRET_KEY_FILE", "/env/key");
    s_setenv("PM_CURVE_CLIENTS_DIR", "/env/clients");
    s_setenv("PM_ALLOW_INSECURE", "true");
    s_setenv("PM_ENDPOINT", ""); /* empty: unset */
    assert_int_equal(s_load_args(fx, NULL), 0);
    assert_string_equal(fx->cfg.endpoint, CONFIG_DEFAULT_ENDPOINT);
    assert_string_equal(fx->cfg.events_endpoint, "tcp://127.0.0.1:7002");
    assert_string_equal(fx->cfg.data_dir, "/env/data");
    assert_int_equal(fx->cfg.log_level, LOG_ERROR);
    assert_string_equal(fx->cfg.curve_secret_key_file, "/env/key");
    assert_string_equal(fx->cfg.curve_clients_dir, "/env/clients");
    assert_true(fx->cfg.allow_insecure);

    s_env_count = 0;
    s_setenv("PM_ALLOW_INSECURE", "1");
    assert_int_equal(s_load_args(fx, NULL), 0);
    assert_true(fx->cfg.allow_insecure);

    const char *bad[][2] = {{"PM_ALLOW_INSECURE", "perhaps"},
                            {"PM_WORKERS", "0"},
                            {"PM_WORKERS", "lots"},
                            {"PM_LOG_LEVEL", "verbose"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_env_count = 0;
        s_setenv(bad[i][0], bad[i][1]);
        assert_int_equal(s_load_args(fx, NULL), -1);
        assert_false(config_error_is_usage(&fx->cfg));
        assert_non_null(strstr(fx->err, bad[i][0]));
        /* A flag fixes a bad variable? No: the environment is read before flags are applied,
         * and a bad value is an error either way. */
    }
}

static void test_clear_is_idempotent(void **state)
{
    fixture_t *fx = *state;
    assert_int_equal(s_load_args(fx, "--data-dir", "/x", NULL), 0);
    config_clear(&fx->cfg);
    assert_null(fx->cfg.data_dir);
    config_clear(&fx->cfg);
    config_clear(NULL);
}

/* ------------------------------------------------------------------------ layering */

static void test_env_name_derivation(void **state)
{
    (void)state;
    char out[128];
    assert_int_equal(config_api_key_env_name("my-local.llm", out, sizeof out), 0);
    assert_string_equal(out, "MY_LOCAL_LLM_API_KEY");
    assert_int_equal(config_api_key_env_name("abc123", out, sizeof out), 0);
    assert_string_equal(out, "ABC123_API_KEY");
    assert_int_equal(config_api_key_env_name("a_b", out, sizeof out), 0);
    assert_string_equal(out, "A_B_API_KEY");
    /* Built-ins use their conventional names. */
    size_t count = 0;
    const builtin_provider_t *table = builtin_providers(&count);
    for (size_t i = 0; i < count; i++) {
        assert_int_equal(config_api_key_env_name(table[i].key, out, sizeof out), 0);
        assert_string_equal(out, table[i].api_key_env);
    }
    assert_int_equal(config_api_key_env_name("openai", out, sizeof out), 0);
    assert_string_equal(out, "OPENAI_API_KEY");
    /* Does not fit: -1. */
    char small[12];
    assert_int_equal(config_api_key_env_name("abcd", small, sizeof small), -1);
    assert_int_equal(config_api_key_env_name("abc", small, sizeof small), 0);
    assert_string_equal(small, "ABC_API_KEY");
    assert_int_equal(config_api_key_env_name("openai", small, sizeof small), -1);
    assert_int_equal(config_api_key_env_name(NULL, out, sizeof out), -1);
}

static void test_apply_env_key(void **state)
{
    (void)state;
    provider_t *p = provider_new("my-local.llm", "Local", "http://localhost:1/v1");
    assert_non_null(p);
    assert_int_equal(provider_set_api_key(p, "sk-stored"), 0);
    /* Not set: nothing changes. */
    assert_int_equal(config_apply_env_key(p, s_fake_getenv), 0);
    assert_false(provider_api_key_from_env(p));
    assert_string_equal(provider_api_key(p), "sk-stored");
    /* Empty: unset. */
    s_setenv("MY_LOCAL_LLM_API_KEY", "");
    assert_int_equal(config_apply_env_key(p, s_fake_getenv), 0);
    assert_false(provider_api_key_from_env(p));
    s_env_count = 0;
    s_setenv("MY_LOCAL_LLM_API_KEY", "sk-env");
    assert_int_equal(config_apply_env_key(p, s_fake_getenv), 0);
    assert_true(provider_api_key_from_env(p));
    assert_string_equal(provider_api_key(p), "sk-env");
    assert_string_equal(provider_stored_api_key(p), "sk-stored");
    provider_destroy(&p);
    s_env_count = 0;
}

/* A registry built the way the daemon does: config_load, then config_build_registry. */
static registry_t *s_build(fixture_t *fx)
{
    registry_t *reg = NULL;
    int rc =
        config_build_registry(&fx->cfg, s_fake_getenv, &reg, NULL, NULL, fx->err, sizeof fx->err);
    if (rc != 0)
        fail_msg("config_build_registry: %s", fx->err);
    assert_non_null(reg);
    assert_true(registry_sealed(reg));
    return reg;
}

static const provider_t *s_get(const registry_t *reg, const char *key)
{
    const provider_t *p = registry_get(reg, key, strlen(key));
    if (!p)
        fail_msg("no provider '%s'", key);
    return p;
}

static long s_position(const registry_t *reg, const char *key)
{
    for (size_t i = 0; i < registry_count(reg); i++) {
        if (strcmp(provider_key(registry_at(reg, i)), key) == 0)
            return (long)i;
    }
    return -1;
}

static void test_baseline_only(void **state)
{
    fixture_t *fx = *state;
    assert_int_equal(s_load_args(fx, "--data-dir", fx->data, NULL), 0);
    registry_t *reg = s_build(fx);
    size_t count = 0;
    const builtin_provider_t *table = builtin_providers(&count);
    assert_int_equal(registry_count(reg), count);
    for (size_t i = 0; i < count; i++) {
        const provider_t *p = registry_at(reg, i);
        assert_string_equal(provider_key(p), table[i].key);
        assert_string_equal(provider_name(p), table[i].name);
        assert_string_equal(provider_base_api_url(p), table[i].base_api_url);
        assert_null(provider_api_key(p));
        assert_true(provider_pinned(p));
        assert_int_equal(provider_model_count(p), 0);
    }
    registry_destroy(&reg);
    /* Nothing was written: the registry is built, not persisted. */
    assert_int_equal(access(fx->store, F_OK), -1);
}

static void test_layering_precedence(void **state)
{
    fixture_t *fx = *state;
    /* Layer 3: the persisted file. */
    s_write(fx->store, "providers:\n"
                       "  openai:\n"
                       "    name: OpenAI (file)\n"
                       "    base_api_url: https://file.example/v1\n"
                       "    api_key: sk-file\n"
                       "    valid_models:\n"
                       "      gpt-file: f\n"
                       "      gpt-both: from-file\n"
                       "    invalid_models: [bad-file]\n"
                       "  groq:\n"
                       "    base_api_url: https://groq-file.example/v1\n"
                       "    invalid_models: [kept]\n"
                       "  filecorp:\n"
                       "    name: File Corp\n"
                       "    base_api_url: https://filecorp.example/v1\n"
                       "    api_key: null\n"
                       "  my-local.llm:\n"
                       "    base_api_url: http://localhost:5/v1\n");
    /* Layers 1 and 4: the config file's providers. */
    s_write(fx->config, "providers:\n"
                        "  openai:\n"
                        "    base_api_url: https://config.example/v1\n"
                        "    valid_models:\n"
                        "      gpt-config: c\n"
                        "      gpt-both: from-config\n"
                        "    invalid_models: [bad-config]\n"
                        "  mine:\n"
                        "    name: Mine\n"
                        "    base_api_url: http://localhost:9/v1\n");
    /* Layer 5: the environment. */
    s_setenv("OPENAI_API_KEY", "sk-env");
    s_setenv("MY_LOCAL_LLM_API_KEY", "sk-local-env");
    s_setenv("FILECORP_API_KEY", ""); /* empty: no key */
    assert_int_equal(s_load_args(fx, "--config", fx->config, "--data-dir", fx->data, NULL), 0);
    registry_t *reg = s_build(fx);

    const provider_t *openai = s_get(reg, "openai");
    /* The file's name (the config gave none), the config's URL over the file's. */
    assert_string_equal(provider_name(openai), "OpenAI (file)");
    assert_string_equal(provider_base_api_url(openai), "https://config.example/v1");
    /* The environment's key wins; the stored key stays the file's. */
    assert_string_equal(provider_api_key(openai), "sk-env");
    assert_true(provider_api_key_from_env(openai));
    assert_string_equal(provider_stored_api_key(openai), "sk-file");
    /* valid_models merged per model, in layer order; a later layer's short name wins. */
    assert_int_equal(provider_model_count(openai), 3);
    assert_string_equal(provider_model_long(openai, 0), "gpt-file");
    assert_string_equal(provider_model_short(openai, 0), "f");
    assert_string_equal(provider_model_long(openai, 1), "gpt-both");
    assert_string_equal(provider_model_short(openai, 1), "from-config");
    assert_string_equal(provider_model_long(openai, 2), "gpt-config");
    assert_string_equal(provider_model_short(openai, 2), "c");
    /* invalid_models replaced by the later layer. */
    assert_int_equal(provider_invalid_count(openai), 1);
    assert_string_equal(provider_invalid_at(openai, 0), "bad-config");
    assert_true(provider_pinned(openai));

    /* A baseline provider only the file touched: the file's URL, baseline name. */
    const provider_t *groq = s_get(reg, "groq");
    assert_string_equal(provider_base_api_url(groq), "https://groq-file.example/v1");
    assert_string_equal(provider_name(groq), builtin_provider_find("groq")->name);
    assert_int_equal(provider_invalid_count(groq), 1);
    assert_true(provider_pinned(groq));
    /* Untouched baseline. */
    assert_string_equal(provider_base_api_url(s_get(reg, "mistral")),
                        builtin_provider_find("mistral")->base_api_url);

    /* Providers only in the file come after the baseline, in file order, not pinned. */
    size_t baseline = 0;
    builtin_providers(&baseline);
    assert_int_equal(s_position(reg, "filecorp"), (long)baseline);
    assert_int_equal(s_position(reg, "my-local.llm"), (long)baseline + 1);
    const provider_t *filecorp = s_get(reg, "filecorp");
    assert_false(provider_pinned(filecorp));
    assert_null(provider_api_key(filecorp));
    const provider_t *local = s_get(reg, "my-local.llm");
    assert_false(provider_pinned(local));
    assert_string_equal(provider_api_key(local), "sk-local-env");
    assert_null(provider_stored_api_key(local));

    /* Providers from the config file: appended last, pinned. */
    assert_int_equal(s_position(reg, "mine"), (long)baseline + 2);
    assert_true(provider_pinned(s_get(reg, "mine")));
    assert_int_equal(registry_count(reg), baseline + 3);

    /* Persisting this registry keeps the stored key and never the environment's. */
    assert_int_equal(store_persist(reg, fx->store, fx->err, sizeof fx->err), 0);
    char *text = s_slurp(fx->store);
    assert_null(strstr(text, "sk-env"));
    assert_null(strstr(text, "sk-local-env"));
    assert_non_null(strstr(text, "sk-file"));
    free(text);
    registry_destroy(&reg);
}

static void test_env_key_on_baseline_without_file(void **state)
{
    fixture_t *fx = *state;
    s_setenv("GROQ_API_KEY", "gsk-env");
    assert_int_equal(s_load_args(fx, "--data-dir", fx->data, NULL), 0);
    registry_t *reg = s_build(fx);
    const provider_t *groq = s_get(reg, "groq");
    assert_string_equal(provider_api_key(groq), "gsk-env");
    assert_null(provider_stored_api_key(groq));
    assert_null(provider_api_key(s_get(reg, "openai")));
    registry_destroy(&reg);
}

static void test_corrupt_persisted_file_is_an_error(void **state)
{
    fixture_t *fx = *state;
    const char *corrupt = "providers:\n  openai: {name: [\n";
    s_write(fx->store, corrupt);
    assert_int_equal(s_load_args(fx, "--data-dir", fx->data, NULL), 0);
    registry_t *reg = (registry_t *)0x1;
    assert_int_equal(
        config_build_registry(&fx->cfg, s_fake_getenv, &reg, NULL, NULL, fx->err, sizeof fx->err),
        -1);
    assert_null(reg);
    char prefix[PATH_MAX + 8];
    snprintf(prefix, sizeof prefix, "%s:3:", fx->store);
    if (strncmp(fx->err, prefix, strlen(prefix)) != 0)
        fail_msg("'%s' does not start with '%s'", fx->err, prefix);
    /* The file is left exactly as it was. */
    char *text = s_slurp(fx->store);
    assert_string_equal(text, corrupt);
    free(text);

    /* A wrong shape too. */
    s_write(fx->store, "providers:\n  - openai\n");
    assert_int_equal(
        config_build_registry(&fx->cfg, s_fake_getenv, &reg, NULL, NULL, fx->err, sizeof fx->err),
        -1);
    snprintf(prefix, sizeof prefix, "%s:2:", fx->store);
    assert_true(strncmp(fx->err, prefix, strlen(prefix)) == 0);
}

static void s_count_warning(void *arg, const char *message)
{
    fixture_t *fx = arg;
    (void)message;
    fx->warnings++;
}

static void test_build_warnings_reach_the_callback(void **state)
{
    fixture_t *fx = *state;
    s_write(fx->store, "providers:\n  openai:\n    colour: red\n    size: 3\n");
    assert_int_equal(s_load_args(fx, "--data-dir", fx->data, NULL), 0);
    registry_t *reg = NULL;
    assert_int_equal(config_build_registry(&fx->cfg, s_fake_getenv, &reg, s_count_warning, fx,
                                           fx->err, sizeof fx->err),
                     0);
    assert_int_equal(fx->warnings, 2);
    registry_destroy(&reg);
}

/* v1.1 schedules: discovery.list_interval_minutes (default 60) and verify_interval_minutes
 * (default 0), fractions accepted, from the file and the environment (which wins); negative,
 * NaN, infinite and non-numeric values refused with the setting's name. */
static void test_discovery_schedules(void **state)
{
    fixture_t *fx = *state;
    s_env_count = 0;
    assert_int_equal(s_load_args(fx, NULL), 0);
    assert_true(fx->cfg.discovery.list_interval_minutes == 60.0);
    assert_true(fx->cfg.discovery.verify_interval_minutes == 0.0);
    config_clear(&fx->cfg);

    s_write(fx->config, "discovery:\n"
                        "  list_interval_minutes: 0.02\n"
                        "  verify_interval_minutes: 1.5\n");
    if (s_load_args(fx, "--config", fx->config, NULL) != 0)
        fail_msg("%s", fx->err);
    assert_true(fx->cfg.discovery.list_interval_minutes == 0.02);
    assert_true(fx->cfg.discovery.verify_interval_minutes == 1.5);
    config_clear(&fx->cfg);

    s_setenv("PM_DISCOVERY_LIST_INTERVAL_MINUTES", "0");
    s_setenv("PM_DISCOVERY_VERIFY_INTERVAL_MINUTES", "0.05");
    if (s_load_args(fx, "--config", fx->config, NULL) != 0)
        fail_msg("%s", fx->err);
    assert_true(fx->cfg.discovery.list_interval_minutes == 0.0);
    assert_true(fx->cfg.discovery.verify_interval_minutes == 0.05);
    config_clear(&fx->cfg);

    const char *bad[] = {"-1", "nan", "NaN", "inf", "-0.5", "soon", "1e9"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        s_env_count = 0;
        s_setenv("PM_DISCOVERY_VERIFY_INTERVAL_MINUTES", bad[i]);
        if (s_load_args(fx, NULL) != -1)
            fail_msg("PM_DISCOVERY_VERIFY_INTERVAL_MINUTES=%s accepted", bad[i]);
        assert_non_null(strstr(fx->err, "PM_DISCOVERY_VERIFY_INTERVAL_MINUTES must be a number"));
        config_clear(&fx->cfg);

        s_env_count = 0;
        char text[128];
        snprintf(text, sizeof text, "discovery:\n  list_interval_minutes: %s\n", bad[i]);
        s_write(fx->config, text);
        if (s_load_args(fx, "--config", fx->config, NULL) != -1)
            fail_msg("list_interval_minutes: %s accepted", bad[i]);
        assert_non_null(strstr(fx->err, "discovery.list_interval_minutes must be a number"));
        config_clear(&fx->cfg);
    }
    s_env_count = 0;
}

/* heartbeat_ms: default, file < environment < flag, and the 10..60000 range everywhere. */
static void test_heartbeat_ms(void **state)
{
    fixture_t *fx = *state;
    assert_int_equal(s_load_args(fx, NULL), 0);
    assert_int_equal(fx->cfg.heartbeat_ms, 1000);

    s_write(fx->config, "heartbeat_ms: 250\n");
    assert_int_equal(s_load_args(fx, "--config", fx->config, NULL), 0);
    assert_int_equal(fx->cfg.heartbeat_ms, 250);
    s_setenv("PM_HEARTBEAT_MS", "40");
    assert_int_equal(s_load_args(fx, "--config", fx->config, NULL), 0);
    assert_int_equal(fx->cfg.heartbeat_ms, 40);
    assert_int_equal(s_load_args(fx, "--config", fx->config, "--heartbeat-ms", "60000", NULL), 0);
    assert_int_equal(fx->cfg.heartbeat_ms, 60000);
    assert_int_equal(s_load_args(fx, "--heartbeat-ms=10", NULL), 0);
    assert_int_equal(fx->cfg.heartbeat_ms, 10);
    s_env_count = 0;

    const char *bad_flags[] = {"9", "60001", "0", "-5", "1e3", "fast"};
    for (size_t i = 0; i < sizeof bad_flags / sizeof bad_flags[0]; i++) {
        assert_int_equal(s_load_args(fx, "--heartbeat-ms", bad_flags[i], NULL), -1);
        assert_true(config_error_is_usage(&fx->cfg));
        assert_non_null(strstr(fx->err, "--heartbeat-ms"));
        assert_non_null(strstr(fx->err, "10 to 60000"));
    }
    s_setenv("PM_HEARTBEAT_MS", "5");
    assert_int_equal(s_load_args(fx, NULL), -1);
    assert_false(config_error_is_usage(&fx->cfg));
    assert_non_null(strstr(fx->err, "PM_HEARTBEAT_MS"));
    s_env_count = 0;

    const char *bad_files[] = {"heartbeat_ms: 70000\n", "heartbeat_ms: soon\n",
                               "heartbeat_ms: [1]\n", "heartbeat_ms:\n"};
    for (size_t i = 0; i < sizeof bad_files / sizeof bad_files[0]; i++) {
        s_write(fx->config, bad_files[i]);
        assert_int_equal(s_load_args(fx, "--config", fx->config, NULL), -1);
        assert_false(config_error_is_usage(&fx->cfg));
        if (!strstr(fx->err, "heartbeat_ms must be an integer from 10 to 60000"))
            fail_msg("file case %zu: '%s'", i, fx->err);
    }
}

/* replica: file < environment < flag for of/events/server_key_file, both endpoints or neither,
 * each a connectable tcp:// or ipc:// address, and the primary's key only with a key pair. */
static void test_replica_settings(void **state)
{
    fixture_t *fx = *state;
    assert_int_equal(s_load_args(fx, NULL), 0);
    assert_null(fx->cfg.replica_of);
    assert_false(config_is_replica(&fx->cfg));

    s_write(fx->config, "replica:\n  of: tcp://10.0.0.1:5555\n  events: tcp://10.0.0.1:5556\n");
    assert_int_equal(s_load_args(fx, "--config", fx->config, NULL), 0);
    assert_true(config_is_replica(&fx->cfg));
    assert_string_equal(fx->cfg.replica_of, "tcp://10.0.0.1:5555");
    assert_string_equal(fx->cfg.replica_events, "tcp://10.0.0.1:5556");
    s_setenv("PM_REPLICA_OF", "ipc:///run/pm/req");
    assert_int_equal(s_load_args(fx, "--config", fx->config, NULL), 0);
    assert_string_equal(fx->cfg.replica_of, "ipc:///run/pm/req");
    assert_int_equal(s_load_args(fx, "--config", fx->config, "--replica-of", "tcp://[::1]:7000",
                                 "--replica-events=tcp://host.test:7001", NULL),
                     0);
    assert_string_equal(fx->cfg.replica_of, "tcp://[::1]:7000");
    assert_string_equal(fx->cfg.replica_events, "tcp://host.test:7001");
    s_env_count = 0;

    /* One without the other. */
    assert_int_equal(s_load_args(fx, "--replica-of", "tcp://127.0.0.1:5555", NULL), -1);
    assert_non_null(strstr(fx->err, "needs both --replica-of and --replica-events"));
    s_setenv("PM_REPLICA_EVENTS", "tcp://127.0.0.1:5556");
    assert_int_equal(s_load_args(fx, NULL), -1);
    assert_non_null(strstr(fx->err, "only --replica-events was given"));
    s_env_count = 0;

    const char *bad[] = {"127.0.0.1:5555", "tcp://127.0.0.1", "tcp://:5555",    "tcp://127.0.0.1:0",
                         "tcp://h:65536",  "tcp://h:55x",     "ipc://",         "inproc://primary",
                         "udp://h:1",      "tcp://h w:1",     "tcp://[::1:5555"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_false(config_endpoint_valid(bad[i]));
        assert_int_equal(s_load_args(fx, "--replica-of", bad[i], "--replica-events",
                                     "tcp://127.0.0.1:5556", NULL),
                         -1);
        if (!strstr(fx->err, "expected tcp://HOST:PORT or ipc://PATH") ||
            !strstr(fx->err, "--replica-of"))
            fail_msg("endpoint case %zu: '%s'", i, fx->err);
        assert_int_equal(s_load_args(fx, "--replica-of", "tcp://127.0.0.1:5555", "--replica-events",
                                     bad[i], NULL),
                         -1);
        assert_non_null(strstr(fx->err, "--replica-events"));
    }
    assert_int_equal(s_load_args(fx, "--replica-of", "tcp://127.0.0.1:5555", "--replica-events",
                                 "tcp://127.0.0.1:5555", NULL),
                     -1);
    assert_non_null(strstr(fx->err, "two different endpoints"));

    /* The primary's key needs the replica's own key pair, and a replica. */
    assert_int_equal(s_load_args(fx, "--replica-of", "tcp://127.0.0.1:5555", "--replica-events",
                                 "tcp://127.0.0.1:5556", "--replica-server-key-file",
                                 "/keys/primary.pub", NULL),
                     -1);
    assert_non_null(strstr(fx->err, "needs --curve-secret-key-file"));
    assert_int_equal(s_load_args(fx, "--replica-server-key-file", "/keys/primary.pub",
                                 "--curve-secret-key-file", "/keys/server.key", NULL),
                     -1);
    assert_non_null(strstr(fx->err, "only for a read replica"));
    s_write(fx->config, "replica:\n  of: tcp://127.0.0.1:5555\n  events: tcp://127.0.0.1:5556\n"
                        "  server_key_file: /keys/primary.pub\n"
                        "security:\n  curve_secret_key_file: /keys/server.key\n");
    assert_int_equal(s_load_args(fx, "--config", fx->config, NULL), 0);
    assert_string_equal(fx->cfg.replica_server_key_file, "/keys/primary.pub");
    s_setenv("PM_REPLICA_SERVER_KEY_FILE", "/keys/other.pub");
    assert_int_equal(s_load_args(fx, "--config", fx->config, NULL), 0);
    assert_string_equal(fx->cfg.replica_server_key_file, "/keys/other.pub");
    s_env_count = 0;

    const char *bad_files[] = {"replica: [1]\n", "replica:\n  of: [tcp://h:1]\n",
                               "replica:\n  of: ''\n"};
    for (size_t i = 0; i < sizeof bad_files / sizeof bad_files[0]; i++) {
        s_write(fx->config, bad_files[i]);
        assert_int_equal(s_load_args(fx, "--config", fx->config, NULL), -1);
        if (!strstr(fx->err, "replica"))
            fail_msg("file case %zu: '%s'", i, fx->err);
    }
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_defaults),
        T(test_heartbeat_ms),
        T(test_replica_settings),
        T(test_precedence_flags_env_file_defaults),
        T(test_flag_equals_form),
        T(test_bad_flags_are_usage_errors),
        T(test_help_and_version),
        T(test_config_file_errors),
        T(test_config_file_sections),
        T(test_environment_settings),
        T(test_clear_is_idempotent),
        T(test_env_name_derivation),
        T(test_apply_env_key),
        T(test_baseline_only),
        T(test_layering_precedence),
        T(test_env_key_on_baseline_without_file),
        T(test_corrupt_persisted_file_is_an_error),
        T(test_build_warnings_reach_the_callback),
        T(test_discovery_schedules),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
