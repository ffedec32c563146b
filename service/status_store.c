/*
 * status_store: the model status journal (format, crash safety and compaction are described
 * in status_store.h).
 */
#include "status_store.h"

#include "pm_proto.h"

#include <msgpack.h>

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct status_store_t {
    char *path;
    char *dir;
    int fd;
    uint64_t size;
    uint64_t snapshot_size;
    uint64_t truncated;
    uint64_t written_version; /* status_version of the last frame written or replayed */
};

static void s_set_error(char *err, size_t err_size, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

static void s_set_error(char *err, size_t err_size, const char *format, ...)
{
    if (!err || err_size == 0)
        return;
    va_list args;
    va_start(args, format);
    int n = vsnprintf(err, err_size, format, args);
    va_end(args);
    if (n < 0)
        err[0] = '\0';
}

/* ------------------------------------------------------------------------------ crc32 */

/* Half-byte table: 16 constant entries, no initialisation (so no race) and fast enough for a
 * replay of many megabytes. */
/* CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), four bytes per step with four
 * 256-entry tables ("slicing by 4"): the frame's checksum is a visible share of a status
 * batch's cost (docs/benchmarks.md, table J), and a nibble at a time was twice the work. The
 * tables are made once, on first use. */
static uint32_t s_crc_tables[4][256];
static pthread_once_t s_crc_once = PTHREAD_ONCE_INIT;

static void s_crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0xEDB88320U : c >> 1;
        s_crc_tables[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int t = 1; t < 4; t++)
            s_crc_tables[t][n] =
                (s_crc_tables[t - 1][n] >> 8) ^ s_crc_tables[0][s_crc_tables[t - 1][n] & 0xFF];
}

