/*
 * pmctl: the command-line tool of the provider-manager service, built only on the public API
 * of libpmclient (pmclient.h). jansson renders --json output and msgpack-c reads the reply
 * bytes that libpmclient has already checked (pmclient_last_reply).
 *
 * Exit status: 0 ok, 1 the operation failed (the service said no, or a job failed), 2 usage
 * error, 3 the service could not be reached (timeout or transport).
 *
 * Human output never shows a whole API key: at most its first 3 and last 4 characters.
 * Text from the service is printed with control characters replaced, so that a provider name
 * cannot drive the terminal.
 */
#include "pmclient.h"
#include "pmclient_replica.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXIT_OK 0
#define EXIT_FAILED 1
#define EXIT_USAGE 2
#define EXIT_UNREACHABLE 3

#define S_DISCOVER_POLL_MS 200 /* discover and verify */
#define S_BAR_WIDTH 24
#define S_MASK_MIN_LEN 12 /* shorter keys are shown as "***": 7 visible characters is too many */
#define S_MAX_MODEL_ARGS 100000
#define S_WATCH_POLL_MS 500

typedef struct {
    pmclient_t *client;
    const char *endpoint;
    const char *events_endpoint;
    const char *curve_server_key;
    const char *curve_client_key;
    int timeout_ms;
    int retries;
    bool json;
} s_ctx_t;

static volatile sig_atomic_t s_interrupted = 0;

static void s_on_signal(int signum)
{
    (void)signum;
    s_interrupted = 1;
}

/* ------------------------------------------------------------------------------- output */

/* Writes text with control characters (C0, DEL) replaced by '?'. */
static void s_put(FILE *out, const char *text)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, out);
}

/* Display width of text as s_put prints it: one column per code point. */
static size_t s_width(const char *text)
{
    size_t width = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if ((*p & 0xc0) != 0x80)
            width++;
    }
    return width;
}

static void s_pad(FILE *out, size_t count)
{
    for (size_t i = 0; i < count; i++)
        fputc(' ', out);
}

/* `sk-...abcd`: the first 3 and last 4 characters of a key of at least S_MASK_MIN_LEN
 * ASCII characters; "***" for shorter ones; "-" for none. */
static void s_mask_key(const char *key, char *out, size_t out_size)
{
    if (!key) {
        snprintf(out, out_size, "-");
        return;
    }
    size_t len = strlen(key);
    if (len < S_MASK_MIN_LEN) {
        snprintf(out, out_size, "***");
        return;
    }
    char head[4], tail[5];
    for (size_t i = 0; i < 3; i++) {
        unsigned char c = (unsigned char)key[i];
        head[i] = c > 0x20 && c < 0x7f ? (char)c : '*';
    }
    for (size_t i = 0; i < 4; i++) {
        unsigned char c = (unsigned char)key[len - 4 + i];
        tail[i] = c > 0x20 && c < 0x7f ? (char)c : '*';
    }
    head[3] = '\0';
    tail[4] = '\0';
    snprintf(out, out_size, "%s...%s", head, tail);
}

/* Prints rows x cols cells (row-major, borrowed) under headers, columns aligned. */
static void s_print_table(const char *const *headers, size_t cols, const char *const *cells,
                          size_t rows)
{
    size_t widths[16] = {0};
    if (cols > sizeof widths / sizeof widths[0])
        return;
    for (size_t c = 0; c < cols; c++)
        widths[c] = s_width(headers[c]);
    for (size_t r = 0; r < rows; r++) {
        for (size_t c = 0; c < cols; c++) {
            size_t w = s_width(cells[r * cols + c]);
            if (w > widths[c])
                widths[c] = w;
        }
    }
    for (size_t r = 0; r <= rows; r++) {
        for (size_t c = 0; c < cols; c++) {
            const char *text = r == 0 ? headers[c] : cells[(r - 1) * cols + c];
            s_put(stdout, text);
            if (c + 1 < cols)
                s_pad(stdout, widths[c] - s_width(text) + 2);
        }
        fputc('\n', stdout);
    }
}

/* "name  value" lines with the names aligned. */
static void s_print_field(const char *name, const char *value)
{
    s_put(stdout, name);
    s_pad(stdout, name && strlen(name) < 15 ? 15 - strlen(name) : 1);
    s_put(stdout, value ? value : "-");
    fputc('\n', stdout);
}

static void s_print_field_int(const char *name, long long value)
{
    char text[32];
    snprintf(text, sizeof text, "%lld", value);
    s_print_field(name, text);
}

static void s_print_provider(const pm_provider_t *provider)
{
    char masked[32];
    s_mask_key(provider->api_key, masked, sizeof masked);
    s_print_field("provider", provider->provider);
    s_print_field("name", provider->name);
    s_print_field("base_api_url", provider->base_api_url);
    s_print_field("api_key", masked);
    s_print_field_int("valid_models", (long long)provider->model_count);
    if (provider->model_count) {
        const char **cells = calloc(provider->model_count * 2, sizeof *cells);
        if (cells) {
            for (size_t i = 0; i < provider->model_count; i++) {
                cells[2 * i] = provider->model_long[i];
                cells[2 * i + 1] = provider->model_short[i];
            }
            const char *headers[] = {"  LONG NAME", "SHORT NAME"};
            /* Indent the rows like the header. */
            size_t width = s_width(headers[0]);
            for (size_t i = 0; i < provider->model_count; i++) {
                size_t w = s_width(cells[2 * i]) + 2;
                if (w > width)
                    width = w;
            }
            s_put(stdout, headers[0]);
            s_pad(stdout, width - s_width(headers[0]) + 2);
            s_put(stdout, headers[1]);
            fputc('\n', stdout);
            for (size_t i = 0; i < provider->model_count; i++) {
                fputs("  ", stdout);
                s_put(stdout, cells[2 * i]);
                s_pad(stdout, width - s_width(cells[2 * i]));
                s_put(stdout, cells[2 * i + 1]);
                fputc('\n', stdout);
            }
            free(cells);
        }
    }
    s_print_field_int("invalid_models", (long long)provider->invalid_count);
    for (size_t i = 0; i < provider->invalid_count; i++) {
        fputs("  ", stdout);
        s_put(stdout, provider->invalid_models[i]);
        fputc('\n', stdout);
    }
}

/* ------------------------------------------------------------------- msgpack -> JSON */

/* Converts a msgpack object (already checked by libpmclient: bounded depth, valid UTF-8,
 * no bin/ext) into a new jansson value. Maps with str keys become objects; others become
 * arrays of [key, value] pairs, since JSON has no other keys. NULL on ENOMEM. */
static json_t *s_to_json(const msgpack_object *obj)
{
    switch (obj->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(obj->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (obj->via.u64 > (uint64_t)LLONG_MAX)
            return json_real((double)obj->via.u64);
        return json_integer((json_int_t)obj->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)obj->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: {
        json_t *real = json_real(obj->via.f64);
        return real ? real : json_null(); /* NaN and infinities have no JSON form */
    }
    case MSGPACK_OBJECT_STR: {
        json_t *str = json_stringn(obj->via.str.ptr, obj->via.str.size);
        return str ? str : json_null();
    }
    case MSGPACK_OBJECT_ARRAY: {
        json_t *array = json_array();
        if (!array)
            return NULL;
        for (uint32_t i = 0; i < obj->via.array.size; i++) {
            json_t *item = s_to_json(&obj->via.array.ptr[i]);
            if (!item || json_array_append_new(array, item) != 0) {
                json_decref(array);
                return NULL;
            }
        }
        return array;
    }
    case MSGPACK_OBJECT_MAP: {
        bool str_keys = true;
        for (uint32_t i = 0; i < obj->via.map.size; i++) {
            const msgpack_object *key = &obj->via.map.ptr[i].key;
            if (key->type != MSGPACK_OBJECT_STR ||
                memchr(key->via.str.ptr, '\0', key->via.str.size) != NULL)
                str_keys = false;
        }
        json_t *out = str_keys ? json_object() : json_array();
        if (!out)
            return NULL;
        for (uint32_t i = 0; i < obj->via.map.size; i++) {
            const msgpack_object_kv *kv = &obj->via.map.ptr[i];
            json_t *value = s_to_json(&kv->val);
            if (!value)
                goto map_fail;
            if (str_keys) {
                char *key = strndup(kv->key.via.str.ptr, kv->key.via.str.size);
                int rc = key ? json_object_set_new(out, key, value) : -1;
                if (!key)
                    json_decref(value);
                free(key);
                if (rc != 0)
                    goto map_fail;
            } else {
                json_t *pair = json_array();
                if (!pair || json_array_append_new(out, pair) != 0) {
                    json_decref(value);
                    goto map_fail;
                }
                /* pair now belongs to out; append_new steals its argument even on failure. */
                if (json_array_append_new(pair, s_to_json(&kv->key)) != 0) {
                    json_decref(value);
                    goto map_fail;
                }
                if (json_array_append_new(pair, value) != 0)
                    goto map_fail;
            }
        }
        return out;
    map_fail:
        json_decref(out);
        return NULL;
    }
    default:
        return json_null();
    }
}

/* Prints the "result" of the last reply as JSON. 0 or -1. */
static int s_print_json_result(s_ctx_t *ctx)
{
    const void *data;
    size_t size;
    int rc = -1;
    if (pmclient_last_reply(ctx->client, &data, &size) != 0) {
        fprintf(stderr, "pmctl: no reply to print\n");
        return -1;
    }
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    size_t offset = 0;
    json_t *json = NULL;
    if (msgpack_unpack_next(&unpacked, data, size, &offset) != MSGPACK_UNPACK_SUCCESS ||
        unpacked.data.type != MSGPACK_OBJECT_MAP)
        goto cleanup;
    const msgpack_object *result = NULL;
    for (uint32_t i = 0; i < unpacked.data.via.map.size; i++) {
        const msgpack_object_kv *kv = &unpacked.data.via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 6 &&
            memcmp(kv->key.via.str.ptr, "result", 6) == 0)
            result = &kv->val;
    }
    if (!result)
        goto cleanup;
    json = s_to_json(result);
    if (!json)
        goto cleanup;
    if (json_dumpf(json, stdout, JSON_INDENT(2) | JSON_ENCODE_ANY) != 0)
        goto cleanup;
    fputc('\n', stdout);
    rc = 0;

cleanup:
    if (rc != 0)
        fprintf(stderr, "pmctl: cannot render the reply as JSON\n");
    json_decref(json);
    msgpack_unpacked_destroy(&unpacked);
    return rc;
}

