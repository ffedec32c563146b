/*
 * pm_proto: wire protocol v1 encode/decode (see pm_proto.h and PROTOCOL.md).
 *
 * The decoder is in two steps on purpose. msgpack_unpack_next() allocates an object array of
 * the declared size as soon as it sees a container header, and waits for more bytes when a
 * string claims more than there is; neither is acceptable for bytes from the network. So
 * pm_proto_precheck() first walks the raw bytes with an explicit, bounded stack and no
 * allocation, and only a buffer that passes it (one object, all sizes real, shallow, text is
 * UTF-8) is handed to msgpack-c. After a successful precheck every declared element has been
 * seen, so msgpack-c allocates at most sizeof(msgpack_object) per input byte, plus its zone.
 */
#include "pm_proto.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The precheck's stack: one counter per open container. Depth limits above it are clamped. */
#define PM_PRECHECK_STACK_SIZE 64

/* -------------------------------------------------------------------------------- errors */

static void s_set_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static size_t s_utf8_sequence(const unsigned char *p, size_t left);

/* After a cut at the end of text: drops a last character that the cut left incomplete, so
 * that a truncated message is still valid UTF-8. */
static void s_drop_partial_character(char *text)
{
    size_t len = strlen(text);
    size_t start = len;
    /* Back over at most three continuation bytes to the last lead byte. */
    while (start > 0 && len - start < 3 && ((unsigned char)text[start - 1] & 0xC0) == 0x80)
        start--;
    if (start == 0 || ((unsigned char)text[start - 1] & 0xC0) != 0xC0)
        return; /* ASCII at the end, or no lead byte within reach: nothing was cut */
    start--;
    if (s_utf8_sequence((const unsigned char *)text + start, len - start) == 0)
        text[start] = '\0';
}

static void s_set_err(char *err, size_t err_size, const char *fmt, ...)
{
    if (err == NULL || err_size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    /* Truncation is fine: the message is for people and always NUL-terminated. */
    int n = vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= err_size)
        s_drop_partial_character(err);
}

/* ----------------------------------------------------------------------- name tables */

static const char *const s_error_names[PM_ERR_COUNT_] = {
    [PM_OK] = "ok",
    [PM_ERR_BAD_REQUEST] = "bad_request",
    [PM_ERR_UNKNOWN_OP] = "unknown_op",
    [PM_ERR_NOT_FOUND] = "not_found",
    [PM_ERR_INVALID_MODEL] = "invalid_model",
    [PM_ERR_CONFLICT] = "conflict",
    [PM_ERR_UNAUTHORIZED] = "unauthorized",
    [PM_ERR_UNAVAILABLE] = "unavailable",
    [PM_ERR_INTERNAL] = "internal",
};

const char *pm_error_name(pm_error_t code)
{
    if ((int)code < 0 || code >= PM_ERR_COUNT_)
        return s_error_names[PM_ERR_INTERNAL];
    return s_error_names[code];
}

/* True when [name, name+len) is exactly the NUL-terminated literal. */
static bool s_span_is(const char *name, size_t len, const char *literal)
{
    size_t literal_len = strlen(literal);
    return len == literal_len && memcmp(name, literal, len) == 0;
}

pm_error_t pm_error_from_name(const char *name, size_t len)
{
    if (name == NULL)
        return PM_ERR_COUNT_;
    for (int code = 0; code < PM_ERR_COUNT_; code++) {
        if (s_span_is(name, len, s_error_names[code]))
            return (pm_error_t)code;
    }
    return PM_ERR_COUNT_;
}

static const char *const s_op_names[PM_OP_COUNT_] = {
    [PM_OP_GET] = "get",
    [PM_OP_GET_PROVIDER_CONFIG] = "get_provider_config",
    [PM_OP_GETITEM] = "getitem",
    [PM_OP_CONTAINS] = "contains",
    [PM_OP_KEYS] = "keys",
    [PM_OP_GET_ALL_PROVIDER_NAMES] = "get_all_provider_names",
    [PM_OP_VALUES] = "values",
    [PM_OP_ITEMS] = "items",
    [PM_OP_MERGED_MODELS] = "merged_models",
    [PM_OP_VALID_SCOPED_MODELS] = "valid_scoped_models",
    [PM_OP_GET_API_FOR_MODEL_STRING] = "get_api_for_model_string",
    [PM_OP_VALIDATE_MODEL] = "validate_model",
    [PM_OP_GET_AVAILABLE_MODELS] = "get_available_models",
    [PM_OP_GET_SHORT_NAME] = "get_short_name",
    [PM_OP_FIND_MODEL] = "find_model",
    [PM_OP_DISCOVER_MODELS] = "discover_models",
    [PM_OP_JOB_STATUS] = "job_status",
    [PM_OP_PERSIST_PROVIDER_CONFIGS] = "persist_provider_configs",
    [PM_OP_SET_PROVIDER] = "set_provider",
    [PM_OP_REMOVE_PROVIDER] = "remove_provider",
    [PM_OP_SET_SHORT_NAME] = "set_short_name",
    [PM_OP_HEALTH] = "health",
    [PM_OP_MODEL_STATUS] = "model_status",
    [PM_OP_PROVIDER_STATUS] = "provider_status",
    [PM_OP_VERIFY_MODELS] = "verify_models",
    [PM_OP_SNAPSHOT] = "snapshot",
};

