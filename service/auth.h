/*
 * auth: who may talk to the daemon. ZeroMQ CURVE on the request and events sockets, with a
 * ZAP handler (RFC 27) that lets in only the client public keys found in the allowed-clients
 * directory, and the rule that a non-loopback TCP endpoint is never bound without CURVE unless
 * the operator says --allow-insecure.
 *
 * Key files are those of `pmctl keygen` (format in proto/pm_keyfile.h): the server's secret file
 * holds `public-key = "..."` and `secret-key = "..."` lines; each allowed client is one
 * public file in the clients directory.
 */
#ifndef PM_AUTH_H
#define PM_AUTH_H

#include "config.h"
#include <stdbool.h>
#include <stddef.h>

#define AUTH_MAX_CLIENTS 4096

typedef struct auth_t auth_t;

/* True for endpoints that only this machine can reach: ipc://, inproc://, and tcp:// on
 * 127.0.0.0/8, localhost or [::1]. */
bool auth_endpoint_is_local(const char *endpoint);

/* Checks the configuration's security rule. 0, or -1 with err when an endpoint would be
 * reachable from other machines without CURVE and allow_insecure is off. */
int auth_check_config(const config_t *cfg, char *err, size_t err_size);

/* Loads the server key and the allowed client keys and starts the ZAP handler on zmq_ctx.
 * Returns NULL with err on failure. With CURVE off in cfg, returns a handle that does
 * nothing (auth_apply is then a no-op). */
auth_t *auth_new(void *zmq_ctx, const config_t *cfg, char *err, size_t err_size);

/* Makes socket a CURVE server (before bind). 0, or -1. No-op when CURVE is off. */
int auth_apply(const auth_t *self, void *socket);

/* How many clients are allowed (0 when CURVE is off). */
size_t auth_client_count(const auth_t *self);

/* Client connections the ZAP handler refused so far (any thread; 0 on NULL or without
 * CURVE), for the metrics' auth_refusals_total. */
unsigned long long auth_refusals(const auth_t *self);

/* Stops the ZAP handler thread. Safe on NULL. */
void auth_destroy(auth_t **self_p);

#endif
