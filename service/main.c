/*
 * provider-manager: the daemon. Loads the configuration and the registry (the seed's five
 * layering steps), starts the writer thread (which owns the state, the YAML file, the events
 * socket and discovery), and runs the request front end in this thread until SIGTERM/SIGINT.
 * SIGHUP reloads the config file and the key directories (s_reload) without a restart. A read
 * replica (--replica-of, --replica-events) runs the follower thread in place of the writer and
 * touches no data dir (s_run_replica).
 *
 * Exit status: 0 clean stop; 1 runtime failure; 2 usage or configuration error (bad flag,
 * unreadable or invalid config file); 3 data directory or providers file unusable (cannot be
 * created or written, or the file does not parse: it is left untouched); 4 an endpoint cannot
 * be bound (e.g. the port is already in use), the metrics endpoint included.
 */
#include "auth.h"
#include "config.h"
#include "follower.h"
#include "front.h"
#include "log.h"
#include "metrics.h"
#include "metrics_http.h"
#include "registry.h"
#include "store.h"
#include "writer.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zmq.h>

enum {
    EXIT_RUNTIME = 1,
    EXIT_USAGE = 2,
    EXIT_DATA = 3,
    EXIT_BIND = 4,
};

/* The zguide's interrupt self-pipe: the handler only writes a byte; the front end polls
 * the read end beside its sockets. */
static int s_signal_pipe[2] = {-1, -1};

static void s_on_signal(int signum)
{
    int saved = errno;
    char byte = signum == SIGHUP ? FRONT_SIGNAL_RELOAD : 1;
    ssize_t rc = write(s_signal_pipe[1], &byte, 1);
    (void)rc; /* the pipe is non-blocking; a full pipe already holds a byte to act on */
    errno = saved;
}

static int s_install_signals(void)
{
    if (pipe(s_signal_pipe) < 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        int flags = fcntl(s_signal_pipe[i], F_GETFL, 0);
        if (flags < 0 || fcntl(s_signal_pipe[i], F_SETFL, flags | O_NONBLOCK) < 0 ||
            fcntl(s_signal_pipe[i], F_SETFD, FD_CLOEXEC) < 0)
            return -1;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = s_on_signal;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGTERM, &action, NULL) < 0 || sigaction(SIGINT, &action, NULL) < 0 ||
        sigaction(SIGHUP, &action, NULL) < 0)
        return -1;
    /* A peer that goes away must not kill us through a write. */
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* A core file would hold every API key in memory, environment keys included, so none is
 * written. Only the soft limit is lowered: an operator can raise it (prlimit) to debug. */
static void s_no_core_dumps(void)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_CORE, &limit) == 0) {
        limit.rlim_cur = 0;
        if (setrlimit(RLIMIT_CORE, &limit) == 0)
            return;
    }
    log_warn("cannot turn core dumps off: %s", strerror(errno));
}

static void s_warn(void *arg, const char *message)
{
    (void)arg;
    log_warn("%s", message);
}

static const char *s_getenv(const char *name)
{
    return getenv(name);
}

/* What a reload needs: the command line (flags and environment keep their precedence over
 * the file), the configuration the daemon started with (restart-only settings are compared
 * with it), and the parts that take new settings. */
typedef struct {
    int argc;
    char **argv;
    config_t *running;
    auth_t *auth;
    writer_t *writer; /* NULL on a read replica: it has no writer settings to reload */
} s_reload_ctx_t;

static bool s_text_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

/* Logs each setting of next that needs a restart and differs from the running one. */
static void s_note_restart_only(const config_t *running, const config_t *next)
{
    const struct {
        const char *name;
        bool changed;
    } settings[] = {
        {"endpoint", s_text_differs(running->endpoint, next->endpoint)},
        {"events_endpoint", s_text_differs(running->events_endpoint, next->events_endpoint)},
        {"data_dir", s_text_differs(running->data_dir, next->data_dir)},
        {"replica.of", s_text_differs(running->replica_of, next->replica_of)},
        {"replica.events", s_text_differs(running->replica_events, next->replica_events)},
        {"replica.server_key_file",
         s_text_differs(running->replica_server_key_file, next->replica_server_key_file)},
        {"workers", running->workers != next->workers},
        {"security.curve_secret_key_file",
         s_text_differs(running->curve_secret_key_file, next->curve_secret_key_file)},
        {"security.allow_insecure", running->allow_insecure != next->allow_insecure},
        {"discovery.per_provider_limit",
         running->discovery.per_provider_limit != next->discovery.per_provider_limit},
        {"discovery.connect_timeout_ms",
         running->discovery.connect_timeout_ms != next->discovery.connect_timeout_ms},
        {"discovery.request_timeout_ms",
         running->discovery.request_timeout_ms != next->discovery.request_timeout_ms},
        {"discovery.max_retries", running->discovery.max_retries != next->discovery.max_retries},
        {"discovery.retry_budget_ms",
         running->discovery.retry_budget_ms != next->discovery.retry_budget_ms},
        {"discovery.max_tokens", running->discovery.max_tokens != next->discovery.max_tokens},
        {"discovery.list_max_bytes",
         running->discovery.list_max_bytes != next->discovery.list_max_bytes},
        {"discovery.probe_max_bytes",
         running->discovery.probe_max_bytes != next->discovery.probe_max_bytes},
    };
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
        if (settings[i].changed)
            log_warn("reload: %s changed; it needs a restart and was not applied",
                     settings[i].name);
    }
}