const char *pm_op_name(pm_op_t op)
{
    if ((int)op < 0 || op >= PM_OP_COUNT_)
        return NULL;
    return s_op_names[op];
}

/* The first of the candidate ops whose name is exactly [name, name+len). The candidates
 * should all have length len; the length is compared anyway, so that an op filed under the
 * wrong length is merely not found (test_proto notices) instead of read past its end. */
static pm_op_t s_op_among(const char *name, size_t len, const pm_op_t *candidates, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (s_span_is(name, len, s_op_names[candidates[i]]))
            return candidates[i];
    }
    return PM_OP_COUNT_;
}

#define S_OP_AMONG(...)                                                                            \
    s_op_among(name, len, (const pm_op_t[]){__VA_ARGS__},                                          \
               sizeof((const pm_op_t[]){__VA_ARGS__}) / sizeof(pm_op_t))

pm_op_t pm_op_from_name(const char *name, size_t len)
{
    if (name == NULL)
        return PM_OP_COUNT_;
    /* Dispatch on the length first: at most three names share one, and no byte beyond len is
     * ever read (the name points into a message and has no NUL). test_proto checks that this
     * table and s_op_names agree for every op. */
    switch (len) {
    case 3:
        return S_OP_AMONG(PM_OP_GET);
    case 4:
        return S_OP_AMONG(PM_OP_KEYS);
    case 5:
        return S_OP_AMONG(PM_OP_ITEMS);
    case 6:
        return S_OP_AMONG(PM_OP_VALUES, PM_OP_HEALTH);
    case 7:
        return S_OP_AMONG(PM_OP_GETITEM);
    case 8:
        return S_OP_AMONG(PM_OP_CONTAINS, PM_OP_SNAPSHOT);
    case 10:
        return S_OP_AMONG(PM_OP_FIND_MODEL, PM_OP_JOB_STATUS);
    case 12:
        return S_OP_AMONG(PM_OP_SET_PROVIDER, PM_OP_MODEL_STATUS);
    case 13:
        return S_OP_AMONG(PM_OP_MERGED_MODELS, PM_OP_VERIFY_MODELS);
    case 14:
        return S_OP_AMONG(PM_OP_VALIDATE_MODEL, PM_OP_GET_SHORT_NAME, PM_OP_SET_SHORT_NAME);
    case 15:
        return S_OP_AMONG(PM_OP_DISCOVER_MODELS, PM_OP_REMOVE_PROVIDER, PM_OP_PROVIDER_STATUS);
    case 19:
        return S_OP_AMONG(PM_OP_GET_PROVIDER_CONFIG, PM_OP_VALID_SCOPED_MODELS);
    case 20:
        return S_OP_AMONG(PM_OP_GET_AVAILABLE_MODELS);
    case 22:
        return S_OP_AMONG(PM_OP_GET_ALL_PROVIDER_NAMES);
    case 24:
        return S_OP_AMONG(PM_OP_GET_API_FOR_MODEL_STRING, PM_OP_PERSIST_PROVIDER_CONFIGS);
    default:
        return PM_OP_COUNT_;
    }
}

bool pm_op_is_write(pm_op_t op)
{
    switch (op) {
    case PM_OP_DISCOVER_MODELS:
    case PM_OP_JOB_STATUS:
    case PM_OP_PERSIST_PROVIDER_CONFIGS:
    case PM_OP_SET_PROVIDER:
    case PM_OP_REMOVE_PROVIDER:
    case PM_OP_SET_SHORT_NAME:
    case PM_OP_MODEL_STATUS:
    case PM_OP_PROVIDER_STATUS:
    case PM_OP_VERIFY_MODELS:
        return true;
    default:
        return false;
    }
}

bool pm_op_safe_to_resend(pm_op_t op)
{
    if ((int)op < 0 || op >= PM_OP_COUNT_)
        return false;
    /* job_status, model_status and provider_status reach the writer but change nothing. */
    return !pm_op_is_write(op) || op == PM_OP_JOB_STATUS || op == PM_OP_MODEL_STATUS ||
           op == PM_OP_PROVIDER_STATUS;
}

/* ------------------------------------------------------------------------------ UTF-8 */

/* Length of the well-formed UTF-8 sequence at p (1..4), or 0 when the bytes there are not
 * one (Unicode table 3-7: no overlongs, no surrogates, nothing above U+10FFFF, no truncated
 * sequence). left >= 1. */
