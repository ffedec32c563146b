/*
 * metrics_http: the HTTP side of the metrics (protocol v1.1 "Metrics"), with libmicrohttpd in
 * a thread of its own: GET /metrics (text format 0.0.4), GET /healthz (200 "ok" while the
 * daemon serves requests, else 503 with a one-line reason), 404 for other paths, 405 for
 * other methods.
 *
 * Bounded, so that no HTTP client can stall the ZeroMQ service or exhaust descriptors: at
 * most METRICS_HTTP_MAX_CONNECTIONS connections (METRICS_HTTP_MAX_PER_IP from one address),
 * idle ones closed after METRICS_HTTP_TIMEOUT_S, and a request (line and headers) larger than
 * METRICS_HTTP_MEMORY_LIMIT refused. The server shares no lock with the request path: it
 * reads the counters with atomic loads (see metrics.h).
 */
#ifndef PM_METRICS_HTTP_H
#define PM_METRICS_HTTP_H

#include "auth.h"
#include "metrics.h"

#include <stdbool.h>
#include <stddef.h>

#define METRICS_HTTP_MAX_CONNECTIONS 64
#define METRICS_HTTP_MAX_PER_IP 32
#define METRICS_HTTP_TIMEOUT_S 5
#define METRICS_HTTP_MEMORY_LIMIT (32 * 1024)
#define METRICS_HTTP_MAX_ENDPOINT_LEN 255

typedef struct metrics_http_t metrics_http_t;

/* Checks endpoint (HOST:PORT; an IPv6 host in brackets) and the exposure rule of reading 9:
 * a host that is not loopback (127.0.0.0/8, localhost, [::1]) needs CURVE on or
 * allow_insecure. 0, or -1 with the reason in err. */
int metrics_http_check_endpoint(const char *endpoint, bool curve, bool allow_insecure, char *err,
                                size_t err_size);

/* Starts serving metrics (borrowed; must outlive the server) on endpoint. auth (borrowed, may
 * be NULL) gives auth_refusals_total at each scrape. NULL with err on failure; *bind_failed
 * tells a bind failure (e.g. the port is in use) apart. */
metrics_http_t *metrics_http_new(const char *endpoint, metrics_t *metrics, const auth_t *auth,
                                 bool *bind_failed, char *err, size_t err_size);

/* The bound port (useful with port 0). */
int metrics_http_port(const metrics_http_t *self);

/* Stops the server thread (open connections are closed) and frees. Safe on NULL and twice. */
void metrics_http_destroy(metrics_http_t **self_p);

#endif