uint32_t status_store_crc32(const void *data, size_t len)
{
    pthread_once(&s_crc_once, s_crc_init);
    const unsigned char *p = data;
    uint32_t crc = 0xFFFFFFFFU;
    while (len >= 4) {
        crc ^= (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        crc = s_crc_tables[3][crc & 0xFF] ^ s_crc_tables[2][(crc >> 8) & 0xFF] ^
              s_crc_tables[1][(crc >> 16) & 0xFF] ^ s_crc_tables[0][crc >> 24];
        p += 4;
        len -= 4;
    }
    while (len--)
        crc = (crc >> 8) ^ s_crc_tables[0][(crc ^ *p++) & 0xFF];
    return crc ^ 0xFFFFFFFFU;
}

static void s_put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t s_get_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* ------------------------------------------------------------------------------ packing */

static int s_pack_time(msgpack_packer *pk, double t)
{
    return status_time_is_nil(t) ? msgpack_pack_nil(pk) : msgpack_pack_double(pk, t);
}

static int s_pack_bool(msgpack_packer *pk, bool b)
{
    return b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

static int s_pack_opt_ll(msgpack_packer *pk, bool has, long long v)
{
    return has ? msgpack_pack_long_long(pk, v) : msgpack_pack_nil(pk);
}

static int s_pack_error(msgpack_packer *pk, const status_error_t *e)
{
    const char *name = status_error_class_name(e->error_class);
    if (!name)
        return msgpack_pack_nil(pk);
    if (msgpack_pack_array(pk, 3) != 0 || pm_pack_str(pk, name) != 0 ||
        msgpack_pack_int(pk, e->http_status) != 0 ||
        pm_pack_str(pk, e->message ? e->message : "") != 0)
        return -1;
    return 0;
}

static const char *const s_listed_names[] = {"nil", "false", "true"};

static int s_pack_record(msgpack_packer *pk, const char *key, const status_record_t *r)
{
    const model_meta_t *m = &r->meta;
    if (msgpack_pack_array(pk, 2) != 0 || pm_pack_str(pk, key) != 0 ||
        msgpack_pack_array(pk, 17) != 0 || pm_pack_str(pk, r->model) != 0 ||
        pm_pack_str(pk, status_state_name(r->state)) != 0 ||
        s_pack_bool(pk, r->in_valid_models) != 0 ||
        pm_pack_str(pk, s_listed_names[r->listed <= STATUS_LISTED_TRUE ? r->listed : 0]) != 0 ||
        s_pack_time(pk, r->first_seen_at) != 0 || s_pack_time(pk, r->last_listed_at) != 0 ||
        s_pack_time(pk, r->last_checked_at) != 0 || s_pack_time(pk, r->last_ok_at) != 0 ||
        s_pack_time(pk, r->latency_ms) != 0 || msgpack_pack_long_long(pk, r->failures) != 0 ||
        s_pack_error(pk, &r->last_error) != 0 || msgpack_pack_array(pk, 4) != 0 ||
        s_pack_opt_ll(pk, m->has_context_length, m->context_length) != 0 ||
        s_pack_opt_ll(pk, m->has_max_output_tokens, m->max_output_tokens) != 0 ||
        pm_pack_str(pk, m->owned_by) != 0 || s_pack_opt_ll(pk, m->has_created, m->created) != 0 ||
        s_pack_bool(pk, r->in_invalid_models) != 0 ||
        msgpack_pack_long_long(pk, r->absent_count) != 0 || s_pack_bool(pk, r->pruned) != 0 ||
        pm_pack_str(pk, r->short_name) != 0 || msgpack_pack_long_long(pk, r->list_index) != 0)
        return -1;
    return 0;
}

static int s_pack_provider(msgpack_packer *pk, const char *key, const status_provider_t *ps)
{
    if (msgpack_pack_array(pk, 2) != 0 || pm_pack_str(pk, key) != 0 ||
        msgpack_pack_array(pk, 5) != 0 ||
        pm_pack_str(pk, status_provider_state_name(ps->state)) != 0 ||
        s_pack_time(pk, ps->last_list_at) != 0 || s_pack_time(pk, ps->last_list_ok_at) != 0 ||
        s_pack_opt_ll(pk, ps->has_models_listed, ps->models_listed) != 0 ||
        s_pack_error(pk, &ps->last_error) != 0)
        return -1;
    return 0;
}

/* The frame header is reserved at the start of the buffer and filled once the payload is
 * known, so the whole frame goes out in one write(). */
static int s_frame_begin(msgpack_sbuffer *buf, msgpack_packer *pk)
{
    msgpack_sbuffer_init(buf);
    msgpack_packer_init(pk, buf, msgpack_sbuffer_write);
    static const char zero[STATUS_STORE_FRAME_HEADER] = {0};
    return msgpack_sbuffer_write(buf, zero, sizeof zero);
}

static int s_frame_end(msgpack_sbuffer *buf)
{
    size_t payload = buf->size - STATUS_STORE_FRAME_HEADER;
    if (payload > (size_t)STATUS_STORE_MAX_FRAME)
        return -1;
    unsigned char *p = (unsigned char *)buf->data;
    s_put_u32(p, (uint32_t)payload);
    s_put_u32(p + 4, status_store_crc32(p + STATUS_STORE_FRAME_HEADER, payload));
    return 0;
}

static int s_pack_head(msgpack_packer *pk, const char *kind, uint64_t version)
{
    if (msgpack_pack_array(pk, 7) != 0 || pm_pack_str(pk, kind) != 0 ||
        msgpack_pack_int(pk, STATUS_STORE_FORMAT) != 0 || msgpack_pack_uint64(pk, version) != 0)
        return -1;
    return 0;
}

static int s_pack_batch(msgpack_packer *pk, uint64_t version, const status_dirty_t *d)
{
    if (s_pack_head(pk, "batch", version) != 0 ||
        msgpack_pack_array(pk, (uint32_t)d->provider_removal_count) != 0)
        return -1;
    for (size_t i = 0; i < d->provider_removal_count; i++)
        if (pm_pack_str(pk, d->provider_removals[i]) != 0)
            return -1;
    if (msgpack_pack_array(pk, (uint32_t)d->record_removal_count) != 0)
        return -1;
    for (size_t i = 0; i < d->record_removal_count; i++)
        if (msgpack_pack_array(pk, 2) != 0 ||
            pm_pack_str(pk, d->record_removals[i].provider) != 0 ||
            pm_pack_str(pk, d->record_removals[i].model) != 0)
            return -1;
    if (msgpack_pack_array(pk, (uint32_t)d->provider_count) != 0)
        return -1;
    for (size_t i = 0; i < d->provider_count; i++)
        if (s_pack_provider(pk, d->providers[i].provider, d->providers[i].status) != 0)
            return -1;
    if (msgpack_pack_array(pk, (uint32_t)d->record_count) != 0)
        return -1;
    for (size_t i = 0; i < d->record_count; i++)
        if (s_pack_record(pk, d->records[i].provider, d->records[i].record) != 0)
            return -1;
    return 0;
}

typedef struct {
    msgpack_packer *pk;
    size_t providers;
    size_t records;
} s_snap_t;

static int s_count_provider(const char *key, const status_provider_t *ps, void *arg)
{
    (void)key;
    (void)ps;
    ((s_snap_t *)arg)->providers++;
    return 0;
}

static int s_count_record(const char *key, const status_record_t *rec, void *arg)
{
    (void)key;
    (void)rec;
    ((s_snap_t *)arg)->records++;
    return 0;
}

static int s_snap_provider(const char *key, const status_provider_t *ps, void *arg)
{
    return s_pack_provider(((s_snap_t *)arg)->pk, key, ps) != 0 ? -1 : 0;
}

static int s_snap_record(const char *key, const status_record_t *rec, void *arg)
{
    return s_pack_record(((s_snap_t *)arg)->pk, key, rec) != 0 ? -1 : 0;
}

static int s_pack_snapshot(msgpack_packer *pk, const model_status_t *status)
{
    s_snap_t snap = {pk, 0, 0};
    if (model_status_each_all(status, s_count_provider, s_count_record, &snap) != 0 ||
        snap.providers > UINT32_MAX || snap.records > UINT32_MAX)
        return -1;
    if (s_pack_head(pk, "snapshot", model_status_version(status)) != 0 ||
        msgpack_pack_array(pk, 0) != 0 || msgpack_pack_array(pk, 0) != 0 ||
        msgpack_pack_array(pk, (uint32_t)snap.providers) != 0 ||
        model_status_each_all(status, s_snap_provider, NULL, &snap) != 0 ||
        msgpack_pack_array(pk, (uint32_t)snap.records) != 0 ||
        model_status_each_all(status, NULL, s_snap_record, &snap) != 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------------ decoding */

static bool s_is_str(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_STR;
}

static bool s_str_eq(const msgpack_object *o, const char *s)
{
    size_t len = strlen(s);
    return s_is_str(o) && o->via.str.size == len && memcmp(o->via.str.ptr, s, len) == 0;
}

/* A NUL-terminated copy of a msgpack string without NUL bytes, or NULL. */
static char *s_dup_str(const msgpack_object *o)
{
    if (!s_is_str(o) || memchr(o->via.str.ptr, '\0', o->via.str.size))
        return NULL;
    char *s = malloc((size_t)o->via.str.size + 1);
    if (!s)
        return NULL;
    memcpy(s, o->via.str.ptr, o->via.str.size);
    s[o->via.str.size] = '\0';
    return s;
}

static int s_get_ll(const msgpack_object *o, long long *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)LLONG_MAX) {
        *out = (long long)o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = (long long)o->via.i64;
        return 0;
    }
    return -1;
}

static int s_get_opt_ll(const msgpack_object *o, bool *has, long long *out)
{
    *has = false;
    *out = 0;
    if (o->type == MSGPACK_OBJECT_NIL)
        return 0;
    *has = true;
    return s_get_ll(o, out);
}

static int s_get_time(const msgpack_object *o, double *out)
{
    if (o->type == MSGPACK_OBJECT_NIL) {
        *out = STATUS_TIME_NIL;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32) {
        *out = o->via.f64;
        return 0;
    }
    return -1;
}

static int s_get_bool(const msgpack_object *o, bool *out)
{
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return -1;
    *out = o->via.boolean;
    return 0;
}

static const msgpack_object *s_array(const msgpack_object *o, uint32_t size)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != size)
        return NULL;
    return o->via.array.ptr;
}

