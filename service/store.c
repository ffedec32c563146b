/*
 * store: reading and atomically writing <data_dir>/openaicompat-providers.yaml (see store.h).
 *
 * Reading: the file is stat'ed and refused when larger than STORE_MAX_FILE_SIZE, read into
 * memory and composed into a libyaml document from parser events by our own small composer,
 * so that the limits hold while parsing: nesting deeper than STORE_MAX_DEPTH and aliases are
 * refused (an alias can make a tiny file expand into billions of nodes for a consumer that
 * follows it, the "billion laughs"), and so is a second document. Untagged plain scalars that
 * YAML resolves to null (~, null, empty) get the null tag, so the walk can tell `api_key: null`
 * from `api_key: "null"`. The walk over the document is shape-driven: it never descends into
 * anything it does not understand, and every string is length-checked before it is copied.
 *
 * Writing: libyaml's emitter writes straight into the temp file through an output handler
 * (its own 16 KiB buffer, no unbounded intermediate copy), then fsync, close, rename and a
 * directory fsync. Strings that a YAML 1.1 reader (PyYAML, the seed's) would resolve to
 * something other than a string are double-quoted so they read back as the same string.
 */
#include "store.h"

#include <yaml.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

#define STORE_READ_CHUNK (64u * 1024)
#define STORE_MAX_SHOWN_KEY 80 /* bytes of an offending key quoted in a message */

/* ------------------------------------------------------------------------------ messages */

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

/* "<path>:<line>:<col>: <what>" with libyaml's 0-based mark turned 1-based. */
static void s_error_at(char *err, size_t err_size, const char *path, yaml_mark_t mark,
                       const char *format, ...) __attribute__((format(printf, 5, 6)));

static void s_error_at(char *err, size_t err_size, const char *path, yaml_mark_t mark,
                       const char *format, ...)
{
    if (!err || err_size == 0)
        return;
    int n = snprintf(err, err_size, "%s:%zu:%zu: ", path, mark.line + 1, mark.column + 1);
    if (n < 0) {
        err[0] = '\0';
        return;
    }
    if ((size_t)n >= err_size)
        return;
    va_list args;
    va_start(args, format);
    int m = vsnprintf(err + n, err_size - (size_t)n, format, args);
    va_end(args);
    if (m < 0)
        err[n] = '\0';
}

/* --------------------------------------------------------------------------- layer */

void store_layer_clear(store_layer_t *layer)
{
    if (!layer)
        return;
    for (size_t i = 0; i < layer->count; i++)
        provider_spec_clear(&layer->specs[i]);
    free(layer->specs);
    layer->specs = NULL;
    layer->count = 0;
}