/* ------------------------------------------------------------------------------ helpers */

/* Reports the client's last failure on stderr and returns the exit status for it. */
static int s_fail(s_ctx_t *ctx)
{
    fprintf(stderr, "pmctl: %s: ", pmclient_error_code(ctx->client));
    s_put(stderr, pmclient_error_message(ctx->client));
    fputc('\n', stderr);
    return pmclient_error_is_unreachable(ctx->client) ? EXIT_UNREACHABLE : EXIT_FAILED;
}

/* Ends a successful command: in --json mode prints the reply's result. */
static int s_done_json(s_ctx_t *ctx)
{
    return s_print_json_result(ctx) == 0 ? EXIT_OK : EXIT_FAILED;
}

static int s_parse_int(const char *text, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < min || value > max)
        return -1;
    *out = value;
    return 0;
}

/* ------------------------------------------------------------------------------ options */

/* pmctl's options are declared once, in one table per command (and one for pmctl itself,
 * s_global_options): s_parse_options() parses argv by the table and checks it (operand count,
 * required options, alternatives, options that go together), and the usage and help texts
 * are generated from the same table, so that the synopsis cannot omit an option. -h/--help is
 * implicit in every table. */

/* Flags of an option. */
#define S_REQUIRED 0x1   /* must be given */
#define S_REPEAT 0x2     /* may be given more than once ("..." in the synopsis) */
#define S_OR_NEXT 0x4    /* at most one of this one and the next (one synopsis bracket) */
#define S_AND_NEXT 0x8   /* given with the next one or not at all (one synopsis bracket) */
#define S_NOT_SHOWN 0x10 /* left out of the synopsis (--version) */

#define S_MAX_OPTIONS 16 /* per table, --help included: the getopt_long arrays are this big */
#define S_LONG_ONLY 256  /* getopt_long value of the option at index i without a letter: + i */

typedef struct s_option_t s_option_t;

/* Stores an option in the parse target (a command's arguments). value is the argument (NULL
 * for an option without one), command the command's name for messages (NULL: pmctl's own).
 * Returns 0 to go on, or -1 to stop with *status (after printing why). */
typedef int (*s_setter_t)(void *target, const s_option_t *option, const char *command,
                          const char *value, int *status);

struct s_option_t {
    const char *name; /* long name, without "--"; NULL ends a table */
    char letter;      /* short option letter, 0 when there is none */
    const char *arg;  /* name of the argument in the help ("P", "MS"); NULL: takes none */
    unsigned flags;   /* S_REQUIRED, ... */
    const char *help; /* '\n' separates lines */
    s_setter_t set;
    size_t offset; /* of the field in the target, for the generic setters */
};

/* The generic setters: a string argument, or a flag set to true / false. */
static int s_set_string(void *target, const s_option_t *option, const char *command,
                        const char *value, int *status)
{
    (void)command;
    (void)status;
    *(const char **)((char *)target + option->offset) = value;
    return 0;
}

static int s_set_true(void *target, const s_option_t *option, const char *command,
                      const char *value, int *status)
{
    (void)command;
    (void)value;
    (void)status;
    *(bool *)((char *)target + option->offset) = true;
    return 0;
}

static int s_set_false(void *target, const s_option_t *option, const char *command,
                       const char *value, int *status)
{
    (void)command;
    (void)value;
    (void)status;
    *(bool *)((char *)target + option->offset) = false;
    return 0;
}

static size_t s_option_count(const s_option_t *options)
{
    size_t count = 0;
    while (options && options[count].name)
        count++;
    return count;
}

/* The options part of a synopsis: " --name N [--force] [--a A | --b] [--m M ...]", wrapped
 * before S_SYNOPSIS_WIDTH columns with continuation lines indented by indent; *column is the
 * column the caller's text ended at, and where this text ends. */
#define S_SYNOPSIS_WIDTH 100
static void s_synopsis(FILE *out, const s_option_t *options, size_t indent, size_t *column)
{
    size_t count = s_option_count(options);
    char element[256];
    for (size_t i = 0; i < count; i++) {
        if (options[i].flags & S_NOT_SHOWN)
            continue;
        bool optional = !(options[i].flags & S_REQUIRED);
        size_t used = 0;
        /* Alternatives and pairs share one bracket. */
        for (bool first = true;; first = false) {
            const s_option_t *option = &options[i];
            const char *separator = first ? "" : options[i - 1].flags & S_OR_NEXT ? " | " : " ";
            int n = snprintf(element + used, sizeof element - used, "%s--%s%s%s", separator,
                             option->name, option->arg ? " " : "", option->arg ? option->arg : "");
            if (n > 0)
                used = used + (size_t)n < sizeof element ? used + (size_t)n : sizeof element - 1;
            if (!((option->flags & (S_OR_NEXT | S_AND_NEXT)) && i + 1 < count))
                break;
            i++;
        }
        size_t len =
            strlen(element) + (optional ? 2 : 0) + ((options[i].flags & S_REPEAT) ? 4 : 0) + 1;
        if (*column + len > S_SYNOPSIS_WIDTH) {
            fprintf(out, "\n%*s", (int)indent, "");
            *column = indent;
        } else {
            fputc(' ', out);
        }
        fprintf(out, "%s%s%s%s", optional ? "[" : "", element,
                (options[i].flags & S_REPEAT) ? " ..." : "", optional ? "]" : "");
        *column += len;
    }
}

/* "-p, --provider P" or "--force": an option as the help lists it. */
static void s_option_label(const s_option_t *option, char *label, size_t size)
{
    const char *arg = option->arg ? option->arg : "";
    const char *space = option->arg ? " " : "";
    if (option->letter)
        snprintf(label, size, "-%c, --%s%s%s", option->letter, option->name, space, arg);
    else
        snprintf(label, size, "--%s%s%s", option->name, space, arg);
}

/* The option lines of a help text, aligned on one column; with_help adds the implicit
 * -h, --help. */
static void s_options_help(FILE *out, const s_option_t *options, bool with_help)
{
    static const s_option_t help = {"help", 'h', NULL, 0, "this help", NULL, 0};
    size_t count = s_option_count(options);
    size_t total = count + (with_help ? 1 : 0);
    size_t column = 0;
    char label[128];
    for (size_t i = 0; i < total; i++) {
        s_option_label(i < count ? &options[i] : &help, label, sizeof label);
        if (strlen(label) > column)
            column = strlen(label);
    }
    for (size_t i = 0; i < total; i++) {
        const s_option_t *option = i < count ? &options[i] : &help;
        s_option_label(option, label, sizeof label);
        const char *line = option->help;
        for (bool first = true;; first = false) {
            const char *newline = strchr(line, '\n');
            int line_len = newline ? (int)(newline - line) : (int)strlen(line);
            fprintf(out, "  %-*s  %.*s\n", (int)column, first ? label : "", line_len, line);
            if (!newline)
                break;
            line = newline + 1;
        }
    }
}

/* A command of pmctl (name NULL: pmctl itself, whose options come before the command). */
typedef struct {
    const char *name;
    int (*run)(s_ctx_t *ctx, int argc, char **argv);
    const char *operands;      /* their names in the synopsis ("NAME"), "" for none */
    int operand_count;         /* exactly this many; -1: the command checks them itself */
    const s_option_t *options; /* its table; NULL: only --help */
    const char *summary;       /* the first line is the one listed by pmctl --help */
    const char *notes;         /* help after the option lines, or NULL */
    bool needs_client;
} s_command_t;

static void s_command_help(const s_command_t *command, FILE *out);
static void s_main_help(FILE *out);

