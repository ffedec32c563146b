/*
 * daemon_fixture: starts and stops the REAL daemon ($PM_DAEMON) for the integration suites
 * (test_pmclient, test_pmclient_replica_live). The daemon runs on free loopback ports with its
 * own --data-dir, its stderr in a log file, in an environment without PM_* settings or
 * provider API keys, so that what the developer's shell exports never changes a test. It can
 * be killed and started again on the same ports and data dir (a restart as an operator does
 * one). Also the small process and file helpers those suites share. Test code only: no cmocka
 * here, every call returns 0 / -1 (or NULL) and the suite asserts.
 */
#ifndef PM_DAEMON_FIXTURE_H
#define PM_DAEMON_FIXTURE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define DAEMON_FIXTURE_WAIT_STEP_MS 20
#define DAEMON_FIXTURE_WAIT_LIMIT_MS 30000 /* generous: only a broken daemon gets near it */
#define DAEMON_FIXTURE_MAX_ARGS 32

typedef struct {
    pid_t pid; /* -1 when not running */
    int port;
    int events_port;
    char endpoint[64];
    char events_endpoint[64];
    char data_dir[PATH_MAX];
    char log_path[PATH_MAX];
    char name[64];
    char dir[PATH_MAX];
} daemon_fixture_t;

/* Sleeps ms milliseconds, through signals. */
void daemon_fixture_sleep_ms(int ms);

/* Two distinct free loopback TCP ports (bound to port 0, read back, released). 0 or -1. */
int daemon_fixture_free_ports(int *a, int *b);

/* Starts path with argv (argv[0] included, NULL-terminated) in the cleaned environment, stdin
 * from /dev/null, stdout and stderr to the given files (NULL: /dev/null). The pid or -1. */
pid_t daemon_fixture_spawn(const char *path, char *const argv[], const char *out_path,
                           const char *err_path);

/* A whole (small) file as a new NUL-terminated string (caller frees); NULL on failure. */
char *daemon_fixture_read_file(const char *path);

/* Waits up to DAEMON_FIXTURE_WAIT_LIMIT_MS for the child to exit: its exit status, or -1
 * (killed by a signal, or still running, in which case it is killed). */
int daemon_fixture_wait_exit(pid_t pid);

/* Creates a fresh directory <base>/<prefix>-XXXXXX and writes its path into dir. The base
 * is $TMPDIR when set; else, with in_memory, /dev/shm when it is a writable directory (a
 * suite that makes thousands of writes then measures the daemon, not the disk's fsync: a
 * killed daemon's files survive in the page cache all the same); else /tmp. 0 or -1. */
int daemon_fixture_make_dir(char *dir, size_t size, const char *prefix, bool in_memory);

/* Removes dir and everything under it (best effort). */
void daemon_fixture_remove_dir(const char *dir);

/* Starts the daemon on two free ports with --data-dir dir/<name>-data (its log in
 * dir/<name>.log) and the extra arguments (NULL-terminated, may be NULL), and waits for its
 * "ready" log line. 0, or -1 (the log is then printed on stderr). */
int daemon_fixture_start(daemon_fixture_t *daemon, const char *dir, const char *name,
                         const char *const *extra);

/* The same on the given ports (for a daemon that callers already point at). 0 or -1. */
int daemon_fixture_start_on(daemon_fixture_t *daemon, const char *dir, const char *name, int port,
                            int events_port, const char *const *extra);

/* Starts a stopped daemon again on the same ports and data dir, with the given extra
 * arguments; the log file starts over. 0 or -1. */
int daemon_fixture_restart(daemon_fixture_t *daemon, const char *const *extra);

/* SIGTERM and wait: the daemon's exit status, or -1. */
int daemon_fixture_stop(daemon_fixture_t *daemon);

/* SIGKILL and reap (a crash: nothing after the signal runs in the daemon). Safe when not
 * running. 0, or -1 when it was not running. */
int daemon_fixture_kill(daemon_fixture_t *daemon);

#endif
