/*
 * daemon_fixture: the real daemon for the integration suites (see daemon_fixture.h).
 */
#define _XOPEN_SOURCE 700 /* nftw(), mkdtemp() */
#include "daemon_fixture.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

void daemon_fixture_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int daemon_fixture_free_ports(int *a, int *b)
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

pid_t daemon_fixture_spawn(const char *path, char *const argv[], const char *out_path,
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

char *daemon_fixture_read_file(const char *path)
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

int daemon_fixture_wait_exit(pid_t pid)
{
    int status = 0;
    for (int waited = 0; waited < DAEMON_FIXTURE_WAIT_LIMIT_MS;
         waited += DAEMON_FIXTURE_WAIT_STEP_MS) {
        pid_t rc = waitpid(pid, &status, WNOHANG);
        if (rc == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (rc < 0 && errno != EINTR)
            return -1;
        daemon_fixture_sleep_ms(DAEMON_FIXTURE_WAIT_STEP_MS);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

int daemon_fixture_make_dir(char *dir, size_t size, const char *prefix, bool in_memory)
{
    const char *base = getenv("TMPDIR");
    struct stat st;
    if (!base || !*base)
        base = in_memory && stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) &&
                       access("/dev/shm", W_OK | X_OK) == 0
                   ? "/dev/shm"
                   : "/tmp";
    int len = snprintf(dir, size, "%s/%s-XXXXXX", base, prefix);
    if (len < 0 || (size_t)len >= size || !mkdtemp(dir)) {
        if (size > 0)
            dir[0] = '\0';
        return -1;
    }
    return 0;
}

static int s_remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void daemon_fixture_remove_dir(const char *dir)
{
    if (dir && *dir)
        nftw(dir, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Spawns the daemon as daemon describes it and waits for "ready". 0 or -1. */
static int s_launch(daemon_fixture_t *daemon, const char *const *extra)
{
    const char *binary = getenv("PM_DAEMON");
    if (!binary || !*binary) {
        fprintf(stderr, "PM_DAEMON is not set (run through ctest)\n");
        return -1;
    }
    char *argv[DAEMON_FIXTURE_MAX_ARGS];
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
    for (size_t i = 0; extra && extra[i]; i++) {
        if (argc >= DAEMON_FIXTURE_MAX_ARGS - 1) {
            fprintf(stderr, "daemon_fixture: too many arguments\n");
            return -1;
        }
        argv[argc++] = (char *)extra[i];
    }
    argv[argc] = NULL;

    daemon->pid = daemon_fixture_spawn(binary, argv, NULL, daemon->log_path);
    if (daemon->pid < 0)
        return -1;
    for (int waited = 0; waited < DAEMON_FIXTURE_WAIT_LIMIT_MS;
         waited += DAEMON_FIXTURE_WAIT_STEP_MS) {
        char *log = daemon_fixture_read_file(daemon->log_path);
        bool ready = log && strstr(log, " ready") != NULL; /* not "already" */
        free(log);
        if (ready)
            return 0;
        int status;
        if (waitpid(daemon->pid, &status, WNOHANG) == daemon->pid) {
            char *text = daemon_fixture_read_file(daemon->log_path);
            fprintf(stderr, "daemon exited before ready:\n%s\n", text ? text : "");
            free(text);
            daemon->pid = -1;
            return -1;
        }
        daemon_fixture_sleep_ms(DAEMON_FIXTURE_WAIT_STEP_MS);
    }
    fprintf(stderr, "daemon not ready after %d ms\n", DAEMON_FIXTURE_WAIT_LIMIT_MS);
    kill(daemon->pid, SIGKILL);
    waitpid(daemon->pid, NULL, 0);
    daemon->pid = -1;
    return -1;
}

int daemon_fixture_start_on(daemon_fixture_t *daemon, const char *dir, const char *name, int port,
                            int events_port, const char *const *extra)
{
    memset(daemon, 0, sizeof *daemon);
    daemon->pid = -1;
    daemon->port = port;
    daemon->events_port = events_port;
    if (snprintf(daemon->name, sizeof daemon->name, "%s", name) >= (int)sizeof daemon->name ||
        snprintf(daemon->dir, sizeof daemon->dir, "%s", dir) >= (int)sizeof daemon->dir)
        return -1;
    snprintf(daemon->endpoint, sizeof daemon->endpoint, "tcp://127.0.0.1:%d", port);
    snprintf(daemon->events_endpoint, sizeof daemon->events_endpoint, "tcp://127.0.0.1:%d",
             events_port);
    if (snprintf(daemon->data_dir, sizeof daemon->data_dir, "%s/%s-data", dir, name) >=
            (int)sizeof daemon->data_dir ||
        snprintf(daemon->log_path, sizeof daemon->log_path, "%s/%s.log", dir, name) >=
            (int)sizeof daemon->log_path)
        return -1;
    return s_launch(daemon, extra);
}

int daemon_fixture_start(daemon_fixture_t *daemon, const char *dir, const char *name,
                         const char *const *extra)
{
    int port, events_port;
    memset(daemon, 0, sizeof *daemon);
    daemon->pid = -1;
    if (daemon_fixture_free_ports(&port, &events_port) != 0)
        return -1;
    return daemon_fixture_start_on(daemon, dir, name, port, events_port, extra);
}

int daemon_fixture_restart(daemon_fixture_t *daemon, const char *const *extra)
{
    if (daemon->pid > 0 || daemon->port <= 0)
        return -1;
    return s_launch(daemon, extra);
}

int daemon_fixture_stop(daemon_fixture_t *daemon)
{
    if (daemon->pid <= 0)
        return -1;
    kill(daemon->pid, SIGTERM);
    int status = daemon_fixture_wait_exit(daemon->pid);
    daemon->pid = -1;
    return status;
}

int daemon_fixture_kill(daemon_fixture_t *daemon)
{
    if (daemon->pid <= 0)
        return -1;
    kill(daemon->pid, SIGKILL);
    while (waitpid(daemon->pid, NULL, 0) < 0 && errno == EINTR) {
    }
    daemon->pid = -1;
    return 0;
}