static int s_usage_error(const char *command, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints a usage error and a hint; returns EXIT_USAGE. */
static int s_usage_error(const char *command, const char *fmt, ...)
{
    va_list ap;
    fputs("pmctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (command)
        fprintf(stderr, "Try 'pmctl %s --help'.\n", command);
    else
        fputs("Try 'pmctl --help'.\n", stderr);
    return EXIT_USAGE;
}

/* Appends "--name" to a list being written into text ("--a, --b and --c"): index of count. */
static void s_append_name(char *text, size_t size, const char *name, size_t index, size_t count)
{
    size_t used = strlen(text);
    const char *separator = index == 0 ? "" : index + 1 == count ? " and " : ", ";
    snprintf(text + used, size - used, "%s--%s", separator, name);
}

/* The table's rules, once argv is parsed: the operand count (commands only), the required
 * options, the alternatives and the pairs. counts[i]: how often option i was given. 0, or -1
 * with *status (the usage error printed). */
static int s_check_options(const s_command_t *command, int argc, char **argv,
                           const unsigned *counts, int *status)
{
    const s_option_t *options = command->options;
    size_t count = s_option_count(options);
    char text[512];
    if (command->name && command->operand_count >= 0 && argc - optind != command->operand_count) {
        if (!options)
            *status = s_usage_error(argv[0], "%s",
                                    command->operand_count == 0 ? "this command takes no operand"
                                                                : "wrong number of operands");
        else if (command->operand_count == 0)
            *status = s_usage_error(argv[0], "unexpected operand '%s'", argv[optind]);
        else if (command->operand_count == 1)
            *status = s_usage_error(argv[0], "expected exactly one %s operand", command->operands);
        else
            *status = s_usage_error(argv[0], "%s", "wrong number of operands");
        return -1;
    }
    /* When one is missing, all required options are named: the message says what the
     * command needs, not only what this call lacked. */
    size_t missing = 0, required = 0;
    for (size_t i = 0; i < count; i++) {
        required += (options[i].flags & S_REQUIRED) != 0;
        missing += (options[i].flags & S_REQUIRED) && counts[i] == 0;
    }
    if (missing) {
        text[0] = '\0';
        for (size_t i = 0, listed = 0; i < count; i++) {
            if (options[i].flags & S_REQUIRED)
                s_append_name(text, sizeof text, options[i].name, listed++, required);
        }
        *status = s_usage_error(command->name, "%s %s required", text, required > 1 ? "are" : "is");
        return -1;
    }
    for (size_t first = 0; first < count; first++) {
        unsigned group = options[first].flags & (S_OR_NEXT | S_AND_NEXT);
        if (!group)
            continue;
        size_t last = first;
        while ((options[last].flags & group) && last + 1 < count)
            last++;
        size_t members = last - first + 1, given = 0, occurrences = 0;
        for (size_t i = first; i <= last; i++) {
            given += counts[i] > 0;
            occurrences += counts[i];
        }
        bool broken = group == S_OR_NEXT ? occurrences > 1 : given > 0 && given < members;
        if (broken) {
            snprintf(text, sizeof text, "%s", group == S_OR_NEXT ? "give at most one of " : "");
            for (size_t i = first; i <= last; i++) {
                size_t used = strlen(text);
                if (group == S_OR_NEXT)
                    snprintf(text + used, sizeof text - used, "%s--%s", i > first ? ", " : "",
                             options[i].name);
                else
                    s_append_name(text, sizeof text, options[i].name, i - first, members);
            }
            *status = s_usage_error(command->name, "%s%s", text,
                                    group == S_OR_NEXT ? "" : " go together");
            return -1;
        }
        first = last;
    }
    return 0;
}

/* Parses the options of argv (argv[0] is the command's name, or the program's) by command's
 * table, calling each option's setter on target; -h/--help prints the help. For a command the
 * table's rules are checked too (s_check_options); pmctl's own options stop at the first
 * operand, the command's name, and the caller checks them. counts (S_MAX_OPTIONS entries, may
 * be NULL for a command) receives how often each option was given. On 0 optind is the index
 * of the first operand; -1: stop with *status. */
static int s_parse_options(const s_command_t *command, void *target, int argc, char **argv,
                           unsigned *counts, int *status)
{
    const s_option_t *options = command->options;
    size_t count = s_option_count(options);
    struct option longs[S_MAX_OPTIONS + 1];
    char shorts[2 * S_MAX_OPTIONS + 2];
    unsigned own_counts[S_MAX_OPTIONS];
    /* A table that does not fit is a mistake in this file, not in the user's input. */
    if (count >= S_MAX_OPTIONS) {
        fprintf(stderr, "pmctl: internal error: too many options\n");
        *status = EXIT_FAILED;
        return -1;
    }
    if (!counts)
        counts = own_counts;
    memset(counts, 0, S_MAX_OPTIONS * sizeof *counts);
    size_t n = 0;
    if (!command->name)
        shorts[n++] = '+'; /* stop at the command name: the command parses its own options */
    shorts[n++] = 'h';
    for (size_t i = 0; i < count; i++) {
        longs[i] =
            (struct option){options[i].name, options[i].arg ? required_argument : no_argument, NULL,
                            options[i].letter ? options[i].letter : S_LONG_ONLY + (int)i};
        if (options[i].letter) {
            shorts[n++] = options[i].letter;
            if (options[i].arg)
                shorts[n++] = ':';
        }
    }
    longs[count] = (struct option){"help", no_argument, NULL, 'h'};
    longs[count + 1] = (struct option){0, 0, 0, 0};
    shorts[n] = '\0';

    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, shorts, longs, NULL)) != -1) {
        if (opt == 'h') {
            if (command->name)
                s_command_help(command, stdout);
            else
                s_main_help(stdout);
            *status = EXIT_OK;
            return -1;
        }
        size_t index = count;
        if (opt >= S_LONG_ONLY)
            index = (size_t)(opt - S_LONG_ONLY);
        for (size_t i = 0; opt != '?' && opt < S_LONG_ONLY && i < count; i++) {
            if (options[i].letter == opt)
                index = i;
        }
        if (index >= count) {
            /* A command without options of its own says "unknown", the others "bad". */
            *status = options
                          ? s_usage_error(command->name, "bad option '%s'", argv[optind - 1])
                          : s_usage_error(command->name, "unknown option '%s'", argv[optind - 1]);
            return -1;
        }
        counts[index]++;
        if (options[index].set(target, &options[index], command->name, optarg, status) != 0)
            return -1;
    }
    if (!command->name)
        return 0;
    return s_check_options(command, argc, argv, counts, status);
}

static const s_command_t *s_find_command(const char *name);

/* Parses a command's argv (argv[0]: its name) by its table into target (NULL for a command
 * without options). See s_parse_options. */
static int s_parse_command(int argc, char **argv, void *target, int *status)
{
    const s_command_t *command = s_find_command(argv[0]);
    if (!command) {
        *status = s_usage_error(NULL, "unknown command '%s'", argv[0]);
        return -1;
    }
    return s_parse_options(command, target, argc, argv, NULL, status);
}

static void s_command_help(const s_command_t *command, FILE *out)
{
    int column = fprintf(out, "usage: pmctl [OPTIONS] %s%s%s", command->name,
                         command->operands[0] ? " " : "", command->operands);
    size_t at = column > 0 ? (size_t)column : 0;
    s_synopsis(out, command->options, strlen("usage: pmctl [OPTIONS] "), &at);
    fprintf(out, "\n\n%s\n", command->summary);
    if (command->options || command->notes) {
        fputc('\n', out);
        s_options_help(out, command->options, false);
        if (command->notes)
            fputs(command->notes, out);
    }
}

/* ----------------------------------------------------------------------------- commands */

static int s_cmd_health(s_ctx_t *ctx, int argc, char **argv)
{
    int status;
    if (s_parse_command(argc, argv, NULL, &status) != 0)
        return status;
    pm_health_t *health = NULL;
    if (pmclient_health(ctx->client, &health) != 0)
        return s_fail(ctx);
    if (ctx->json) {
        status = s_done_json(ctx);
    } else {
        char uptime[32];
        snprintf(uptime, sizeof uptime, "%.1f", health->uptime_s);
        s_print_field("status", health->status);
        s_print_field("version", health->version);
        s_print_field_int("state_version", (long long)health->state_version);
        s_print_field_int("providers", (long long)health->providers);
        s_print_field_int("models", (long long)health->models);
        s_print_field("uptime_s", uptime);
        s_print_field_int("jobs_running", (long long)health->jobs_running);
        /* v1.1's fields, shown only when the service sent them (a v1 service does not). */
        if (health->protocol)
            s_print_field("protocol", health->protocol);
        if (health->has_status_version) {
            char text[32];
            snprintf(text, sizeof text, "%llu", (unsigned long long)health->status_version);
            s_print_field("status_version", text);
        }
        if (health->has_reload) {
            /* Seconds since the epoch, as the service reports them: scripts compare them. */
            char text[32];
            snprintf(text, sizeof text, "%.3f", health->reloaded_at);
            s_print_field("reloaded_at", text);
            s_print_field("reload_ok", health->reload_ok ? "true" : "false");
        }
        if (health->role)
            s_print_field("role", health->role);
        if (health->has_lag)
            s_print_field_int("lag_versions", (long long)health->lag_versions);
        if (health->role && strcmp(health->role, "replica") == 0) {
            char text[32];
            if (health->has_primary_seen)
                snprintf(text, sizeof text, "%.3f", health->primary_seen_s);
            else
                snprintf(text, sizeof text, "never");
            s_print_field("primary_seen_s", text);
        }
        status = EXIT_OK;
    }
    pm_health_free(&health);
    return status;
}

static int s_cmd_providers(s_ctx_t *ctx, int argc, char **argv)
{
    int status;
    if (s_parse_command(argc, argv, NULL, &status) != 0)
        return status;
    pm_provider_list_t *list = NULL;
    if (pmclient_values(ctx->client, &list) != 0)
        return s_fail(ctx);
    if (ctx->json) {
        pm_provider_list_free(&list);
        return s_done_json(ctx);
    }
    /* STATUS is v1.1's provider_status: "-" when the service is v1 (unknown_op), or when it
     * cannot answer it now (a warning says why); the listing itself still stands. */
    pm_provider_status_list_t *statuses = NULL;
    if (pmclient_provider_status(ctx->client, NULL, &statuses) != 0) {
        if (pmclient_error_is_unreachable(ctx->client)) {
            pm_provider_list_free(&list);
            return s_fail(ctx);
        }
        if (strcmp(pmclient_error_code(ctx->client), "unknown_op") != 0) {
            fprintf(stderr, "pmctl: no provider status: %s: ", pmclient_error_code(ctx->client));
            s_put(stderr, pmclient_error_message(ctx->client));
            fputc('\n', stderr);
        }
    }
    static const char *const headers[] = {"KEY", "NAME", "URL", "MODELS", "API KEY", "STATUS"};
    enum { COLS = 6, TEXT = 32 };
    const char **cells = calloc(list->count * COLS + 1, sizeof *cells);
    char(*texts)[2][TEXT] = calloc(list->count + 1, sizeof *texts);
    if (!cells || !texts) {
        fprintf(stderr, "pmctl: out of memory\n");
        status = EXIT_FAILED;
        goto cleanup;
    }
    for (size_t i = 0; i < list->count; i++) {
        const pm_provider_t *p = list->providers[i];
        snprintf(texts[i][0], TEXT, "%zu", p->model_count);
        s_mask_key(p->api_key, texts[i][1], TEXT);
        cells[i * COLS + 0] = p->provider;
        cells[i * COLS + 1] = p->name;
        cells[i * COLS + 2] = p->base_api_url;
        cells[i * COLS + 3] = texts[i][0];
        cells[i * COLS + 4] = texts[i][1];
        cells[i * COLS + 5] = "-";
        for (size_t j = 0; statuses && j < statuses->count; j++) {
            if (strcmp(statuses->providers[j].provider, p->provider) == 0)
                cells[i * COLS + 5] = statuses->providers[j].state;
        }
    }
    s_print_table(headers, COLS, cells, list->count);
    status = EXIT_OK;
cleanup:
    free(cells);
    free(texts);
    pm_provider_status_list_free(&statuses);
    pm_provider_list_free(&list);
    return status;
}

