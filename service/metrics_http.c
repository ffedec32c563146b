/*
 * metrics_http: /metrics and /healthz over libmicrohttpd. See metrics_http.h.
 */
#include "metrics_http.h"

#include "log.h"

#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define METRICS_HTTP_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct metrics_http_t {
    struct MHD_Daemon *daemon;
    metrics_t *metrics;
    const auth_t *auth;
    int port;
};

/* Splits HOST:PORT into host (brackets removed) and port. 0, or -1 with err. */
static int s_split(const char *endpoint, char *host, size_t host_size, char *port, size_t port_size,
                   char *err, size_t err_size)
{
    size_t len = endpoint ? strlen(endpoint) : 0;
    const char *colon = endpoint ? strrchr(endpoint, ':') : NULL;
    if (len == 0 || len > METRICS_HTTP_MAX_ENDPOINT_LEN || !colon || colon == endpoint ||
        colon[1] == '\0') {
        snprintf(err, err_size, "metrics endpoint '%.*s' must be HOST:PORT", 64,
                 endpoint ? endpoint : "");
        return -1;
    }
    const char *h = endpoint;
    size_t hlen = (size_t)(colon - endpoint);
    if (*h == '[') {
        if (hlen < 3 || h[hlen - 1] != ']') {
            snprintf(err, err_size, "metrics endpoint '%.*s' must be HOST:PORT", 64, endpoint);
            return -1;
        }
        h++;
        hlen -= 2;
    } else if (memchr(h, ':', hlen)) {
        snprintf(err, err_size, "metrics endpoint '%.*s': write an IPv6 host in brackets", 64,
                 endpoint);
        return -1;
    }
    char *end;
    long value = strtol(colon + 1, &end, 10);
    if (*end != '\0' || value < 0 || value > 65535 || hlen >= host_size) {
        snprintf(err, err_size, "metrics endpoint '%.*s': bad port", 64, endpoint);
        return -1;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    snprintf(port, port_size, "%ld", value);
    return 0;
}

int metrics_http_check_endpoint(const char *endpoint, bool curve, bool allow_insecure, char *err,
                                size_t err_size)
{
    char host[METRICS_HTTP_MAX_ENDPOINT_LEN + 1], port[8];
    if (s_split(endpoint, host, sizeof host, port, sizeof port, err, err_size) < 0)
        return -1;
    /* The request endpoint's loopback rule, on the same spelling of the address. */
    char zmq_style[METRICS_HTTP_MAX_ENDPOINT_LEN + 8];
    snprintf(zmq_style, sizeof zmq_style, "tcp://%s", endpoint);
    if (auth_endpoint_is_local(zmq_style) || curve)
        return 0;
    if (allow_insecure) {
        log_warn("metrics: serving %s on a non-loopback address without CURVE (--allow-insecure)",
                 endpoint);
        return 0;
    }
    snprintf(err, err_size,
             "refusing to serve metrics on %s: other machines could reach it; bind a loopback "
             "address, turn CURVE on (--curve-secret-key-file) or pass --allow-insecure on a "
             "trusted network",
             endpoint);
    return -1;
}

/* Queues a text response with status; text is copied. */
static enum MHD_Result s_answer(struct MHD_Connection *connection, unsigned status,
                                const char *content_type, const char *text, size_t len)
{
    struct MHD_Response *response =
        MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!response)
        return MHD_NO;
    enum MHD_Result rc =
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (rc == MHD_YES && status == MHD_HTTP_METHOD_NOT_ALLOWED)
        rc = MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    if (rc == MHD_YES)
        rc = MHD_queue_response(connection, status, response);
    MHD_destroy_response(response);
    return rc;
}

