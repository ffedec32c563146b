/*
 * fake_upstream.h: test-side helpers for tests/fake_upstream.py (the fake OpenAI-compatible
 * server): start it on 127.0.0.1, read its port, replace its config, read its statistics.
 * Header-only (static inline) so that each discovery test includes it without a library.
 */
#ifndef PM_TESTS_FAKE_UPSTREAM_H
#define PM_TESTS_FAKE_UPSTREAM_H

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FAKE_START_TIMEOUT_MS 10000
#define FAKE_HTTP_TIMEOUT_MS 10000
#define FAKE_MAX_REPLY (8 * 1024 * 1024)

typedef struct {
    pid_t pid;
    int stdin_fd; /* closing it stops the fake (--exit-on-eof), also if the test dies */
    int port;
    char origin[64]; /* http://127.0.0.1:PORT */
} fake_upstream_t;

/* The fake script: $PM_SOURCE_DIR/tests/fake_upstream.py, else next to this header. */
static inline void fake_upstream_script(char *out, size_t size)
{
    const char *source_dir = getenv("PM_SOURCE_DIR");
    if (source_dir != NULL && source_dir[0] != '\0') {
        snprintf(out, size, "%s/tests/fake_upstream.py", source_dir);
        return;
    }
    const char *here = __FILE__;
    const char *slash = strrchr(here, '/');
    int dir_len = slash ? (int)(slash - here) : 1;
    snprintf(out, size, "%.*s/fake_upstream.py", dir_len, slash ? here : ".");
}

/* Starts the fake with config (JSON text). 0, or -1. */
static inline int fake_upstream_start(fake_upstream_t *fake, const char *config)
{
    memset(fake, 0, sizeof *fake);
    fake->pid = -1;
    fake->stdin_fd = -1;
    char script[1024];
    fake_upstream_script(script, sizeof script);
    const char *python = getenv("PM_PYTHON");
    if (python == NULL || python[0] == '\0')
        python = "/usr/bin/python3";
    int out_pipe[2];
    int in_pipe[2];
    if (pipe(out_pipe) != 0)
        return -1;
    if (pipe(in_pipe) != 0) {
        close(out_pipe[0]);
        close(out_pipe[1]);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(out_pipe[0]);
        close(out_pipe[1]);
        close(in_pipe[0]);
        close(in_pipe[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(out_pipe[1], STDOUT_FILENO);
        dup2(in_pipe[0], STDIN_FILENO);
        close(out_pipe[0]);
        close(out_pipe[1]);
        close(in_pipe[0]);
        close(in_pipe[1]);
        execl(python, python, script, "--exit-on-eof", "--config-json", config, (char *)NULL);
        _exit(127);
    }
    close(out_pipe[1]);
    close(in_pipe[0]);
    fake->pid = pid;
    fake->stdin_fd = in_pipe[1];
    char line[32];
    size_t used = 0;
    int rc = -1;
    while (used + 1 < sizeof line) {
        struct pollfd pfd = {.fd = out_pipe[0], .events = POLLIN};
        int ready = poll(&pfd, 1, FAKE_START_TIMEOUT_MS);
        if (ready <= 0)
            break;
        ssize_t n = read(out_pipe[0], line + used, 1);
        if (n <= 0)
            break;
        if (line[used] == '\n') {
            line[used] = '\0';
            char *end = NULL;
            long port = strtol(line, &end, 10);
            if (end != line && *end == '\0' && port > 0 && port < 65536) {
                fake->port = (int)port;
                rc = 0;
            }
            break;
        }
        used++;
    }
    close(out_pipe[0]);
    if (rc != 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(fake->stdin_fd);
        fake->pid = -1;
        return -1;
    }
    snprintf(fake->origin, sizeof fake->origin, "http://127.0.0.1:%d", fake->port);
    return 0;
}

static inline void fake_upstream_stop(fake_upstream_t *fake)
{
    if (fake->pid > 0) {
        kill(fake->pid, SIGTERM);
        int status;
        while (waitpid(fake->pid, &status, 0) < 0 && errno == EINTR)
            ;
        fake->pid = -1;
    }
    if (fake->stdin_fd >= 0) {
        close(fake->stdin_fd);
        fake->stdin_fd = -1;
    }
}

typedef struct {
    char *data;
    size_t len;
} fake_buffer_t;

static inline size_t fake_upstream_collect(char *data, size_t size, size_t nmemb, void *arg)
{
    fake_buffer_t *buf = arg;
    size_t n = size * nmemb;
    if (buf->len + n > FAKE_MAX_REPLY)
        return 0;
    char *grown = realloc(buf->data, buf->len + n + 1);
    if (grown == NULL)
        return 0;
    buf->data = grown;
    memcpy(buf->data + buf->len, data, n);
    buf->len += n;
    buf->data[buf->len] = '\0';
    return n;
}

/* One blocking request to the fake's control API; the JSON reply (caller decrefs) or NULL. */
static inline json_t *fake_upstream_call(const fake_upstream_t *fake, const char *path,
                                         const char *post_body)
{
    CURL *easy = curl_easy_init();
    if (easy == NULL)
        return NULL;
    char url[256];
    snprintf(url, sizeof url, "%s%s", fake->origin, path);
    fake_buffer_t buf = {NULL, 0};
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)FAKE_HTTP_TIMEOUT_MS);
    curl_easy_setopt(easy, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, fake_upstream_collect);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &buf);
    if (post_body != NULL)
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, post_body);
    CURLcode rc = curl_easy_perform(easy);
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(easy);
    json_t *reply = NULL;
    if (rc == CURLE_OK && status == 200 && buf.data != NULL) {
        json_error_t jerr;
        reply = json_loadb(buf.data, buf.len, 0, &jerr);
    }
    free(buf.data);
    return reply;
}