static int s_cmd_provider(s_ctx_t *ctx, int argc, char **argv)
{
    int status;
    if (s_parse_command(argc, argv, NULL, &status) != 0)
        return status;
    pm_provider_t *provider = NULL;
    if (pmclient_getitem(ctx->client, argv[optind], &provider) != 0)
        return s_fail(ctx);
    if (ctx->json)
        status = s_done_json(ctx);
    else {
        s_print_provider(provider);
        status = EXIT_OK;
    }
    pm_provider_free(&provider);
    return status;
}

static int s_print_strings(s_ctx_t *ctx, pm_strings_t *strings)
{
    int status = EXIT_OK;
    if (ctx->json) {
        status = s_done_json(ctx);
    } else {
        for (size_t i = 0; i < strings->count; i++) {
            s_put(stdout, strings->items[i]);
            fputc('\n', stdout);
        }
    }
    pm_strings_free(&strings);
    return status;
}

typedef struct {
    const char *provider;
} s_models_args_t;

static const s_option_t s_models_options[] = {{"provider", 'p', "P", 0,
                                               "only the models of provider P", s_set_string,
                                               offsetof(s_models_args_t, provider)},
                                              {0}};

static int s_cmd_models(s_ctx_t *ctx, int argc, char **argv)
{
    s_models_args_t args = {0};
    int status;
    if (s_parse_command(argc, argv, &args, &status) != 0)
        return status;
    pm_strings_t *models = NULL;
    if (pmclient_available_models(ctx->client, args.provider, &models) != 0)
        return s_fail(ctx);
    return s_print_strings(ctx, models);
}

static int s_cmd_scoped(s_ctx_t *ctx, int argc, char **argv)
{
    int status;
    if (s_parse_command(argc, argv, NULL, &status) != 0)
        return status;
    pm_strings_t *models = NULL;
    if (pmclient_valid_scoped_models(ctx->client, &models) != 0)
        return s_fail(ctx);
    return s_print_strings(ctx, models);
}

static int s_cmd_resolve(s_ctx_t *ctx, int argc, char **argv)
{
    int status;
    if (s_parse_command(argc, argv, NULL, &status) != 0)
        return status;
    pm_provider_t *provider = NULL;
    char *long_name = NULL;
    if (pmclient_resolve(ctx->client, argv[optind], &provider, &long_name) != 0)
        return s_fail(ctx);
    if (ctx->json) {
        status = s_done_json(ctx);
    } else {
        s_print_field("provider", provider->provider);
        s_print_field("model", long_name);
        s_print_field("base_api_url", provider->base_api_url);
        status = EXIT_OK;
    }
    pm_provider_free(&provider);
    free(long_name);
    return status;
}

static int s_cmd_find(s_ctx_t *ctx, int argc, char **argv)
{
    int status;
    if (s_parse_command(argc, argv, NULL, &status) != 0)
        return status;
    pm_matches_t *matches = NULL;
    if (pmclient_find_model(ctx->client, argv[optind], &matches) != 0)
        return s_fail(ctx);
    if (ctx->json) {
        pm_matches_free(&matches);
        return s_done_json(ctx);
    }
    if (matches->count == 0) {
        fputs("pmctl: no provider has a model named '", stderr);
        s_put(stderr, argv[optind]);
        fputs("'\n", stderr);
        pm_matches_free(&matches);
        return EXIT_OK;
    }
    const char **cells = calloc(matches->count * 2, sizeof *cells);
    if (!cells) {
        pm_matches_free(&matches);
        fprintf(stderr, "pmctl: out of memory\n");
        return EXIT_FAILED;
    }
    for (size_t i = 0; i < matches->count; i++) {
        cells[2 * i] = matches->providers[i]->provider;
        cells[2 * i + 1] = matches->model_long[i];
    }
    static const char *const headers[] = {"PROVIDER", "MODEL"};
    s_print_table(headers, 2, cells, matches->count);
    free(cells);
    pm_matches_free(&matches);
    return EXIT_OK;
}

/* The progress line of one provider of a discovery or (verify) verification job. */
static void s_print_job_provider(const pm_job_provider_t *entry, size_t key_width, bool bar,
                                 bool verify)
{
    /* A verification job's progress: probes finished out of the models listed (a bound, as
     * not every listed model is probed: the bar fills when the provider's part ends). */
    int64_t done = verify ? entry->checked : entry->validated;
    s_put(stdout, entry->key);
    s_pad(stdout, key_width - s_width(entry->key) + 2);
    bool finished = strcmp(entry->state, "ok") == 0 || strcmp(entry->state, "skipped") == 0 ||
                    strcmp(entry->state, "error") == 0;
    if (bar) {
        size_t filled = 0;
        if (finished)
            filled = S_BAR_WIDTH;
        else if (entry->discovered > 0 && done > 0)
            filled =
                (size_t)((done >= entry->discovered ? 1.0
                                                    : (double)done / (double)entry->discovered) *
                         S_BAR_WIDTH);
        fputc('[', stdout);
        for (size_t i = 0; i < S_BAR_WIDTH; i++)
            fputc(i < filled ? '#' : '.', stdout);
        fputs("] ", stdout);
    }
    s_put(stdout, entry->state);
    s_pad(stdout, s_width(entry->state) < 11 ? 11 - s_width(entry->state) : 1);
    if (verify)
        /* Not "checked/listed": a verification probes only some of the listed models. */
        printf(" %lld listed, %lld checked, %lld ok, %lld failed, %lld transient",
               (long long)entry->discovered, (long long)entry->checked, (long long)entry->ok,
               (long long)entry->failed, (long long)entry->transient);
    else
        printf(" %lld/%lld validated, %lld valid, %lld invalid", (long long)entry->validated,
               (long long)entry->discovered, (long long)entry->valid, (long long)entry->invalid);
    if (entry->message && *entry->message && (finished || !bar)) {
        fputs("  ", stdout);
        s_put(stdout, entry->message);
    }
}

static size_t s_job_key_width(const pm_job_t *job)
{
    size_t width = 0;
    for (size_t i = 0; i < job->provider_count; i++) {
        size_t w = s_width(job->providers[i].key);
        if (w > width)
            width = w;
    }
    return width;
}

static bool s_job_is_verify(const pm_job_t *job)
{
    return job->kind && strcmp(job->kind, "verify") == 0;
}

static void s_print_job(const pm_job_t *job)
{
    s_print_field("job", job->job);
    s_print_field("kind", job->kind);
    s_print_field("state", job->state);
    s_print_field("success", job->success < 0 ? "-" : job->success ? "true" : "false");
    s_print_field("persisted", job->persisted ? "true" : "false");
    size_t width = s_job_key_width(job);
    for (size_t i = 0; i < job->provider_count; i++) {
        fputs("  ", stdout);
        s_print_job_provider(&job->providers[i], width, false, s_job_is_verify(job));
        fputc('\n', stdout);
    }
    for (size_t i = 0; i < job->message_count; i++) {
        s_put(stdout, job->messages[i]);
        fputc('\n', stdout);
    }
}

static int s_cmd_job(s_ctx_t *ctx, int argc, char **argv)
{
    int status;
    if (s_parse_command(argc, argv, NULL, &status) != 0)
        return status;
    pm_job_t *job = NULL;
    if (pmclient_job_status(ctx->client, argv[optind], &job) != 0)
        return s_fail(ctx);
    if (ctx->json) {
        status = s_done_json(ctx);
    } else {
        s_print_job(job);
        status = EXIT_OK;
    }
    pm_job_free(&job);
    return status;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !s_interrupted) {
    }
}

/* Remembers what a non-TTY progress line last said per provider, to print changes only. */
typedef struct {
    char *key;
    char *state;
    int64_t discovered;
    int64_t validated;
    int64_t checked;
} s_seen_t;

static void s_seen_clear(s_seen_t *seen, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free(seen[i].key);
        free(seen[i].state);
    }
    free(seen);
}

/* Prints the lines of providers whose progress changed since the last poll (plain output). */
static void s_progress_plain(const pm_job_t *job, s_seen_t **seen_p, size_t *seen_count)
{
    s_seen_t *seen = *seen_p;
    if (*seen_count != job->provider_count) {
        s_seen_clear(seen, *seen_count);
        seen = calloc(job->provider_count + 1, sizeof *seen);
        *seen_p = seen;
        *seen_count = seen ? job->provider_count : 0;
        if (!seen)
            return;
    }
    size_t width = s_job_key_width(job);
    for (size_t i = 0; i < job->provider_count; i++) {
        const pm_job_provider_t *entry = &job->providers[i];
        s_seen_t *last = &seen[i];
        if (last->key && strcmp(last->key, entry->key) == 0 && last->state &&
            strcmp(last->state, entry->state) == 0 && last->discovered == entry->discovered &&
            last->validated == entry->validated && last->checked == entry->checked)
            continue;
        free(last->key);
        free(last->state);
        last->key = strdup(entry->key);
        last->state = strdup(entry->state);
        last->discovered = entry->discovered;
        last->validated = entry->validated;
        last->checked = entry->checked;
        s_print_job_provider(entry, width, false, s_job_is_verify(job));
        fputc('\n', stdout);
    }
    fflush(stdout);
}

/* Redraws one bar per provider in place (TTY output). */
static void s_progress_tty(const pm_job_t *job, size_t *lines_drawn)
{
    if (*lines_drawn)
        printf("\033[%zuA", *lines_drawn);
    size_t width = s_job_key_width(job);
    for (size_t i = 0; i < job->provider_count; i++) {
        fputs("\r\033[2K", stdout);
        s_print_job_provider(&job->providers[i], width, true, s_job_is_verify(job));
        fputc('\n', stdout);
    }
    /* Lines left over from a longer previous frame. */
    for (size_t i = job->provider_count; i < *lines_drawn; i++)
        fputs("\r\033[2K\n", stdout);
    if (*lines_drawn > job->provider_count)
        printf("\033[%zuA", *lines_drawn - job->provider_count);
    *lines_drawn = job->provider_count;
    fflush(stdout);
}

typedef struct {
    const char *provider;
    bool force;
    bool persist;
    bool wait;
} s_discover_args_t;

static const s_option_t s_discover_options[] = {
    {"provider", 'p', "P", 0, "only provider P", s_set_string,
     offsetof(s_discover_args_t, provider)},
    {"force", 'f', NULL, 0, "ignore the cached model lists", s_set_true,
     offsetof(s_discover_args_t, force)},
    {"no-persist", 0, NULL, 0, "do not write the providers file on success", s_set_false,
     offsetof(s_discover_args_t, persist)},
    {"no-wait", 0, NULL, 0, "print the job id and return at once", s_set_false,
     offsetof(s_discover_args_t, wait)},
    {0}};