/* SIGHUP: everything is read and checked first; if anything fails nothing changes and one
 * line says why. Runs in the front end's thread, between two requests: requests in flight
 * are not failed. */
static bool s_reload(void *arg)
{
    s_reload_ctx_t *ctx = arg;
    config_t next;
    char err[1024];
    int rc = config_load(&next, ctx->argc, ctx->argv, s_getenv, err, sizeof err);
    if (rc != 0) {
        if (rc > 0)
            config_clear(&next);
        log_error("reload refused, the old configuration stays: %s",
                  rc > 0 ? "unexpected --help or --version" : err);
        return false;
    }
    auth_keys_t *keys = NULL;
    if (auth_curve_on(ctx->auth)) {
        if (!next.curve_clients_dir || !*next.curve_clients_dir)
            snprintf(err, sizeof err, "CURVE needs a clients directory (--curve-clients-dir)");
        else
            keys = auth_keys_load(next.curve_clients_dir, next.curve_readers_dir, err, sizeof err);
        if (!keys) {
            log_error("reload refused, the old configuration stays: %s", err);
            config_clear(&next);
            return false;
        }
    }
    if (ctx->writer && writer_reload(ctx->writer, &next, &ctx->running->overrides) < 0) {
        log_error("reload refused, the old configuration stays: cannot hand the settings to the "
                  "writer");
        auth_keys_destroy(&keys);
        config_clear(&next);
        return false;
    }
    /* Nothing below can fail. */
    s_note_restart_only(ctx->running, &next);
    size_t admins = auth_keys_count(keys, AUTH_ROLE_ADMIN);
    size_t readers = auth_keys_count(keys, AUTH_ROLE_READER);
    auth_set_keys(ctx->auth, &keys);
    if (auth_curve_on(ctx->auth))
        log_info("reload: applied (config %s; %zu admin keys, %zu reader keys)",
                 next.config_path ? next.config_path : "none", admins, readers);
    else
        log_info("reload: applied (config %s)", next.config_path ? next.config_path : "none");
    /* Last, so that the line above is logged at the level the operator had until now. */
    log_set_level(next.log_level);
    /* The overrides handed to the writer are now the running ones (the next reload compares
     * with them); the old ones go with next. */
    store_layer_t overrides = ctx->running->overrides;
    ctx->running->overrides = next.overrides;
    next.overrides = overrides;
    config_clear(&next);
    return true;
}

/* A read replica (--replica-of, --replica-events): the follower thread in place of the writer.
 * It never touches the data dir (no providers file, no status journal, no lock) and runs no
 * discovery: its state is the primary's. Returns the exit status. */