static enum MHD_Result s_metrics(metrics_http_t *self, struct MHD_Connection *connection)
{
    metrics_set_auth_refusals(self->metrics, auth_refusals(self->auth));
    metrics_text_t text = {0};
    if (metrics_render(self->metrics, &text, true) < 0) {
        free(text.data);
        static const char failed[] = "cannot render the metrics: out of memory\n";
        return s_answer(connection, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8",
                        failed, sizeof failed - 1);
    }
    /* The rendered buffer is handed over, not copied (a big scrape is written once). */
    struct MHD_Response *response =
        MHD_create_response_from_buffer(text.len, text.data, MHD_RESPMEM_MUST_FREE);
    if (!response) {
        free(text.data);
        return MHD_NO;
    }
    enum MHD_Result rc =
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, METRICS_HTTP_CONTENT_TYPE);
    if (rc == MHD_YES)
        rc = MHD_queue_response(connection, MHD_HTTP_OK, response);
    MHD_destroy_response(response);
    return rc;
}

static enum MHD_Result s_handler(void *cls, struct MHD_Connection *connection, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    metrics_http_t *self = cls;
    static const char text_plain[] = "text/plain; charset=utf-8";
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        /* Answered at once: a body the client may send is not read (MHD closes the
         * connection after this answer instead). */
        static const char text[] = "method not allowed\n";
        return s_answer(connection, MHD_HTTP_METHOD_NOT_ALLOWED, text_plain, text, sizeof text - 1);
    }
    if (strcmp(url, "/metrics") == 0)
        return s_metrics(self, connection);
    if (strcmp(url, "/healthz") == 0) {
        char reason[256] = "not serving";
        if (metrics_serving(self->metrics, reason, sizeof reason - 1))
            return s_answer(connection, MHD_HTTP_OK, text_plain, "ok\n", 3);
        size_t len = strlen(reason);
        reason[len++] = '\n';
        return s_answer(connection, MHD_HTTP_SERVICE_UNAVAILABLE, text_plain, reason, len);
    }
    static const char text[] = "not found: try /metrics or /healthz\n";
    return s_answer(connection, MHD_HTTP_NOT_FOUND, text_plain, text, sizeof text - 1);
}

/* MHD's own error lines (a refused connection, a request too large) at debug level: a hostile
 * client must not be able to fill the log. */
static void s_mhd_log(void *cls, const char *format, va_list args)
    __attribute__((format(printf, 2, 0)));

static void s_mhd_log(void *cls, const char *format, va_list args)
{
    (void)cls;
    if (log_level() < LOG_DEBUG)
        return;
    char line[512];
    vsnprintf(line, sizeof line, format, args);
    size_t len = strlen(line);
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        line[--len] = '\0';
    log_debug("metrics http: %s", line);
}

metrics_http_t *metrics_http_new(const char *endpoint, metrics_t *metrics, const auth_t *auth,
                                 bool *bind_failed, char *err, size_t err_size)
{
    *bind_failed = false;
    char host[METRICS_HTTP_MAX_ENDPOINT_LEN + 1], port[8];
    if (s_split(endpoint, host, sizeof host, port, sizeof port, err, err_size) < 0)
        return NULL;
    struct addrinfo hints, *found = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
    int gai = getaddrinfo(host, port, &hints, &found);
    if (gai != 0 || !found) {
        snprintf(err, err_size, "metrics endpoint %s: cannot resolve '%s': %s", endpoint, host,
                 gai_strerror(gai));
        return NULL;
    }
    metrics_http_t *self = calloc(1, sizeof *self);
    if (!self) {
        freeaddrinfo(found);
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    self->metrics = metrics;
    self->auth = auth;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (found->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    self->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, s_handler, self, MHD_OPTION_SOCK_ADDR, found->ai_addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_HTTP_MAX_CONNECTIONS,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)METRICS_HTTP_MAX_PER_IP,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_HTTP_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)METRICS_HTTP_MEMORY_LIMIT,
        MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, NULL, MHD_OPTION_END);
    freeaddrinfo(found);
    if (!self->daemon) {
        *bind_failed = true;
        snprintf(err, err_size, "cannot serve metrics on %s (port in use?)", endpoint);
        free(self);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(self->daemon, MHD_DAEMON_INFO_BIND_PORT);
    self->port = info ? (int)info->port : 0;
    return self;
}

int metrics_http_port(const metrics_http_t *self)
{
    return self ? self->port : 0;
}

void metrics_http_destroy(metrics_http_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    metrics_http_t *self = *self_p;
    if (self->daemon)
        MHD_stop_daemon(self->daemon);
    free(self);
    *self_p = NULL;
}