static int s_follow_job(s_ctx_t *ctx, char *job_id, bool wait);

static int s_cmd_discover(s_ctx_t *ctx, int argc, char **argv)
{
    s_discover_args_t args = {.persist = true, .wait = true};
    int status;
    if (s_parse_command(argc, argv, &args, &status) != 0)
        return status;

    char *job_id = NULL;
    if (pmclient_discover(ctx->client, args.force, args.persist, args.provider, &job_id) != 0)
        return s_fail(ctx);
    return s_follow_job(ctx, job_id, args.wait);
}

/* Follows a job just started (job_id, which this frees): with wait, shows its progress until
 * it ends (a bar per provider on a TTY, changed lines otherwise, the final job_status with
 * --json) and returns EXIT_OK when it succeeded; without, prints its id. */
static int s_follow_job(s_ctx_t *ctx, char *job_id, bool wait)
{
    int status;
    if (!wait) {
        status = EXIT_OK;
        if (ctx->json)
            status = s_done_json(ctx);
        else
            printf("job %s started\n", job_id);
        free(job_id);
        return status;
    }

    bool tty = !ctx->json && isatty(STDOUT_FILENO);
    size_t lines_drawn = 0;
    s_seen_t *seen = NULL;
    size_t seen_count = 0;
    pm_job_t *job = NULL;
    status = EXIT_FAILED;
    if (!ctx->json) {
        printf("job %s\n", job_id);
        fflush(stdout);
    }
    for (;;) {
        pm_job_free(&job);
        if (pmclient_job_status(ctx->client, job_id, &job) != 0) {
            status = s_fail(ctx);
            goto cleanup;
        }
        if (!ctx->json) {
            if (tty)
                s_progress_tty(job, &lines_drawn);
            else
                s_progress_plain(job, &seen, &seen_count);
        }
        if (strcmp(job->state, "running") != 0)
            break;
        if (s_interrupted) {
            fprintf(stderr, "pmctl: interrupted; job %s keeps running in the service\n", job_id);
            status = EXIT_FAILED;
            goto cleanup;
        }
        s_sleep_ms(S_DISCOVER_POLL_MS);
    }
    if (ctx->json) {
        if (s_print_json_result(ctx) != 0)
            goto cleanup;
    } else {
        for (size_t i = 0; i < job->message_count; i++) {
            s_put(stdout, job->messages[i]);
            fputc('\n', stdout);
        }
    }
    status = job->success == 1 ? EXIT_OK : EXIT_FAILED;

cleanup:
    s_seen_clear(seen, seen_count);
    pm_job_free(&job);
    free(job_id);
    return status;
}

static int s_cmd_persist(s_ctx_t *ctx, int argc, char **argv)
{
    int status;
    if (s_parse_command(argc, argv, NULL, &status) != 0)
        return status;
    char *path = NULL;
    int64_t count = 0;
    if (pmclient_persist(ctx->client, &path, &count) != 0)
        return s_fail(ctx);
    if (ctx->json) {
        status = s_done_json(ctx);
    } else {
        printf("persisted %lld providers to ", (long long)count);
        s_put(stdout, path);
        fputc('\n', stdout);
        status = EXIT_OK;
    }
    free(path);
    return status;
}

/* Grows a vector of borrowed strings by one. 0 or -1. */
static int s_push(const char ***vector, size_t *count, const char *value)
{
    if (*count >= S_MAX_MODEL_ARGS)
        return -1;
    const char **grown = realloc(*vector, (*count + 1) * sizeof *grown);
    if (!grown)
        return -1;
    grown[(*count)++] = value;
    *vector = grown;
    return 0;
}

/* set-provider's arguments: the spec, and the vectors behind its model arrays. */
typedef struct {
    pm_provider_spec_t spec;
    const char **longs;
    const char **shorts;
    const char **invalid;
    char **owned; /* LONG parts split off LONG=SHORT operands */
    size_t owned_count;
    size_t short_count;
} s_set_provider_args_t;

static int s_set_api_key(void *target, const s_option_t *option, const char *command,
                         const char *value, int *status)
{
    s_set_provider_args_t *args = target;
    (void)option;
    (void)command;
    (void)status;
    args->spec.has_api_key = true;
    args->spec.api_key = value; /* NULL for --no-api-key: sends nil, which clears the key */
    return 0;
}

static int s_set_api_key_env(void *target, const s_option_t *option, const char *command,
                             const char *value, int *status)
{
    s_set_provider_args_t *args = target;
    (void)option;
    args->spec.has_api_key = true;
    args->spec.api_key = getenv(value);
    if (!args->spec.api_key || !*args->spec.api_key) {
        *status = s_usage_error(command, "environment variable '%s' is not set", value);
        return -1;
    }
    return 0;
}

static int s_set_no_models(void *target, const s_option_t *option, const char *command,
                           const char *value, int *status)
{
    s_set_provider_args_t *args = target;
    (void)option;
    (void)command;
    (void)value;
    (void)status;
    args->spec.has_valid_models = true;
    return 0;
}

static int s_set_model(void *target, const s_option_t *option, const char *command,
                       const char *value, int *status)
{
    s_set_provider_args_t *args = target;
    (void)option;
    args->spec.has_valid_models = true;
    const char *equals = strchr(value, '=');
    const char *long_name = value, *short_name = value;
    if (equals) {
        char *copy = strndup(value, (size_t)(equals - value));
        char **grown = copy ? realloc(args->owned, (args->owned_count + 1) * sizeof *grown) : NULL;
        if (!grown) {
            free(copy);
            fprintf(stderr, "pmctl: out of memory\n");
            *status = EXIT_FAILED;
            return -1;
        }
        args->owned = grown;
        args->owned[args->owned_count++] = copy;
        long_name = copy;
        short_name = equals + 1;
    }
    if (s_push(&args->longs, &args->spec.model_count, long_name) != 0 ||
        s_push(&args->shorts, &args->short_count, short_name) != 0) {
        *status = s_usage_error(command, "%s", "too many --model options");
        return -1;
    }
    return 0;
}

static int s_set_invalid(void *target, const s_option_t *option, const char *command,
                         const char *value, int *status)
{
    s_set_provider_args_t *args = target;
    (void)option;
    args->spec.has_invalid_models = true;
    if (s_push(&args->invalid, &args->spec.invalid_count, value) != 0) {
        *status = s_usage_error(command, "%s", "too many --invalid options");
        return -1;
    }
    return 0;
}

static const s_option_t s_set_provider_options[] = {
    {"name", 0, "N", S_REQUIRED, "display name (required)", s_set_string,
     offsetof(s_set_provider_args_t, spec.name)},
    {"url", 0, "URL", S_REQUIRED, "base API URL, http:// or https:// (required)", s_set_string,
     offsetof(s_set_provider_args_t, spec.base_api_url)},
    {"api-key", 0, "K", S_OR_NEXT,
     "API key (visible to other local users in the process list;\nprefer --api-key-env)",
     s_set_api_key, 0},
    {"api-key-env", 0, "VAR", S_OR_NEXT, "read the API key from environment variable VAR",
     s_set_api_key_env, 0},
    {"no-api-key", 0, NULL, 0, "clear the API key", s_set_api_key, 0},
    {"model", 0, "LONG[=SHORT]", S_REPEAT,
     "a valid model and its short name (default: the long name);\nrepeat for more; replaces "
     "the model map",
     s_set_model, 0},
    {"no-models", 0, NULL, 0, "replace the model map with an empty one", s_set_no_models, 0},
    {"invalid", 0, "M", S_REPEAT, "an invalid model; repeat for more; replaces the list",
     s_set_invalid, 0},
    {0}};

static int s_cmd_set_provider(s_ctx_t *ctx, int argc, char **argv)
{
    s_set_provider_args_t args;
    memset(&args, 0, sizeof args);
    pm_provider_spec_t *spec = &args.spec;
    int status = EXIT_USAGE;
    if (s_parse_command(argc, argv, &args, &status) != 0)
        goto cleanup;
    spec->provider = argv[optind];
    spec->model_long = args.longs;
    spec->model_short = args.shorts;
    spec->invalid_models = args.invalid;

    pm_provider_t *provider = NULL;
    if (pmclient_set_provider(ctx->client, spec, &provider) != 0) {
        status = s_fail(ctx);
        goto cleanup;
    }
    if (ctx->json)
        status = s_done_json(ctx);
    else {
        s_print_provider(provider);
        status = EXIT_OK;
    }
    pm_provider_free(&provider);

cleanup:
    for (size_t i = 0; i < args.owned_count; i++)
        free(args.owned[i]);
    free(args.owned);
    free(args.longs);
    free(args.shorts);
    free(args.invalid);
    return status;
}

static int s_cmd_remove_provider(s_ctx_t *ctx, int argc, char **argv)
{
    int status;
    if (s_parse_command(argc, argv, NULL, &status) != 0)
        return status;
    bool removed = false;
    if (pmclient_remove_provider(ctx->client, argv[optind], &removed) != 0)
        return s_fail(ctx);
    if (ctx->json)
        return s_done_json(ctx);
    fputs(removed ? "removed " : "not registered (nothing removed): ", stdout);
    s_put(stdout, argv[optind]);
    fputc('\n', stdout);
    return EXIT_OK;
}

static int s_cmd_alias(s_ctx_t *ctx, int argc, char **argv)
{
    int status;
    if (s_parse_command(argc, argv, NULL, &status) != 0)
        return status;
    pm_provider_t *provider = NULL;
    if (pmclient_set_short_name(ctx->client, argv[optind], argv[optind + 1], argv[optind + 2],
                                &provider) != 0)
        return s_fail(ctx);
    if (ctx->json)
        status = s_done_json(ctx);
    else {
        s_put(stdout, provider->provider);
        fputc('/', stdout);
        s_put(stdout, argv[optind + 1]);
        fputs(" -> ", stdout);
        s_put(stdout, argv[optind + 2]);
        fputc('\n', stdout);
        status = EXIT_OK;
    }
    pm_provider_free(&provider);
    return status;
}

