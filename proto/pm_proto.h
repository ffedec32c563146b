/*
 * pm_proto: the provider-manager wire protocol v1 (see proto/PROTOCOL.md), pure encode/decode
 * with msgpack-c, shared by the service and the client library. No sockets, no globals.
 *
 * Decoding never trusts a length field: pm_proto_precheck() walks the raw bytes first and
 * refuses anything whose declared sizes exceed what is actually there, nests deeper than
 * PM_PROTO_MAX_DEPTH, or holds a bin / invalid UTF-8 where the protocol wants text; only then
 * is msgpack_unpack_next() run, so it allocates at most a small multiple of the input size.
 *
 * Lifetimes: msgpack_unpack_next() does not copy strings. Every msgpack_object and pm_str_t
 * that a decoded request or reply hands out points either into its `unpacked` zone or into
 * the caller's input buffer, so the input bytes (e.g. the zmq_msg_t) must stay alive and
 * unchanged until pm_request_clear() / pm_reply_clear().
 */
#ifndef PM_PROTO_H
#define PM_PROTO_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

#define PM_PROTO_VERSION 1
#define PM_PROTO_VERSION_TEXT "1.1"             /* health.protocol: v1 plus the additive v1.1 */
#define PM_PROTO_MAX_MESSAGE_SIZE (1024 * 1024) /* ZMQ_MAXMSGSIZE on both sides */
#define PM_PROTO_MAX_DEPTH 16                   /* containers nested in a request */
#define PM_PROTO_EVENTS_TOPIC "providers"
/* Replies: a `values` reply of a big registry is much larger than any request, and results
 * nest ProviderConfigs (5 levels with the reply map today: reply, array, pair, config,
 * valid_models). msgpack-c's unpacker itself refuses more than 32 nested non-empty
 * containers (MSGPACK_EMBED_STACK_SIZE), so 32 is the useful ceiling. */
#define PM_PROTO_MAX_REPLY_SIZE (64 * 1024 * 1024)
#define PM_PROTO_MAX_REPLY_DEPTH 32
/* "Unknown op '<op>'" quotes at most this many bytes of the op (cut on a UTF-8 boundary). */
#define PM_PROTO_MAX_OP_ECHO 128

/* Error codes of the contract, in a stable order. */
typedef enum {
    PM_OK = 0,
    PM_ERR_BAD_REQUEST,
    PM_ERR_UNKNOWN_OP,
    PM_ERR_NOT_FOUND,
    PM_ERR_INVALID_MODEL,
    PM_ERR_CONFLICT,
    PM_ERR_UNAUTHORIZED,
    PM_ERR_UNAVAILABLE,
    PM_ERR_INTERNAL,
    PM_ERR_COUNT_
} pm_error_t;

/* "bad_request", ...; "ok" for PM_OK; "internal" for an out-of-range value. Static strings. */
const char *pm_error_name(pm_error_t code);
/* The code for a wire name ("ok" gives PM_OK), or PM_ERR_COUNT_ when unknown. name need not
 * be NUL-terminated; NULL is unknown. */
pm_error_t pm_error_from_name(const char *name, size_t len);

/* Operations of the contract. */
typedef enum {
    PM_OP_GET = 0,
    PM_OP_GET_PROVIDER_CONFIG,
    PM_OP_GETITEM,
    PM_OP_CONTAINS,
    PM_OP_KEYS,
    PM_OP_GET_ALL_PROVIDER_NAMES,
    PM_OP_VALUES,
    PM_OP_ITEMS,
    PM_OP_MERGED_MODELS,
    PM_OP_VALID_SCOPED_MODELS,
    PM_OP_GET_API_FOR_MODEL_STRING,
    PM_OP_VALIDATE_MODEL,
    PM_OP_GET_AVAILABLE_MODELS,
    PM_OP_GET_SHORT_NAME,
    PM_OP_FIND_MODEL,
    PM_OP_DISCOVER_MODELS,
    PM_OP_JOB_STATUS,
    PM_OP_PERSIST_PROVIDER_CONFIGS,
    PM_OP_SET_PROVIDER,
    PM_OP_REMOVE_PROVIDER,
    PM_OP_SET_SHORT_NAME,
    PM_OP_HEALTH,
    /* v1.1: model status (answered by the writer, which owns the status table and jobs) */
    PM_OP_MODEL_STATUS,
    PM_OP_PROVIDER_STATUS,
    PM_OP_VERIFY_MODELS,
    /* v1.1: every ProviderConfig with its versions, from one immutable view (a read) */
    PM_OP_SNAPSHOT,
    PM_OP_COUNT_
} pm_op_t;