static size_t s_utf8_sequence(const unsigned char *p, size_t left)
{
    unsigned lead = p[0];
    size_t trail;
    unsigned second_min = 0x80;
    unsigned second_max = 0xBF;

    if (lead < 0x80)
        return 1;
    if (lead >= 0xC2 && lead <= 0xDF) {
        trail = 1;
    } else if (lead == 0xE0) {
        trail = 2;
        second_min = 0xA0; /* below: overlong */
    } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
        trail = 2;
    } else if (lead == 0xED) {
        trail = 2;
        second_max = 0x9F; /* above: UTF-16 surrogates */
    } else if (lead == 0xF0) {
        trail = 3;
        second_min = 0x90; /* below: overlong */
    } else if (lead >= 0xF1 && lead <= 0xF3) {
        trail = 3;
    } else if (lead == 0xF4) {
        trail = 3;
        second_max = 0x8F; /* above: beyond U+10FFFF */
    } else {
        return 0; /* a continuation byte, C0/C1 (always overlong), or F5..FF */
    }
    if (left - 1 < trail)
        return 0;
    if (p[1] < second_min || p[1] > second_max)
        return 0;
    for (size_t i = 2; i <= trail; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    }
    return trail + 1;
}

bool pm_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        /* Names and URLs are mostly ASCII: skip 8 such bytes at a time. */
        if (len - i >= 8) {
            uint64_t chunk;
            memcpy(&chunk, p + i, sizeof chunk);
            if ((chunk & UINT64_C(0x8080808080808080)) == 0) {
                i += 8;
                continue;
            }
        }
        size_t n = s_utf8_sequence(p + i, len - i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

/* The longest prefix of valid UTF-8 text [s, s+len) that is at most max bytes and does not
 * cut a character. */
static size_t s_utf8_prefix(const char *s, size_t len, size_t max)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        size_t n = s_utf8_sequence(p + i, len - i);
        if (n == 0)
            n = 1; /* not expected (the text was prechecked), but never loop forever */
        if (i + n > max)
            break;
        i += n;
    }
    return i;
}

/* --------------------------------------------------------------------------- precheck */

static uint32_t s_be16(const unsigned char *p)
{
    return ((uint32_t)p[0] << 8) | (uint32_t)p[1];
}

static uint32_t s_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

typedef enum {
    S_KIND_SCALAR,    /* fixed size: header_len is the whole object */
    S_KIND_STR,       /* header, then `length` bytes of text */
    S_KIND_ARRAY,     /* header, then `length` objects */
    S_KIND_MAP,       /* header, then `length` key/value pairs */
    S_KIND_BIN,       /* refused */
    S_KIND_EXT,       /* refused */
    S_KIND_NEVER_USED /* 0xc1 */
} s_kind_t;

typedef struct {
    s_kind_t kind;
    size_t header_len; /* bytes of the format byte and its size field (or fixed payload) */
    int length_bytes;  /* bytes of the big-endian size field after the format byte (0: none) */
    uint32_t length;   /* from the format byte (fix* families), else read from the field */
} s_header_t;

/* Classifies a format byte. Every one of the 256 values is covered. */
static s_header_t s_classify(unsigned b)
{
    s_header_t h = {S_KIND_SCALAR, 1, 0, 0};

    if (b <= 0x7f || b >= 0xe0) /* positive / negative fixint */
        return h;
    if (b <= 0x8f) {
        h.kind = S_KIND_MAP;
        h.length = b & 0x0f;
        return h;
    }
    if (b <= 0x9f) {
        h.kind = S_KIND_ARRAY;
        h.length = b & 0x0f;
        return h;
    }
    if (b <= 0xbf) {
        h.kind = S_KIND_STR;
        h.length = b & 0x1f;
        return h;
    }
    switch (b) {
    case 0xc0: /* nil */
    case 0xc2: /* false */
    case 0xc3: /* true */
        return h;
    case 0xc1:
        h.kind = S_KIND_NEVER_USED;
        return h;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        h.kind = S_KIND_BIN;
        return h;
    case 0xc7:
    case 0xc8:
    case 0xc9:
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        h.kind = S_KIND_EXT;
        return h;
    case 0xcc: /* uint8 */
    case 0xd0: /* int8 */
        h.header_len = 2;
        return h;
    case 0xcd: /* uint16 */
    case 0xd1: /* int16 */
        h.header_len = 3;
        return h;
    case 0xca: /* float32 */
    case 0xce: /* uint32 */
    case 0xd2: /* int32 */
        h.header_len = 5;
        return h;
    case 0xcb: /* float64 */
    case 0xcf: /* uint64 */
    case 0xd3: /* int64 */
        h.header_len = 9;
        return h;
    case 0xd9:
        h.kind = S_KIND_STR;
        h.length_bytes = 1;
        break;
    case 0xda:
        h.kind = S_KIND_STR;
        h.length_bytes = 2;
        break;
    case 0xdb:
        h.kind = S_KIND_STR;
        h.length_bytes = 4;
        break;
    case 0xdc:
        h.kind = S_KIND_ARRAY;
        h.length_bytes = 2;
        break;
    case 0xdd:
        h.kind = S_KIND_ARRAY;
        h.length_bytes = 4;
        break;
    case 0xde:
        h.kind = S_KIND_MAP;
        h.length_bytes = 2;
        break;
    default: /* 0xdf */
        h.kind = S_KIND_MAP;
        h.length_bytes = 4;
        break;
    }
    h.header_len = 1 + (size_t)h.length_bytes;
    return h;
}