/* A repeatable option's values (borrowed from argv). */
typedef struct {
    const char **items;
    size_t count;
} s_strvec_t;

/* Setter of a repeatable option: appends to the s_strvec_t at the option's offset. */
static int s_set_push(void *target, const s_option_t *option, const char *command,
                      const char *value, int *status)
{
    s_strvec_t *vector = (s_strvec_t *)((char *)target + option->offset);
    if (s_push(&vector->items, &vector->count, value) != 0) {
        *status = s_usage_error(command, "too many --%s options", option->name);
        return -1;
    }
    return 0;
}

/* "-" for nil (NAN), else how long ago t was: "42s ago", "3m ago", "5h ago", "2d ago". Relative
 * times read at a glance in a table, which is what an operator scans it for ("when did this
 * model last answer?"); --json has the exact times. A time ahead of this clock reads "0s ago". */
static void s_format_ago(double t, double now, char *out, size_t size)
{
    if (isnan(t)) {
        snprintf(out, size, "-");
        return;
    }
    double age = now - t > 0 ? now - t : 0;
    if (age < 60)
        snprintf(out, size, "%llds ago", (long long)age);
    else if (age < 3600)
        snprintf(out, size, "%lldm ago", (long long)(age / 60));
    else if (age < 86400)
        snprintf(out, size, "%lldh ago", (long long)(age / 3600));
    else
        snprintf(out, size, "%lldd ago", (long long)(age / 86400));
}