static int s_run_replica(config_t *cfg, int argc, char **argv, bool with_metrics)
{
    char err[1024];
    int status = EXIT_RUNTIME;
    void *ctx = NULL;
    auth_t *auth = NULL;
    follower_t *follower = NULL;
    front_t *front = NULL;
    snapshot_t *first = NULL;
    metrics_t *metrics = NULL;
    metrics_http_t *metrics_http = NULL;
    bool bind_failed = false;
    if (cfg->overrides.count > 0)
        log_warn("read replica: the config file's providers: section is ignored (%zu "
                 "provider overrides); the registry is the primary's",
                 cfg->overrides.count);
    if (s_install_signals() < 0) {
        log_error("cannot install signal handlers: %s", strerror(errno));
        return EXIT_RUNTIME;
    }
    ctx = zmq_ctx_new();
    if (!ctx) {
        log_error("cannot create the ZeroMQ context: %s", zmq_strerror(errno));
        return EXIT_RUNTIME;
    }
    auth = auth_new(ctx, cfg, err, sizeof err);
    if (!auth) {
        log_error("%s", err);
        status = EXIT_USAGE;
        goto done;
    }
    follower = follower_new(ctx, cfg, auth, &bind_failed, err, sizeof err);
    if (!follower) {
        log_error("%s", err);
        status = bind_failed ? EXIT_BIND : EXIT_RUNTIME;
        goto done;
    }
    if (with_metrics) {
        metrics = metrics_new(PM_VERSION);
        if (!metrics) {
            log_error("out of memory");
            goto done;
        }
        /* /healthz says 503 "Replica not yet synchronised with <EP>" until the first
         * snapshot, then 200 for good (also while the primary is away). */
        follower_set_metrics(follower, metrics);
        metrics_http =
            metrics_http_new(cfg->metrics_endpoint, metrics, auth, &bind_failed, err, sizeof err);
        if (!metrics_http) {
            log_error("%s", err);
            status = bind_failed ? EXIT_BIND : EXIT_RUNTIME;
            goto done;
        }
    }
    first = follower_first_snapshot(follower);
    if (!first) {
        log_error("out of memory");
        goto done;
    }
    front = front_new(ctx, cfg, auth, follower_endpoint(follower), &first, &bind_failed, err,
                      sizeof err);
    if (!front) {
        log_error("%s", err);
        status = bind_failed ? EXIT_BIND : EXIT_RUNTIME;
        goto done;
    }
    if (front_set_replica(front, cfg->replica_of, follower_seen, follower) < 0) {
        log_error("out of memory");
        goto done;
    }
    front_set_handoffs(front, follower_handoffs(follower));
    log_info("provider-manager %s: read replica of %s (events %s)", PM_VERSION, cfg->replica_of,
             cfg->replica_events);
    log_info("ready: requests on %s, events on %s", cfg->endpoint, cfg->events_endpoint);
    if (metrics_http) {
        log_info("metrics on http://%s/metrics (port %d)", cfg->metrics_endpoint,
                 metrics_http_port(metrics_http));
        front_set_metrics(front, metrics);
    }
    /* SIGHUP: the key directories and the log level (no writer settings on a replica). */
    s_reload_ctx_t reload = {argc, argv, cfg, auth, NULL};
    front_set_reload(front, s_reload, &reload);
    status = front_run(front, s_signal_pipe[0]) == 0 ? 0 : EXIT_RUNTIME;
    metrics_set_serving(metrics, false, "stopping");
    front_destroy(&front);
    follower_destroy(&follower);
    log_info("stopped");
done:
    front_destroy(&front);
    snapshot_destroy(&first);
    follower_destroy(&follower);
    metrics_http_destroy(&metrics_http);
    metrics_destroy(&metrics);
    auth_destroy(&auth);
    if (ctx)
        zmq_ctx_term(ctx);
    return status;
}