int store_path(const char *data_dir, char *out, size_t out_size)
{
    if (!data_dir || !out || out_size == 0)
        return -1;
    if (data_dir[0] == '\0')
        data_dir = ".";
    size_t len = strlen(data_dir);
    const char *separator = data_dir[len - 1] == '/' ? "" : "/";
    int n = snprintf(out, out_size, "%s%s%s", data_dir, separator, STORE_FILE_NAME);
    if (n < 0 || (size_t)n >= out_size) {
        out[0] = '\0';
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------- reading */

/* Reads the whole file. 1 when it does not exist, 0 with *data_out (caller frees) and
 * *size_out, -1 with err. The size is checked before anything is allocated, and again while
 * reading in case the file grows under us. */
static int s_read_file(const char *path, unsigned char **data_out, size_t *size_out, char *err,
                       size_t err_size)
{
    int fd = -1;
    unsigned char *data = NULL;
    int rc = -1;

    do {
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        if (errno == ENOENT)
            return 1;
        s_set_error(err, err_size, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        s_set_error(err, err_size, "%s: %s", path, strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(st.st_mode)) {
        s_set_error(err, err_size, "%s: not a regular file", path);
        goto cleanup;
    }
    if (st.st_size < 0 || (unsigned long long)st.st_size > STORE_MAX_FILE_SIZE) {
        s_set_error(err, err_size, "%s: file is larger than %u bytes", path,
                    (unsigned)STORE_MAX_FILE_SIZE);
        goto cleanup;
    }
    size_t capacity = (size_t)st.st_size + 1;
    data = malloc(capacity);
    if (!data) {
        s_set_error(err, err_size, "%s: out of memory", path);
        goto cleanup;
    }
    size_t size = 0;
    for (;;) {
        if (size == capacity) {
            if (capacity > STORE_MAX_FILE_SIZE) {
                s_set_error(err, err_size, "%s: file is larger than %u bytes", path,
                            (unsigned)STORE_MAX_FILE_SIZE);
                goto cleanup;
            }
            size_t grown = capacity + STORE_READ_CHUNK;
            if (grown > (size_t)STORE_MAX_FILE_SIZE + 1)
                grown = (size_t)STORE_MAX_FILE_SIZE + 1;
            unsigned char *bigger = realloc(data, grown);
            if (!bigger) {
                s_set_error(err, err_size, "%s: out of memory", path);
                goto cleanup;
            }
            data = bigger;
            capacity = grown;
        }
        ssize_t n = read(fd, data + size, capacity - size);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            s_set_error(err, err_size, "%s: %s", path, strerror(errno));
            goto cleanup;
        }
        if (n == 0)
            break;
        size += (size_t)n;
    }
    if (size > STORE_MAX_FILE_SIZE) {
        s_set_error(err, err_size, "%s: file is larger than %u bytes", path,
                    (unsigned)STORE_MAX_FILE_SIZE);
        goto cleanup;
    }
    *data_out = data;
    *size_out = size;
    data = NULL;
    rc = 0;

cleanup:
    free(data);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* YAML's null spellings for an untagged plain scalar (the empty one included). */
static bool s_is_null_word(const unsigned char *value, size_t length)
{
    static const char *const words[] = {"", "~", "null", "Null", "NULL"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        if (strlen(words[i]) == length && memcmp(words[i], value, length) == 0)
            return true;
    }
    return false;
}

/* A reader error (bad UTF-8, a control character) carries a byte offset, not a mark: turn it
 * into a line and column from the buffer itself. */
static yaml_mark_t s_mark_from_offset(const unsigned char *data, size_t size, size_t offset)
{
    yaml_mark_t mark = {offset, 0, 0};
    if (offset > size)
        offset = size;
    for (size_t i = 0; i < offset; i++) {
        if (data[i] == '\n') {
            mark.line++;
            mark.column = 0;
        } else if ((data[i] & 0xC0) != 0x80) {
            mark.column++; /* count characters, not UTF-8 continuation bytes */
        }
    }
    return mark;
}

static void s_parser_error(const yaml_parser_t *parser, const char *path, const unsigned char *data,
                           size_t size, char *err, size_t err_size)
{
    const char *problem = parser->problem ? parser->problem : "invalid YAML";
    switch (parser->error) {
    case YAML_MEMORY_ERROR:
        s_set_error(err, err_size, "%s: out of memory", path);
        break;
    case YAML_READER_ERROR:
        s_error_at(err, err_size, path, s_mark_from_offset(data, size, parser->problem_offset),
                   "%s", problem);
        break;
    default:
        if (parser->context)
            s_error_at(err, err_size, path, parser->problem_mark, "%s %s", problem,
                       parser->context);
        else
            s_error_at(err, err_size, path, parser->problem_mark, "%s", problem);
        break;
    }
}

typedef struct {
    int node;        /* the collection's node index in the document */
    int pending_key; /* mapping only: a key node waiting for its value, 0 when none */
} s_frame_t;

/* Adds child to the collection on top of the stack (nothing for the root). 0, or -1 on
 * allocation failure. */
static int s_attach(yaml_document_t *doc, s_frame_t *stack, int depth, int child)
{
    if (depth == 0)
        return 0;
    s_frame_t *top = &stack[depth - 1];
    yaml_node_t *parent = yaml_document_get_node(doc, top->node);
    if (parent->type == YAML_SEQUENCE_NODE)
        return yaml_document_append_sequence_item(doc, top->node, child) ? 0 : -1;
    if (top->pending_key == 0) {
        top->pending_key = child;
        return 0;
    }
    int key = top->pending_key;
    top->pending_key = 0;
    return yaml_document_append_mapping_pair(doc, top->node, key, child) ? 0 : -1;
}

/* Composes the parser's events into doc (initialised here, even for an empty stream).
 * 0, or -1 with err; on -1 doc holds nothing to free. */
static int s_compose(const char *path, const unsigned char *data, size_t size, yaml_document_t *doc,
                     char *err, size_t err_size)
{
    yaml_parser_t parser;
    yaml_event_t event;
    s_frame_t stack[STORE_MAX_DEPTH];
    int depth = 0;
    bool have_document = false;
    bool document_done = false;
    bool have_event = false;
    int rc = -1;

    if (!yaml_parser_initialize(&parser)) {
        s_set_error(err, err_size, "%s: out of memory", path);
        return -1;
    }
    yaml_parser_set_input_string(&parser, data, size);

    for (;;) {
        if (!yaml_parser_parse(&parser, &event)) {
            s_parser_error(&parser, path, data, size, err, err_size);
            goto cleanup;
        }
        have_event = true;
        bool stream_end = false;
        int node = 0;
        switch (event.type) {
        case YAML_STREAM_END_EVENT:
            stream_end = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (document_done) {
                s_error_at(err, err_size, path, event.start_mark,
                           "only one YAML document is allowed in this file");
                goto cleanup;
            }
            if (!yaml_document_initialize(doc, NULL, NULL, NULL, 1, 1)) {
                s_set_error(err, err_size, "%s: out of memory", path);
                goto cleanup;
            }
            have_document = true;
            break;
        case YAML_DOCUMENT_END_EVENT:
            document_done = true;
            break;
        case YAML_ALIAS_EVENT:
            s_error_at(err, err_size, path, event.start_mark,
                       "aliases (*%.64s) are not allowed in this file",
                       (const char *)event.data.alias.anchor);
            goto cleanup;
        case YAML_SCALAR_EVENT: {
            yaml_char_t *tag = event.data.scalar.tag;
            if (!tag && event.data.scalar.plain_implicit &&
                event.data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                s_is_null_word(event.data.scalar.value, event.data.scalar.length))
                tag = (yaml_char_t *)YAML_NULL_TAG;
            node = yaml_document_add_scalar(doc, tag, event.data.scalar.value,
                                            (int)event.data.scalar.length, event.data.scalar.style);
            if (!node) {
                s_set_error(err, err_size, "%s: out of memory", path);
                goto cleanup;
            }
            break;
        }
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            if (depth >= STORE_MAX_DEPTH) {
                s_error_at(err, err_size, path, event.start_mark,
                           "nesting deeper than %d levels is not allowed", STORE_MAX_DEPTH);
                goto cleanup;
            }
            if (event.type == YAML_SEQUENCE_START_EVENT)
                node = yaml_document_add_sequence(doc, event.data.sequence_start.tag,
                                                  event.data.sequence_start.style);
            else
                node = yaml_document_add_mapping(doc, event.data.mapping_start.tag,
                                                 event.data.mapping_start.style);
            if (!node) {
                s_set_error(err, err_size, "%s: out of memory", path);
                goto cleanup;
            }
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            /* The parser guarantees balance; the check only guards our own stack. */
            if (depth > 0) {
                depth--;
                yaml_document_get_node(doc, stack[depth].node)->end_mark = event.end_mark;
            }
            break;
        default:
            break;
        }
        if (node) {
            yaml_node_t *added = yaml_document_get_node(doc, node);
            added->start_mark = event.start_mark;
            added->end_mark = event.end_mark;
            if (s_attach(doc, stack, depth, node) != 0) {
                s_set_error(err, err_size, "%s: out of memory", path);
                goto cleanup;
            }
            if (added->type != YAML_SCALAR_NODE) {
                stack[depth].node = node;
                stack[depth].pending_key = 0;
                depth++;
            }
        }
        yaml_event_delete(&event);
        have_event = false;
        if (stream_end)
            break;
    }
    if (!have_document) {
        /* An empty file: an empty document, so that callers see "no root". */
        if (!yaml_document_initialize(doc, NULL, NULL, NULL, 1, 1)) {
            s_set_error(err, err_size, "%s: out of memory", path);
            goto cleanup;
        }
        have_document = true;
    }
    rc = 0;

cleanup:
    if (have_event)
        yaml_event_delete(&event);
    if (rc != 0 && have_document)
        yaml_document_delete(doc);
    yaml_parser_delete(&parser);
    return rc;
}

int store_load_document(const char *path, void *document, char *err, size_t err_size)
{
    unsigned char *data = NULL;
    size_t size = 0;
    int rc = s_read_file(path, &data, &size, err, err_size);
    if (rc != 0)
        return rc;
    rc = s_compose(path, data, size, (yaml_document_t *)document, err, err_size);
    free(data);
    return rc;
}

/* ------------------------------------------------------------------ walking the document */

typedef struct {
    const char *path;
    yaml_document_t *doc;
    store_warn_fn *warn;
    void *warn_arg;
    char *err;
    size_t err_size;
    size_t model_total; /* valid and invalid models in the whole layer, bounded */
} s_walk_t;

static bool s_is_null(const yaml_node_t *node)
{
    return node->type == YAML_SCALAR_NODE && node->tag &&
           strcmp((const char *)node->tag, YAML_NULL_TAG) == 0;
}

static const char *s_text(const yaml_node_t *node)
{
    return (const char *)node->data.scalar.value;
}

static void s_warn_unknown(s_walk_t *walk, const yaml_node_t *key)
{
    if (!walk->warn)
        return;
    char message[2 * PATH_MAX];
    yaml_mark_t mark = key->start_mark;
    int shown = key->data.scalar.length > STORE_MAX_SHOWN_KEY ? STORE_MAX_SHOWN_KEY
                                                              : (int)key->data.scalar.length;
    snprintf(message, sizeof message, "%s:%zu:%zu: unknown key '%.*s' ignored", walk->path,
             mark.line + 1, mark.column + 1, shown, s_text(key));
    walk->warn(walk->warn_arg, message);
}

/* A mapping key must be a plain string scalar (not null, not a collection). */
static int s_check_key(s_walk_t *walk, const yaml_node_t *key)
{
    if (key->type != YAML_SCALAR_NODE || s_is_null(key)) {
        s_error_at(walk->err, walk->err_size, walk->path, key->start_mark,
                   "mapping keys must be strings");
        return -1;
    }
    if (memchr(key->data.scalar.value, '\0', key->data.scalar.length)) {
        s_error_at(walk->err, walk->err_size, walk->path, key->start_mark,
                   "keys must not contain NUL characters");
        return -1;
    }
    return 0;
}

/* Copies a string scalar's value after checking its length and content. what names it for the
 * message; *out is set to a malloc'd copy (NULL when the node is null and null_ok). Never puts
 * the value itself in a message: it may be an API key. */
static int s_copy_string(s_walk_t *walk, const yaml_node_t *node, const char *what,
                         size_t max_length, bool null_ok, bool empty_ok, char **out)
{
    *out = NULL;
    if (s_is_null(node)) {
        if (null_ok)
            return 0;
        s_error_at(walk->err, walk->err_size, walk->path, node->start_mark,
                   "%s must be a string, not null", what);
        return -1;
    }
    if (node->type != YAML_SCALAR_NODE) {
        s_error_at(walk->err, walk->err_size, walk->path, node->start_mark, "%s must be a string",
                   what);
        return -1;
    }
    size_t length = node->data.scalar.length;
    if (length == 0 && !empty_ok) {
        s_error_at(walk->err, walk->err_size, walk->path, node->start_mark, "%s must not be empty",
                   what);
        return -1;
    }
    if (length > max_length) {
        s_error_at(walk->err, walk->err_size, walk->path, node->start_mark,
                   "%s is longer than %zu bytes", what, max_length);
        return -1;
    }
    if (memchr(node->data.scalar.value, '\0', length)) {
        s_error_at(walk->err, walk->err_size, walk->path, node->start_mark,
                   "%s must not contain NUL characters", what);
        return -1;
    }
    char *copy = malloc(length + 1);
    if (!copy) {
        s_set_error(walk->err, walk->err_size, "%s: out of memory", walk->path);
        return -1;
    }
    memcpy(copy, node->data.scalar.value, length);
    copy[length] = '\0';
    *out = copy;
    return 0;
}

static int s_count_models(s_walk_t *walk, const yaml_node_t *node, size_t count)
{
    if (count > REGISTRY_MAX_MODELS - walk->model_total) {
        s_error_at(walk->err, walk->err_size, walk->path, node->start_mark,
                   "more than %u models in this file", (unsigned)REGISTRY_MAX_MODELS);
        return -1;
    }
    walk->model_total += count;
    return 0;
}

static int s_parse_valid_models(s_walk_t *walk, const yaml_node_t *node, provider_spec_t *spec)
{
    if (node->type != YAML_MAPPING_NODE) {
        s_error_at(walk->err, walk->err_size, walk->path, node->start_mark,
                   "valid_models must be a mapping of long model names to short names");
        return -1;
    }
    size_t count = (size_t)(node->data.mapping.pairs.top - node->data.mapping.pairs.start);
    if (s_count_models(walk, node, count) != 0)
        return -1;
    spec->has_valid_models = true;
    if (count == 0)
        return 0;
    spec->model_long = calloc(count, sizeof *spec->model_long);
    spec->model_short = calloc(count, sizeof *spec->model_short);
    if (!spec->model_long || !spec->model_short) {
        s_set_error(walk->err, walk->err_size, "%s: out of memory", walk->path);
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        const yaml_node_pair_t *pair = &node->data.mapping.pairs.start[i];
        const yaml_node_t *key = yaml_document_get_node(walk->doc, pair->key);
        const yaml_node_t *value = yaml_document_get_node(walk->doc, pair->value);
        if (s_copy_string(walk, key, "a model name", REGISTRY_MAX_NAME_LEN, false, false,
                          &spec->model_long[spec->model_count]) != 0)
            return -1;
        spec->model_count++; /* counted now so that provider_spec_clear frees the long name */
        if (s_copy_string(walk, value, "a short model name", REGISTRY_MAX_NAME_LEN, true, false,
                          &spec->model_short[spec->model_count - 1]) != 0)
            return -1;
    }
    return 0;
}

static int s_parse_invalid_models(s_walk_t *walk, const yaml_node_t *node, provider_spec_t *spec)
{
    if (node->type != YAML_SEQUENCE_NODE) {
        s_error_at(walk->err, walk->err_size, walk->path, node->start_mark,
                   "invalid_models must be a list of model names");
        return -1;
    }
    size_t count = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
    if (s_count_models(walk, node, count) != 0)
        return -1;
    spec->has_invalid_models = true;
    if (count == 0)
        return 0;
    spec->invalid_models = calloc(count, sizeof *spec->invalid_models);
    if (!spec->invalid_models) {
        s_set_error(walk->err, walk->err_size, "%s: out of memory", walk->path);
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        const yaml_node_t *item =
            yaml_document_get_node(walk->doc, node->data.sequence.items.start[i]);
        if (s_copy_string(walk, item, "a model name", REGISTRY_MAX_NAME_LEN, false, false,
                          &spec->invalid_models[spec->invalid_count]) != 0)
            return -1;
        spec->invalid_count++;
    }
    return 0;
}

static bool s_is_http_url(const char *url)
{
    return strncmp(url, "http://", 7) == 0 || strncmp(url, "https://", 8) == 0;
}

enum {
    S_FIELD_NAME = 1 << 0,
    S_FIELD_URL = 1 << 1,
    S_FIELD_API_KEY = 1 << 2,
    S_FIELD_VALID = 1 << 3,
    S_FIELD_INVALID = 1 << 4
};

static int s_field_bit(const char *key)
{
    if (strcmp(key, "name") == 0)
        return S_FIELD_NAME;
    if (strcmp(key, "base_api_url") == 0)
        return S_FIELD_URL;
    if (strcmp(key, "api_key") == 0)
        return S_FIELD_API_KEY;
    if (strcmp(key, "valid_models") == 0)
        return S_FIELD_VALID;
    if (strcmp(key, "invalid_models") == 0)
        return S_FIELD_INVALID;
    return 0;
}

/* One provider: value is its mapping (or null: a provider with only its key). */
static int s_parse_provider(s_walk_t *walk, const yaml_node_t *value, provider_spec_t *spec)
{
    if (s_is_null(value))
        return 0;
    if (value->type != YAML_MAPPING_NODE) {
        s_error_at(walk->err, walk->err_size, walk->path, value->start_mark,
                   "provider '%s' must be a mapping", spec->key);
        return -1;
    }
    int seen = 0;
    for (yaml_node_pair_t *pair = value->data.mapping.pairs.start;
         pair < value->data.mapping.pairs.top; pair++) {
        const yaml_node_t *key = yaml_document_get_node(walk->doc, pair->key);
        const yaml_node_t *field = yaml_document_get_node(walk->doc, pair->value);
        if (s_check_key(walk, key) != 0)
            return -1;
        int bit = s_field_bit(s_text(key));
        if (bit == 0) {
            /* ignore: the config file's per-provider ignore globs, read by config.c. */
            if (strcmp(s_text(key), "ignore") != 0)
                s_warn_unknown(walk, key);
            continue;
        }
        if (seen & bit) {
            s_error_at(walk->err, walk->err_size, walk->path, key->start_mark, "duplicate key '%s'",
                       s_text(key));
            return -1;
        }
        seen |= bit;
        switch (bit) {
        case S_FIELD_NAME:
            if (s_copy_string(walk, field, "name", REGISTRY_MAX_NAME_LEN, true, true,
                              &spec->name) != 0)
                return -1;
            break;
        case S_FIELD_URL:
            if (s_copy_string(walk, field, "base_api_url", REGISTRY_MAX_URL_LEN, true, true,
                              &spec->base_api_url) != 0)
                return -1;
            if (spec->base_api_url && spec->base_api_url[0] != '\0' &&
                !s_is_http_url(spec->base_api_url)) {
                s_error_at(walk->err, walk->err_size, walk->path, field->start_mark,
                           "base_api_url must begin with http:// or https://");
                return -1;
            }
            break;
        case S_FIELD_API_KEY:
            /* null, ~ or empty: an explicit "no key". */
            if (s_copy_string(walk, field, "api_key", REGISTRY_MAX_API_KEY_LEN, true, true,
                              &spec->api_key) != 0)
                return -1;
            if (spec->api_key && spec->api_key[0] == '\0') {
                free(spec->api_key);
                spec->api_key = NULL;
            }
            spec->has_api_key = true;
            break;
        case S_FIELD_VALID:
            if (!s_is_null(field) && s_parse_valid_models(walk, field, spec) != 0)
                return -1;
            break;
        case S_FIELD_INVALID:
            if (!s_is_null(field) && s_parse_invalid_models(walk, field, spec) != 0)
                return -1;
            break;
        default:
            break;
        }
    }
    return 0;
}

static int s_parse_providers(s_walk_t *walk, const yaml_node_t *node, store_layer_t *out)
{
    if (!node || s_is_null(node))
        return 0;
    if (node->type != YAML_MAPPING_NODE) {
        s_error_at(walk->err, walk->err_size, walk->path, node->start_mark,
                   "'providers' must be a mapping of provider keys to providers");
        return -1;
    }
    size_t count = (size_t)(node->data.mapping.pairs.top - node->data.mapping.pairs.start);
    if (count > REGISTRY_MAX_PROVIDERS) {
        s_error_at(walk->err, walk->err_size, walk->path, node->start_mark,
                   "more than %d providers", REGISTRY_MAX_PROVIDERS);
        return -1;
    }
    if (count == 0)
        return 0;
    out->specs = calloc(count, sizeof *out->specs);
    if (!out->specs) {
        s_set_error(walk->err, walk->err_size, "%s: out of memory", walk->path);
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        const yaml_node_pair_t *pair = &node->data.mapping.pairs.start[i];
        const yaml_node_t *key = yaml_document_get_node(walk->doc, pair->key);
        const yaml_node_t *value = yaml_document_get_node(walk->doc, pair->value);
        if (s_check_key(walk, key) != 0)
            return -1;
        const char *text = s_text(key);
        size_t length = key->data.scalar.length;
        if (!provider_key_valid(text, length)) {
            int shown = length > STORE_MAX_SHOWN_KEY ? STORE_MAX_SHOWN_KEY : (int)length;
            s_error_at(walk->err, walk->err_size, walk->path, key->start_mark,
                       "invalid provider key '%.*s' (1 to %d characters of a-z, 0-9, '.', "
                       "'_' and '-')",
                       shown, text, REGISTRY_MAX_KEY_LEN);
            return -1;
        }
        for (size_t j = 0; j < out->count; j++) {
            if (strcmp(out->specs[j].key, text) == 0) {
                s_error_at(walk->err, walk->err_size, walk->path, key->start_mark,
                           "duplicate provider '%s'", text);
                return -1;
            }
        }
        provider_spec_t *spec = &out->specs[out->count];
        spec->key = strdup(text);
        if (!spec->key) {
            s_set_error(walk->err, walk->err_size, "%s: out of memory", walk->path);
            return -1;
        }
        out->count++; /* counted before the fields so that a failure frees them */
        if (s_parse_provider(walk, value, spec) != 0)
            return -1;
    }
    return 0;
}

int store_parse_providers(const char *path, void *doc, void *node, store_layer_t *out,
                          store_warn_fn *warn, void *warn_arg, char *err, size_t err_size)
{
    s_walk_t walk = {path, (yaml_document_t *)doc, warn, warn_arg, err, err_size, 0};
    out->count = 0;
    out->specs = NULL;
    if (s_parse_providers(&walk, (const yaml_node_t *)node, out) != 0) {
        store_layer_clear(out);
        return -1;
    }
    return 0;
}

int store_load(const char *path, store_layer_t *out, store_warn_fn *warn, void *warn_arg, char *err,
               size_t err_size)
{
    yaml_document_t doc;
    out->count = 0;
    out->specs = NULL;
    int rc = store_load_document(path, &doc, err, err_size);
    if (rc == 1)
        return 0; /* no file yet: an empty layer */
    if (rc != 0)
        return -1;

    s_walk_t walk = {path, &doc, warn, warn_arg, err, err_size, 0};
    const yaml_node_t *root = yaml_document_get_root_node(&doc);
    const yaml_node_t *providers = NULL;
    rc = -1;
    if (root && !s_is_null(root)) {
        if (root->type != YAML_MAPPING_NODE) {
            s_error_at(err, err_size, path, root->start_mark,
                       "the top level must be a mapping with a 'providers' key");
            goto cleanup;
        }
        for (yaml_node_pair_t *pair = root->data.mapping.pairs.start;
             pair < root->data.mapping.pairs.top; pair++) {
            const yaml_node_t *key = yaml_document_get_node(&doc, pair->key);
            if (s_check_key(&walk, key) != 0)
                goto cleanup;
            if (strcmp(s_text(key), "providers") != 0) {
                s_warn_unknown(&walk, key);
                continue;
            }
            if (providers) {
                s_error_at(err, err_size, path, key->start_mark, "duplicate key 'providers'");
                goto cleanup;
            }
            providers = yaml_document_get_node(&doc, pair->value);
        }
    }
    if (s_parse_providers(&walk, providers, out) != 0) {
        store_layer_clear(out);
        goto cleanup;
    }
    rc = 0;

cleanup:
    yaml_document_delete(&doc);
    return rc;
}

/* ------------------------------------------------------------------------- writing */

/* True when a YAML 1.1 reader could resolve s, written plain, to something other than this
 * string (null, a boolean, a number, a date, a merge key), or when it has characters that a
 * plain or single-quoted scalar cannot carry exactly (control characters, edge spaces). Such
 * strings are written double-quoted; the test is deliberately broad: quoting is never wrong. */
static bool s_needs_double_quotes(const char *s, size_t length)
{
    static const char *const words[] = {"y",     "yes", "n",   "no",  "true",
                                        "false", "on",  "off", "null"};
    if (length == 0)
        return true;
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return true;
    }
    if (s[0] == ' ' || s[length - 1] == ' ')
        return true;
    if (strchr("0123456789+-.~=<", s[0]))
        return true;
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        if (strlen(words[i]) == length && strncasecmp(words[i], s, length) == 0)
            return true;
    }
    return false;
}

typedef struct {
    int fd;
    int saved_errno; /* the write error that stopped the emitter, 0 when none */
} s_sink_t;

static int s_write_all(int fd, const unsigned char *buffer, size_t size)
{
    while (size > 0) {
        ssize_t n = write(fd, buffer, size);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        buffer += n;
        size -= (size_t)n;
    }
    return 0;
}

/* libyaml's output handler: 1 on success, 0 on error (libyaml's convention). */
static int s_write_handler(void *data, unsigned char *buffer, size_t size)
{
    s_sink_t *sink = data;
    if (s_write_all(sink->fd, buffer, size) != 0) {
        sink->saved_errno = errno;
        return 0;
    }
    return 1;
}

/* Emits one string scalar; NULL is written as a plain null. 0 or -1. */
static int s_emit_string(yaml_emitter_t *emitter, const char *s)
{
    yaml_event_t event;
    const char *value = s ? s : "null";
    size_t length = strlen(value);
    if (length > INT_MAX)
        return -1;
    yaml_scalar_style_t style = YAML_ANY_SCALAR_STYLE;
    if (!s)
        style = YAML_PLAIN_SCALAR_STYLE;
    else if (s_needs_double_quotes(s, length))
        style = YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    if (!yaml_scalar_event_initialize(&event, NULL, NULL, (const yaml_char_t *)value, (int)length,
                                      1, 1, style))
        return -1;
    return yaml_emitter_emit(emitter, &event) ? 0 : -1; /* the emitter owns the event */
}

static int s_emit_mapping_start(yaml_emitter_t *emitter)
{
    yaml_event_t event;
    if (!yaml_mapping_start_event_initialize(&event, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE))
        return -1;
    return yaml_emitter_emit(emitter, &event) ? 0 : -1;
}

static int s_emit_mapping_end(yaml_emitter_t *emitter)
{
    yaml_event_t event;
    if (!yaml_mapping_end_event_initialize(&event))
        return -1;
    return yaml_emitter_emit(emitter, &event) ? 0 : -1;
}

static int s_emit_provider(yaml_emitter_t *emitter, const provider_t *provider)
{
    yaml_event_t event;
    if (s_emit_string(emitter, provider_key(provider)) != 0 || s_emit_mapping_start(emitter) != 0)
        return -1;
    if (s_emit_string(emitter, "name") != 0 ||
        s_emit_string(emitter, provider_name(provider)) != 0 ||
        s_emit_string(emitter, "base_api_url") != 0 ||
        s_emit_string(emitter, provider_base_api_url(provider)) != 0 ||
        s_emit_string(emitter, "api_key") != 0 ||
        /* Never the environment's key: the file keeps only what was stored. */
        s_emit_string(emitter, provider_stored_api_key(provider)) != 0)
        return -1;

    if (s_emit_string(emitter, "valid_models") != 0 || s_emit_mapping_start(emitter) != 0)
        return -1;
    size_t models = provider_model_count(provider);
    for (size_t i = 0; i < models; i++) {
        if (s_emit_string(emitter, provider_model_long(provider, i)) != 0 ||
            s_emit_string(emitter, provider_model_short(provider, i)) != 0)
            return -1;
    }
    if (s_emit_mapping_end(emitter) != 0)
        return -1;

    if (s_emit_string(emitter, "invalid_models") != 0)
        return -1;
    if (!yaml_sequence_start_event_initialize(&event, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE) ||
        !yaml_emitter_emit(emitter, &event))
        return -1;
    size_t invalid = provider_invalid_count(provider);
    for (size_t i = 0; i < invalid; i++) {
        if (s_emit_string(emitter, provider_invalid_at(provider, i)) != 0)
            return -1;
    }
    if (!yaml_sequence_end_event_initialize(&event) || !yaml_emitter_emit(emitter, &event))
        return -1;
    return s_emit_mapping_end(emitter);
}

/* Writes the whole stream. 0, or -1 (the emitter's problem or sink->saved_errno says why). */
static int s_emit_registry(yaml_emitter_t *emitter, const registry_t *reg)
{
    yaml_event_t event;
    if (!yaml_stream_start_event_initialize(&event, YAML_UTF8_ENCODING) ||
        !yaml_emitter_emit(emitter, &event))
        return -1;
    if (!yaml_document_start_event_initialize(&event, NULL, NULL, NULL, 1) ||
        !yaml_emitter_emit(emitter, &event))
        return -1;
    if (s_emit_mapping_start(emitter) != 0 || s_emit_string(emitter, "providers") != 0 ||
        s_emit_mapping_start(emitter) != 0)
        return -1;
    size_t count = registry_count(reg);
    for (size_t i = 0; i < count; i++) {
        if (s_emit_provider(emitter, registry_at(reg, i)) != 0)
            return -1;
    }
    if (s_emit_mapping_end(emitter) != 0 || s_emit_mapping_end(emitter) != 0)
        return -1;
    if (!yaml_document_end_event_initialize(&event, 1) || !yaml_emitter_emit(emitter, &event))
        return -1;
    if (!yaml_stream_end_event_initialize(&event) || !yaml_emitter_emit(emitter, &event))
        return -1;
    return yaml_emitter_flush(emitter) ? 0 : -1;
}

/* The directory part of path ("." when there is none). 0, or -1 when it does not fit. */
static int s_parent_dir(const char *path, char *out, size_t out_size)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return snprintf(out, out_size, ".") < (int)out_size ? 0 : -1;
    size_t length = slash == path ? 1 : (size_t)(slash - path);
    if (length >= out_size)
        return -1;
    memcpy(out, path, length);
    out[length] = '\0';
    return 0;
}

/* Tests replace fsync here (store_set_fsync_hook) to reach the failure paths; NULL, i.e.
 * fsync itself, in the daemon. Atomic because a test sets it while the writer thread runs. */
static _Atomic(store_fsync_fn *) s_fsync_hook; /* NULL: static storage starts zeroed */

void store_set_fsync_hook(store_fsync_fn *hook)
{
    atomic_store(&s_fsync_hook, hook);
}

static int s_fsync(int fd, bool directory)
{
    store_fsync_fn *hook = atomic_load(&s_fsync_hook);
    return hook ? hook(fd, directory) : fsync(fd);
}

static int s_fsync_dir(const char *dir)
{
    int fd;
    do {
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -1;
    int rc = s_fsync(fd, true);
    int saved = errno;
    /* Some file systems cannot sync a directory at all; that is not a failure of ours. */
    if (rc != 0 && (saved == EINVAL || saved == ENOTSUP))
        rc = 0;
    close(fd);
    errno = saved;
    return rc;
}

int store_persist(const registry_t *reg, const char *path, char *err, size_t err_size)
{
    char temp[PATH_MAX];
    char dir[PATH_MAX];
    yaml_emitter_t emitter;
    bool have_emitter = false;
    bool have_temp = false;
    s_sink_t sink = {-1, 0};
    int rc = -1;

    int n = snprintf(temp, sizeof temp, "%s.tmp.XXXXXX", path);
    if (n < 0 || (size_t)n >= sizeof temp || s_parent_dir(path, dir, sizeof dir) != 0) {
        s_set_error(err, err_size, "%s: %s", path, strerror(ENAMETOOLONG));
        return -1;
    }
    /* Same directory as the target, so that rename() is atomic. */
    sink.fd = mkstemp(temp);
    if (sink.fd < 0) {
        s_set_error(err, err_size, "%s: %s", path, strerror(errno));
        goto cleanup;
    }
    have_temp = true;
    if (fchmod(sink.fd, S_IRUSR | S_IWUSR) != 0) {
        s_set_error(err, err_size, "%s: %s", path, strerror(errno));
        goto cleanup;
    }
    if (!yaml_emitter_initialize(&emitter)) {
        s_set_error(err, err_size, "%s: out of memory", path);
        goto cleanup;
    }
    have_emitter = true;
    yaml_emitter_set_output(&emitter, s_write_handler, &sink);
    yaml_emitter_set_unicode(&emitter, 1);
    yaml_emitter_set_width(&emitter, -1); /* never fold long strings across lines */
    yaml_emitter_set_indent(&emitter, 2);
    yaml_emitter_set_break(&emitter, YAML_LN_BREAK);
    if (s_emit_registry(&emitter, reg) != 0) {
        if (sink.saved_errno)
            s_set_error(err, err_size, "%s: %s", path, strerror(sink.saved_errno));
        else if (emitter.error == YAML_MEMORY_ERROR)
            s_set_error(err, err_size, "%s: out of memory", path);
        else
            s_set_error(err, err_size, "%s: %s", path,
                        emitter.problem ? emitter.problem
                                        : "cannot write YAML (out of memory, or a string "
                                          "that is not valid UTF-8)");
        goto cleanup;
    }
    int synced;
    do {
        synced = s_fsync(sink.fd, false);
    } while (synced != 0 && errno == EINTR);
    if (synced != 0) {
        s_set_error(err, err_size, "%s: %s", path, strerror(errno));
        goto cleanup;
    }
    int fd = sink.fd;
    sink.fd = -1;
    if (close(fd) != 0) { /* a deferred write error shows up here (NFS, quotas) */
        s_set_error(err, err_size, "%s: %s", path, strerror(errno));
        goto cleanup;
    }
    if (rename(temp, path) != 0) {
        s_set_error(err, err_size, "%s: %s", path, strerror(errno));
        goto cleanup;
    }
    have_temp = false;
    /* Make the rename itself durable. Past this point the new file is in place and every
     * reader sees it: a failure cannot undo that, so it is reported apart ("written, durability
     * unknown") for the caller to keep its state in step with the file. */
    if (s_fsync_dir(dir) != 0) {
        s_set_error(err, err_size, "%s: %s", dir, strerror(errno));
        rc = 1;
        goto cleanup;
    }
    rc = 0;

cleanup:
    if (have_emitter)
        yaml_emitter_delete(&emitter);
    if (sink.fd >= 0)
        close(sink.fd);
    if (have_temp)
        unlink(temp);
    return rc;
}

/* ---------------------------------------------------------------------- data dir */

/* mkdir that accepts an existing directory, whatever error the kernel reports first. */
static int s_mkdir_one(const char *dir)
{
    if (mkdir(dir, S_IRWXU) == 0)
        return 0;
    int saved = errno;
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
        return 0;
    errno = saved;
    return -1;
}

int store_prepare_dir(const char *data_dir, char *err, size_t err_size)
{
    char buffer[PATH_MAX];
    if (!data_dir || data_dir[0] == '\0') {
        s_set_error(err, err_size, "the data directory is not set");
        return -1;
    }
    size_t length = strlen(data_dir);
    if (length >= sizeof buffer) {
        s_set_error(err, err_size, "%s: %s", data_dir, strerror(ENAMETOOLONG));
        return -1;
    }
    memcpy(buffer, data_dir, length + 1);
    /* mkdir -p: every parent first (mode 0700 like the last one; only new ones are made). */
    for (size_t i = 1; i < length; i++) {
        if (buffer[i] != '/' || buffer[i - 1] == '/')
            continue;
        buffer[i] = '\0';
        if (s_mkdir_one(buffer) != 0) {
            s_set_error(err, err_size, "%s: %s", buffer, strerror(errno));
            return -1;
        }
        buffer[i] = '/';
    }
    if (s_mkdir_one(buffer) != 0) {
        s_set_error(err, err_size, "%s: %s", data_dir, strerror(errno));
        return -1;
    }
    struct stat st;
    if (stat(data_dir, &st) != 0) {
        s_set_error(err, err_size, "%s: %s", data_dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        s_set_error(err, err_size, "%s: %s", data_dir, strerror(ENOTDIR));
        return -1;
    }
    if (access(data_dir, W_OK | X_OK) != 0) {
        s_set_error(err, err_size, "%s: %s", data_dir, strerror(errno));
        return -1;
    }
    return 0;
}

int store_lock_dir(const char *data_dir, char *err, size_t err_size)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/.lock", data_dir) >= (int)sizeof path) {
        s_set_error(err, err_size, "%s: %s", data_dir, strerror(ENAMETOOLONG));
        return -1;
    }
    /* Read-only: flock needs no write access, and an open writable file would keep the
     * file system from being remounted read-only. */
    int fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        s_set_error(err, err_size, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int saved = errno;
        close(fd);
        if (saved == EWOULDBLOCK)
            s_set_error(err, err_size, "%s is in use by another provider-manager", data_dir);
        else
            s_set_error(err, err_size, "%s: %s", path, strerror(saved));
        return -1;
    }
    return fd;
}

int store_remove_stale_temps(const char *data_dir, char *err, size_t err_size)
{
    DIR *dir = opendir(data_dir);
    if (!dir) {
        s_set_error(err, err_size, "%s: %s", data_dir, strerror(errno));
        return -1;
    }
    static const char prefix[] = STORE_FILE_NAME ".tmp.";
    int removed = 0;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (strncmp(entry->d_name, prefix, sizeof prefix - 1) != 0)
            continue;
        if (unlinkat(dirfd(dir), entry->d_name, 0) == 0)
            removed++;
    }
    closedir(dir);
    return removed;
}