int pm_proto_precheck(const void *data, size_t size, int max_depth, char *err, size_t err_size)
{
    const unsigned char *bytes = data;
    /* Objects still to read in each open container (a map counts keys and values). */
    uint64_t remaining[PM_PRECHECK_STACK_SIZE];
    int depth = 0;
    size_t pos = 0;

    if (max_depth < 0)
        max_depth = 0;
    if (max_depth > PM_PRECHECK_STACK_SIZE)
        max_depth = PM_PRECHECK_STACK_SIZE;
    if (bytes == NULL || size == 0) {
        s_set_err(err, err_size, "empty message");
        return -1;
    }

    for (;;) {
        if (pos >= size) {
            s_set_err(err, err_size, "unexpected end of data at offset %zu", pos);
            return -1;
        }
        size_t left = size - pos;
        s_header_t h = s_classify(bytes[pos]);

        switch (h.kind) {
        case S_KIND_NEVER_USED:
            s_set_err(err, err_size, "format byte 0xc1 (never used) at offset %zu", pos);
            return -1;
        case S_KIND_BIN:
            s_set_err(err, err_size, "binary data where text was expected");
            return -1;
        case S_KIND_EXT:
            s_set_err(err, err_size, "ext types are not supported");
            return -1;
        default:
            break;
        }
        if (h.header_len > left) {
            s_set_err(err, err_size, "unexpected end of data at offset %zu", pos);
            return -1;
        }
        if (h.length_bytes == 1)
            h.length = bytes[pos + 1];
        else if (h.length_bytes == 2)
            h.length = s_be16(bytes + pos + 1);
        else if (h.length_bytes == 4)
            h.length = s_be32(bytes + pos + 1);
        size_t after_header = left - h.header_len;

        if (h.kind == S_KIND_SCALAR) {
            pos += h.header_len;
        } else if (h.kind == S_KIND_STR) {
            if (h.length > after_header) {
                s_set_err(err, err_size,
                          "string of %" PRIu32 " bytes at offset %zu runs past the end (%zu "
                          "bytes left)",
                          h.length, pos, after_header);
                return -1;
            }
            const char *text = (const char *)bytes + pos + h.header_len;
            if (!pm_utf8_valid(text, h.length)) {
                s_set_err(err, err_size, "string at offset %zu is not valid UTF-8", pos);
                return -1;
            }
            pos += h.header_len + h.length;
        } else {
            /* Depth first: a deep nest of one-byte containers must fail here, before
             * anything else is looked at. */
            if (depth >= max_depth) {
                s_set_err(err, err_size, "nesting deeper than %d levels", max_depth);
                return -1;
            }
            uint64_t objects = h.kind == S_KIND_MAP ? 2 * (uint64_t)h.length : h.length;
            /* Every object takes at least one byte, so a count larger than the bytes left
             * is a lie; refuse it before anyone allocates for it. */
            if (objects > after_header) {
                s_set_err(err, err_size,
                          "%s of %" PRIu32 " %s at offset %zu does not fit in the %zu bytes "
                          "left",
                          h.kind == S_KIND_MAP ? "map" : "array", h.length,
                          h.kind == S_KIND_MAP ? "entries" : "elements", pos, after_header);
                return -1;
            }
            pos += h.header_len;
            if (objects > 0) {
                remaining[depth++] = objects;
                continue;
            }
        }

        /* One object is complete: count it against its container, and close every
         * container that this completes. */
        for (;;) {
            if (depth == 0)
                goto complete;
            if (--remaining[depth - 1] > 0)
                break;
            depth--;
        }
    }

complete:
    if (pos != size) {
        s_set_err(err, err_size, "%zu trailing bytes after the object", size - pos);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------ maps */

const msgpack_object *pm_map_get(const msgpack_object *obj, const char *key)
{
    if (obj == NULL || key == NULL || obj->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t key_len = strlen(key);
    for (uint32_t i = 0; i < obj->via.map.size; i++) {
        const msgpack_object_kv *kv = &obj->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size != key_len)
            continue;
        if (key_len == 0 || memcmp(kv->key.via.str.ptr, key, key_len) == 0)
            return &kv->val;
    }
    return NULL;
}

/* ----------------------------------------------------------------------- requests */

void pm_request_clear(pm_request_t *req)
{
    if (req == NULL)
        return;
    if (req->unpacked_init)
        msgpack_unpacked_destroy(&req->unpacked);
    memset(req, 0, sizeof *req);
    req->op = PM_OP_COUNT_;
}

/* Copies the op for the "Unknown op" message: a bounded prefix (the op is the client's text
 * and may be 1 MiB long), cut on a character boundary, with each NUL byte shown as the two
 * characters \0 (the message is a C string; cutting it at the NUL would name another op).
 * out must hold 2 * PM_PROTO_MAX_OP_ECHO + 1 bytes. */
static void s_quote_op(const char *op, size_t len, char *out, size_t out_size)
{
    size_t shown = s_utf8_prefix(op, len, PM_PROTO_MAX_OP_ECHO);
    size_t used = 0;
    for (size_t i = 0; i < shown && used + 2 < out_size; i++) {
        if (op[i] == '\0') {
            out[used++] = '\\';
            out[used++] = '0';
        } else {
            out[used++] = op[i];
        }
    }
    out[used] = '\0';
}

/* Runs msgpack-c over prechecked bytes. 0; or -1 with *code and a message. */
static int s_unpack(msgpack_unpacked *unpacked, const void *data, size_t size, const char *what,
                    pm_error_t *code, char *err, size_t err_size)
{
    size_t offset = 0;
    msgpack_unpack_return rc = msgpack_unpack_next(unpacked, data, size, &offset);
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR) {
        *code = PM_ERR_INTERNAL;
        s_set_err(err, err_size, "out of memory decoding the %s", what);
        return -1;
    }
    if (rc != MSGPACK_UNPACK_SUCCESS || offset != size) {
        /* Not expected after the precheck; kept so that a disagreement is an error, never
         * a crash. */
        *code = PM_ERR_BAD_REQUEST;
        s_set_err(err, err_size, "%s is not valid msgpack: the decoder refused it (%d)", what,
                  (int)rc);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------- id of a bad request */

/* The object at bytes[0], read for its structure only: its size field when it has one (bin and
 * ext included, which the precheck refuses but whose extent is still well defined). Sets
 * *header (format byte, size field, ext type byte), *payload (bytes after the header) and
 * *children (objects nested directly in it). -1 for 0xc1 or a header past the end. */
static int s_extent(const unsigned char *bytes, size_t left, size_t *header, uint64_t *payload,
                    uint64_t *children)
{
    unsigned b = bytes[0];
    s_header_t h = s_classify(b);
    int length_bytes = h.length_bytes;
    size_t extra = 0; /* the ext type byte */
    uint64_t fixed = 0;
    if (h.kind == S_KIND_NEVER_USED)
        return -1;
    if (h.kind == S_KIND_BIN) {
        length_bytes = b == 0xc4 ? 1 : b == 0xc5 ? 2 : 4;
    } else if (h.kind == S_KIND_EXT) {
        extra = 1;
        if (b >= 0xd4) /* fixext 1, 2, 4, 8, 16 */
            fixed = (uint64_t)1 << (b - 0xd4);
        else
            length_bytes = b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4;
    }
    size_t header_len = h.kind == S_KIND_SCALAR ? h.header_len : 1 + (size_t)length_bytes + extra;
    if (header_len > left)
        return -1;
    uint32_t length = h.length;
    if (length_bytes == 1)
        length = bytes[1];
    else if (length_bytes == 2)
        length = s_be16(bytes + 1);
    else if (length_bytes == 4)
        length = s_be32(bytes + 1);
    *header = header_len;
    *payload = 0;
    *children = 0;
    if (h.kind == S_KIND_STR || h.kind == S_KIND_BIN)
        *payload = length;
    else if (h.kind == S_KIND_EXT)
        *payload = fixed ? fixed : length;
    else if (h.kind == S_KIND_ARRAY)
        *children = length;
    else if (h.kind == S_KIND_MAP)
        *children = 2 * (uint64_t)length;
    return 0;
}

/* Moves *pos past one whole object, by structure alone. No stack: a count of the objects still
 * to read, which can never exceed the bytes left (every object takes one), so any depth is
 * walked in linear time. 0, or -1 when the object runs past the end. */
static int s_skip_object(const unsigned char *bytes, size_t size, size_t *pos)
{
    uint64_t pending = 1;
    size_t at = *pos;
    while (pending > 0) {
        size_t header;
        uint64_t payload, children;
        if (at >= size || s_extent(bytes + at, size - at, &header, &payload, &children) < 0)
            return -1;
        size_t left = size - at - header;
        if (payload > left || children > left)
            return -1;
        at += header + (size_t)payload;
        pending = pending - 1 + children;
        if (pending > size - at)
            return -1;
    }
    *pos = at;
    return 0;
}

/* True when [bytes, bytes+len) is exactly the str "id", in any of the str formats. */
static bool s_is_id_key(const unsigned char *bytes, size_t len)
{
    size_t header;
    uint64_t payload, children;
    if (s_classify(bytes[0]).kind != S_KIND_STR ||
        s_extent(bytes, len, &header, &payload, &children) < 0)
        return false;
    return payload == 2 && header + 2 == len && memcmp(bytes + header, "id", 2) == 0;
}

/* A request that breaks an encoding rule somewhere (a bin or invalid UTF-8 inside args) still
 * gets its id back when the envelope can be read: the top-level map is whole (every entry's
 * extent is within the data, nothing trails it) and its first "id" value passes the precheck
 * on its own. Then req->id is that value, decoded alone; otherwise it stays NULL. */
static void s_salvage_id(pm_request_t *req, const unsigned char *bytes, size_t size)
{
    size_t header, pos;
    uint64_t payload, children;
    if (size == 0 || s_classify(bytes[0]).kind != S_KIND_MAP ||
        s_extent(bytes, size, &header, &payload, &children) < 0)
        return;
    pos = header;
    size_t id_start = 0, id_end = 0;
    for (uint64_t i = 0; i < children / 2; i++) {
        size_t key = pos;
        if (s_skip_object(bytes, size, &pos) < 0)
            return;
        size_t value = pos;
        if (s_skip_object(bytes, size, &pos) < 0)
            return;
        if (id_end == 0 && s_is_id_key(bytes + key, value - key)) {
            id_start = value; /* the first "id" wins, as everywhere in the envelope */
            id_end = pos;
        }
    }
    char detail[160];
    if (pos != size || id_end == 0 ||
        pm_proto_precheck(bytes + id_start, id_end - id_start, PM_PROTO_MAX_DEPTH - 1, detail,
                          sizeof detail) != 0)
        return;
    size_t offset = 0;
    if (msgpack_unpack_next(&req->unpacked, (const char *)bytes + id_start, id_end - id_start,
                            &offset) == MSGPACK_UNPACK_SUCCESS &&
        offset == id_end - id_start)
        req->id = &req->unpacked.data;
}

pm_error_t pm_request_decode(pm_request_t *req, const void *data, size_t size, char *err,
                             size_t err_size)
{
    char detail[160];
    pm_error_t code = PM_ERR_BAD_REQUEST;

    memset(req, 0, sizeof *req);
    req->op = PM_OP_COUNT_;
    msgpack_unpacked_init(&req->unpacked);
    req->unpacked_init = true;

    if (size > PM_PROTO_MAX_MESSAGE_SIZE) {
        s_set_err(err, err_size, "request of %zu bytes exceeds the limit of %d bytes", size,
                  PM_PROTO_MAX_MESSAGE_SIZE);
        return PM_ERR_BAD_REQUEST;
    }
    if (pm_proto_precheck(data, size, PM_PROTO_MAX_DEPTH, detail, sizeof detail) != 0) {
        s_set_err(err, err_size, "request is not valid msgpack: %s", detail);
        s_salvage_id(req, data, size);
        return PM_ERR_BAD_REQUEST;
    }
    if (s_unpack(&req->unpacked, data, size, "request", &code, err, err_size) != 0)
        return code;

    const msgpack_object *root = &req->unpacked.data;
    if (root->type != MSGPACK_OBJECT_MAP) {
        s_set_err(err, err_size, "request must be a map");
        return PM_ERR_BAD_REQUEST;
    }
    /* The id first, so that every later refusal can still echo it. */
    req->id = pm_map_get(root, "id");

    const msgpack_object *op = pm_map_get(root, "op");
    if (op == NULL || op->type != MSGPACK_OBJECT_STR) {
        s_set_err(err, err_size, "request has no 'op' string");
        return PM_ERR_BAD_REQUEST;
    }
    const msgpack_object *args = pm_map_get(root, "args");
    if (args != NULL && args->type != MSGPACK_OBJECT_MAP) {
        s_set_err(err, err_size, "'args' must be a map");
        return PM_ERR_BAD_REQUEST;
    }
    req->args = args;

    req->op_name.ptr = op->via.str.ptr;
    req->op_name.len = op->via.str.size;
    req->op = pm_op_from_name(op->via.str.ptr, op->via.str.size);
    if (req->op == PM_OP_COUNT_) {
        char shown[2 * PM_PROTO_MAX_OP_ECHO + 1];
        s_quote_op(op->via.str.ptr, op->via.str.size, shown, sizeof shown);
        s_set_err(err, err_size, "Unknown op '%s'", shown);
        return PM_ERR_UNKNOWN_OP;
    }
    return PM_OK;
}

/* ------------------------------------------------------------------- argument readers */

const msgpack_object *pm_arg_find(const pm_request_t *req, const char *name)
{
    if (req == NULL)
        return NULL;
    return pm_map_get(req->args, name);
}

static bool s_has_nul(const msgpack_object *str)
{
    return str->via.str.size > 0 && memchr(str->via.str.ptr, '\0', str->via.str.size) != NULL;
}

static int s_wrong_type(const char *name, const char *type, char *err, size_t err_size)
{
    s_set_err(err, err_size, "argument '%s' must be %s", name, type);
    return -1;
}

static int s_nul_inside(const char *name, char *err, size_t err_size)
{
    s_set_err(err, err_size, "argument '%s' must not contain NUL bytes", name);
    return -1;
}

/* The value of an argument that is there and not nil, else NULL. */
static const msgpack_object *s_arg_given(const pm_request_t *req, const char *name)
{
    const msgpack_object *value = pm_arg_find(req, name);
    if (value == NULL || value->type == MSGPACK_OBJECT_NIL)
        return NULL;
    return value;
}

int pm_arg_str(const pm_request_t *req, const char *name, pm_str_t *out, char *err, size_t err_size)
{
    const msgpack_object *value = s_arg_given(req, name);
    if (value == NULL)
        return 0;
    if (value->type != MSGPACK_OBJECT_STR)
        return s_wrong_type(name, "a string", err, err_size);
    if (s_has_nul(value))
        return s_nul_inside(name, err, err_size);
    out->ptr = value->via.str.ptr;
    out->len = value->via.str.size;
    return 1;
}

int pm_arg_str_or_nil(const pm_request_t *req, const char *name, pm_str_t *out, char *err,
                      size_t err_size)
{
    const msgpack_object *value = pm_arg_find(req, name);
    if (value != NULL && value->type == MSGPACK_OBJECT_NIL) {
        out->ptr = NULL;
        out->len = 0;
        return 2;
    }
    return pm_arg_str(req, name, out, err, err_size);
}

int pm_arg_bool(const pm_request_t *req, const char *name, bool *out, char *err, size_t err_size)
{
    const msgpack_object *value = s_arg_given(req, name);
    if (value == NULL)
        return 0;
    if (value->type != MSGPACK_OBJECT_BOOLEAN)
        return s_wrong_type(name, "a boolean", err, err_size);
    *out = value->via.boolean;
    return 1;
}

int pm_arg_str_map(const pm_request_t *req, const char *name, const msgpack_object **out, char *err,
                   size_t err_size)
{
    const msgpack_object *value = s_arg_given(req, name);
    if (value == NULL)
        return 0;
    if (value->type != MSGPACK_OBJECT_MAP)
        return s_wrong_type(name, "a map of strings", err, err_size);
    for (uint32_t i = 0; i < value->via.map.size; i++) {
        const msgpack_object_kv *kv = &value->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            return s_wrong_type(name, "a map of strings", err, err_size);
        if (kv->val.type != MSGPACK_OBJECT_STR)
            return s_wrong_type(name, "a map of strings", err, err_size);
        if (s_has_nul(&kv->key) || s_has_nul(&kv->val))
            return s_nul_inside(name, err, err_size);
    }
    *out = value;
    return 1;
}

int pm_arg_str_array(const pm_request_t *req, const char *name, const msgpack_object **out,
                     char *err, size_t err_size)
{
    const msgpack_object *value = s_arg_given(req, name);
    if (value == NULL)
        return 0;
    if (value->type != MSGPACK_OBJECT_ARRAY)
        return s_wrong_type(name, "an array of strings", err, err_size);
    for (uint32_t i = 0; i < value->via.array.size; i++) {
        const msgpack_object *element = &value->via.array.ptr[i];
        if (element->type != MSGPACK_OBJECT_STR)
            return s_wrong_type(name, "an array of strings", err, err_size);
        if (s_has_nul(element))
            return s_nul_inside(name, err, err_size);
    }
    *out = value;
    return 1;
}

int pm_arg_require(const char *name, char *err, size_t err_size)
{
    s_set_err(err, err_size, "missing required argument '%s'", name);
    return -1;
}

char *pm_str_dup(pm_str_t s)
{
    char *copy = malloc(s.len + 1);
    if (copy == NULL)
        return NULL;
    if (s.len > 0)
        memcpy(copy, s.ptr, s.len);
    copy[s.len] = '\0';
    return copy;
}

/* --------------------------------------------------------------------------- packing */

int pm_pack_strn(msgpack_packer *pk, const char *s, size_t len)
{
    if (msgpack_pack_str(pk, len) != 0)
        return -1;
    if (len > 0 && msgpack_pack_str_body(pk, s, len) != 0)
        return -1;
    return 0;
}

int pm_pack_str(msgpack_packer *pk, const char *s)
{
    if (s == NULL)
        return msgpack_pack_nil(pk) == 0 ? 0 : -1;
    return pm_pack_strn(pk, s, strlen(s));
}

/* Packs text, replacing every byte that does not start a valid UTF-8 sequence by U+FFFD:
 * an error message may quote bytes from anywhere, and the reply must still decode. */
static int s_pack_text_repaired(msgpack_packer *pk, const char *s, size_t len)
{
    static const char replacement[] = "\xEF\xBF\xBD";
    const unsigned char *p = (const unsigned char *)s;
    size_t out_len = 0;

    for (size_t i = 0; i < len;) {
        size_t n = s_utf8_sequence(p + i, len - i);
        out_len += n == 0 ? sizeof replacement - 1 : n;
        i += n == 0 ? 1 : n;
    }
    if (out_len == len)
        return pm_pack_strn(pk, s, len);

    if (msgpack_pack_str(pk, out_len) != 0)
        return -1;
    size_t run_start = 0;
    for (size_t i = 0; i < len;) {
        size_t n = s_utf8_sequence(p + i, len - i);
        if (n > 0) {
            i += n;
            continue;
        }
        if (i > run_start && msgpack_pack_str_body(pk, s + run_start, i - run_start) != 0)
            return -1;
        if (msgpack_pack_str_body(pk, replacement, sizeof replacement - 1) != 0)
            return -1;
        i++;
        run_start = i;
    }
    if (len > run_start && msgpack_pack_str_body(pk, s + run_start, len - run_start) != 0)
        return -1;
    return 0;
}

int pm_reply_ok_begin(msgpack_packer *pk, const msgpack_object *id)
{
    if (msgpack_pack_map(pk, id != NULL ? 3 : 2) != 0 || pm_pack_str(pk, "ok") != 0 ||
        msgpack_pack_true(pk) != 0)
        return -1;
    if (id != NULL && (pm_pack_str(pk, "id") != 0 || msgpack_pack_object(pk, *id) != 0))
        return -1;
    return pm_pack_str(pk, "result");
}

int pm_reply_error(msgpack_packer *pk, const msgpack_object *id, pm_error_t code,
                   const char *message)
{
    return pm_reply_error_n(pk, id, code, message, message != NULL ? strlen(message) : 0);
}

int pm_reply_error_n(msgpack_packer *pk, const msgpack_object *id, pm_error_t code,
                     const char *message, size_t len)
{
    if (msgpack_pack_map(pk, id != NULL ? 3 : 2) != 0 || pm_pack_str(pk, "ok") != 0 ||
        msgpack_pack_false(pk) != 0)
        return -1;
    if (id != NULL && (pm_pack_str(pk, "id") != 0 || msgpack_pack_object(pk, *id) != 0))
        return -1;
    if (pm_pack_str(pk, "error") != 0 || msgpack_pack_map(pk, 2) != 0 ||
        pm_pack_str(pk, "code") != 0 || pm_pack_str(pk, pm_error_name(code)) != 0 ||
        pm_pack_str(pk, "message") != 0)
        return -1;
    return s_pack_text_repaired(pk, message != NULL ? message : "", message != NULL ? len : 0);
}

int pm_request_begin(msgpack_packer *pk, const char *op, bool with_id, long long id)
{
    if (msgpack_pack_map(pk, with_id ? 3 : 2) != 0 || pm_pack_str(pk, "op") != 0 ||
        pm_pack_str(pk, op != NULL ? op : "") != 0)
        return -1;
    if (with_id && (pm_pack_str(pk, "id") != 0 || msgpack_pack_long_long(pk, id) != 0))
        return -1;
    return pm_pack_str(pk, "args");
}

/* ----------------------------------------------------------------------------- replies */

void pm_reply_clear(pm_reply_t *rep)
{
    if (rep == NULL)
        return;
    if (rep->unpacked_init)
        msgpack_unpacked_destroy(&rep->unpacked);
    memset(rep, 0, sizeof *rep);
}

int pm_reply_decode(pm_reply_t *rep, const void *data, size_t size, char *err, size_t err_size)
{
    char detail[160];
    pm_error_t ignored;

    memset(rep, 0, sizeof *rep);
    msgpack_unpacked_init(&rep->unpacked);
    rep->unpacked_init = true;
    rep->code = PM_ERR_INTERNAL;

    if (size > PM_PROTO_MAX_REPLY_SIZE) {
        s_set_err(err, err_size, "reply of %zu bytes exceeds the limit of %d bytes", size,
                  PM_PROTO_MAX_REPLY_SIZE);
        return -1;
    }
    if (pm_proto_precheck(data, size, PM_PROTO_MAX_REPLY_DEPTH, detail, sizeof detail) != 0) {
        s_set_err(err, err_size, "reply is not valid msgpack: %s", detail);
        return -1;
    }
    if (s_unpack(&rep->unpacked, data, size, "reply", &ignored, err, err_size) != 0)
        return -1;

    const msgpack_object *root = &rep->unpacked.data;
    if (root->type != MSGPACK_OBJECT_MAP) {
        s_set_err(err, err_size, "reply must be a map");
        return -1;
    }
    rep->id = pm_map_get(root, "id");
    const msgpack_object *ok = pm_map_get(root, "ok");
    if (ok == NULL || ok->type != MSGPACK_OBJECT_BOOLEAN) {
        s_set_err(err, err_size, "reply has no boolean 'ok'");
        return -1;
    }
    rep->ok = ok->via.boolean;
    if (rep->ok) {
        rep->result = pm_map_get(root, "result");
        if (rep->result == NULL) {
            s_set_err(err, err_size, "reply has no 'result'");
            return -1;
        }
        rep->code = PM_OK;
        return 0;
    }

    const msgpack_object *error = pm_map_get(root, "error");
    if (error == NULL || error->type != MSGPACK_OBJECT_MAP) {
        s_set_err(err, err_size, "reply has no 'error' map");
        return -1;
    }
    const msgpack_object *code = pm_map_get(error, "code");
    const msgpack_object *message = pm_map_get(error, "message");
    if (code == NULL || code->type != MSGPACK_OBJECT_STR) {
        s_set_err(err, err_size, "reply error has no 'code' string");
        return -1;
    }
    if (message == NULL || message->type != MSGPACK_OBJECT_STR) {
        s_set_err(err, err_size, "reply error has no 'message' string");
        return -1;
    }
    rep->code_name.ptr = code->via.str.ptr;
    rep->code_name.len = code->via.str.size;
    rep->message.ptr = message->via.str.ptr;
    rep->message.len = message->via.str.size;
    rep->code = pm_error_from_name(code->via.str.ptr, code->via.str.size);
    /* A code word from a newer server (or "ok", which is no error) is still a failure. */
    if (rep->code == PM_ERR_COUNT_ || rep->code == PM_OK)
        rep->code = PM_ERR_INTERNAL;
    return 0;
}
