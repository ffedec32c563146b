/*
 * test_pmclient: integration suite of libpmclient and pmctl against the REAL daemon.
 *
 * The group setup starts provider-manager ($PM_DAEMON) on free loopback ports with a fresh
 * --data-dir in a mkdtemp directory and waits for its "ready" log line; every operation of
 * the contract is then driven through libpmclient with exact values and messages. A fake
 * ROUTER in a thread plays a server that never answers, answers with the wrong id, or with
 * broken bytes, to check the Lazy Pirate behaviour and the defensive decoding. pmctl
 * ($PM_PMCTL) is run for its exit codes and its masking of API keys. A second daemon with
 * CURVE checks key files and authentication. The model status tests (protocol v1.1) point a
 * provider at tests/fake_upstream.py (models with metadata, one that does not exist), run a
 * discovery and a verification, and check the typed records, provider statuses, job counts,
 * models events and pmctl's status / verify / providers / watch output against the daemon.
 * The last test stops the daemon with SIGTERM and checks that it exits 0.
 */
#define _XOPEN_SOURCE 700 /* nftw() */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "pmclient.h"

/* Only fake_upstream_start / _stop are used: the control calls (curl) are not compiled in. */
#include "fake_upstream.h"

#include <arpa/inet.h>
#include <math.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

extern char **environ;

#define TEST_API_KEY "sk-test-SECRET-0123456789-WXYZ"
#define TEST_API_KEY_MASKED "sk-...WXYZ"
#define WAIT_STEP_MS 20
#define WAIT_LIMIT_MS 30000 /* generous: only a broken daemon gets near it */
#define MAX_ARGS 32

typedef struct {
    pid_t pid;
    char endpoint[64];
    char events_endpoint[64];
    char data_dir[PATH_MAX];
    char log_path[PATH_MAX];
} s_daemon_t;

typedef struct {
    char dir[PATH_MAX];
    s_daemon_t daemon;
    pmclient_t *client;
    char *builtin_key;        /* the first key of a fresh daemon: a pinned provider */
    fake_upstream_t upstream; /* started by the model status tests; pid -1 until then */
} s_suite_t;

/* ------------------------------------------------------------------------------ helpers */

static void s_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Two distinct free loopback TCP ports: bound to port 0, read back, released. */
static int s_free_ports(int *a, int *b)
{
    int fds[2] = {-1, -1};
    int ports[2] = {0, 0};
    int rc = -1;
    for (int i = 0; i < 2; i++) {
        struct sockaddr_in addr;
        socklen_t len = sizeof addr;
        memset(&addr, 0, sizeof addr);
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&addr, sizeof addr) != 0 ||
            getsockname(fds[i], (struct sockaddr *)&addr, &len) != 0)
            goto cleanup;
        ports[i] = ntohs(addr.sin_port);
    }
    *a = ports[0];
    *b = ports[1];
    rc = 0;
cleanup:
    for (int i = 0; i < 2; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
    }
    return rc;
}

/* The environment minus what would change the daemon's behaviour: PM_* settings and
 * provider API keys. The array is malloc'd; its strings are borrowed from environ. */
static char **s_clean_environment(void)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 1, sizeof *env);
    if (!env)
        return NULL;
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        const char *equals = strchr(environ[i], '=');
        size_t name_len = equals ? (size_t)(equals - environ[i]) : strlen(environ[i]);
        if (strncmp(environ[i], "PM_", 3) == 0)
            continue;
        if (name_len >= 8 && strncmp(environ[i] + name_len - 8, "_API_KEY", 8) == 0)
            continue;
        env[out++] = environ[i];
    }
    return env;
}

/* Starts path with argv, stdout and stderr to the given files (NULL = /dev/null). */
static pid_t s_spawn(const char *path, char *const argv[], const char *out_path,
                     const char *err_path)
{
    posix_spawn_file_actions_t actions;
    pid_t pid = -1;
    char **env = s_clean_environment();
    if (!env || posix_spawn_file_actions_init(&actions) != 0) {
        free(env);
        return -1;
    }
    if (posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0) != 0 ||
        posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out_path ? out_path : "/dev/null",
                                         O_WRONLY | O_CREAT | O_TRUNC, 0600) != 0 ||
        posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err_path ? err_path : "/dev/null",
                                         O_WRONLY | O_CREAT | O_TRUNC, 0600) != 0 ||
        posix_spawn(&pid, path, &actions, NULL, argv, env) != 0)
        pid = -1;
    posix_spawn_file_actions_destroy(&actions);
    free(env);
    return pid;
}

/* Reads a whole (small) file into a new NUL-terminated string; NULL on failure. */
static char *s_read_file(const char *path)
{
    FILE *file = fopen(path, "rb");
    if (!file)
        return NULL;
    size_t size = 0, capacity = 4096;
    char *text = malloc(capacity);
    while (text) {
        if (size + 1 >= capacity) {
            char *grown = realloc(text, capacity * 2);
            if (!grown) {
                free(text);
                text = NULL;
                break;
            }
            text = grown;
            capacity *= 2;
        }
        size_t n = fread(text + size, 1, capacity - size - 1, file);
        size += n;
        if (n == 0)
            break;
    }
    fclose(file);
    if (text)
        text[size] = '\0';
    return text;
}

/* Waits for a child to exit; returns its exit status, or -1 (killed by a signal, or still
 * running after WAIT_LIMIT_MS, in which case it is killed). */
