/*
 * bench_echo: the transport's own limit. A bare single-threaded ZeroMQ REP server that answers
 * every request with one fixed msgpack reply, built once at start-up with the same shape and
 * the same bytes as the daemon's get_api_for_model_string reply:
 *   {"ok": true, "result": [ProviderConfig, long_name]}
 * It does not even decode the request, so whatever the daemon costs above this server is the
 * price of the service itself (decode, lookup, encode, ROUTER routing), not of ZeroMQ.
 *
 * Usage: bench_echo --endpoint EP [--endpoint EP ...] [--provider KEY] [--name NAME]
 *                   [--url URL] [--api-key KEY] [--model LONG=SHORT ...] [--invalid NAME ...]
 *                   [--result LONG]
 * Prints "ready" to stderr once every endpoint is bound, and the reply size to stdout. Stops
 * on SIGTERM / SIGINT.
 */
#include "pm_proto.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define ECHO_MAX_ENDPOINTS 4
#define ECHO_MAX_MODELS 64
#define ECHO_MAX_INVALID 64
#define ECHO_RECV_BUFFER (PM_PROTO_MAX_MESSAGE_SIZE + 1)

typedef struct {
    const char *endpoints[ECHO_MAX_ENDPOINTS];
    int endpoint_count;
    const char *provider;
    const char *name;
    const char *url;
    const char *api_key;
    const char *model_long[ECHO_MAX_MODELS];
    const char *model_short[ECHO_MAX_MODELS];
    char *model_text[ECHO_MAX_MODELS]; /* owned copies that the two arrays above point into */
    int model_count;
    const char *invalid[ECHO_MAX_INVALID]; /* invalid_models, in order */
    int invalid_count;
    const char *result;
} echo_args_t;

static volatile sig_atomic_t s_stop = 0;

static void s_on_signal(int signum)
{
    (void)signum;
    s_stop = 1;
}

static void s_usage(void)
{
    fprintf(stderr, "usage: bench_echo --endpoint EP [--endpoint EP ...] [--provider KEY] "
                    "[--name NAME] [--url URL] [--api-key KEY] [--model LONG=SHORT ...] "
                    "[--invalid NAME ...] [--result LONG]\n");
}

static void s_args_clear(echo_args_t *args)
{
    for (int i = 0; i < args->model_count; i++)
        free(args->model_text[i]);
    args->model_count = 0;
}

/* Fills args from argv; 0, or -1 after printing why. */
static int s_parse(echo_args_t *args, int argc, char **argv)
{
    memset(args, 0, sizeof *args);
    args->provider = "bench";
    args->name = "Bench Provider";
    args->url = "http://127.0.0.1:9/v1";
    args->api_key = NULL;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_echo: %s needs a value\n", flag);
            return -1;
        }
        const char *value = argv[++i];
        if (strcmp(flag, "--endpoint") == 0) {
            if (args->endpoint_count >= ECHO_MAX_ENDPOINTS) {
                fprintf(stderr, "bench_echo: at most %d endpoints\n", ECHO_MAX_ENDPOINTS);
                return -1;
            }
            args->endpoints[args->endpoint_count++] = value;
        } else if (strcmp(flag, "--provider") == 0) {
            args->provider = value;
        } else if (strcmp(flag, "--name") == 0) {
            args->name = value;
        } else if (strcmp(flag, "--url") == 0) {
            args->url = value;
        } else if (strcmp(flag, "--api-key") == 0) {
            args->api_key = value;
        } else if (strcmp(flag, "--result") == 0) {
            args->result = value;
        } else if (strcmp(flag, "--invalid") == 0) {
            if (args->invalid_count >= ECHO_MAX_INVALID) {
                fprintf(stderr, "bench_echo: at most %d invalid models\n", ECHO_MAX_INVALID);
                return -1;
            }
            args->invalid[args->invalid_count++] = value;
        } else if (strcmp(flag, "--model") == 0) {
            if (args->model_count >= ECHO_MAX_MODELS) {
                fprintf(stderr, "bench_echo: at most %d models\n", ECHO_MAX_MODELS);
                return -1;
            }
            char *text = strdup(value);
            if (!text) {
                fprintf(stderr, "bench_echo: out of memory\n");
                return -1;
            }
            int m = args->model_count++;
            args->model_text[m] = text;
            char *equals = strchr(text, '=');
            if (equals)
                *equals = '\0';
            args->model_long[m] = text;
            args->model_short[m] = equals ? equals + 1 : text;
        } else {
            fprintf(stderr, "bench_echo: unknown flag %s\n", flag);
            return -1;
        }
    }
    if (args->endpoint_count == 0) {
        fprintf(stderr, "bench_echo: --endpoint is required\n");
        return -1;
    }
    if (!args->result)
        args->result = args->model_count > 0 ? args->model_long[args->model_count - 1] : "m";
    return 0;
}