/* Replaces the fake's config (and resets its statistics). 0, or -1. */
static inline int fake_upstream_configure(const fake_upstream_t *fake, const char *config)
{
    json_t *reply = fake_upstream_call(fake, "/_config", config);
    int rc = reply != NULL ? 0 : -1;
    json_decref(reply);
    return rc;
}

static inline int fake_upstream_reset(const fake_upstream_t *fake)
{
    json_t *reply = fake_upstream_call(fake, "/_reset", "");
    int rc = reply != NULL ? 0 : -1;
    json_decref(reply);
    return rc;
}

/* Changes one scenario at run time without resetting any counter: body is the JSON of
 * POST /_scenario ({"scenario": name, "models": [...], "set_behaviour": {model: B}, ...}, see
 * fake_upstream.py). 0, or -1. */
static inline int fake_upstream_update(const fake_upstream_t *fake, const char *body)
{
    json_t *reply = fake_upstream_call(fake, "/_scenario", body);
    int rc = reply != NULL ? 0 : -1;
    json_decref(reply);
    return rc;
}

/* Clears the counters of one scenario only (the others keep theirs). 0, or -1. */
static inline int fake_upstream_reset_scenario(const fake_upstream_t *fake, const char *name)
{
    json_t *body = json_pack("{s:s}", "scenario", name);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL)
        return -1;
    json_t *reply = fake_upstream_call(fake, "/_reset", text);
    free(text);
    int rc = reply != NULL ? 0 : -1;
    json_decref(reply);
    return rc;
}

/* The statistics of one scenario (a new reference; an empty object when it saw nothing). */
static inline json_t *fake_upstream_scenario(const fake_upstream_t *fake, const char *name)
{
    json_t *stats = fake_upstream_call(fake, "/_stats", NULL);
    json_t *scenario = json_object_get(json_object_get(stats, "scenarios"), name);
    json_t *result = scenario ? json_incref(scenario) : json_object();
    json_decref(stats);
    return result;
}

/* Small accessors over a scenario's statistics. */
static inline long fake_stat_int(const json_t *scenario, const char *field)
{
    return (long)json_integer_value(json_object_get(scenario, field));
}

static inline long fake_stat_probes(const json_t *scenario, const char *model)
{
    return (long)json_integer_value(json_object_get(json_object_get(scenario, "probe"), model));
}

static inline long fake_stat_path(const json_t *scenario, const char *path)
{
    return (long)json_integer_value(json_object_get(json_object_get(scenario, "paths"), path));
}

/* Arrival time (monotonic seconds, the fake's clock) of the index-th request with tag
 * ("list" or "probe:<model>"); -1 when there is none. */
static inline double fake_stat_arrival(const json_t *scenario, const char *tag, size_t index)
{
    json_t *times = json_object_get(json_object_get(scenario, "arrivals"), tag);
    json_t *value = json_array_get(times, index);
    return value ? json_number_value(value) : -1.0;
}

#endif