static int s_wait_exit(pid_t pid)
{
    int status = 0;
    for (int waited = 0; waited < WAIT_LIMIT_MS; waited += WAIT_STEP_MS) {
        pid_t rc = waitpid(pid, &status, WNOHANG);
        if (rc == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (rc < 0 && errno != EINTR)
            return -1;
        s_sleep_ms(WAIT_STEP_MS);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

/* Starts the daemon in dir/<name> with extra arguments and waits for "ready". 0 or -1. */
static int s_daemon_start(s_daemon_t *daemon, const char *dir, const char *name,
                          const char *const *extra)
{
    const char *binary = getenv("PM_DAEMON");
    int port, events_port;
    if (!binary || !*binary) {
        fprintf(stderr, "PM_DAEMON is not set (run through ctest)\n");
        return -1;
    }
    memset(daemon, 0, sizeof *daemon);
    daemon->pid = -1;
    if (s_free_ports(&port, &events_port) != 0)
        return -1;
    snprintf(daemon->endpoint, sizeof daemon->endpoint, "tcp://127.0.0.1:%d", port);
    snprintf(daemon->events_endpoint, sizeof daemon->events_endpoint, "tcp://127.0.0.1:%d",
             events_port);
    snprintf(daemon->data_dir, sizeof daemon->data_dir, "%s/%s-data", dir, name);
    snprintf(daemon->log_path, sizeof daemon->log_path, "%s/%s.log", dir, name);

    char *argv[MAX_ARGS];
    size_t argc = 0;
    argv[argc++] = (char *)binary;
    argv[argc++] = "--endpoint";
    argv[argc++] = daemon->endpoint;
    argv[argc++] = "--events-endpoint";
    argv[argc++] = daemon->events_endpoint;
    argv[argc++] = "--data-dir";
    argv[argc++] = daemon->data_dir;
    argv[argc++] = "--workers";
    argv[argc++] = "2";
    for (size_t i = 0; extra && extra[i] && argc < MAX_ARGS - 1; i++)
        argv[argc++] = (char *)extra[i];
    argv[argc] = NULL;

    daemon->pid = s_spawn(binary, argv, NULL, daemon->log_path);
    if (daemon->pid < 0)
        return -1;
    for (int waited = 0; waited < WAIT_LIMIT_MS; waited += WAIT_STEP_MS) {
        char *log = s_read_file(daemon->log_path);
        bool ready = log && strstr(log, " ready") != NULL; /* not "already" */
        free(log);
        if (ready)
            return 0;
        int status;
        if (waitpid(daemon->pid, &status, WNOHANG) == daemon->pid) {
            char *text = s_read_file(daemon->log_path);
            fprintf(stderr, "daemon exited before ready:\n%s\n", text ? text : "");
            free(text);
            daemon->pid = -1;
            return -1;
        }
        s_sleep_ms(WAIT_STEP_MS);
    }
    kill(daemon->pid, SIGKILL);
    waitpid(daemon->pid, NULL, 0);
    daemon->pid = -1;
    return -1;
}

/* SIGTERM and wait: the daemon's exit status, or -1. */
static int s_daemon_stop(s_daemon_t *daemon)
{
    if (daemon->pid <= 0)
        return -1;
    kill(daemon->pid, SIGTERM);
    int status = s_wait_exit(daemon->pid);
    daemon->pid = -1;
    return status;
}

static int s_remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int64_t s_state_version(pmclient_t *client)
{
    pm_health_t *health = NULL;
    assert_int_equal(pmclient_health(client, &health), 0);
    int64_t version = health->state_version;
    pm_health_free(&health);
    return version;
}

static void s_assert_error(pmclient_t *client, int rc, const char *code, const char *message)
{
    assert_int_equal(rc, -1);
    assert_string_equal(pmclient_error_code(client), code);
    if (message)
        assert_string_equal(pmclient_error_message(client), message);
}

/* Creates provider key with TEST_API_KEY and two models (one whose long name has a slash)
 * plus one invalid model. */
static void s_set_test_provider(pmclient_t *client, const char *key, pm_provider_t **out)
{
    const char *longs[] = {"model-long-a", "org/model-b"};
    const char *shorts[] = {"ma", NULL};
    const char *invalid[] = {"bad-1"};
    pm_provider_spec_t spec = {
        .provider = key,
        .name = "Test Provider",
        .base_api_url = "http://127.0.0.1:9/v1",
        .has_api_key = true,
        .api_key = TEST_API_KEY,
        .has_valid_models = true,
        .model_count = 2,
        .model_long = longs,
        .model_short = shorts,
        .has_invalid_models = true,
        .invalid_count = 1,
        .invalid_models = invalid,
    };
    assert_int_equal(pmclient_set_provider(client, &spec, out), 0);
}

static void s_assert_test_provider(const pm_provider_t *p, const char *key)
{
    assert_non_null(p);
    assert_string_equal(p->provider, key);
    assert_string_equal(p->name, "Test Provider");
    assert_string_equal(p->base_api_url, "http://127.0.0.1:9/v1");
    assert_non_null(p->api_key);
    assert_string_equal(p->api_key, TEST_API_KEY);
    assert_int_equal(p->model_count, 2);
    assert_string_equal(p->model_long[0], "model-long-a");
    assert_string_equal(p->model_short[0], "ma");
    assert_string_equal(p->model_long[1], "org/model-b");
    assert_string_equal(p->model_short[1], "org/model-b");
    assert_int_equal(p->invalid_count, 1);
    assert_string_equal(p->invalid_models[0], "bad-1");
}

/* -------------------------------------------------------------------------- suite setup */

static int s_setup(void **state)
{
    s_suite_t *suite = calloc(1, sizeof *suite);
    if (!suite)
        return -1;
    snprintf(suite->dir, sizeof suite->dir, "%s/pmclient-test-XXXXXX",
             getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(suite->dir)) {
        free(suite);
        return -1;
    }
    suite->upstream.pid = -1;
    suite->upstream.stdin_fd = -1;
    *state = suite;
    if (s_daemon_start(&suite->daemon, suite->dir, "main", NULL) != 0)
        return -1;
    suite->client = pmclient_new(suite->daemon.endpoint);
    if (!suite->client || pmclient_set_timeout(suite->client, 10000) != 0)
        return -1;
    return 0;
}

static int s_teardown(void **state)
{
    s_suite_t *suite = *state;
    if (!suite)
        return 0;
    pmclient_destroy(&suite->client);
    fake_upstream_stop(&suite->upstream);
    if (suite->daemon.pid > 0) {
        kill(suite->daemon.pid, SIGKILL);
        waitpid(suite->daemon.pid, NULL, 0);
    }
    if (suite->dir[0])
        nftw(suite->dir, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(suite->builtin_key);
    free(suite);
    return 0;
}

/* ------------------------------------------------------------------------ the operations */

static void test_health_and_keys_of_a_fresh_daemon(void **state)
{
    s_suite_t *suite = *state;
    pm_health_t *health = NULL;
    pm_strings_t *keys = NULL;
    assert_int_equal(pmclient_health(suite->client, &health), 0);
    assert_string_equal(pmclient_error_code(suite->client), "");
    assert_string_equal(health->status, "ok");
    assert_true(strlen(health->version) > 0);
    assert_int_equal(health->models, 0);
    assert_int_equal(health->jobs_running, 0);
    assert_true(health->uptime_s >= 0.0);
    assert_non_null(health->role); /* v1.1: a primary says so; lag fields are a replica's */
    assert_string_equal(health->role, "primary");
    assert_false(health->has_lag);
    assert_false(health->has_primary_seen);

    assert_int_equal(pmclient_keys(suite->client, &keys), 0);
    assert_true(keys->count > 0);
    assert_int_equal((int64_t)keys->count, health->providers);
    suite->builtin_key = strdup(keys->items[0]);
    assert_non_null(suite->builtin_key);
    pm_strings_free(&keys);
    assert_null(keys);
    pm_health_free(&health);
    assert_null(health);
}

static void test_set_provider_then_every_read(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    int64_t version = s_state_version(c);

    pm_provider_t *p = NULL;
    s_set_test_provider(c, "testprov", &p);
    s_assert_test_provider(p, "testprov");
    pm_provider_free(&p);
    assert_int_equal(s_state_version(c), version + 1);

    /* get / getitem / contains */
    assert_int_equal(pmclient_get(c, "testprov", &p), 0);
    s_assert_test_provider(p, "testprov");
    pm_provider_free(&p);
    p = (pm_provider_t *)1;
    assert_int_equal(pmclient_get(c, "nope", &p), 0);
    assert_null(p);
    assert_int_equal(pmclient_getitem(c, "testprov", &p), 0);
    s_assert_test_provider(p, "testprov");
    pm_provider_free(&p);
    s_assert_error(c, pmclient_getitem(c, "nope", &p), "not_found", "Provider 'nope' not found");
    assert_null(p);
    bool found = false;
    assert_int_equal(pmclient_contains(c, "testprov", &found), 0);
    assert_true(found);
    assert_int_equal(pmclient_contains(c, "nope", &found), 0);
    assert_false(found);

    /* keys / values / items agree, registry order, the new provider last */
    pm_strings_t *keys = NULL;
    pm_provider_list_t *values = NULL, *items = NULL;
    assert_int_equal(pmclient_keys(c, &keys), 0);
    assert_int_equal(pmclient_values(c, &values), 0);
    assert_int_equal(pmclient_items(c, &items), 0);
    assert_true(keys->count >= 2);
    assert_string_equal(keys->items[0], suite->builtin_key);
    assert_string_equal(keys->items[keys->count - 1], "testprov");
    assert_int_equal(values->count, keys->count);
    assert_int_equal(items->count, keys->count);
    for (size_t i = 0; i < keys->count; i++) {
        assert_string_equal(values->providers[i]->provider, keys->items[i]);
        assert_string_equal(items->providers[i]->provider, keys->items[i]);
    }
    s_assert_test_provider(values->providers[keys->count - 1], "testprov");
    s_assert_test_provider(items->providers[keys->count - 1], "testprov");
    pm_strings_free(&keys);
    pm_provider_list_free(&values);
    pm_provider_list_free(&items);

    /* merged_models / valid_scoped_models */
    pm_merged_t *merged = NULL;
    assert_int_equal(pmclient_merged_models(c, &merged), 0);
    assert_int_equal(merged->count, 2);
    assert_string_equal(merged->provider[0], "testprov");
    assert_string_equal(merged->model_long[0], "model-long-a");
    assert_string_equal(merged->model_short[0], "ma");
    assert_string_equal(merged->provider[1], "testprov");
    assert_string_equal(merged->model_long[1], "org/model-b");
    assert_string_equal(merged->model_short[1], "org/model-b");
    pm_merged_free(&merged);
    pm_strings_t *scoped = NULL;
    assert_int_equal(pmclient_valid_scoped_models(c, &scoped), 0);
    assert_int_equal(scoped->count, 2);
    assert_string_equal(scoped->items[0], "testprov/model-long-a (ma)");
    assert_string_equal(scoped->items[1], "testprov/org/model-b (org/model-b)");
    pm_strings_free(&scoped);

    pm_health_t *health = NULL;
    assert_int_equal(pmclient_health(c, &health), 0);
    assert_int_equal(health->models, 2);
    pm_health_free(&health);
}

static void test_resolution(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    pm_provider_t *p = NULL;
    char *model = NULL;

    /* prefixed long, prefixed short (the result is the LONG name), prefix upper-cased */
    assert_int_equal(pmclient_resolve(c, "testprov/model-long-a", &p, &model), 0);
    s_assert_test_provider(p, "testprov");
    assert_string_equal(model, "model-long-a");
    pm_provider_free(&p);
    free(model);
    assert_int_equal(pmclient_resolve(c, "testprov/ma", &p, &model), 0);
    assert_string_equal(p->provider, "testprov");
    assert_string_equal(model, "model-long-a");
    pm_provider_free(&p);
    free(model);
    assert_int_equal(pmclient_resolve(c, "TESTPROV/ma", NULL, &model), 0);
    assert_string_equal(model, "model-long-a");
    free(model);

    /* unprefixed long and short; a slash in a model id whose prefix is no provider */
    assert_int_equal(pmclient_resolve(c, "ma", &p, &model), 0);
    assert_string_equal(p->provider, "testprov");
    assert_string_equal(model, "model-long-a");
    pm_provider_free(&p);
    free(model);
    assert_int_equal(pmclient_resolve(c, "org/model-b", &p, NULL), 0);
    assert_string_equal(p->provider, "testprov");
    pm_provider_free(&p);

    /* invalid */
    s_assert_error(c, pmclient_resolve(c, "testprov/nope", &p, &model), "invalid_model",
                   "Invalid model for provider testprov: nope");
    assert_null(p);
    assert_null(model);
    s_assert_error(c, pmclient_resolve(c, "no-such-model", &p, &model), "invalid_model",
                   "Invalid model: no-such-model");

    /* validate_model */
    assert_int_equal(pmclient_validate_model(c, "testprov/ma", &model), 0);
    assert_string_equal(model, "model-long-a");
    free(model);
    s_assert_error(c, pmclient_validate_model(c, "nothing-here", &model), "invalid_model",
                   "Invalid model: nothing-here");
    assert_null(model);
}

static void test_available_short_find(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    pm_strings_t *models = NULL;
    assert_int_equal(pmclient_available_models(c, NULL, &models), 0);
    assert_int_equal(models->count, 2);
    assert_string_equal(models->items[0], "model-long-a");
    assert_string_equal(models->items[1], "org/model-b");
    pm_strings_free(&models);
    assert_int_equal(pmclient_available_models(c, "testprov", &models), 0);
    assert_int_equal(models->count, 2);
    pm_strings_free(&models);
    assert_int_equal(pmclient_available_models(c, suite->builtin_key, &models), 0);
    assert_int_equal(models->count, 0);
    pm_strings_free(&models);

    char *short_name = NULL;
    assert_int_equal(pmclient_short_name(c, "some-long-model", &short_name), 0);
    assert_string_equal(short_name, "some-long-model");
    free(short_name);

    pm_matches_t *matches = NULL;
    assert_int_equal(pmclient_find_model(c, "ma", &matches), 0);
    assert_int_equal(matches->count, 1);
    s_assert_test_provider(matches->providers[0], "testprov");
    assert_string_equal(matches->model_long[0], "model-long-a");
    pm_matches_free(&matches);
    assert_int_equal(pmclient_find_model(c, "org/model-b", &matches), 0);
    assert_int_equal(matches->count, 1);
    pm_matches_free(&matches);
    assert_int_equal(pmclient_find_model(c, "nothing", &matches), 0);
    assert_int_equal(matches->count, 0);
    pm_matches_free(&matches);
}

static void test_set_short_name(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    int64_t version = s_state_version(c);
    pm_provider_t *p = NULL;

    assert_int_equal(pmclient_set_short_name(c, "testprov", "model-long-a", "mx", &p), 0);
    assert_string_equal(p->model_long[0], "model-long-a");
    assert_string_equal(p->model_short[0], "mx");
    assert_string_equal(p->model_short[1], "org/model-b");
    pm_provider_free(&p);
    assert_int_equal(s_state_version(c), version + 1);

    char *model = NULL;
    assert_int_equal(pmclient_validate_model(c, "mx", &model), 0);
    assert_string_equal(model, "model-long-a");
    free(model);

    s_assert_error(c, pmclient_set_short_name(c, "nope", "model-long-a", "z", &p), "not_found",
                   "Provider 'nope' not found");
    assert_null(p);
    s_assert_error(c, pmclient_set_short_name(c, "testprov", "not-a-model", "z", NULL),
                   "invalid_model", "Invalid model for provider testprov: not-a-model");
    /* failures change nothing */
    assert_int_equal(s_state_version(c), version + 1);
    /* back to the original short name for the tests that follow */
    assert_int_equal(pmclient_set_short_name(c, "testprov", "model-long-a", "ma", NULL), 0);
    assert_int_equal(s_state_version(c), version + 2);
}

static void test_set_provider_update_and_bad_requests(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    int64_t version = s_state_version(c);
    pm_provider_t *p = NULL;

    /* fields absent are kept: key and models */
    pm_provider_spec_t spec = {
        .provider = "testprov", .name = "Renamed", .base_api_url = "https://example.invalid/v1"};
    assert_int_equal(pmclient_set_provider(c, &spec, &p), 0);
    assert_string_equal(p->name, "Renamed");
    assert_string_equal(p->base_api_url, "https://example.invalid/v1");
    assert_string_equal(p->api_key, TEST_API_KEY);
    assert_int_equal(p->model_count, 2);
    pm_provider_free(&p);
    assert_int_equal(s_state_version(c), version + 1);

    /* nil clears the key; the place in the registry order is kept */
    spec.has_api_key = true;
    spec.api_key = NULL;
    assert_int_equal(pmclient_set_provider(c, &spec, &p), 0);
    assert_null(p->api_key);
    pm_provider_free(&p);
    pm_strings_t *keys = NULL;
    assert_int_equal(pmclient_keys(c, &keys), 0);
    assert_string_equal(keys->items[keys->count - 1], "testprov");
    pm_strings_free(&keys);
    assert_int_equal(s_state_version(c), version + 2);

    /* bad requests change nothing */
    pm_provider_spec_t bad = {.provider = "Bad Key!", .name = "x", .base_api_url = "http://x"};
    s_assert_error(c, pmclient_set_provider(c, &bad, &p), "bad_request", NULL);
    assert_null(p);
    bad.provider = "okkey";
    bad.base_api_url = "ftp://example.invalid";
    s_assert_error(c, pmclient_set_provider(c, &bad, NULL), "bad_request", NULL);
    bad.base_api_url = "http://example.invalid";
    bad.name = NULL;
    s_assert_error(c, pmclient_set_provider(c, &bad, NULL), "bad_request",
                   "missing required argument 'name'");
    assert_int_equal(s_state_version(c), version + 2);

    /* restore the test provider exactly */
    s_set_test_provider(c, "testprov", &p);
    s_assert_test_provider(p, "testprov");
    pm_provider_free(&p);
    assert_int_equal(s_state_version(c), version + 3);
}

static void test_remove_provider(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    s_set_test_provider(c, "doomed", NULL);
    int64_t version = s_state_version(c);
    bool removed = false;
    assert_int_equal(pmclient_remove_provider(c, "doomed", &removed), 0);
    assert_true(removed);
    assert_int_equal(s_state_version(c), version + 1);
    bool found = true;
    assert_int_equal(pmclient_contains(c, "doomed", &found), 0);
    assert_false(found);
    assert_int_equal(pmclient_remove_provider(c, "doomed", &removed), 0);
    assert_false(removed);
    assert_int_equal(s_state_version(c), version + 1);

    char message[256];
    snprintf(message, sizeof message,
             "Provider '%s' is defined by the built-in baseline or the config file and cannot "
             "be removed",
             suite->builtin_key);
    s_assert_error(c, pmclient_remove_provider(c, suite->builtin_key, &removed), "conflict",
                   message);
    assert_int_equal(s_state_version(c), version + 1);
}

static void test_persist(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    int64_t version = s_state_version(c);
    char *path = NULL;
    int64_t count = 0;
    assert_int_equal(pmclient_persist(c, &path, &count), 0);
    char expected[PATH_MAX + 64];
    snprintf(expected, sizeof expected, "%s/openaicompat-providers.yaml", suite->daemon.data_dir);
    assert_string_equal(path, expected);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size > 0);
    pm_strings_t *keys = NULL;
    assert_int_equal(pmclient_keys(c, &keys), 0);
    assert_int_equal(count, (int64_t)keys->count);
    pm_strings_free(&keys);
    free(path);
    /* persisting changes no state */
    assert_int_equal(s_state_version(c), version);
    /* the outputs are optional */
    assert_int_equal(pmclient_persist(c, NULL, NULL), 0);
}

static void test_discover_and_job_status(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    pm_job_t *job = NULL;
    char *job_id = NULL;

    s_assert_error(c, pmclient_job_status(c, "nope", &job), "not_found", "Job 'nope' not found");
    assert_null(job);
    s_assert_error(c, pmclient_discover(c, false, true, "nope", &job_id), "not_found",
                   "Provider 'nope' not found");
    assert_null(job_id);

    /* A provider without a key is skipped: the job succeeds and persists. */
    pm_provider_spec_t spec = {
        .provider = "nokey", .name = "No Key", .base_api_url = "http://127.0.0.1:9/v1"};
    assert_int_equal(pmclient_set_provider(c, &spec, NULL), 0);
    assert_int_equal(pmclient_discover(c, false, true, "nokey", &job_id), 0);
    assert_non_null(job_id);
    assert_true(strlen(job_id) > 0);
    for (int waited = 0; waited < WAIT_LIMIT_MS; waited += WAIT_STEP_MS) {
        pm_job_free(&job);
        assert_int_equal(pmclient_job_status(c, job_id, &job), 0);
        if (strcmp(job->state, "running") != 0)
            break;
        s_sleep_ms(WAIT_STEP_MS);
    }
    assert_string_equal(job->job, job_id);
    assert_string_equal(job->state, "done");
    assert_int_equal(job->success, 1);
    assert_true(job->persisted);
    assert_int_equal(job->provider_count, 1);
    assert_string_equal(job->providers[0].key, "nokey");
    assert_string_equal(job->providers[0].state, "skipped");
    assert_int_equal(job->providers[0].discovered, 0);
    assert_int_equal(job->message_count, 2);
    assert_string_equal(job->messages[0], "Skipping nokey: No valid API key configured");
    assert_string_equal(job->messages[1], "Provider configurations persisted to YAML");
    pm_job_free(&job);
    free(job_id);
}

static void test_events(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    pmclient_events_t *events = pmclient_events_new(suite->daemon.events_endpoint);
    assert_non_null(events);
    int64_t event_version = -1;
    pm_strings_t *keys = NULL;
    pm_provider_spec_t spec = {
        .provider = "evtprov", .name = "Events", .base_api_url = "http://127.0.0.1:9/v1"};

    /* A SUB socket misses what is published before its subscription arrives: write until
     * one event gets through. */
    int rc = 0;
    for (int attempt = 0; attempt < 100 && rc != 1; attempt++) {
        assert_int_equal(pmclient_set_provider(c, &spec, NULL), 0);
        rc = pmclient_events_next(events, 300, &event_version, &keys);
        assert_true(rc >= 0);
    }
    assert_int_equal(rc, 1);
    pm_strings_free(&keys);
    /* drain whatever else the loop produced */
    int64_t current = s_state_version(c);
    while (event_version < current) {
        assert_int_equal(pmclient_events_next(events, 5000, &event_version, NULL), 1);
    }
    assert_int_equal(event_version, current);

    /* From now on: one event per change, the next state_version, the touched key. */
    assert_int_equal(pmclient_set_short_name(c, "testprov", "model-long-a", "ma", NULL), 0);
    assert_int_equal(pmclient_events_next(events, 10000, &event_version, &keys), 1);
    assert_int_equal(event_version, current + 1);
    assert_int_equal(keys->count, 1);
    assert_string_equal(keys->items[0], "testprov");
    pm_strings_free(&keys);
    bool removed = false;
    assert_int_equal(pmclient_remove_provider(c, "evtprov", &removed), 0);
    assert_true(removed);
    assert_int_equal(pmclient_events_next(events, 10000, &event_version, &keys), 1);
    assert_int_equal(event_version, current + 2);
    assert_int_equal(keys->count, 1);
    assert_string_equal(keys->items[0], "evtprov");
    pm_strings_free(&keys);
    /* nothing more: a persist is no change */
    assert_int_equal(pmclient_persist(c, NULL, NULL), 0);
    assert_int_equal(pmclient_events_next(events, 200, &event_version, &keys), 0);
    assert_null(keys);
    pmclient_events_destroy(&events);
    assert_null(events);
    pmclient_events_destroy(&events);
}

/* Packs a msgpack map {"provider_name": name} into sbuf. */
static void s_pack_provider_name(msgpack_sbuffer *sbuf, const char *name)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sbuf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str(&pk, 13);
    msgpack_pack_str_body(&pk, "provider_name", 13);
    msgpack_pack_str(&pk, strlen(name));
    msgpack_pack_str_body(&pk, name, strlen(name));
}

static const msgpack_object *s_map_get(const msgpack_object *map, const char *key)
{
    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            memcmp(kv->key.via.str.ptr, key, strlen(key)) == 0)
            return &kv->val;
    }
    return NULL;
}