/* "get", ...: static strings. NULL for an out-of-range value. */
const char *pm_op_name(pm_op_t op);
/* The op for a wire name, or PM_OP_COUNT_ when unknown. name need not be NUL-terminated
 * (only len bytes are read); NULL is unknown. */
pm_op_t pm_op_from_name(const char *name, size_t len);
/* True for ops that change state or reach the writer (discover_models, job_status,
 * persist_provider_configs, set_provider, remove_provider, set_short_name, and v1.1's
 * model_status, provider_status, verify_models). */
bool pm_op_is_write(pm_op_t op);
/* True for ops that a client may resend after a lost reply, because running them twice has
 * the effect of running them once: every read, and job_status (a read that goes through the
 * writer). False for the ops that change state (a lost reply may mean that the service applied
 * them) and for an out-of-range value. The one list of this; clients must not keep their own. */
bool pm_op_safe_to_resend(pm_op_t op);

/* Walks a msgpack buffer without allocating: exactly one object, nothing after it, depth
 * <= max_depth, every declared length / count fits in the bytes left, every str is valid
 * UTF-8, no bin and no ext anywhere. Depth counts containers: a top-level map is depth 1, so
 * max_depth 0 allows only a scalar; values above 64 are treated as 64. Returns 0, or -1 with
 * a message in err (err may be NULL). */
int pm_proto_precheck(const void *data, size_t size, int max_depth, char *err, size_t err_size);

/* True when [s, s+len) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). U+0000 is
 * valid UTF-8; the argument readers refuse it separately. s may be NULL when len is 0. */
bool pm_utf8_valid(const char *s, size_t len);

/* A span of text inside a message: not NUL-terminated. */
typedef struct {
    const char *ptr;
    size_t len;
} pm_str_t;

/* A decoded request. Objects point into `unpacked` (which owns their memory) and strings
 * point into the caller's input buffer, without a NUL (see the lifetime note at the top).
 * Free with pm_request_clear(). */
typedef struct {
    msgpack_unpacked unpacked;
    bool unpacked_init;
    pm_str_t op_name;           /* the op as sent (valid once the map had a str "op") */
    pm_op_t op;                 /* PM_OP_COUNT_ when unknown (then code is UNKNOWN_OP) */
    const msgpack_object *args; /* a map; NULL when absent (= {}) */
    const msgpack_object *id;   /* NULL when absent */
} pm_request_t;

/* Decodes and checks the envelope: a map with a str "op", an optional map "args", an optional
 * "id" of any type. Returns PM_OK; PM_ERR_BAD_REQUEST (then req->id is set whenever the map has
 * an "id" key that can be read: also when the bytes break an encoding rule elsewhere, e.g. a
 * bin inside args, as long as the top-level map is whole and the id value is well-formed on
 * its own; NULL when the envelope cannot be read); PM_ERR_UNKNOWN_OP (req->id is set when present);
 * PM_ERR_INTERNAL only when memory ran out. The message goes in err. req need not be initialised;
 * it is overwritten (clear a previous request first). Whatever the result, call pm_request_clear()
 * afterwards. Duplicate keys: the first one wins; keys that are not strings are ignored; other
 * top-level keys are ignored. */
pm_error_t pm_request_decode(pm_request_t *req, const void *data, size_t size, char *err,
                             size_t err_size);
/* Frees what a decode allocated and resets req. Safe twice, and on a zeroed struct. */
void pm_request_clear(pm_request_t *req);

/* Typed argument readers over req->args. Each returns 1 when the argument is there and of the
 * right type (value written to *out), 0 when it is absent or nil (an explicit nil means "not
 * given"; only pm_arg_str_or_nil gives nil a meaning of its own), -1 when it has the wrong
 * type, writing "argument '<name>' must be a <type>" into err (types: "string", "boolean",
 * "map of strings", "array of strings"), or "argument '<name>' must not contain NUL bytes"
 * when a string in it holds U+0000. A required argument that is absent is reported by
 * pm_arg_require(). Strings are spans into the request (not NUL-terminated). */

/* The raw value of argument name (first key wins), nil included; NULL when absent. */
const msgpack_object *pm_arg_find(const pm_request_t *req, const char *name);
int pm_arg_str(const pm_request_t *req, const char *name, pm_str_t *out, char *err,
               size_t err_size);
