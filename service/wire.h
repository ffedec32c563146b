/*
 * wire: the registry's values in the wire format of proto/PROTOCOL.md (msgpack), and the
 * argument checks shared by the front end (reads) and the writer (writes).
 */
#ifndef PM_WIRE_H
#define PM_WIRE_H

#include "pm_proto.h"
#include "provider_spec.h"
#include "registry.h"
#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

/* Limits of the contract (proto/PROTOCOL.md, "Limits"). */
#define WIRE_MAX_NAME_LEN REGISTRY_MAX_NAME_LEN
#define WIRE_MAX_URL_LEN REGISTRY_MAX_URL_LEN
#define WIRE_MAX_API_KEY_LEN REGISTRY_MAX_API_KEY_LEN
#define WIRE_MAX_MODEL_STRING_LEN 2048

/* ProviderConfig: {"provider", "name", "base_api_url", "api_key", "valid_models",
 * "invalid_models"}; the api key is the effective one; runtime-only fields are never sent. */
void wire_pack_provider(msgpack_packer *pk, const provider_t *provider);

/* Reads a required string argument and checks its length (1..max bytes). Returns 0, or -1
 * with a bad_request message in err. */
int wire_required_str(const pm_request_t *req, const char *name, size_t max, pm_str_t *out,
                      char *err, size_t err_size);

/* Fills spec from the arguments of a set_provider request, checking every one before
 * allocating anything: provider (a registry key), name, base_api_url (http:// or https://),
 * api_key (optional, nil clears), valid_models (map of strings), invalid_models (array of
 * strings), each within the limits above. Returns 0 (free spec with provider_spec_clear),
 * -1 with the bad_request message in err, or -2 when out of memory ("out of memory" in err).
 * spec is left empty on failure. */
int wire_spec_from_request(const pm_request_t *req, provider_spec_t *spec, char *err,
                           size_t err_size);

/* True when a reply of size bytes is within PM_PROTO_MAX_REPLY_SIZE (64 MiB), the largest
 * reply a client accepts (its ZMQ_MAXMSGSIZE): a larger one must not be sent. */
bool wire_reply_fits(size_t size);

/* Packs the failure reply sent instead of one that does not fit: code internal, message
 * "Reply of <size> bytes exceeds the 64 MiB reply limit" (proto/PROTOCOL.md, Limits). */
void wire_pack_reply_too_large(msgpack_packer *pk, const msgpack_object *id, size_t size);

/* Packs a failure reply whose message is built from a format and up to two text spans that
 * are not NUL-terminated: each "%s" of format takes the next span (at most two). Used for the
 * seed's messages that quote caller input, e.g. "Provider '%s' not found". */
void wire_pack_error_spans(msgpack_packer *pk, const msgpack_object *id, pm_error_t code,
                           const char *format, pm_str_t first, pm_str_t second);

#endif