static int s_get_error(const msgpack_object *o, status_error_t *e)
{
    memset(e, 0, sizeof *e);
    if (o->type == MSGPACK_OBJECT_NIL)
        return 0;
    const msgpack_object *a = s_array(o, 3);
    if (!a)
        return -1;
    long long http;
    for (unsigned c = STATUS_ERROR_MODEL; c < STATUS_ERROR_CLASS_COUNT; c++)
        if (s_str_eq(&a[0], status_error_class_name((status_error_class_t)c)))
            e->error_class = (status_error_class_t)c;
    if (e->error_class == STATUS_ERROR_NONE || s_get_ll(&a[1], &http) != 0 || http < 0 ||
        http > 999)
        return -1;
    e->http_status = (int)http;
    e->message = s_dup_str(&a[2]);
    return e->message ? 0 : -1;
}

/* Decodes a stored record into rec (the caller clears it). 0 / -1. */
static int s_get_record(const msgpack_object *o, status_record_t *rec)
{
    memset(rec, 0, sizeof *rec);
    const msgpack_object *a = s_array(o, 17);
    if (!a)
        return -1;
    rec->model = s_dup_str(&a[0]);
    if (!rec->model || !s_is_str(&a[1]) ||
        status_state_from_name(a[1].via.str.ptr, a[1].via.str.size, &rec->state) != 0 ||
        s_get_bool(&a[2], &rec->in_valid_models) != 0)
        return -1;
    unsigned listed = 3; /* no match yet */
    for (unsigned i = 0; i < 3; i++)
        if (s_str_eq(&a[3], s_listed_names[i]))
            listed = i;
    rec->listed = (status_listed_t)(listed < 3 ? listed : 0);
    if (listed >= 3 || s_get_time(&a[4], &rec->first_seen_at) ||
        s_get_time(&a[5], &rec->last_listed_at) || s_get_time(&a[6], &rec->last_checked_at) ||
        s_get_time(&a[7], &rec->last_ok_at) || s_get_time(&a[8], &rec->latency_ms) ||
        s_get_ll(&a[9], &rec->failures) || s_get_error(&a[10], &rec->last_error))
        return -1;
    const msgpack_object *m = s_array(&a[11], 4);
    model_meta_t *meta = &rec->meta;
    if (!m || s_get_opt_ll(&m[0], &meta->has_context_length, &meta->context_length) ||
        s_get_opt_ll(&m[1], &meta->has_max_output_tokens, &meta->max_output_tokens) ||
        s_get_opt_ll(&m[3], &meta->has_created, &meta->created))
        return -1;
    if (m[2].type != MSGPACK_OBJECT_NIL && !(meta->owned_by = s_dup_str(&m[2])))
        return -1;
    if (s_get_bool(&a[12], &rec->in_invalid_models) || s_get_ll(&a[13], &rec->absent_count) ||
        s_get_bool(&a[14], &rec->pruned) || s_get_ll(&a[16], &rec->list_index))
        return -1;
    if (a[15].type != MSGPACK_OBJECT_NIL && !(rec->short_name = s_dup_str(&a[15])))
        return -1;
    return 0;
}