/* Like pm_arg_str, but an explicit nil is accepted: returns 2 and sets out->ptr = NULL,
 * out->len = 0. */
int pm_arg_str_or_nil(const pm_request_t *req, const char *name, pm_str_t *out, char *err,
                      size_t err_size);
int pm_arg_bool(const pm_request_t *req, const char *name, bool *out, char *err, size_t err_size);
/* A map whose keys and values are all str (valid_models). *out is the map object. */
int pm_arg_str_map(const pm_request_t *req, const char *name, const msgpack_object **out, char *err,
                   size_t err_size);
/* An array whose elements are all str (invalid_models). *out is the array object. */
int pm_arg_str_array(const pm_request_t *req, const char *name, const msgpack_object **out,
                     char *err, size_t err_size);
/* Writes "missing required argument '<name>'" into err; returns -1. */
int pm_arg_require(const char *name, char *err, size_t err_size);

/* Copies a str span into a new NUL-terminated string (caller frees); NULL on ENOMEM.
 * s.ptr may be NULL only when s.len is 0 (gives ""). */
char *pm_str_dup(pm_str_t s);

/* Reply encoding. Key order is fixed by the contract: "ok", then "id" when the request had
 * one, then "result" or "error". The packers return 0, or -1 when the packer's write callback
 * failed (e.g. ENOMEM in an sbuffer; the output is then unusable). Callers that pack into a
 * buffer they size-check themselves may ignore the result.
 *
 * pm_reply_ok_begin() packs {"ok": true, ["id": id,] "result": and leaves the packer ready
 * for exactly one result object, which the caller packs next. (The id key comes before
 * result so that the result can be streamed last.) id NULL: no "id" key. */
int pm_reply_ok_begin(msgpack_packer *pk, const msgpack_object *id);
/* Packs a whole failure reply {"ok": false, ["id": id,] "error": {"code", "message"}}.
 * message NULL packs ""; bytes of message that are not valid UTF-8 are replaced by U+FFFD so
 * that the reply always decodes. code out of range packs "internal". */
int pm_reply_error(msgpack_packer *pk, const msgpack_object *id, pm_error_t code,
                   const char *message);
/* The same with a message of len bytes that may hold NUL bytes (text quoted from a request). */
int pm_reply_error_n(msgpack_packer *pk, const msgpack_object *id, pm_error_t code,
                     const char *message, size_t len);

/* Packing helpers. The text must be valid UTF-8 (not checked: strings from requests, YAML
 * and JSON already are). */
int pm_pack_str(msgpack_packer *pk, const char *s); /* NULL packs nil */
int pm_pack_strn(msgpack_packer *pk, const char *s, size_t len);

/* Request encoding (clients). Packs {"op": op, ["id": id,] "args": <one object the caller
 * packs next>}: pm_request_begin() packs the map header, "op", the optional "id", and the
 * "args" key; the caller then packs exactly one map. */
int pm_request_begin(msgpack_packer *pk, const char *op, bool with_id, long long id);

/* Decoded reply (clients): pm_reply_decode() checks the envelope (size <=
 * PM_PROTO_MAX_REPLY_SIZE, depth <= PM_PROTO_MAX_REPLY_DEPTH; a map with a bool "ok"; when ok
 * a "result" key, which may be nil; when not ok an "error" map with str "code" and str
 * "message") and points into `unpacked` and the input buffer. On success returns 0 with
 * ok/result or ok=false and code/message spans set; -1 when the bytes are not a valid reply
 * (message in err). rep need not be initialised. Whatever the result, free with
 * pm_reply_clear(). */
typedef struct {
    msgpack_unpacked unpacked;
    bool unpacked_init;
    bool ok;
    const msgpack_object *result; /* when ok */
    const msgpack_object *id;     /* NULL when absent */
    pm_error_t code;              /* when !ok; PM_ERR_INTERNAL for an unknown code word */
    pm_str_t code_name;
    pm_str_t message;
} pm_reply_t;

int pm_reply_decode(pm_reply_t *rep, const void *data, size_t size, char *err, size_t err_size);
/* Frees what a decode allocated and resets rep. Safe twice, and on a zeroed struct. */
void pm_reply_clear(pm_reply_t *rep);

/* Looks a key up in a msgpack map object (linear; the first equal str key wins; keys that are
 * not str are skipped); NULL when absent or obj is not a map. key is NUL-terminated. */
const msgpack_object *pm_map_get(const msgpack_object *obj, const char *key);

#endif