static void test_call_raw_and_last_reply(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    s_pack_provider_name(&sbuf, "testprov");
    void *reply = NULL;
    size_t size = 0;
    assert_int_equal(pmclient_call_raw(c, "contains", sbuf.data, sbuf.size, &reply, &size), 0);
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    size_t offset = 0;
    assert_int_equal(msgpack_unpack_next(&unpacked, reply, size, &offset), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *ok = s_map_get(&unpacked.data, "ok");
    const msgpack_object *result = s_map_get(&unpacked.data, "result");
    assert_non_null(ok);
    assert_true(ok->type == MSGPACK_OBJECT_BOOLEAN && ok->via.boolean);
    assert_non_null(result);
    assert_true(result->type == MSGPACK_OBJECT_BOOLEAN && result->via.boolean);
    assert_non_null(s_map_get(&unpacked.data, "id"));
    msgpack_unpacked_destroy(&unpacked);
    free(reply);

    /* args NULL = {} */
    assert_int_equal(pmclient_call_raw(c, "keys", NULL, 0, &reply, &size), 0);
    free(reply);
    /* errors of the service and of the client */
    s_assert_error(c, pmclient_call_raw(c, "no_such_op", NULL, 0, &reply, &size), "unknown_op",
                   "Unknown op 'no_such_op'");
    assert_null(reply);
    s_assert_error(c, pmclient_call_raw(c, "getitem", NULL, 0, &reply, &size), "bad_request",
                   "missing required argument 'provider_name'");
    static const uint8_t not_a_map[] = {0x93, 0x01, 0x02, 0x03};
    s_assert_error(c, pmclient_call_raw(c, "keys", not_a_map, sizeof not_a_map, &reply, &size),
                   "bad_request", "'args' must be a map");
    static const uint8_t truncated[] = {0x82, 0xa1, 'a'};
    s_assert_error(c, pmclient_call_raw(c, "keys", truncated, sizeof truncated, &reply, &size),
                   "bad_request", NULL);
    msgpack_sbuffer_destroy(&sbuf);

    /* keep_reply: the last successful reply's bytes, until the next call */
    const void *data = NULL;
    assert_int_equal(pmclient_last_reply(c, &data, &size), -1);
    pmclient_set_keep_reply(c, true);
    bool found = false;
    assert_int_equal(pmclient_contains(c, "testprov", &found), 0);
    assert_int_equal(pmclient_last_reply(c, &data, &size), 0);
    assert_true(size > 0);
    assert_true(((const uint8_t *)data)[0] >= 0x80 && ((const uint8_t *)data)[0] <= 0x8f);
    pm_provider_t *p = NULL;
    assert_int_equal(pmclient_getitem(c, "nope", &p), -1);
    assert_int_equal(pmclient_last_reply(c, &data, &size), -1);
    pmclient_set_keep_reply(c, false);
}

static void test_request_too_large(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    size_t len = PMCLIENT_MAX_REQUEST_SIZE + 10;
    char *huge = malloc(len + 1);
    assert_non_null(huge);
    memset(huge, 'a', len);
    huge[len] = '\0';
    bool found = true;
    s_assert_error(c, pmclient_contains(c, huge, &found), "bad_request", NULL);
    assert_false(found);
    free(huge);
    /* the client is fine afterwards */
    assert_int_equal(pmclient_contains(c, "testprov", &found), 0);
    assert_true(found);
}

/* ------------------------------------------------------------- a fake, misbehaving server */

typedef enum {
    FAKE_IGNORE = 0, /* never answer */
    FAKE_HEALTH,     /* a correct health reply */
    FAKE_WRONG_ID,   /* a correct health reply with another id */
    FAKE_GARBAGE,    /* bytes that are not msgpack */
    FAKE_BAD_SHAPE,  /* a valid envelope whose health result is an array */
    FAKE_TWO_FRAMES, /* a correct reply followed by a second frame */
    FAKE_SHAPES,     /* a valid envelope with the next result of s_shapes */
} s_fake_action_t;

#define FAKE_MAX_ACTIONS 16

typedef struct {
    void *ctx;
    void *router;
    char endpoint[64];
    s_fake_action_t actions[FAKE_MAX_ACTIONS];
    size_t action_count;
    s_fake_action_t default_action;
    atomic_int received;
    atomic_bool stop;
    pthread_t thread;
} s_fake_t;

/* Results of every shape the typed decoders must survive. */
static void s_pack_shape(msgpack_packer *pk, int shape)
{
    switch (shape % 12) {
    case 0:
        msgpack_pack_nil(pk);
        break;
    case 1:
        msgpack_pack_true(pk);
        break;
    case 2:
        msgpack_pack_int(pk, -5);
        break;
    case 3:
        msgpack_pack_str(pk, 3);
        msgpack_pack_str_body(pk, "abc", 3);
        break;
    case 4:
        msgpack_pack_array(pk, 0);
        break;
    case 5:
        msgpack_pack_map(pk, 0);
        break;
    case 6: /* [nil, 1] */
        msgpack_pack_array(pk, 2);
        msgpack_pack_nil(pk);
        msgpack_pack_int(pk, 1);
        break;
    case 7: /* {"provider": 1, "job": 2, "path": nil} */
        msgpack_pack_map(pk, 3);
        msgpack_pack_str(pk, 8);
        msgpack_pack_str_body(pk, "provider", 8);
        msgpack_pack_int(pk, 1);
        msgpack_pack_str(pk, 3);
        msgpack_pack_str_body(pk, "job", 3);
        msgpack_pack_int(pk, 2);
        msgpack_pack_str(pk, 4);
        msgpack_pack_str_body(pk, "path", 4);
        msgpack_pack_nil(pk);
        break;
    case 8: /* [["k", [1]]] */
        msgpack_pack_array(pk, 1);
        msgpack_pack_array(pk, 2);
        msgpack_pack_str(pk, 1);
        msgpack_pack_str_body(pk, "k", 1);
        msgpack_pack_array(pk, 1);
        msgpack_pack_int(pk, 1);
        break;
    case 9: /* [{"provider": "k", "name": "n", "base_api_url": "u", "valid_models": [1]}] */
        msgpack_pack_array(pk, 1);
        msgpack_pack_map(pk, 4);
        msgpack_pack_str(pk, 8);
        msgpack_pack_str_body(pk, "provider", 8);
        msgpack_pack_str(pk, 1);
        msgpack_pack_str_body(pk, "k", 1);
        msgpack_pack_str(pk, 4);
        msgpack_pack_str_body(pk, "name", 4);
        msgpack_pack_str(pk, 1);
        msgpack_pack_str_body(pk, "n", 1);
        msgpack_pack_str(pk, 12);
        msgpack_pack_str_body(pk, "base_api_url", 12);
        msgpack_pack_str(pk, 1);
        msgpack_pack_str_body(pk, "u", 1);
        msgpack_pack_str(pk, 12);
        msgpack_pack_str_body(pk, "valid_models", 12);
        msgpack_pack_array(pk, 1);
        msgpack_pack_int(pk, 1);
        break;
    case 10: /* {"job": "j", "state": "done", "success": 3, "providers": {"a": 1}} */
        msgpack_pack_map(pk, 4);
        msgpack_pack_str(pk, 3);
        msgpack_pack_str_body(pk, "job", 3);
        msgpack_pack_str(pk, 1);
        msgpack_pack_str_body(pk, "j", 1);
        msgpack_pack_str(pk, 5);
        msgpack_pack_str_body(pk, "state", 5);
        msgpack_pack_str(pk, 4);
        msgpack_pack_str_body(pk, "done", 4);
        msgpack_pack_str(pk, 7);
        msgpack_pack_str_body(pk, "success", 7);
        msgpack_pack_int(pk, 3);
        msgpack_pack_str(pk, 9);
        msgpack_pack_str_body(pk, "providers", 9);
        msgpack_pack_map(pk, 1);
        msgpack_pack_str(pk, 1);
        msgpack_pack_str_body(pk, "a", 1);
        msgpack_pack_int(pk, 1);
        break;
    default: /* deep nesting */
        for (int i = 0; i < 10; i++)
            msgpack_pack_array(pk, 1);
        msgpack_pack_nil(pk);
        break;
    }
}

static void s_pack_key(msgpack_packer *pk, const char *key)
{
    msgpack_pack_str(pk, strlen(key));
    msgpack_pack_str_body(pk, key, strlen(key));
}

/* Packs the reply for action to a request whose id is id. */
static void s_fake_pack(msgpack_sbuffer *sbuf, s_fake_action_t action, uint64_t id, int shape)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sbuf, msgpack_sbuffer_write);
    if (action == FAKE_GARBAGE) {
        msgpack_sbuffer_write(sbuf, "\xc1\xff not msgpack", 14);
        return;
    }
    msgpack_pack_map(&pk, 3);
    s_pack_key(&pk, "ok");
    msgpack_pack_true(&pk);
    s_pack_key(&pk, "id");
    msgpack_pack_uint64(&pk, action == FAKE_WRONG_ID ? id + 1000 : id);
    s_pack_key(&pk, "result");
    if (action == FAKE_BAD_SHAPE) {
        msgpack_pack_array(&pk, 1);
        msgpack_pack_int(&pk, 1);
    } else if (action == FAKE_SHAPES) {
        s_pack_shape(&pk, shape);
    } else {
        msgpack_pack_map(&pk, 7);
        s_pack_key(&pk, "status");
        s_pack_key(&pk, "ok");
        s_pack_key(&pk, "version");
        s_pack_key(&pk, "fake");
        s_pack_key(&pk, "state_version");
        msgpack_pack_int(&pk, 7);
        s_pack_key(&pk, "providers");
        msgpack_pack_int(&pk, 0);
        s_pack_key(&pk, "models");
        msgpack_pack_int(&pk, 0);
        s_pack_key(&pk, "uptime_s");
        msgpack_pack_double(&pk, 1.5);
        s_pack_key(&pk, "jobs_running");
        msgpack_pack_int(&pk, 0);
    }
}