static int s_get_provider(const msgpack_object *o, status_provider_t *ps)
{
    memset(ps, 0, sizeof *ps);
    const msgpack_object *a = s_array(o, 5);
    if (!a)
        return -1;
    bool found = false;
    for (unsigned s = 0; s < STATUS_PROVIDER_STATE_COUNT; s++) {
        if (s_str_eq(&a[0], status_provider_state_name((status_provider_state_t)s))) {
            ps->state = (status_provider_state_t)s;
            found = true;
        }
    }
    if (!found || s_get_time(&a[1], &ps->last_list_at) || s_get_time(&a[2], &ps->last_list_ok_at) ||
        s_get_opt_ll(&a[3], &ps->has_models_listed, &ps->models_listed) ||
        s_get_error(&a[4], &ps->last_error))
        return -1;
    return 0;
}

/* Checks (apply false) or applies (apply true) one payload. Checking first means a frame that
 * does not decode is refused whole, never half applied. Returns 0, or -1. is_snapshot set. */
static int s_apply(model_status_t *status, const msgpack_object *root, bool apply,
                   bool *is_snapshot)
{
    const msgpack_object *a = s_array(root, 7);
    long long format;
    if (!a || s_get_ll(&a[1], &format) != 0 || format != STATUS_STORE_FORMAT ||
        a[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return -1;
    bool snapshot = s_str_eq(&a[0], "snapshot");
    if (!snapshot && !s_str_eq(&a[0], "batch"))
        return -1;
    *is_snapshot = snapshot;
    for (int i = 3; i < 7; i++)
        if (a[i].type != MSGPACK_OBJECT_ARRAY)
            return -1;
    if (apply) {
        if (snapshot)
            model_status_reset(status);
        model_status_set_version(status, a[2].via.u64);
    }
    char *key = NULL, *model = NULL;
    int rc = -1;
    const msgpack_object_array *list = &a[3].via.array;
    for (uint32_t i = 0; i < list->size; i++) {
        if (!(key = s_dup_str(&list->ptr[i])))
            goto done;
        if (apply)
            model_status_forget_provider(status, key);
        free(key);
        key = NULL;
    }
    list = &a[4].via.array;
    for (uint32_t i = 0; i < list->size; i++) {
        const msgpack_object *pair = s_array(&list->ptr[i], 2);
        if (!pair || !(key = s_dup_str(&pair[0])) || !(model = s_dup_str(&pair[1])))
            goto done;
        if (apply)
            model_status_forget_record(status, key, model);
        free(key);
        free(model);
        key = model = NULL;
    }
    list = &a[5].via.array;
    for (uint32_t i = 0; i < list->size; i++) {
        const msgpack_object *pair = s_array(&list->ptr[i], 2);
        status_provider_t ps;
        if (!pair || !(key = s_dup_str(&pair[0])))
            goto done;
        int bad = s_get_provider(&pair[1], &ps);
        if (!bad && apply)
            bad = model_status_restore_provider(status, key, &ps);
        status_provider_clear(&ps);
        if (bad)
            goto done;
        free(key);
        key = NULL;
    }
    list = &a[6].via.array;
    for (uint32_t i = 0; i < list->size; i++) {
        const msgpack_object *pair = s_array(&list->ptr[i], 2);
        status_record_t rec;
        if (!pair || !(key = s_dup_str(&pair[0])))
            goto done;
        int bad = s_get_record(&pair[1], &rec);
        if (!bad && apply)
            bad = model_status_restore_record(status, key, &rec);
        status_record_clear(&rec);
        if (bad)
            goto done;
        free(key);
        key = NULL;
    }
    rc = 0;
done:
    free(key);
    free(model);
    return rc;
}

/* ------------------------------------------------------------------------------ file I/O */

static int s_write_all(int fd, const void *data, size_t len, off_t offset)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        p += n;
        len -= (size_t)n;
        offset += n;
    }
    return 0;
}