int main(int argc, char **argv)
{
    /* glibc gives every thread that allocates an arena of its own, and memory freed in one
     * (the writer's old registries) is not reused by another: two arenas are plenty for a
     * front end, a writer and a few workers, and keep the resident size down. */
    mallopt(M_ARENA_MAX, 2);
    config_t cfg;
    char err[1024];
    int rc = config_load(&cfg, argc, argv, s_getenv, err, sizeof err);
    if (rc == 1)
        return 0; /* --help / --version */
    if (rc < 0) {
        fprintf(stderr, "provider-manager: %s\n", err);
        fprintf(stderr, "Try 'provider-manager --help'.\n");
        return EXIT_USAGE;
    }
    log_set_level(cfg.log_level);
    s_no_core_dumps();

    int status = EXIT_RUNTIME;
    registry_t *registry = NULL;
    void *ctx = NULL;
    writer_t *writer = NULL;
    front_t *front = NULL;
    auth_t *auth = NULL;
    int lock_fd = -1;
    snapshot_t *first = NULL;
    bool bind_failed = false;
    metrics_t *metrics = NULL;
    metrics_http_t *metrics_http = NULL;
    /* "off" lets an environment variable turn off what a config file (the image's) turns on:
     * an empty variable counts as unset. */
    bool with_metrics =
        cfg.metrics_endpoint && *cfg.metrics_endpoint && strcmp(cfg.metrics_endpoint, "off") != 0;

    if (auth_check_config(&cfg, err, sizeof err) < 0) {
        log_error("%s", err);
        status = EXIT_USAGE;
        goto done;
    }
    if (with_metrics &&
        metrics_http_check_endpoint(cfg.metrics_endpoint,
                                    cfg.curve_secret_key_file && *cfg.curve_secret_key_file,
                                    cfg.allow_insecure, err, sizeof err) < 0) {
        log_error("%s", err);
        status = EXIT_USAGE;
        goto done;
    }
    if (config_is_replica(&cfg)) {
        status = s_run_replica(&cfg, argc, argv, with_metrics);
        goto done;
    }
    if (store_prepare_dir(cfg.data_dir, err, sizeof err) < 0) {
        log_error("data dir unusable: %s", err);
        status = EXIT_DATA;
        goto done;
    }
    lock_fd = store_lock_dir(cfg.data_dir, err, sizeof err);
    if (lock_fd < 0) {
        log_error("data dir unusable: %s", err);
        status = EXIT_DATA;
        goto done;
    }
    int stale = store_remove_stale_temps(cfg.data_dir, err, sizeof err);
    if (stale > 0)
        log_warn("removed %d temp file(s) left by an interrupted persist", stale);
    if (config_build_registry(&cfg, s_getenv, &registry, s_warn, NULL, err, sizeof err) < 0) {
        log_error("cannot load providers: %s", err);
        status = EXIT_DATA;
        goto done;
    }
    if (s_install_signals() < 0) {
        log_error("cannot install signal handlers: %s", strerror(errno));
        goto done;
    }
    ctx = zmq_ctx_new();
    if (!ctx) {
        log_error("cannot create the ZeroMQ context: %s", zmq_strerror(errno));
        goto done;
    }
    auth = auth_new(ctx, &cfg, err, sizeof err);
    if (!auth) {
        log_error("%s", err);
        status = EXIT_USAGE;
        goto done;
    }
    writer = writer_new(ctx, &cfg, auth, s_getenv, &registry, &bind_failed, err, sizeof err);
    if (!writer) {
        log_error("%s", err);
        status = bind_failed ? EXIT_BIND : EXIT_RUNTIME;
        goto done;
    }
    if (with_metrics) {
        /* Before the front end exists: /healthz answers 503 "starting" until it serves. */
        metrics = metrics_new(PM_VERSION);
        if (!metrics) {
            log_error("out of memory");
            goto stop_writer;
        }
        writer_set_metrics(writer, metrics);
        metrics_http =
            metrics_http_new(cfg.metrics_endpoint, metrics, auth, &bind_failed, err, sizeof err);
        if (!metrics_http) {
            log_error("%s", err);
            status = bind_failed ? EXIT_BIND : EXIT_RUNTIME;
            goto stop_writer;
        }
    }
    first = writer_first_snapshot(writer);
    if (!first) {
        log_error("out of memory");
        goto stop_writer;
    }
    size_t providers = registry_count(first->registry);
    size_t models = registry_model_count(first->registry);
    front =
        front_new(ctx, &cfg, auth, writer_endpoint(writer), &first, &bind_failed, err, sizeof err);
    if (!front) {
        log_error("%s", err);
        status = bind_failed ? EXIT_BIND : EXIT_RUNTIME;
        goto stop_writer;
    }
    log_info("provider-manager %s: %zu providers, %zu models, data dir %s", PM_VERSION, providers,
             models, cfg.data_dir);
    log_info("ready: requests on %s, events on %s, %d discovery workers", cfg.endpoint,
             cfg.events_endpoint, cfg.workers);
    if (metrics_http) {
        log_info("metrics on http://%s/metrics (port %d)", cfg.metrics_endpoint,
                 metrics_http_port(metrics_http));
        front_set_metrics(front, metrics);
        metrics_set_serving(metrics, true, NULL);
    }
    front_set_handoffs(front, writer_handoffs(writer));
    s_reload_ctx_t reload = {argc, argv, &cfg, auth, writer};
    front_set_reload(front, s_reload, &reload);
    status = front_run(front, s_signal_pipe[0]) == 0 ? 0 : EXIT_RUNTIME;
    metrics_set_serving(metrics, false, "stopping");
    front_destroy(&front);
    writer_destroy(&writer);
    metrics_http_destroy(&metrics_http);
    metrics_destroy(&metrics);
    log_info("stopped");
    goto done;

stop_writer:
    snapshot_destroy(&first);
    writer_stop(writer);
    writer_destroy(&writer);
    metrics_http_destroy(&metrics_http);
    metrics_destroy(&metrics);
done:
    auth_destroy(&auth);
    if (ctx)
        zmq_ctx_term(ctx);
    registry_destroy(&registry);
    config_clear(&cfg);
    if (lock_fd >= 0)
        close(lock_fd);
    return status;
}