static uint64_t s_request_id(const void *data, size_t size)
{
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    size_t offset = 0;
    uint64_t id = 0;
    if (msgpack_unpack_next(&unpacked, data, size, &offset) == MSGPACK_UNPACK_SUCCESS) {
        const msgpack_object *value = s_map_get(&unpacked.data, "id");
        if (value && value->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            id = value->via.u64;
    }
    msgpack_unpacked_destroy(&unpacked);
    return id;
}

static void *s_fake_run(void *arg)
{
    s_fake_t *fake = arg;
    while (!atomic_load(&fake->stop)) {
        zmq_pollitem_t item = {.socket = fake->router, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, 20) <= 0)
            continue;
        /* [identity, empty, body] from a REQ peer */
        zmq_msg_t frames[3];
        int count = 0, more = 1;
        while (more) {
            zmq_msg_t msg;
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, fake->router, 0) < 0) {
                zmq_msg_close(&msg);
                break;
            }
            more = zmq_msg_more(&msg);
            if (count < 3)
                frames[count++] = msg;
            else
                zmq_msg_close(&msg);
        }
        int index = atomic_fetch_add(&fake->received, 1);
        s_fake_action_t action =
            (size_t)index < fake->action_count ? fake->actions[index] : fake->default_action;
        if (count == 3 && action != FAKE_IGNORE) {
            uint64_t id = s_request_id(zmq_msg_data(&frames[2]), zmq_msg_size(&frames[2]));
            msgpack_sbuffer sbuf;
            msgpack_sbuffer_init(&sbuf);
            s_fake_pack(&sbuf, action, id, index);
            zmq_send(fake->router, zmq_msg_data(&frames[0]), zmq_msg_size(&frames[0]), ZMQ_SNDMORE);
            zmq_send(fake->router, "", 0, ZMQ_SNDMORE);
            zmq_send(fake->router, sbuf.data, sbuf.size,
                     action == FAKE_TWO_FRAMES ? ZMQ_SNDMORE : 0);
            if (action == FAKE_TWO_FRAMES)
                zmq_send(fake->router, "extra", 5, 0);
            msgpack_sbuffer_destroy(&sbuf);
        }
        for (int i = 0; i < count; i++)
            zmq_msg_close(&frames[i]);
    }
    return NULL;
}