/* The fixed reply, packed the way service/wire.c packs a ProviderConfig. 0 or -1. */
static int s_build_reply(const echo_args_t *args, msgpack_sbuffer *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    int rc = pm_reply_ok_begin(&pk, NULL);
    rc |= msgpack_pack_array(&pk, 2);
    rc |= msgpack_pack_map(&pk, 6);
    rc |= pm_pack_str(&pk, "provider");
    rc |= pm_pack_str(&pk, args->provider);
    rc |= pm_pack_str(&pk, "name");
    rc |= pm_pack_str(&pk, args->name);
    rc |= pm_pack_str(&pk, "base_api_url");
    rc |= pm_pack_str(&pk, args->url);
    rc |= pm_pack_str(&pk, "api_key");
    rc |= pm_pack_str(&pk, args->api_key); /* NULL packs nil, as the daemon does */
    rc |= pm_pack_str(&pk, "valid_models");
    rc |= msgpack_pack_map(&pk, (uint32_t)args->model_count);
    for (int i = 0; i < args->model_count; i++) {
        rc |= pm_pack_str(&pk, args->model_long[i]);
        rc |= pm_pack_str(&pk, args->model_short[i]);
    }
    rc |= pm_pack_str(&pk, "invalid_models");
    rc |= msgpack_pack_array(&pk, (uint32_t)args->invalid_count);
    for (int i = 0; i < args->invalid_count; i++)
        rc |= pm_pack_str(&pk, args->invalid[i]);
    rc |= pm_pack_str(&pk, args->result);
    return rc == 0 ? 0 : -1;
}

/* Serves until a signal; 0, or -1 on a socket error. */
static int s_serve(void *socket, const msgpack_sbuffer *reply, char *buffer)
{
    while (!s_stop) {
        int size = zmq_recv(socket, buffer, ECHO_RECV_BUFFER, 0);
        if (size < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            if (errno == ETERM)
                return 0;
            fprintf(stderr, "bench_echo: recv: %s\n", zmq_strerror(errno));
            return -1;
        }
        while (zmq_send(socket, reply->data, reply->size, 0) < 0) {
            if (errno != EINTR || s_stop) {
                fprintf(stderr, "bench_echo: send: %s\n", zmq_strerror(errno));
                return -1;
            }
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    echo_args_t args;
    if (s_parse(&args, argc, argv) < 0) {
        s_usage();
        s_args_clear(&args);
        return 2;
    }
    int status = 1;
    void *ctx = NULL, *socket = NULL;
    char *buffer = NULL;
    msgpack_sbuffer reply;
    msgpack_sbuffer_init(&reply);

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = s_on_signal; /* no SA_RESTART: a blocked zmq_recv returns EINTR */
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGTERM, &action, NULL) < 0 || sigaction(SIGINT, &action, NULL) < 0) {
        perror("bench_echo: sigaction");
        goto cleanup;
    }
    if (s_build_reply(&args, &reply) < 0) {
        fprintf(stderr, "bench_echo: cannot build the reply\n");
        goto cleanup;
    }
    buffer = malloc(ECHO_RECV_BUFFER);
    ctx = zmq_ctx_new();
    if (!buffer || !ctx) {
        fprintf(stderr, "bench_echo: out of memory\n");
        goto cleanup;
    }
    socket = zmq_socket(ctx, ZMQ_REP);
    int zero = 0;
    int64_t max_size = PM_PROTO_MAX_MESSAGE_SIZE;
    if (!socket || zmq_setsockopt(socket, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max_size, sizeof max_size) < 0) {
        fprintf(stderr, "bench_echo: socket: %s\n", zmq_strerror(errno));
        goto cleanup;
    }
    for (int i = 0; i < args.endpoint_count; i++) {
        if (zmq_bind(socket, args.endpoints[i]) < 0) {
            fprintf(stderr, "bench_echo: cannot bind %s: %s\n", args.endpoints[i],
                    zmq_strerror(errno));
            goto cleanup;
        }
    }
    printf("{\"reply_bytes\": %zu}\n", reply.size);
    fflush(stdout);
    fprintf(stderr, "bench_echo: ready\n");
    status = s_serve(socket, &reply, buffer) == 0 ? 0 : 1;

cleanup:
    if (socket)
        zmq_close(socket);
    if (ctx)
        zmq_ctx_term(ctx);
    free(buffer);
    msgpack_sbuffer_destroy(&reply);
    s_args_clear(&args);
    return status;
}
