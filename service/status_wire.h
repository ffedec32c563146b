/*
 * status_wire: msgpack encoding of the model status (protocol-v1.1 "Model status") — a
 * status record, a provider status and a models_changed event — so that model_status stays
 * free of msgpack.
 *
 * Times and latency_ms are msgpack floats (doubles), nil when the table says nil; meta holds
 * only the keys that are known; last_error is nil or {"class", "status" (int or nil),
 * "message"}. Nothing here can carry an API key: the table never holds one.
 */
#ifndef PM_STATUS_WIRE_H
#define PM_STATUS_WIRE_H

#include <msgpack.h>

#include "model_status.h"

/* {"provider", "model", "state", "in_valid_models", "listed", "first_seen_at",
 *  "last_listed_at", "last_checked_at", "last_ok_at", "latency_ms", "failures", "last_error",
 *  "meta"}. 0, or -1 when the packer's writer failed. */
int status_wire_pack_record(msgpack_packer *pk, const char *provider, const status_record_t *rec);

/* {"provider", "state", "last_list_at", "last_list_ok_at", "models_listed", "last_error"}. */
int status_wire_pack_provider(msgpack_packer *pk, const char *provider,
                              const status_provider_t *ps);

/* last_error: nil, or {"class", "status", "message"}. */
int status_wire_pack_error(msgpack_packer *pk, const status_error_t *e);

/* meta: a map of only the known keys (context_length, max_output_tokens, owned_by, created). */
int status_wire_pack_meta(msgpack_packer *pk, const model_meta_t *m);

/* The `models` event body: {"event": "models_changed", "status_version", "provider",
 * "changes": [{"model", "from" (state or nil), "to"}, ...]}. */
int status_wire_pack_changes(msgpack_packer *pk, const char *provider,
                             const status_changes_t *changes);

#endif