static s_fake_t *s_fake_start(const s_fake_action_t *actions, size_t count,
                              s_fake_action_t default_action)
{
    s_fake_t *fake = calloc(1, sizeof *fake);
    assert_non_null(fake);
    assert_true(count <= FAKE_MAX_ACTIONS);
    if (count)
        memcpy(fake->actions, actions, count * sizeof *actions);
    fake->action_count = count;
    fake->default_action = default_action;
    atomic_init(&fake->received, 0);
    atomic_init(&fake->stop, false);
    fake->ctx = zmq_ctx_new();
    assert_non_null(fake->ctx);
    fake->router = zmq_socket(fake->ctx, ZMQ_ROUTER);
    assert_non_null(fake->router);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(fake->router, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_bind(fake->router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof fake->endpoint;
    assert_int_equal(zmq_getsockopt(fake->router, ZMQ_LAST_ENDPOINT, fake->endpoint, &len), 0);
    /* The socket moves to the thread; pthread_create is the memory barrier it needs. */
    assert_int_equal(pthread_create(&fake->thread, NULL, s_fake_run, fake), 0);
    return fake;
}

static int s_fake_stop(s_fake_t **fake_p)
{
    s_fake_t *fake = *fake_p;
    atomic_store(&fake->stop, true);
    pthread_join(fake->thread, NULL);
    int received = atomic_load(&fake->received);
    zmq_close(fake->router);
    zmq_ctx_term(fake->ctx);
    free(fake);
    *fake_p = NULL;
    return received;
}

static pmclient_t *s_fake_client(const s_fake_t *fake, int timeout_ms, int retries)
{
    pmclient_t *client = pmclient_new(fake->endpoint);
    assert_non_null(client);
    assert_int_equal(pmclient_set_timeout(client, timeout_ms), 0);
    assert_int_equal(pmclient_set_retries(client, retries), 0);
    return client;
}

static void test_timeout_reads_retried_writes_not(void **state)
{
    (void)state;
    /* requests 1-3 get nothing; request 4 a real answer */
    const s_fake_action_t actions[] = {FAKE_IGNORE, FAKE_IGNORE, FAKE_IGNORE, FAKE_HEALTH};
    s_fake_t *fake = s_fake_start(actions, 4, FAKE_HEALTH);
    pmclient_t *c = s_fake_client(fake, 300, 2);
    pm_health_t *health = NULL;

    /* a read: two attempts, then "timeout" */
    s_assert_error(c, pmclient_health(c, &health), "timeout", NULL);
    assert_null(health);
    assert_true(pmclient_error_is_unreachable(c));

    /* a write: sent once only */
    pm_provider_spec_t spec = {.provider = "x", .name = "x", .base_api_url = "http://x"};
    s_assert_error(c, pmclient_set_provider(c, &spec, NULL), "timeout", NULL);
    assert_non_null(strstr(pmclient_error_message(c), "not resent"));

    /* still usable: the next request is answered */
    assert_int_equal(pmclient_health(c, &health), 0);
    assert_string_equal(health->version, "fake");
    assert_int_equal(health->state_version, 7);
    assert_true(health->uptime_s > 1.4 && health->uptime_s < 1.6);
    pm_health_free(&health);
    assert_string_equal(pmclient_error_code(c), "");
    pmclient_destroy(&c);
    assert_int_equal(s_fake_stop(&fake), 4);
}

static void test_nothing_listening_and_bad_endpoint(void **state)
{
    (void)state;
    int port, unused;
    assert_int_equal(s_free_ports(&port, &unused), 0);
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    pmclient_t *c = pmclient_new(endpoint);
    assert_non_null(c);
    assert_int_equal(pmclient_set_timeout(c, 100), 0);
    assert_int_equal(pmclient_set_retries(c, 2), 0);
    bool found = true;
    s_assert_error(c, pmclient_contains(c, "x", &found), "timeout", NULL);
    s_assert_error(c, pmclient_contains(c, "x", &found), "timeout", NULL);
    assert_false(found);
    assert_string_equal(pmclient_endpoint(c), endpoint);
    /* option limits */
    assert_int_equal(pmclient_set_timeout(c, 0), -1);
    assert_int_equal(pmclient_set_retries(c, 0), -1);
    assert_int_equal(pmclient_set_curve(c, "short", "short", "short"), -1);
    assert_string_equal(pmclient_error_code(c), "bad_request");
    pmclient_destroy(&c);
    assert_null(c);
    pmclient_destroy(&c);

    c = pmclient_new("nonsense://nowhere");
    assert_non_null(c);
    s_assert_error(c, pmclient_contains(c, "x", &found), "transport", NULL);
    assert_true(pmclient_error_is_unreachable(c));
    pmclient_destroy(&c);
}

static void test_stale_and_broken_replies(void **state)
{
    (void)state;
    const s_fake_action_t actions[] = {FAKE_WRONG_ID,   FAKE_HEALTH,   FAKE_GARBAGE, FAKE_BAD_SHAPE,
                                       FAKE_TWO_FRAMES, FAKE_WRONG_ID, FAKE_HEALTH};
    s_fake_t *fake = s_fake_start(actions, sizeof actions / sizeof actions[0], FAKE_HEALTH);
    pmclient_t *c = s_fake_client(fake, 2000, 2);
    pm_health_t *health = NULL;

    /* a reply with another id is dropped, the read is resent and answered */
    assert_int_equal(pmclient_health(c, &health), 0);
    assert_string_equal(health->version, "fake");
    pm_health_free(&health);
    assert_int_equal(atomic_load(&fake->received), 2);

    s_assert_error(c, pmclient_health(c, &health), "bad_reply", NULL);
    assert_null(health);
    s_assert_error(c, pmclient_health(c, &health), "bad_reply", NULL);
    s_assert_error(c, pmclient_health(c, &health), "bad_reply", NULL);
    /* a write answered with another id is not resent */
    assert_int_equal(pmclient_persist(c, NULL, NULL), -1);
    assert_string_equal(pmclient_error_code(c), "bad_reply");
    assert_int_equal(atomic_load(&fake->received), 6);
    /* and the client still works */
    assert_int_equal(pmclient_health(c, &health), 0);
    pm_health_free(&health);
    pmclient_destroy(&c);
    assert_int_equal(s_fake_stop(&fake), 7);
}

/* Every typed call against every odd result shape: -1 "bad_reply" or a success, never a
 * crash or a leak (valgrind). */
static void test_every_op_survives_odd_shapes(void **state)
{
    (void)state;
    s_fake_t *fake = s_fake_start(NULL, 0, FAKE_SHAPES);
    pmclient_t *c = s_fake_client(fake, 5000, 1);
    int failures = 0, calls = 0;
/* Each call either succeeds or fails with bad_reply; counts both. */
#define CHECK(call)                                                                                \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        calls++;                                                                                   \
        if (rc_ != 0) {                                                                            \
            failures++;                                                                            \
            assert_int_equal(rc_, -1);                                                             \
            assert_string_equal(pmclient_error_code(c), "bad_reply");                              \
        }                                                                                          \
    } while (0)
    for (int round = 0; round < 12; round++) {
        pm_provider_t *p = NULL;
        pm_provider_list_t *list = NULL;
        pm_strings_t *strings = NULL;
        pm_merged_t *merged = NULL;
        pm_matches_t *matches = NULL;
        pm_health_t *health = NULL;
        pm_job_t *job = NULL;
        char *text = NULL;
        bool flag = false;
        int64_t number = 0;
        CHECK(pmclient_get(c, "k", &p));
        pm_provider_free(&p);
        CHECK(pmclient_getitem(c, "k", &p));
        pm_provider_free(&p);
        CHECK(pmclient_contains(c, "k", &flag));
        CHECK(pmclient_keys(c, &strings));
        pm_strings_free(&strings);
        CHECK(pmclient_values(c, &list));
        pm_provider_list_free(&list);
        CHECK(pmclient_items(c, &list));
        pm_provider_list_free(&list);
        CHECK(pmclient_merged_models(c, &merged));
        pm_merged_free(&merged);
        CHECK(pmclient_valid_scoped_models(c, &strings));
        pm_strings_free(&strings);
        CHECK(pmclient_resolve(c, "m", &p, &text));
        pm_provider_free(&p);
        free(text);
        CHECK(pmclient_validate_model(c, "m", &text));
        free(text);
        CHECK(pmclient_available_models(c, NULL, &strings));
        pm_strings_free(&strings);
        CHECK(pmclient_short_name(c, "m", &text));
        free(text);
        CHECK(pmclient_find_model(c, "m", &matches));
        pm_matches_free(&matches);
        CHECK(pmclient_discover(c, false, false, NULL, &text));
        free(text);
        CHECK(pmclient_job_status(c, "j", &job));
        pm_job_free(&job);
        CHECK(pmclient_persist(c, &text, &number));
        free(text);
        CHECK(pmclient_remove_provider(c, "k", &flag));
        CHECK(pmclient_set_short_name(c, "k", "l", "s", &p));
        pm_provider_free(&p);
        CHECK(pmclient_health(c, &health));
        pm_health_free(&health);
    }
#undef CHECK
    /* most shapes are wrong for most ops */
    assert_true(failures > calls / 2);
    assert_true(failures < calls);
    pmclient_destroy(&c);
    s_fake_stop(&fake);
}

/* ---------------------------------------------------------------------------------- pmctl */

/* Runs pmctl with args; its stdout text goes to *out (caller frees, may be NULL). Returns
 * the exit status. */
static int s_pmctl(s_suite_t *suite, const char *const *args, char **out)
{
    const char *binary = getenv("PM_PMCTL");
    assert_non_null(binary);
    char out_path[PATH_MAX + 16], err_path[PATH_MAX + 16];
    snprintf(out_path, sizeof out_path, "%s/pmctl.out", suite->dir);
    snprintf(err_path, sizeof err_path, "%s/pmctl.err", suite->dir);
    char *argv[MAX_ARGS];
    size_t argc = 0;
    argv[argc++] = "pmctl";
    for (size_t i = 0; args[i] && argc < MAX_ARGS - 1; i++)
        argv[argc++] = (char *)args[i];
    argv[argc] = NULL;
    pid_t pid = s_spawn(binary, argv, out_path, err_path);
    assert_true(pid > 0);
    int status = s_wait_exit(pid);
    if (out)
        *out = s_read_file(out_path);
    return status;
}

static void test_pmctl_exit_codes_and_masking(void **state)
{
    s_suite_t *suite = *state;
    const char *ep = suite->daemon.endpoint;
    char *out = NULL;
    int port, unused;
    assert_int_equal(s_free_ports(&port, &unused), 0);
    char dead[64];
    snprintf(dead, sizeof dead, "tcp://127.0.0.1:%d", port);

    /* usage */
    assert_int_equal(s_pmctl(suite, (const char *[]){NULL}, NULL), 2);
    assert_int_equal(s_pmctl(suite, (const char *[]){"no-such-command", NULL}, NULL), 2);
    assert_int_equal(s_pmctl(suite, (const char *[]){"--endpoint", ep, "provider", NULL}, NULL), 2);
    assert_int_equal(s_pmctl(suite, (const char *[]){"--timeout", "zero", "health", NULL}, NULL),
                     2);
    assert_int_equal(s_pmctl(suite, (const char *[]){"--help", NULL}, &out), 0);
    assert_non_null(strstr(out, "set-provider"));
    /* The synopsis (the text before the first blank line) is generated from the option
     * tables: every global option is in it. */
    char *blank = strstr(out, "\n\n");
    assert_non_null(blank);
    *blank = '\0';
    assert_non_null(strstr(out, "[--retries N]"));
    assert_non_null(strstr(out, "[--events-endpoint EP]"));
    assert_non_null(strstr(out, "[--curve-server-key F --curve-client-key F]"));
    free(out);
    assert_int_equal(s_pmctl(suite, (const char *[]){"discover", "--help", NULL}, &out), 0);
    assert_non_null(strstr(out, "--no-wait"));
    free(out);
    assert_int_equal(s_pmctl(suite, (const char *[]){"set-provider", "--help", NULL}, &out), 0);
    blank = strstr(out, "\n\n");
    assert_non_null(blank);
    *blank = '\0';
    assert_non_null(strstr(out, "--api-key-env VAR"));
    assert_non_null(strstr(out, "[--no-models]"));
    assert_non_null(strstr(out, "--name N --url URL"));
    free(out);
    /* The table's rules: required options, alternatives, pairs; all usage errors. */
    assert_int_equal(
        s_pmctl(suite,
                (const char *[]){"--endpoint", ep, "set-provider", "x", "--name", "N", "--url",
                                 "http://127.0.0.1:9/v1", "--api-key", "a", "--no-api-key", NULL},
                NULL),
        2);
    assert_int_equal(s_pmctl(suite,
                             (const char *[]){"--endpoint", ep, "set-provider", "x", "--name", "N",
                                              "--url", "http://127.0.0.1:9/v1", "--api-key-env",
                                              "PM_TEST_NO_SUCH_VARIABLE", NULL},
                             NULL),
                     2);
    assert_int_equal(
        s_pmctl(suite,
                (const char *[]){"--endpoint", ep, "--curve-server-key", "s.pub", "health", NULL},
                NULL),
        2);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "watch", "--count", "0", NULL}, NULL), 2);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "models", "extra", NULL}, NULL), 2);
    /* unreachable */
    assert_int_equal(s_pmctl(suite,
                             (const char *[]){"--endpoint", dead, "--timeout", "100", "--retries",
                                              "1", "health", NULL},
                             NULL),
                     3);
    /* the service says no */
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "provider", "nope", NULL}, NULL), 1);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "resolve", "no-such-model", NULL}, NULL),
        1);
    /* ok */
    assert_int_equal(s_pmctl(suite, (const char *[]){"--endpoint", ep, "health", NULL}, &out), 0);
    assert_non_null(strstr(out, "status"));
    free(out);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "--json", "health", NULL}, &out), 0);
    assert_non_null(strstr(out, "\"status\": \"ok\""));
    free(out);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "resolve", "testprov/ma", NULL}, &out),
        0);
    assert_non_null(strstr(out, "model-long-a"));
    free(out);

    /* human output masks the key; --json shows what the service sent */
    assert_int_equal(s_pmctl(suite, (const char *[]){"--endpoint", ep, "providers", NULL}, &out),
                     0);
    assert_non_null(strstr(out, "testprov"));
    assert_non_null(strstr(out, TEST_API_KEY_MASKED));
    assert_null(strstr(out, TEST_API_KEY));
    assert_null(strstr(out, "SECRET"));
    free(out);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "provider", "testprov", NULL}, &out), 0);
    assert_non_null(strstr(out, TEST_API_KEY_MASKED));
    assert_null(strstr(out, "SECRET"));
    free(out);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "--json", "provider", "testprov", NULL},
                &out),
        0);
    assert_non_null(strstr(out, TEST_API_KEY));
    free(out);

    /* writes: set-provider, alias, remove-provider */
    assert_int_equal(
        s_pmctl(suite,
                (const char *[]){"--endpoint", ep, "set-provider", "ctlprov", "--name", "Ctl",
                                 "--url", "http://127.0.0.1:9/v1", "--api-key", TEST_API_KEY,
                                 "--model", "m1=s1", "--model", "m2", "--invalid", "x1", NULL},
                &out),
        0);
    assert_null(strstr(out, "SECRET"));
    free(out);
    pm_provider_t *p = NULL;
    assert_int_equal(pmclient_getitem(suite->client, "ctlprov", &p), 0);
    assert_string_equal(p->api_key, TEST_API_KEY);
    assert_int_equal(p->model_count, 2);
    assert_string_equal(p->model_short[0], "s1");
    assert_string_equal(p->model_short[1], "m2");
    assert_int_equal(p->invalid_count, 1);
    pm_provider_free(&p);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "alias", "ctlprov", "m2", "s2", NULL},
                NULL),
        0);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "alias", "ctlprov", "zz", "s2", NULL},
                NULL),
        1);
    assert_int_equal(s_pmctl(suite, (const char *[]){"--endpoint", ep, "find", "s2", NULL}, &out),
                     0);
    assert_non_null(strstr(out, "ctlprov"));
    free(out);
    assert_int_equal(s_pmctl(suite,
                             (const char *[]){"--endpoint", ep, "remove-provider", "ctlprov", NULL},
                             NULL),
                     0);
    assert_int_equal(
        s_pmctl(suite,
                (const char *[]){"--endpoint", ep, "remove-provider", suite->builtin_key, NULL},
                NULL),
        1);
    /* a set-provider without its required options is a usage error, sent nowhere */
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "set-provider", "x", NULL}, NULL), 2);

    /* discover of a provider without a key: skipped, success */
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "discover", "--provider", "nokey", NULL},
                &out),
        0);
    assert_non_null(strstr(out, "Skipping nokey: No valid API key configured"));
    assert_non_null(strstr(out, "Provider configurations persisted to YAML"));
    free(out);
    assert_int_equal(s_pmctl(suite, (const char *[]){"--endpoint", ep, "job", "nope", NULL}, NULL),
                     1);
    assert_int_equal(s_pmctl(suite, (const char *[]){"--endpoint", ep, "persist", NULL}, &out), 0);
    assert_non_null(strstr(out, "openaicompat-providers.yaml"));
    free(out);
}