static double s_wall_clock(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return NAN;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct {
    const char *provider;
    const char *model;
    s_strvec_t states;
} s_status_args_t;

static const s_option_t s_status_options[] = {
    {"provider", 'p', "P", 0, "only the models of provider P", s_set_string,
     offsetof(s_status_args_t, provider)},
    {"state", 's', "S", S_REPEAT,
     "only models in state S (valid, invalid, failing, gone,\nunverified, ignored); repeat for "
     "more",
     s_set_push, offsetof(s_status_args_t, states)},
    {"model", 'm', "M", 0, "only the model with long name M", s_set_string,
     offsetof(s_status_args_t, model)},
    {0}};

static int s_cmd_status(s_ctx_t *ctx, int argc, char **argv)
{
    s_status_args_t args = {0};
    int status;
    if (s_parse_command(argc, argv, &args, &status) != 0) {
        free(args.states.items);
        return status;
    }
    pm_status_list_t *list = NULL;
    int rc = pmclient_model_status(ctx->client, args.provider, args.model, args.states.items,
                                   args.states.count ? (long)args.states.count : -1, &list);
    free(args.states.items);
    if (rc != 0)
        return s_fail(ctx);
    if (ctx->json) {
        pm_status_list_free(&list);
        return s_done_json(ctx);
    }
    if (list->count == 0) {
        fputs("pmctl: no model status records match\n", stderr);
        pm_status_list_free(&list);
        return EXIT_OK;
    }
    static const char *const headers[] = {"PROVIDER", "MODEL",    "STATE",  "LAST OK",
                                          "LATENCY",  "FAILURES", "CONTEXT"};
    enum { COLS = 7, TEXT = 32 };
    const char **cells = calloc(list->count * COLS, sizeof *cells);
    char(*texts)[4][TEXT] = calloc(list->count, sizeof *texts);
    if (!cells || !texts) {
        fprintf(stderr, "pmctl: out of memory\n");
        status = EXIT_FAILED;
        goto cleanup;
    }
    double now = s_wall_clock();
    for (size_t i = 0; i < list->count; i++) {
        const pm_model_status_t *r = &list->records[i];
        s_format_ago(r->last_ok_at, now, texts[i][0], TEXT);
        /* A local model answers in a few ms: one decimal there, whole ms above. */
        if (isnan(r->latency_ms))
            snprintf(texts[i][1], TEXT, "-");
        else if (r->latency_ms < 10)
            snprintf(texts[i][1], TEXT, "%.1f ms", r->latency_ms);
        else
            snprintf(texts[i][1], TEXT, "%.0f ms", r->latency_ms);
        snprintf(texts[i][2], TEXT, "%lld", (long long)r->failures);
        if (r->meta.has_context_length)
            snprintf(texts[i][3], TEXT, "%lld", (long long)r->meta.context_length);
        else
            snprintf(texts[i][3], TEXT, "-");
        cells[i * COLS + 0] = r->provider;
        cells[i * COLS + 1] = r->model;
        cells[i * COLS + 2] = r->state;
        for (size_t c = 0; c < 4; c++)
            cells[i * COLS + 3 + c] = texts[i][c];
    }
    s_print_table(headers, COLS, cells, list->count);
    status = EXIT_OK;
cleanup:
    free(cells);
    free(texts);
    pm_status_list_free(&list);
    return status;
}

typedef struct {
    const char *provider;
    s_strvec_t models;
    bool include_invalid;
    bool persist;
    bool wait;
} s_verify_args_t;

static const s_option_t s_verify_options[] = {
    {"provider", 'p', "P", 0, "only provider P", s_set_string, offsetof(s_verify_args_t, provider)},
    {"model", 'm', "M", S_REPEAT, "only the model with long name M; repeat for more", s_set_push,
     offsetof(s_verify_args_t, models)},
    {"include-invalid", 0, NULL, 0,
     "also probe invalid_models; those that answer become valid\n(overrides the negative "
     "cache)",
     s_set_true, offsetof(s_verify_args_t, include_invalid)},
    {"no-persist", 0, NULL, 0, "do not write the providers file on success", s_set_false,
     offsetof(s_verify_args_t, persist)},
    {"no-wait", 0, NULL, 0, "print the job id and return at once", s_set_false,
     offsetof(s_verify_args_t, wait)},
    {0}};

static int s_cmd_verify(s_ctx_t *ctx, int argc, char **argv)
{
    s_verify_args_t args = {.persist = true, .wait = true};
    int status;
    if (s_parse_command(argc, argv, &args, &status) != 0) {
        free(args.models.items);
        return status;
    }
    char *job_id = NULL;
    int rc = pmclient_verify_models(ctx->client, args.provider, args.models.items,
                                    args.models.count ? (long)args.models.count : -1,
                                    args.include_invalid, args.persist, &job_id);
    free(args.models.items);
    if (rc != 0)
        return s_fail(ctx);
    return s_follow_job(ctx, job_id, args.wait);
}

static int s_set_count(void *target, const s_option_t *option, const char *command,
                       const char *value, int *status)
{
    if (s_parse_int(value, 1, LONG_MAX, (long *)((char *)target + option->offset)) != 0) {
        *status = s_usage_error(command, "--count must be a positive integer, not '%s'", value);
        return -1;
    }
    return 0;
}

/* A providers event: "state_version N: key, key"; a models event: one line per change,
 * "status_version N: provider/model: from -> to" ("-" for a model not known before). */
static void s_print_event(const pm_event_t *event)
{
    if (event->kind == PMCLIENT_EVENT_CHANGED) {
        printf("state_version %lld:", (long long)event->state_version);
        for (size_t i = 0; i < event->keys->count; i++) {
            fputs(i ? ", " : " ", stdout);
            s_put(stdout, event->keys->items[i]);
        }
        fputc('\n', stdout);
        return;
    }
    if (event->change_count == 0) {
        printf("status_version %llu: ", (unsigned long long)event->status_version);
        s_put(stdout, event->provider);
        fputc('\n', stdout);
    }
    for (size_t i = 0; i < event->change_count; i++) {
        const pm_model_change_t *change = &event->changes[i];
        printf("status_version %llu: ", (unsigned long long)event->status_version);
        s_put(stdout, event->provider);
        fputc('/', stdout);
        s_put(stdout, change->model);
        fputs(": ", stdout);
        s_put(stdout, change->from ? change->from : "-");
        fputs(" -> ", stdout);
        s_put(stdout, change->to);
        fputc('\n', stdout);
    }
}

/* The event as one line of JSON, in the service's shape. */
static void s_print_event_json(const pm_event_t *event)
{
    json_t *json = NULL;
    if (event->kind == PMCLIENT_EVENT_CHANGED) {
        json_t *keys = json_array();
        for (size_t i = 0; keys && i < event->keys->count; i++)
            json_array_append_new(keys, json_string(event->keys->items[i]));
        json = json_pack("{s:s, s:I, s:o}", "event", "changed", "state_version",
                         (json_int_t)event->state_version, "providers", keys);
    } else {
        json_t *changes = json_array();
        for (size_t i = 0; changes && i < event->change_count; i++) {
            const pm_model_change_t *c = &event->changes[i];
            json_array_append_new(changes, json_pack("{s:s, s:o, s:s}", "model", c->model, "from",
                                                     c->from ? json_string(c->from) : json_null(),
                                                     "to", c->to));
        }
        json = json_pack("{s:s, s:I, s:s, s:o}", "event", "models_changed", "status_version",
                         (json_int_t)event->status_version, "provider", event->provider, "changes",
                         changes);
    }
    if (json && json_dumpf(json, stdout, JSON_COMPACT) == 0)
        fputc('\n', stdout);
    else
        fputs("pmctl: cannot render the event as JSON\n", stderr);
    json_decref(json);
}

typedef struct {
    long count;
    bool replica;
    long heartbeat_ms;
} s_watch_args_t;

static int s_set_heartbeat(void *target, const s_option_t *option, const char *command,
                           const char *value, int *status)
{
    if (s_parse_int(value, 1, PMCLIENT_MAX_TIMEOUT_MS, (long *)((char *)target + option->offset)) !=
        0) {
        *status = s_usage_error(command, "--heartbeat-ms must be 1..%d, not '%s'",
                                PMCLIENT_MAX_TIMEOUT_MS, value);
        return -1;
    }
    return 0;
}

static const s_option_t s_watch_options[] = {
    {"count", 'c', "N", 0, "stop after N events (with --replica: N changes applied)", s_set_count,
     offsetof(s_watch_args_t, count)},
    {"replica", 0, NULL, 0, "keep a local replica and show its changes and staleness", s_set_true,
     offsetof(s_watch_args_t, replica)},
    {"heartbeat-ms", 0, "MS", 0, "the service's heartbeat_ms, for --replica (default 1000)",
     s_set_heartbeat, offsetof(s_watch_args_t, heartbeat_ms)},
    {0}};

/* watch --replica: the change callback runs on the replica's thread, the staleness lines on
 * the main thread; one mutex keeps their lines whole. */
typedef struct {
    pthread_mutex_t mutex;
    bool json;
    long changes;
} s_replica_watch_t;

static void s_replica_line(s_replica_watch_t *watch, json_t *json, const char *text)
{
    pthread_mutex_lock(&watch->mutex);
    if (watch->json) {
        if (json && json_dumpf(json, stdout, JSON_COMPACT) == 0)
            fputc('\n', stdout);
        else
            fputs("pmctl: cannot render the change as JSON\n", stderr);
    } else {
        fputs(text, stdout);
    }
    fflush(stdout);
    pthread_mutex_unlock(&watch->mutex);
    json_decref(json);
}

static void s_replica_changed(const pmclient_replica_change_t *change, void *arg)
{
    s_replica_watch_t *watch = arg;
    char text[1024];
    int used;
    if (change->full)
        used = snprintf(text, sizeof text, "snapshot: state_version %lld, epoch %s\n",
                        (long long)change->state_version, change->epoch[0] ? change->epoch : "-");
    else
        used = snprintf(text, sizeof text, "state_version %lld:", (long long)change->state_version);
    json_t *keys = json_array();
    for (size_t i = 0; !change->full && i < change->key_count; i++) {
        if (used >= 0 && (size_t)used < sizeof text)
            used += snprintf(text + used, sizeof text - (size_t)used, "%s %s", i ? "," : "",
                             change->keys[i]);
        json_array_append_new(keys, json_string(change->keys[i]));
    }
    if (!change->full && used >= 0 && (size_t)used < sizeof text - 1)
        snprintf(text + used, sizeof text - (size_t)used, "\n");
    json_t *json = json_pack("{s:s, s:I, s:s, s:b, s:o}", "event", "replica_changed",
                             "state_version", (json_int_t)change->state_version, "epoch",
                             change->epoch, "snapshot", change->full, "providers", keys);
    s_replica_line(watch, json, text);
    pthread_mutex_lock(&watch->mutex);
    watch->changes++;
    pthread_mutex_unlock(&watch->mutex);
}

/* One line when the staleness changes: why, and how far behind. */
static void s_replica_status(s_replica_watch_t *watch, const pmclient_replica_stats_t *st)
{
    char text[512], heard[64];
    if (st->since_contact_s < 0)
        snprintf(heard, sizeof heard, "never heard from the service");
    else
        snprintf(heard, sizeof heard, "last heard %.1f s ago", st->since_contact_s);
    snprintf(text, sizeof text, "%s: state_version %lld, %lld behind, %s, %llu re-snapshots\n",
             st->stale ? "stale" : "fresh", (long long)st->state_version,
             (long long)st->versions_behind, heard, (unsigned long long)st->resnapshots);
    json_t *json =
        json_pack("{s:s, s:b, s:b, s:I, s:I, s:f, s:I}", "event", "replica_status", "synced",
                  st->synced, "stale", st->stale, "state_version", (json_int_t)st->state_version,
                  "versions_behind", (json_int_t)st->versions_behind, "since_contact_s",
                  st->since_contact_s, "resnapshots", (json_int_t)st->resnapshots);
    s_replica_line(watch, json, text);
}

static int s_watch_replica(s_ctx_t *ctx, const s_watch_args_t *args)
{
    char server_public[PMCLIENT_Z85_KEY_LEN + 1], client_public[PMCLIENT_Z85_KEY_LEN + 1];
    char client_secret[PMCLIENT_Z85_KEY_LEN + 1], err[512];
    s_replica_watch_t watch = {.json = ctx->json};
    if (pthread_mutex_init(&watch.mutex, NULL) != 0) {
        fputs("pmctl: cannot create a mutex\n", stderr);
        return EXIT_FAILED;
    }
    pmclient_replica_options_t options = {.timeout_ms = ctx->timeout_ms,
                                          .heartbeat_ms = (int)args->heartbeat_ms,
                                          .on_change = s_replica_changed,
                                          .on_change_arg = &watch};
    if (ctx->curve_server_key) {
        if (pmclient_curve_read_key_file(ctx->curve_server_key, server_public, NULL, err,
                                         sizeof err) != 0 ||
            pmclient_curve_read_key_file(ctx->curve_client_key, client_public, client_secret, err,
                                         sizeof err) != 0) {
            fprintf(stderr, "pmctl: %s\n", err);
            pthread_mutex_destroy(&watch.mutex);
            return EXIT_FAILED;
        }
        options.server_public_z85 = server_public;
        options.client_public_z85 = client_public;
        options.client_secret_z85 = client_secret;
    }
    pmclient_replica_t *replica =
        pmclient_replica_new(ctx->endpoint, ctx->events_endpoint, &options);
    explicit_bzero(client_secret, sizeof client_secret);
    if (!replica) {
        fprintf(stderr, "pmctl: cannot start a replica of '%s' (events '%s')\n", ctx->endpoint,
                ctx->events_endpoint);
        pthread_mutex_destroy(&watch.mutex);
        return EXIT_FAILED;
    }
    int last = -1; /* -1: nothing shown yet, else the stale flag shown last */
    for (;;) {
        pthread_mutex_lock(&watch.mutex);
        long seen = watch.changes;
        pthread_mutex_unlock(&watch.mutex);
        if (s_interrupted || (args->count > 0 && seen >= args->count))
            break;
        pmclient_replica_stats_t st;
        if (pmclient_replica_stats(replica, &st) == 0 && (int)st.stale != last) {
            s_replica_status(&watch, &st);
            last = st.stale;
        }
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    pmclient_replica_destroy(&replica);
    pthread_mutex_destroy(&watch.mutex);
    return EXIT_OK;
}

static int s_cmd_watch(s_ctx_t *ctx, int argc, char **argv)
{
    s_watch_args_t args = {0};
    int status;
    if (s_parse_command(argc, argv, &args, &status) != 0)
        return status;
    long count = args.count;
    if (args.replica)
        return s_watch_replica(ctx, &args);

    pmclient_events_t *events = NULL;
    if (ctx->curve_server_key) {
        char server_public[PMCLIENT_Z85_KEY_LEN + 1], client_public[PMCLIENT_Z85_KEY_LEN + 1];
        char client_secret[PMCLIENT_Z85_KEY_LEN + 1], err[512];
        if (pmclient_curve_read_key_file(ctx->curve_server_key, server_public, NULL, err,
                                         sizeof err) != 0 ||
            pmclient_curve_read_key_file(ctx->curve_client_key, client_public, client_secret, err,
                                         sizeof err) != 0) {
            fprintf(stderr, "pmctl: %s\n", err);
            return EXIT_FAILED;
        }
        events = pmclient_events_new_curve(ctx->events_endpoint, server_public, client_public,
                                           client_secret);
        explicit_bzero(client_secret, sizeof client_secret);
    } else {
        events = pmclient_events_new(ctx->events_endpoint);
    }
    if (!events) {
        fprintf(stderr, "pmctl: transport: cannot subscribe to '%s'\n", ctx->events_endpoint);
        return EXIT_UNREACHABLE;
    }
    long seen = 0;
    status = EXIT_OK;
    while (!s_interrupted && (count == 0 || seen < count)) {
        pm_event_t *event = NULL;
        int rc = pmclient_events_recv(events, S_WATCH_POLL_MS, &event);
        if (rc < 0) {
            fprintf(stderr, "pmctl: transport: cannot receive events: %s\n", strerror(errno));
            status = EXIT_UNREACHABLE;
            break;
        }
        if (rc == 0)
            continue;
        seen++;
        if (ctx->json)
            s_print_event_json(event);
        else
            s_print_event(event);
        fflush(stdout);
        pm_event_free(&event);
    }
    pmclient_events_destroy(&events);
    return status;
}

static const s_option_t s_keygen_options[] = {
    {"name", 'n', "NAME", 0, "file name stem (default client)", s_set_string, 0}, {0}};

static int s_cmd_keygen(s_ctx_t *ctx, int argc, char **argv)
{
    const char *name = "client";
    int status;
    (void)ctx;
    if (s_parse_command(argc, argv, &name, &status) != 0)
        return status;
    const char *dir = argv[optind];
    char err[512];
    if (pmclient_curve_keygen(dir, name, err, sizeof err) != 0) {
        fprintf(stderr, "pmctl: keygen: %s\n", err);
        return EXIT_FAILED;
    }
    printf("wrote %s/%s.key (secret, mode 0600) and %s/%s.pub (public)\n", dir, name, dir, name);
    return EXIT_OK;
}

static int s_cmd_help(s_ctx_t *ctx, int argc, char **argv);

static const s_command_t s_commands[] = {
    {"health", s_cmd_health, "", 0, NULL, "Show the service's health and counters.", NULL, true},
    {"providers", s_cmd_providers, "", 0, NULL,
     "List the providers (API keys masked) and their status.", NULL, true},
    {"provider", s_cmd_provider, "NAME", 1, NULL, "Show one provider (getitem).", NULL, true},
    {"models", s_cmd_models, "", 0, s_models_options,
     "List the available models (long names), of all providers or of one.", NULL, true},
    {"scoped", s_cmd_scoped, "", 0, NULL, "List the models as \"provider/long (short)\".", NULL,
     true},
    {"resolve", s_cmd_resolve, "MODEL", 1, NULL,
     "Resolve a model string to its provider and long name.",
     "  MODEL is \"provider/model\" or a long or short model name.\n", true},
    {"find", s_cmd_find, "NAME", 1, NULL,
     "Find every provider that has a model by this long or short name.", NULL, true},
    {"discover", s_cmd_discover, "", 0, s_discover_options,
     "Discover and validate models, showing progress until the job ends.\n"
     "Exit status 0 when the job succeeded, 1 when it failed.",
     NULL, true},
    {"job", s_cmd_job, "ID", 1, NULL, "Show a discovery or verification job's state.", NULL, true},
    {"status", s_cmd_status, "", 0, s_status_options,
     "Show the status of the models: state, last success, latency, failures, context.",
     "  Times are relative to now (\"3m ago\"); \"-\" means never or unknown. --json prints\n"
     "  the records with every field, times as unix seconds.\n",
     true},
    {"verify", s_cmd_verify, "", 0, s_verify_options,
     "Re-list and probe models now, showing progress until the job ends.\n"
     "Exit status 0 when the job succeeded, 1 when it failed.",
     NULL, true},
    {"persist", s_cmd_persist, "", 0, NULL, "Write the providers file now.", NULL, true},
    {"set-provider", s_cmd_set_provider, "KEY", 1, s_set_provider_options,
     "Create or update a provider.\n"
     "Fields not given keep their values; --model replaces the whole model map.",
     NULL, true},
    {"remove-provider", s_cmd_remove_provider, "NAME", 1, NULL,
     "Remove a provider added at run time.", NULL, true},
    {"alias", s_cmd_alias, "PROVIDER LONG SHORT", 3, NULL,
     "Set the short name of a provider's model.", NULL, true},
    {"watch", s_cmd_watch, "", 0, s_watch_options,
     "Print change events until interrupted (Ctrl-C).",
     "  Provider changes print \"state_version N: KEY, ...\"; model status changes print one\n"
     "  line per model, \"status_version N: PROVIDER/MODEL: FROM -> TO\" (FROM \"-\": new).\n"
     "  --replica keeps a local replica (snapshot + events, as libpmclient's replica does)\n"
     "  and prints each change it applies, \"snapshot: ...\" when it (re)synchronises, and a\n"
     "  \"stale\" / \"fresh\" line whenever it loses or regains the service.\n",
     false},
    {"keygen", s_cmd_keygen, "DIR", 1, s_keygen_options,
     "Write a CURVE key pair (DIR/NAME.key and DIR/NAME.pub).\n"
     "NAME.key holds the secret and the public key (mode 0600), NAME.pub the public key.\n"
     "NAME defaults to \"client\". Existing files are never overwritten.",
     NULL, false},
    /* help takes any operand, options included, as a command name: it parses nothing. */
    {"help", s_cmd_help, "[COMMAND]", -1, NULL, "Show help for pmctl or for one command.", NULL,
     false},
};

static const s_command_t *s_find_command(const char *name)
{
    for (size_t i = 0; i < sizeof s_commands / sizeof s_commands[0]; i++) {
        if (strcmp(s_commands[i].name, name) == 0)
            return &s_commands[i];
    }
    return NULL;
}

static int s_set_timeout(void *target, const s_option_t *option, const char *command,
                         const char *value, int *status)
{
    long parsed;
    (void)option;
    if (s_parse_int(value, 1, PMCLIENT_MAX_TIMEOUT_MS, &parsed) != 0) {
        *status = s_usage_error(command, "--timeout must be 1..%d ms, not '%s'",
                                PMCLIENT_MAX_TIMEOUT_MS, value);
        return -1;
    }
    ((s_ctx_t *)target)->timeout_ms = (int)parsed;
    return 0;
}

static int s_set_retries(void *target, const s_option_t *option, const char *command,
                         const char *value, int *status)
{
    long parsed;
    (void)option;
    if (s_parse_int(value, 1, PMCLIENT_MAX_RETRIES, &parsed) != 0) {
        *status = s_usage_error(command, "--retries must be 1..%d, not '%s'", PMCLIENT_MAX_RETRIES,
                                value);
        return -1;
    }
    ((s_ctx_t *)target)->retries = (int)parsed;
    return 0;
}

static int s_print_version(void *target, const s_option_t *option, const char *command,
                           const char *value, int *status)
{
    (void)target;
    (void)option;
    (void)command;
    (void)value;
    printf("pmctl %s\n", PMCLIENT_VERSION);
    *status = EXIT_OK;
    return -1;
}

#define S_STRINGIFY_(x) #x
#define S_STRINGIFY(x) S_STRINGIFY_(x)

/* pmctl's own options, before the command. */
static const s_option_t s_global_options[] = {
    {"endpoint", 0, "EP", 0,
     "request endpoint (default $PM_ENDPOINT, else " PMCLIENT_DEFAULT_ENDPOINT ")", s_set_string,
     offsetof(s_ctx_t, endpoint)},
    {"events-endpoint", 0, "EP", 0,
     "events endpoint for watch (default $PM_EVENTS_ENDPOINT, "
     "else\n" PMCLIENT_DEFAULT_EVENTS_ENDPOINT ")",
     s_set_string, offsetof(s_ctx_t, events_endpoint)},
    {"timeout", 0, "MS", 0,
     "reply timeout per attempt (default " S_STRINGIFY(PMCLIENT_DEFAULT_TIMEOUT_MS) ")",
     s_set_timeout, 0},
    {"retries", 0, "N", 0,
     "attempts of a read (default " S_STRINGIFY(PMCLIENT_DEFAULT_RETRIES) "; writes are sent "
                                                                          "once)",
     s_set_retries, 0},
    {"json", 0, NULL, 0, "print the service's result as JSON", s_set_true, offsetof(s_ctx_t, json)},
    {"curve-server-key", 0, "F", S_AND_NEXT, "the service's public key file (.pub); enables CURVE",
     s_set_string, offsetof(s_ctx_t, curve_server_key)},
    {"curve-client-key", 0, "F", 0, "this client's key file (.key), with --curve-server-key",
     s_set_string, offsetof(s_ctx_t, curve_client_key)},
    {"version", 0, NULL, S_NOT_SHOWN, "the version", s_print_version, 0},
    {0}};

/* pmctl itself, as s_parse_options sees it. */
static const s_command_t s_main = {NULL, NULL, "COMMAND [ARGS]", -1, s_global_options, "",
                                   NULL, false};

static void s_main_help(FILE *out)
{
    size_t column = strlen("usage: pmctl");
    fputs("usage: pmctl", out);
    s_synopsis(out, s_global_options, strlen("usage: pmctl "), &column);
    if (column + 1 + strlen(s_main.operands) > S_SYNOPSIS_WIDTH)
        fprintf(out, "\n%*s%s\n", (int)strlen("usage: pmctl "), "", s_main.operands);
    else
        fprintf(out, " %s\n", s_main.operands);
    fputs("\n"
          "Talk to the provider-manager service.\n"
          "\n"
          "Options:\n",
          out);
    s_options_help(out, s_global_options, true);
    fputs("\nCommands:\n", out);
    for (size_t i = 0; i < sizeof s_commands / sizeof s_commands[0]; i++) {
        const char *summary = s_commands[i].summary;
        const char *newline = strchr(summary, '\n');
        int len = newline ? (int)(newline - summary) : (int)strlen(summary);
        fprintf(out, "  %-16s %.*s\n", s_commands[i].name, len, summary);
    }
    fputs("\n'pmctl COMMAND --help' shows a command's arguments.\n"
          "Exit status: 0 ok, 1 operation failed, 2 usage error, 3 service unreachable.\n",
          out);
}

static int s_cmd_help(s_ctx_t *ctx, int argc, char **argv)
{
    (void)ctx;
    if (argc < 2) {
        s_main_help(stdout);
        return EXIT_OK;
    }
    const s_command_t *command = s_find_command(argv[1]);
    if (!command)
        return s_usage_error(NULL, "unknown command '%s'", argv[1]);
    s_command_help(command, stdout);
    return EXIT_OK;
}

/* Creates and configures the client from the global options. 0, or an exit status. */
static int s_open_client(s_ctx_t *ctx)
{
    ctx->client = pmclient_new(ctx->endpoint);
    if (!ctx->client) {
        fprintf(stderr, "pmctl: cannot create a client for '%s'\n", ctx->endpoint);
        return EXIT_FAILED;
    }
    if (pmclient_set_timeout(ctx->client, ctx->timeout_ms) != 0 ||
        pmclient_set_retries(ctx->client, ctx->retries) != 0)
        return s_fail(ctx);
    if (ctx->curve_server_key &&
        pmclient_set_curve_files(ctx->client, ctx->curve_server_key, ctx->curve_client_key) != 0)
        return s_fail(ctx);
    pmclient_set_keep_reply(ctx->client, ctx->json);
    return 0;
}

int main(int argc, char **argv)
{
    s_ctx_t ctx = {
        .endpoint = getenv("PM_ENDPOINT"),
        .events_endpoint = getenv("PM_EVENTS_ENDPOINT"),
        .timeout_ms = PMCLIENT_DEFAULT_TIMEOUT_MS,
        .retries = PMCLIENT_DEFAULT_RETRIES,
    };
    if (!ctx.endpoint || !*ctx.endpoint)
        ctx.endpoint = PMCLIENT_DEFAULT_ENDPOINT;
    if (!ctx.events_endpoint || !*ctx.events_endpoint)
        ctx.events_endpoint = PMCLIENT_DEFAULT_EVENTS_ENDPOINT;

    unsigned counts[S_MAX_OPTIONS];
    int status = 0;
    if (s_parse_options(&s_main, &ctx, argc, argv, counts, &status) != 0)
        return status;
    if (optind >= argc)
        return s_usage_error(NULL, "%s", "no command given");
    if (s_check_options(&s_main, argc, argv, counts, &status) != 0)
        return status;
    const s_command_t *command = s_find_command(argv[optind]);
    if (!command)
        return s_usage_error(NULL, "unknown command '%s'", argv[optind]);

    /* No SA_RESTART: a blocking wait returns EINTR so that watch and discover can stop. */
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = s_on_signal;
    sigemptyset(&action.sa_mask);
    if (strcmp(command->name, "watch") == 0 || strcmp(command->name, "discover") == 0 ||
        strcmp(command->name, "verify") == 0) {
        if (sigaction(SIGINT, &action, NULL) != 0 || sigaction(SIGTERM, &action, NULL) != 0) {
            perror("pmctl: sigaction");
            return EXIT_FAILED;
        }
    }

    if (command->needs_client)
        status = s_open_client(&ctx);
    if (status == 0)
        status = command->run(&ctx, argc - optind, argv + optind);
    pmclient_destroy(&ctx.client);
    if (fflush(stdout) != 0 && status == EXIT_OK) {
        perror("pmctl: stdout");
        status = EXIT_FAILED;
    }
    return status;
}
