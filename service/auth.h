/*
 * auth: who may talk to the daemon. ZeroMQ CURVE on the request and events sockets, with a
 * ZAP handler (RFC 27) that lets in only the client public keys found in the allowed-clients
 * directory, and the rule that a non-loopback TCP endpoint is never bound without CURVE unless
 * the operator says --allow-insecure.
 *
 * Key files are those of `pmctl keygen` (format in proto/pm_keyfile.h): the server's secret file
 * holds `public-key = "..."` and `secret-key = "..."` lines; each allowed client is one
 * public file in the clients directory (admins) or in the readers directory (readers, v1.1).
 *
 * Roles: the ZAP handler answers with the key's name (its file name without ".pub") as the ZAP
 * user id, which ZeroMQ attaches to every message of that connection ("User-Id" property). The
 * front end maps that name to a role from the CURRENT key tables on every request, so a reload
 * (auth_set_keys) changes the role of an open connection at once, and a connection can never
 * choose its own role.
 */
#ifndef PM_AUTH_H
#define PM_AUTH_H

#include "config.h"
#include <stdbool.h>
#include <stddef.h>

#define AUTH_MAX_CLIENTS 4096

typedef struct auth_t auth_t;

/* The role of a caller. NONE: unknown name (a removed key); ADMIN: every op. */
typedef enum { AUTH_ROLE_NONE = 0, AUTH_ROLE_READER, AUTH_ROLE_ADMIN } auth_role_t;

/* The key tables of both directories, loaded apart from any auth_t so that a reload can read
 * and check everything before it changes anything. Immutable once loaded. */
typedef struct auth_keys_t auth_keys_t;

/* Reads every "*.pub" of clients_dir (admins) and, when readers_dir is not NULL or empty, of
 * readers_dir (readers). A key in both directories is an admin (with a warning, the usual
 * state while a key is being moved); two different keys with the same name in the two
 * directories are refused (the name is the caller's identity). Unreadable key files are
 * skipped with a warning. NULL with err when a directory cannot be read. */
auth_keys_t *auth_keys_load(const char *clients_dir, const char *readers_dir, char *err,
                            size_t err_size);
/* Number of keys of a role (AUTH_ROLE_NONE: all keys). */
size_t auth_keys_count(const auth_keys_t *keys, auth_role_t role);
/* The role of a key name in keys (AUTH_ROLE_NONE when unknown). */
auth_role_t auth_keys_role(const auth_keys_t *keys, const char *name);
void auth_keys_destroy(auth_keys_t **keys_p);

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
size_t auth_client_count(auth_t *self);

/* True when CURVE is on (then roles apply; without CURVE every caller is an admin, as in v1). */
bool auth_curve_on(const auth_t *self);

/* The role of the caller whose ZAP user id is name, from the current tables. ADMIN when CURVE
 * is off; NONE for a name no longer in the tables (or NULL). Thread-safe (a short lock). */
auth_role_t auth_role_of(auth_t *self, const char *name);

/* Replaces the key tables (SIGHUP) and takes ownership of *keys_p. New handshakes and every
 * following auth_role_of see the new tables. No-op (keys freed) when CURVE is off. */
void auth_set_keys(auth_t *self, auth_keys_t **keys_p);

/* Client connections the ZAP handler refused so far (any thread; 0 on NULL or without
 * CURVE), for the metrics' auth_refusals_total. */
unsigned long long auth_refusals(const auth_t *self);

/* Stops the ZAP handler thread. Safe on NULL. */
void auth_destroy(auth_t **self_p);

#endif