static void test_pmctl_watch(void **state)
{
    s_suite_t *suite = *state;
    const char *binary = getenv("PM_PMCTL");
    assert_non_null(binary);
    char out_path[PATH_MAX + 16];
    snprintf(out_path, sizeof out_path, "%s/watch.out", suite->dir);
    char *argv[] = {
        "pmctl", "--events-endpoint", suite->daemon.events_endpoint, "watch", "--count", "1", NULL};
    pid_t pid = s_spawn(binary, argv, out_path, NULL);
    assert_true(pid > 0);
    pm_provider_spec_t spec = {
        .provider = "watched", .name = "W", .base_api_url = "http://127.0.0.1:9/v1"};
    int status = -1;
    /* keep changing state until the subscriber has seen one event */
    for (int waited = 0; waited < WAIT_LIMIT_MS; waited += 100) {
        assert_int_equal(pmclient_set_provider(suite->client, &spec, NULL), 0);
        int raw;
        if (waitpid(pid, &raw, WNOHANG) == pid) {
            status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
            break;
        }
        s_sleep_ms(100);
    }
    if (status == -1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    assert_int_equal(status, 0);
    char *out = s_read_file(out_path);
    assert_non_null(out);
    assert_non_null(strstr(out, "state_version"));
    assert_non_null(strstr(out, "watched"));
    free(out);
}

static void test_pmctl_keygen(void **state)
{
    s_suite_t *suite = *state;
    char dir[PATH_MAX + 16], path[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/keys", suite->dir);
    assert_int_equal(s_pmctl(suite, (const char *[]){"keygen", dir, "--name", "t1", NULL}, NULL),
                     0);
    struct stat st;
    snprintf(path, sizeof path, "%s/t1.key", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char public_a[PMCLIENT_Z85_KEY_LEN + 1], public_b[PMCLIENT_Z85_KEY_LEN + 1];
    char secret[PMCLIENT_Z85_KEY_LEN + 1], err[256];
    assert_int_equal(pmclient_curve_read_key_file(path, public_a, secret, err, sizeof err), 0);
    assert_int_equal(strlen(secret), PMCLIENT_Z85_KEY_LEN);
    snprintf(path, sizeof path, "%s/t1.pub", dir);
    assert_int_equal(pmclient_curve_read_key_file(path, public_b, NULL, err, sizeof err), 0);
    assert_string_equal(public_a, public_b);
    /* a .pub file has no secret */
    assert_int_equal(pmclient_curve_read_key_file(path, public_b, secret, err, sizeof err), -1);
    /* never overwritten */
    assert_int_equal(s_pmctl(suite, (const char *[]){"keygen", dir, "--name", "t1", NULL}, NULL),
                     1);
    assert_int_equal(s_pmctl(suite, (const char *[]){"keygen", dir, "--name", "../x", NULL}, NULL),
                     1);
}

/* A second daemon with CURVE: the allowed client gets in, others time out. */
/* --------------------------------------------------------- model status (protocol v1.1) */

/* The fake's scenario "acme": two models that answer (with /models metadata in the OpenAI,
 * OpenRouter-like and Groq-like spellings) and one that does not exist (404). */
#define UPSTREAM_CONFIG                                                                            \
    "{\"scenarios\": {\"acme\": {\"key\": null, \"models\": [\"good-a\", \"good-b\", \"bad-c\"],"  \
    " \"meta\": {\"good-a\": {\"context_length\": 32000, \"owned_by\": \"acme-labs\","             \
    " \"created\": 1700000000}, \"good-b\": {\"context_window\": 8192,"                            \
    " \"max_completion_tokens\": 1024}}, \"behaviour\": {\"bad-c\": \"not_found\"}}}}"

/* Creates provider key on the fake's scenario "acme" (started on first use). */
static void s_status_provider(s_suite_t *suite, const char *key)
{
    if (suite->upstream.pid <= 0)
        assert_int_equal(fake_upstream_start(&suite->upstream, UPSTREAM_CONFIG), 0);
    char url[128];
    snprintf(url, sizeof url, "%s/acme/v1", suite->upstream.origin);
    pm_provider_spec_t spec = {.provider = key,
                               .name = "Acme",
                               .base_api_url = url,
                               .has_api_key = true,
                               .api_key = TEST_API_KEY};
    assert_int_equal(pmclient_set_provider(suite->client, &spec, NULL), 0);
}

static pm_job_t *s_wait_job(pmclient_t *c, const char *job_id)
{
    pm_job_t *job = NULL;
    for (int waited = 0; waited < WAIT_LIMIT_MS; waited += WAIT_STEP_MS) {
        pm_job_free(&job);
        assert_int_equal(pmclient_job_status(c, job_id, &job), 0);
        if (strcmp(job->state, "running") != 0)
            return job;
        s_sleep_ms(WAIT_STEP_MS);
    }
    fail_msg("job %s still running", job_id);
    return NULL;
}

static uint64_t s_status_version(pmclient_t *client)
{
    pm_health_t *health = NULL;
    assert_int_equal(pmclient_health(client, &health), 0);
    assert_non_null(health->protocol);
    assert_string_equal(health->protocol, "1.1");
    assert_true(health->has_status_version);
    uint64_t version = health->status_version;
    pm_health_free(&health);
    return version;
}

/* The final state of model in the transitions of events (the last "to"), or NULL; *from_nil
 * says whether its first transition came from nil. */
static const char *s_final_state(pm_event_t *const *events, size_t count, const char *provider,
                                 const char *model, bool *from_nil)
{
    const char *to = NULL;
    bool first = true;
    for (size_t i = 0; i < count; i++) {
        if (strcmp(events[i]->provider, provider) != 0)
            continue;
        for (size_t j = 0; j < events[i]->change_count; j++) {
            if (strcmp(events[i]->changes[j].model, model) != 0)
                continue;
            if (first && from_nil)
                *from_nil = events[i]->changes[j].from == NULL;
            first = false;
            to = events[i]->changes[j].to;
        }
    }
    return to;
}

static void test_model_status_after_discovery(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    pmclient_events_t *events = pmclient_events_new(suite->daemon.events_endpoint);
    assert_non_null(events);
    /* Let the subscription reach the daemon: a providers event must get through first. */
    s_status_provider(suite, "acme");
    int64_t version = 0;
    int rc = 0;
    for (int attempt = 0; attempt < 100 && rc != 1; attempt++) {
        s_status_provider(suite, "acme");
        rc = pmclient_events_next(events, 300, &version, NULL);
    }
    assert_int_equal(rc, 1);
    while (pmclient_events_next(events, 300, &version, NULL) == 1) {
    }
    uint64_t before = s_status_version(c);

    char *job_id = NULL;
    assert_int_equal(pmclient_discover(c, true, true, "acme", &job_id), 0);
    pm_job_t *job = s_wait_job(c, job_id);
    assert_int_equal(job->success, 1);
    assert_string_equal(job->kind, "discover");
    assert_int_equal(job->providers[0].valid, 2);
    assert_int_equal(job->providers[0].invalid, 1);
    pm_job_free(&job);
    free(job_id);
    uint64_t after = s_status_version(c);
    assert_true(after > before);

    /* Records: valid_models order, then invalid_models; every field as the upstream made it. */
    pm_status_list_t *list = NULL;
    assert_int_equal(pmclient_model_status(c, "acme", NULL, NULL, -1, &list), 0);
    assert_int_equal(list->count, 3);
    const pm_model_status_t *a = &list->records[0], *b = &list->records[1],
                            *bad = &list->records[2];
    assert_string_equal(a->provider, "acme");
    assert_string_equal(a->model, "good-a");
    assert_string_equal(a->state, "valid");
    assert_true(a->in_valid_models);
    assert_int_equal(a->listed, 1);
    assert_false(isnan(a->first_seen_at));
    assert_true(a->last_listed_at >= a->first_seen_at);
    assert_false(isnan(a->last_checked_at));
    assert_true(a->last_ok_at == a->last_checked_at);
    assert_true(a->latency_ms >= 0.0);
    assert_int_equal(a->failures, 0);
    assert_false(a->has_last_error);
    assert_true(a->meta.has_context_length);
    assert_int_equal(a->meta.context_length, 32000);
    assert_false(a->meta.has_max_output_tokens);
    assert_string_equal(a->meta.owned_by, "acme-labs");
    assert_true(a->meta.has_created);
    assert_int_equal(a->meta.created, 1700000000);

    assert_string_equal(b->model, "good-b");
    assert_string_equal(b->state, "valid");
    assert_int_equal(b->meta.context_length, 8192); /* from context_window */
    assert_true(b->meta.has_max_output_tokens);
    assert_int_equal(b->meta.max_output_tokens, 1024);
    assert_string_equal(b->meta.owned_by, "fake");
    assert_false(b->meta.has_created);

    assert_string_equal(bad->model, "bad-c");
    assert_string_equal(bad->state, "invalid");
    assert_false(bad->in_valid_models);
    assert_int_equal(bad->listed, 1);
    assert_false(isnan(bad->last_checked_at));
    assert_true(isnan(bad->last_ok_at));
    assert_true(isnan(bad->latency_ms));
    assert_true(bad->has_last_error);
    assert_string_equal(bad->last_error.error_class, "model");
    assert_int_equal(bad->last_error.status, 404);
    assert_null(strstr(bad->last_error.message, TEST_API_KEY));
    pm_status_list_free(&list);

    /* Filters: one model of every provider; states; the empty list; bad input. */
    assert_int_equal(pmclient_model_status(c, NULL, "bad-c", NULL, -1, &list), 0);
    assert_int_equal(list->count, 1);
    assert_string_equal(list->records[0].provider, "acme");
    pm_status_list_free(&list);
    const char *states[] = {"invalid", "failing"};
    assert_int_equal(pmclient_model_status(c, "acme", NULL, states, 2, &list), 0);
    assert_int_equal(list->count, 1);
    assert_string_equal(list->records[0].model, "bad-c");
    pm_status_list_free(&list);
    assert_int_equal(pmclient_model_status(c, "acme", NULL, states, 0, &list), 0);
    assert_int_equal(list->count, 0);
    pm_status_list_free(&list);
    assert_int_equal(pmclient_model_status(c, "acme", "no-such-model", NULL, -1, &list), 0);
    assert_int_equal(list->count, 0);
    pm_status_list_free(&list);
    const char *sleepy[] = {"sleepy"};
    s_assert_error(c, pmclient_model_status(c, NULL, NULL, sleepy, 1, &list), "bad_request", NULL);
    assert_null(list);
    s_assert_error(c, pmclient_model_status(c, "nope", NULL, NULL, -1, &list), "not_found",
                   "Provider 'nope' not found");

    /* provider_status: acme listed fine; every provider in registry order, the built-in
     * ones without a key. */
    pm_provider_status_list_t *providers = NULL;
    assert_int_equal(pmclient_provider_status(c, "acme", &providers), 0);
    assert_int_equal(providers->count, 1);
    assert_string_equal(providers->providers[0].provider, "acme");
    assert_string_equal(providers->providers[0].state, "ok");
    assert_true(providers->providers[0].has_models_listed);
    assert_int_equal(providers->providers[0].models_listed, 3);
    assert_false(isnan(providers->providers[0].last_list_ok_at));
    assert_false(providers->providers[0].has_last_error);
    pm_provider_status_list_free(&providers);
    assert_int_equal(pmclient_provider_status(c, NULL, &providers), 0);
    pm_strings_t *keys = NULL;
    assert_int_equal(pmclient_keys(c, &keys), 0);
    assert_int_equal(providers->count, keys->count);
    for (size_t i = 0; i < keys->count; i++)
        assert_string_equal(providers->providers[i].provider, keys->items[i]);
    assert_string_equal(providers->providers[0].provider, suite->builtin_key);
    assert_string_equal(providers->providers[0].state, "no_key");
    pm_strings_free(&keys);
    pm_provider_status_list_free(&providers);
    s_assert_error(c, pmclient_provider_status(c, "nope", &providers), "not_found",
                   "Provider 'nope' not found");
    assert_null(providers);

    /* models events: every model's first transition comes from nil, the last one ends in its
     * state, and the last event carries the status_version health reports. */
    pm_event_t *seen[32] = {0};
    size_t count = 0;
    uint64_t last_version = 0;
    while (count < 32 && last_version < after) {
        pm_event_t *event = NULL;
        assert_int_equal(pmclient_events_recv(events, 10000, &event), 1);
        if (event->kind == PMCLIENT_EVENT_MODELS_CHANGED) {
            last_version = event->status_version;
            seen[count++] = event;
        } else {
            pm_event_free(&event);
        }
    }
    assert_int_equal(last_version, after);
    const char *const models[] = {"good-a", "good-b", "bad-c"};
    const char *const finals[] = {"valid", "valid", "invalid"};
    for (size_t i = 0; i < 3; i++) {
        bool from_nil = false;
        const char *final = s_final_state(seen, count, "acme", models[i], &from_nil);
        assert_non_null(final);
        assert_string_equal(final, finals[i]);
        assert_true(from_nil);
    }
    for (size_t i = 0; i < count; i++)
        pm_event_free(&seen[i]);
    pmclient_events_destroy(&events);
}

static void test_verify_job(void **state)
{
    s_suite_t *suite = *state;
    pmclient_t *c = suite->client;
    char *job_id = NULL;

    /* valid_models only: good-a and good-b are probed, bad-c (the negative cache) is not */
    assert_int_equal(pmclient_verify_models(c, "acme", NULL, -1, false, true, &job_id), 0);
    pm_job_t *job = s_wait_job(c, job_id);
    free(job_id);
    assert_string_equal(job->kind, "verify");
    assert_string_equal(job->state, "done");
    assert_int_equal(job->success, 1);
    assert_int_equal(job->provider_count, 1);
    assert_string_equal(job->providers[0].key, "acme");
    assert_string_equal(job->providers[0].state, "ok");
    assert_int_equal(job->providers[0].discovered, 3);
    assert_int_equal(job->providers[0].checked, 2);
    assert_int_equal(job->providers[0].ok, 2);
    assert_int_equal(job->providers[0].failed, 0);
    assert_int_equal(job->providers[0].transient, 0);
    pm_job_free(&job);

    /* include_invalid, one model: bad-c is probed and still does not exist */
    const char *models[] = {"bad-c"};
    assert_int_equal(pmclient_verify_models(c, "acme", models, 1, true, false, &job_id), 0);
    job = s_wait_job(c, job_id);
    free(job_id);
    assert_string_equal(job->kind, "verify");
    assert_int_equal(job->success, 1);
    assert_int_equal(job->providers[0].checked, 1);
    assert_int_equal(job->providers[0].ok, 0);
    assert_int_equal(job->providers[0].failed, 1);
    pm_job_free(&job);
    pm_status_list_t *list = NULL;
    assert_int_equal(pmclient_model_status(c, "acme", "bad-c", NULL, -1, &list), 0);
    assert_int_equal(list->count, 1);
    assert_string_equal(list->records[0].state, "invalid");
    pm_status_list_free(&list);

    s_assert_error(c, pmclient_verify_models(c, "nope", NULL, -1, false, true, &job_id),
                   "not_found", "Provider 'nope' not found");
    assert_null(job_id);
}

static void s_assert_contains(const char *text, const char *fragment)
{
    assert_non_null(text);
    if (!strstr(text, fragment))
        fail_msg("output lacks '%s':\n%s", fragment, text);
}

static void test_pmctl_status_verify_providers(void **state)
{
    s_suite_t *suite = *state;
    const char *ep = suite->daemon.endpoint;
    char *out = NULL;

    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "status", "--provider", "acme", NULL},
                &out),
        0);
    s_assert_contains(out, "PROVIDER  MODEL   STATE    LAST OK  LATENCY  FAILURES  CONTEXT\n");
    s_assert_contains(out, "acme      good-a  valid    ");
    s_assert_contains(out, "s ago   "); /* checked moments ago */
    s_assert_contains(out, "0         32000\n");
    s_assert_contains(out, "0         8192\n");
    s_assert_contains(out, "acme      bad-c   invalid  -        -        ");
    assert_null(strstr(out, TEST_API_KEY));
    free(out);
    assert_int_equal(s_pmctl(suite,
                             (const char *[]){"--endpoint", ep, "status", "-p", "acme", "--state",
                                              "invalid", NULL},
                             &out),
                     0);
    assert_null(strstr(out, "good-a"));
    s_assert_contains(out, "bad-c");
    free(out);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "--json", "status", "-m", "good-b", NULL},
                &out),
        0);
    s_assert_contains(out, "\"model\": \"good-b\"");
    s_assert_contains(out, "\"max_output_tokens\": 1024");
    s_assert_contains(out, "\"last_error\": null");
    free(out);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "status", "-p", "nope", NULL}, NULL), 1);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "status", "-s", "sleepy", NULL}, NULL),
        1);

    /* verify: progress and the job's lines, exit 0; a provider that does not exist: 1 */
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "verify", "-p", "acme", NULL}, &out), 0);
    s_assert_contains(out, "acme  ok          3 listed, 2 checked, 2 ok, 0 failed, 0 transient");
    assert_null(strstr(out, TEST_API_KEY));
    free(out);
    assert_int_equal(
        s_pmctl(suite, (const char *[]){"--endpoint", ep, "verify", "-p", "nope", NULL}, NULL), 1);

    /* providers: the STATUS column */
    assert_int_equal(s_pmctl(suite, (const char *[]){"--endpoint", ep, "providers", NULL}, &out),
                     0);
    s_assert_contains(out, "  STATUS\n");
    s_assert_contains(out, "  ok\n");     /* acme */
    s_assert_contains(out, "  no_key\n"); /* the built-in providers */
    free(out);
    assert_int_equal(s_pmctl(suite, (const char *[]){"--endpoint", ep, "health", NULL}, &out), 0);
    s_assert_contains(out, "protocol       1.1\n");
    s_assert_contains(out, "status_version ");
    free(out);
}