static int s_read_all(int fd, void *data, size_t len, off_t offset)
{
    char *p = data;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = 0; /* short file: a torn tail, not an I/O error */
            return -1;
        }
        p += n;
        len -= (size_t)n;
        offset += n;
    }
    return 0;
}

static int s_sync_data(int fd)
{
    int rc;
    do {
        rc = fdatasync(fd);
    } while (rc != 0 && errno == EINTR);
    return rc;
}

static int s_fsync_dir(const char *dir)
{
    int fd;
    do {
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int saved = errno;
    /* Some file systems cannot sync a directory at all; that is not a failure of ours. */
    if (rc != 0 && (saved == EINVAL || saved == ENOTSUP))
        rc = 0;
    close(fd);
    errno = saved;
    return rc;
}

static char *s_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    if (a + b + 2 > PATH_MAX)
        return NULL;
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* Replays frames from offset 0; stops at the first bad one and truncates the file there. */
static int s_replay(status_store_t *self, model_status_t *status, char *err, size_t err_size)
{
    uint64_t offset = 0;
    unsigned char *payload = NULL;
    size_t payload_cap = 0;
    int rc = -1;
    for (;;) {
        if (offset == self->size)
            break;
        unsigned char header[STATUS_STORE_FRAME_HEADER];
        if (self->size - offset < STATUS_STORE_FRAME_HEADER)
            break; /* torn header */
        if (s_read_all(self->fd, header, sizeof header, (off_t)offset) != 0) {
            if (errno != 0) {
                s_set_error(err, err_size, "%s: %s", self->path, strerror(errno));
                goto cleanup;
            }
            break;
        }
        uint32_t len = s_get_u32(header);
        uint32_t crc = s_get_u32(header + 4);
        if (len > (uint64_t)STATUS_STORE_MAX_FRAME ||
            self->size - offset - STATUS_STORE_FRAME_HEADER < len)
            break; /* torn payload, or a length that is corruption */
        if (len > payload_cap) {
            unsigned char *grown = realloc(payload, len);
            if (!grown) {
                s_set_error(err, err_size, "%s: out of memory", self->path);
                goto cleanup;
            }
            payload = grown;
            payload_cap = len;
        }
        if (s_read_all(self->fd, payload, len, (off_t)(offset + STATUS_STORE_FRAME_HEADER)) != 0) {
            if (errno != 0) {
                s_set_error(err, err_size, "%s: %s", self->path, strerror(errno));
                goto cleanup;
            }
            break;
        }
        if (status_store_crc32(payload, len) != crc)
            break;
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t used = 0;
        bool snapshot = false;
        bool ok =
            msgpack_unpack_next(&up, (const char *)payload, len, &used) == MSGPACK_UNPACK_SUCCESS &&
            used == len && s_apply(status, &up.data, false, &snapshot) == 0;
        if (ok && s_apply(status, &up.data, true, &snapshot) != 0) {
            /* It checked out, so only memory can fail here. */
            msgpack_unpacked_destroy(&up);
            s_set_error(err, err_size, "%s: out of memory", self->path);
            goto cleanup;
        }
        msgpack_unpacked_destroy(&up);
        if (!ok)
            break;
        if (snapshot)
            self->snapshot_size = STATUS_STORE_FRAME_HEADER + (uint64_t)len;
        offset += STATUS_STORE_FRAME_HEADER + (uint64_t)len;
    }
    if (offset < self->size) {
        /* Keep every good frame; drop the torn or corrupt tail so appends follow good data. */
        if (ftruncate(self->fd, (off_t)offset) != 0 || s_sync_data(self->fd) != 0) {
            s_set_error(err, err_size, "%s: %s", self->path, strerror(errno));
            goto cleanup;
        }
        self->truncated = self->size - offset;
        self->size = offset;
    }
    if (model_status_restore_finish(status) != 0) {
        s_set_error(err, err_size, "%s: out of memory", self->path);
        goto cleanup;
    }
    self->written_version = model_status_version(status);
    rc = 0;
cleanup:
    free(payload);
    return rc;
}

status_store_t *status_store_open(const char *data_dir, model_status_t *status, char *err,
                                  size_t err_size)
{
    if (!data_dir || !status) {
        s_set_error(err, err_size, "status store: no data dir");
        return NULL;
    }
    status_store_t *self = calloc(1, sizeof *self);
    if (!self) {
        s_set_error(err, err_size, "status store: out of memory");
        return NULL;
    }
    self->fd = -1;
    self->path = s_join(data_dir, STATUS_STORE_FILE_NAME);
    size_t dlen = strlen(data_dir);
    self->dir = malloc(dlen + 1);
    if (!self->path || !self->dir) {
        s_set_error(err, err_size, "%s/%s: %s", data_dir, STATUS_STORE_FILE_NAME,
                    strerror(self->dir ? ENAMETOOLONG : ENOMEM));
        goto fail;
    }
    memcpy(self->dir, data_dir, dlen + 1);
    do {
        self->fd = open(self->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, S_IRUSR | S_IWUSR);
    } while (self->fd < 0 && errno == EINTR);
    struct stat st;
    if (self->fd < 0 || fstat(self->fd, &st) != 0) {
        s_set_error(err, err_size, "%s: %s", self->path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        s_set_error(err, err_size, "%s: not a regular file", self->path);
        goto fail;
    }
    /* The journal holds no secret, but it is the operator's data: same mode as the YAML. */
    if ((st.st_mode & 07777) != (S_IRUSR | S_IWUSR) && fchmod(self->fd, S_IRUSR | S_IWUSR) != 0) {
        s_set_error(err, err_size, "%s: %s", self->path, strerror(errno));
        goto fail;
    }
    /* The journal may have just been created: make its directory entry durable too. */
    if (s_fsync_dir(self->dir) != 0) {
        s_set_error(err, err_size, "%s: %s", self->dir, strerror(errno));
        goto fail;
    }
    self->size = (uint64_t)st.st_size;
    if (s_replay(self, status, err, err_size) != 0)
        goto fail;
    /* The journal is not kept open between batches: a file open for writing keeps its
     * filesystem from being remounted read-only (an operator's way to freeze a data dir), and
     * one open() per batch costs far less than the batch's fdatasync. */
    close(self->fd);
    self->fd = -1;
    return self;
fail:
    status_store_destroy(&self);
    return NULL;
}

void status_store_destroy(status_store_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    status_store_t *self = *self_p;
    if (self->fd >= 0)
        close(self->fd);
    free(self->path);
    free(self->dir);
    free(self);
    *self_p = NULL;
}

static bool s_dirty_empty(const status_dirty_t *d)
{
    return d->provider_removal_count == 0 && d->record_removal_count == 0 &&
           d->provider_count == 0 && d->record_count == 0;
}

int status_store_append(status_store_t *self, const model_status_t *status,
                        const status_dirty_t *dirty, char *err, size_t err_size)
{
    if (!self || !status || !dirty)
        return -1;
    uint64_t version = model_status_version(status);
    if (s_dirty_empty(dirty) && version == self->written_version)
        return 0;
    if (dirty->provider_removal_count > UINT32_MAX || dirty->record_removal_count > UINT32_MAX ||
        dirty->provider_count > UINT32_MAX || dirty->record_count > UINT32_MAX) {
        s_set_error(err, err_size, "%s: batch too large", self->path);
        return -1;
    }
    msgpack_sbuffer buf;
    msgpack_packer pk;
    int rc = -1;
    if (s_frame_begin(&buf, &pk) != 0 || s_pack_batch(&pk, version, dirty) != 0 ||
        s_frame_end(&buf) != 0) {
        s_set_error(err, err_size, "%s: cannot encode the batch (out of memory or too large)",
                    self->path);
        goto cleanup;
    }
    do {
        self->fd = open(self->path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    } while (self->fd < 0 && errno == EINTR);
    if (self->fd < 0) {
        s_set_error(err, err_size, "%s: %s", self->path, strerror(errno));
        goto cleanup;
    }
    if (s_write_all(self->fd, buf.data, buf.size, (off_t)self->size) != 0 ||
        s_sync_data(self->fd) != 0) {
        int saved = errno;
        /* Cut off whatever part reached the file, so the next frame follows good data. */
        if (ftruncate(self->fd, (off_t)self->size) != 0)
            saved = errno;
        s_set_error(err, err_size, "%s: %s", self->path, strerror(saved));
        goto cleanup;
    }
    self->size += buf.size;
    self->written_version = version;
    rc = 0;
    /* A journal without a snapshot frame yet (a new data dir) takes its first state as the
     * baseline: a big first batch is not written twice at once (append, then compaction). */
    if (self->snapshot_size == 0)
        self->snapshot_size = self->size;
    uint64_t limit = (uint64_t)STATUS_STORE_COMPACT_FACTOR * self->snapshot_size;
    if (limit < (uint64_t)STATUS_STORE_MIN_COMPACT_BYTES)
        limit = (uint64_t)STATUS_STORE_MIN_COMPACT_BYTES;
    close(self->fd);
    self->fd = -1;
    if (self->size > limit && status_store_compact(self, status, err, err_size) != 0)
        rc = 1;
cleanup:
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
    msgpack_sbuffer_destroy(&buf);
    return rc;
}

int status_store_compact(status_store_t *self, const model_status_t *status, char *err,
                         size_t err_size)
{
    if (!self || !status)
        return -1;
    char temp[PATH_MAX];
    int n = snprintf(temp, sizeof temp, "%s.tmp.XXXXXX", self->path);
    if (n < 0 || (size_t)n >= sizeof temp) {
        s_set_error(err, err_size, "%s: %s", self->path, strerror(ENAMETOOLONG));
        return -1;
    }
    msgpack_sbuffer buf;
    msgpack_packer pk;
    int fd = -1;
    bool have_temp = false;
    int rc = -1;
    if (s_frame_begin(&buf, &pk) != 0 || s_pack_snapshot(&pk, status) != 0 ||
        s_frame_end(&buf) != 0) {
        s_set_error(err, err_size, "%s: cannot encode the snapshot (out of memory or too large)",
                    self->path);
        goto cleanup;
    }
    /* Same directory as the journal, so that rename() is atomic. */
    fd = mkstemp(temp);
    if (fd < 0) {
        s_set_error(err, err_size, "%s: %s", temp, strerror(errno));
        goto cleanup;
    }
    have_temp = true;
    int synced;
    if (fchmod(fd, S_IRUSR | S_IWUSR) != 0 || s_write_all(fd, buf.data, buf.size, 0) != 0) {
        s_set_error(err, err_size, "%s: %s", temp, strerror(errno));
        goto cleanup;
    }
    do {
        synced = fsync(fd);
    } while (synced != 0 && errno == EINTR);
    if (synced != 0) {
        s_set_error(err, err_size, "%s: %s", temp, strerror(errno));
        goto cleanup;
    }
    if (rename(temp, self->path) != 0) {
        s_set_error(err, err_size, "%s: %s", self->path, strerror(errno));
        goto cleanup;
    }
    have_temp = false;
    /* From here the new file is the journal: switch to it even if the directory sync fails
     * (the failure is still reported: the rename might not survive a crash). */
    self->size = buf.size;
    self->snapshot_size = buf.size;
    self->written_version = model_status_version(status);
    if (s_fsync_dir(self->dir) != 0) {
        s_set_error(err, err_size, "%s: %s", self->dir, strerror(errno));
        goto cleanup;
    }
    rc = 0;
cleanup:
    msgpack_sbuffer_destroy(&buf);
    if (fd >= 0)
        close(fd);
    if (have_temp)
        unlink(temp);
    return rc;
}

uint64_t status_store_size(const status_store_t *self)
{
    return self ? self->size : 0;
}

uint64_t status_store_snapshot_size(const status_store_t *self)
{
    return self ? self->snapshot_size : 0;
}

uint64_t status_store_truncated_bytes(const status_store_t *self)
{
    return self ? self->truncated : 0;
}

const char *status_store_path(const status_store_t *self)
{
    return self ? self->path : NULL;
}