/* pmctl watch prints the models events of a discovery, one line per model. */
static void test_pmctl_watch_models(void **state)
{
    s_suite_t *suite = *state;
    const char *binary = getenv("PM_PMCTL");
    assert_non_null(binary);
    char out_path[PATH_MAX + 32];
    snprintf(out_path, sizeof out_path, "%s/watch-models.out", suite->dir);
    char *argv[] = {"pmctl", "--events-endpoint", suite->daemon.events_endpoint, "watch", NULL};
    pid_t pid = s_spawn(binary, argv, out_path, NULL);
    assert_true(pid > 0);
    /* A new provider per round (a subscriber misses what precedes its subscription): its
     * discovery makes first sightings, from nil. */
    char key[32], expected[128];
    bool found = false;
    for (int round = 0; round < 20 && !found; round++) {
        snprintf(key, sizeof key, "watch%d", round);
        s_status_provider(suite, key);
        char *job_id = NULL;
        assert_int_equal(pmclient_discover(suite->client, true, false, key, &job_id), 0);
        pm_job_t *job = s_wait_job(suite->client, job_id);
        pm_job_free(&job);
        free(job_id);
        snprintf(expected, sizeof expected, ": %s/good-a: - -> ", key);
        for (int waited = 0; waited < 2000 && !found; waited += 100) {
            char *out = s_read_file(out_path);
            found = out && strstr(out, expected);
            free(out);
            if (!found)
                s_sleep_ms(100);
        }
    }
    kill(pid, SIGTERM);
    assert_int_equal(s_wait_exit(pid), 0);
    assert_true(found);
    char *out = s_read_file(out_path);
    /* "status_version N: watchK/bad-c: ... -> invalid" at the end of the story */
    snprintf(expected, sizeof expected, ": %s/bad-c: ", key);
    s_assert_contains(out, expected);
    s_assert_contains(out, " -> invalid\n");
    s_assert_contains(out, "status_version ");
    assert_null(strstr(out, TEST_API_KEY));
    free(out);
}

static void test_curve(void **state)
{
    s_suite_t *suite = *state;
    char keys[PATH_MAX + 16], clients[PATH_MAX + 16], err[256];
    char server_key[PATH_MAX + 32], server_pub[PATH_MAX + 32];
    char client_key[PATH_MAX + 32], intruder_key[PATH_MAX + 32];
    snprintf(keys, sizeof keys, "%s/curve-keys", suite->dir);
    snprintf(clients, sizeof clients, "%s/curve-clients", suite->dir);
    assert_int_equal(pmclient_curve_keygen(keys, "server", err, sizeof err), 0);
    assert_int_equal(pmclient_curve_keygen(keys, "intruder", err, sizeof err), 0);
    assert_int_equal(pmclient_curve_keygen(clients, "client", err, sizeof err), 0);
    snprintf(server_key, sizeof server_key, "%s/server.key", keys);
    snprintf(server_pub, sizeof server_pub, "%s/server.pub", keys);
    snprintf(client_key, sizeof client_key, "%s/client.key", clients);
    snprintf(intruder_key, sizeof intruder_key, "%s/intruder.key", keys);

    const char *extra[] = {"--curve-secret-key-file", server_key, "--curve-clients-dir", clients,
                           NULL};
    s_daemon_t daemon;
    assert_int_equal(s_daemon_start(&daemon, suite->dir, "curve", extra), 0);

    pmclient_t *c = pmclient_new(daemon.endpoint);
    assert_non_null(c);
    assert_int_equal(pmclient_set_timeout(c, 10000), 0);
    assert_int_equal(pmclient_set_curve_files(c, server_pub, client_key), 0);
    pm_health_t *health = NULL;
    assert_int_equal(pmclient_health(c, &health), 0);
    assert_string_equal(health->status, "ok");
    pm_health_free(&health);
    pmclient_destroy(&c);

    /* wrong files */
    c = pmclient_new(daemon.endpoint);
    s_assert_error(c, pmclient_set_curve_files(c, client_key, "/nonexistent/x.key"), "bad_request",
                   NULL);
    s_assert_error(c, pmclient_set_curve_files(c, server_pub, server_pub), "bad_request", NULL);
    pmclient_destroy(&c);

    /* a key pair the server does not know, and no CURVE at all */
    c = pmclient_new(daemon.endpoint);
    assert_int_equal(pmclient_set_timeout(c, 300), 0);
    assert_int_equal(pmclient_set_retries(c, 1), 0);
    assert_int_equal(pmclient_set_curve_files(c, server_pub, intruder_key), 0);
    s_assert_error(c, pmclient_health(c, &health), "timeout", NULL);
    pmclient_destroy(&c);
    c = pmclient_new(daemon.endpoint);
    assert_int_equal(pmclient_set_timeout(c, 300), 0);
    assert_int_equal(pmclient_set_retries(c, 1), 0);
    s_assert_error(c, pmclient_health(c, &health), "timeout", NULL);
    pmclient_destroy(&c);

    /* pmctl with the key files */
    assert_int_equal(
        s_pmctl(suite,
                (const char *[]){"--endpoint", daemon.endpoint, "--curve-server-key", server_pub,
                                 "--curve-client-key", client_key, "health", NULL},
                NULL),
        0);
    assert_int_equal(s_daemon_stop(&daemon), 0);
}

static void test_daemon_stops_cleanly(void **state)
{
    s_suite_t *suite = *state;
    pmclient_destroy(&suite->client);
    assert_int_equal(s_daemon_stop(&suite->daemon), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_and_keys_of_a_fresh_daemon),
        cmocka_unit_test(test_set_provider_then_every_read),
        cmocka_unit_test(test_resolution),
        cmocka_unit_test(test_available_short_find),
        cmocka_unit_test(test_set_short_name),
        cmocka_unit_test(test_set_provider_update_and_bad_requests),
        cmocka_unit_test(test_remove_provider),
        cmocka_unit_test(test_persist),
        cmocka_unit_test(test_discover_and_job_status),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_call_raw_and_last_reply),
        cmocka_unit_test(test_request_too_large),
        cmocka_unit_test(test_timeout_reads_retried_writes_not),
        cmocka_unit_test(test_nothing_listening_and_bad_endpoint),
        cmocka_unit_test(test_stale_and_broken_replies),
        cmocka_unit_test(test_every_op_survives_odd_shapes),
        cmocka_unit_test(test_pmctl_exit_codes_and_masking),
        cmocka_unit_test(test_pmctl_watch),
        cmocka_unit_test(test_pmctl_keygen),
        cmocka_unit_test(test_model_status_after_discovery),
        cmocka_unit_test(test_verify_job),
        cmocka_unit_test(test_pmctl_status_verify_providers),
        cmocka_unit_test(test_pmctl_watch_models),
        cmocka_unit_test(test_curve),
        cmocka_unit_test(test_daemon_stops_cleanly),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
