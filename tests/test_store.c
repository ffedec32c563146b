/*
 * test_store: loading and persisting <data_dir>/openaicompat-providers.yaml.
 *
 * Every test works in its own temporary directory, removed in the teardown.
 */
#define _XOPEN_SOURCE 700 /* nftw() for removing the temporary directory */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "provider_spec.h"
#include "registry.h"
#include "store.h"

#include <yaml.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char dir[256];       /* mkdtemp() under /tmp: short, which keeps the paths below in bounds */
    char path[PATH_MAX]; /* <dir>/openaicompat-providers.yaml */
    char err[1024];
    int warnings;
    char last_warning[1024];
} fixture_t;

/* ---------------------------------------------------------------------------- helpers */

static int s_remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/pm-test-store-XXXXXX");
    if (!mkdtemp(fx->dir)) {
        free(fx);
        return -1;
    }
    if (store_path(fx->dir, fx->path, sizeof fx->path) != 0) {
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *fx = *state;
    chmod(fx->dir, 0700); /* in case a test made it read-only */
    nftw(fx->dir, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    return 0;
}

static void s_count_warning(void *arg, const char *message)
{
    fixture_t *fx = arg;
    fx->warnings++;
    snprintf(fx->last_warning, sizeof fx->last_warning, "%s", message);
}

static void s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

/* The whole file, NUL-terminated; *size_out when not NULL. Caller frees. */
static char *s_slurp(const char *path, size_t *size_out)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long size = ftell(f);
    assert_true(size >= 0);
    assert_int_equal(fseek(f, 0, SEEK_SET), 0);
    char *data = malloc((size_t)size + 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)size, f), (size_t)size);
    data[size] = '\0';
    fclose(f);
    if (size_out)
        *size_out = (size_t)size;
    return data;
}

static int s_load(fixture_t *fx, const char *text, store_layer_t *layer)
{
    s_write(fx->path, text);
    fx->err[0] = '\0';
    return store_load(fx->path, layer, s_count_warning, fx, fx->err, sizeof fx->err);
}

/* Asserts that err is "<path>:<line>:<col>: <what>" with line (when > 0) as given. */
static void s_assert_error_at(const fixture_t *fx, int line)
{
    char prefix[PATH_MAX + 32];
    snprintf(prefix, sizeof prefix, "%s:", fx->path);
    if (strncmp(fx->err, prefix, strlen(prefix)) != 0)
        fail_msg("error '%s' does not start with '%s'", fx->err, prefix);
    const char *p = fx->err + strlen(prefix);
    char *end = NULL;
    long got_line = strtol(p, &end, 10);
    if (end == p || *end != ':' || got_line < 1 || (line > 0 && got_line != line))
        fail_msg("error '%s' is not at line %d", fx->err, line);
    p = end + 1;
    long column = strtol(p, &end, 10);
    if (end == p || column < 1 || strncmp(end, ": ", 2) != 0 || end[2] == '\0')
        fail_msg("error '%s' has no column", fx->err);
}

static provider_t *s_provider(const char *key, const char *name, const char *url)
{
    provider_t *p = provider_new(key, name, url);
    assert_non_null(p);
    return p;
}

static void s_put(registry_t *reg, provider_t *p)
{
    assert_int_equal(registry_put(reg, &p), 0);
    assert_null(p);
}

static registry_t *s_registry_from(const store_layer_t *layer)
{
    registry_t *reg = registry_new();
    assert_non_null(reg);
    for (size_t i = 0; i < layer->count; i++)
        assert_int_equal(
            provider_spec_apply(&layer->specs[i], reg, PROVIDER_SPEC_MERGE_MODELS, false), 0);
    return reg;
}

static const provider_spec_t *s_spec(const store_layer_t *layer, const char *key)
{
    for (size_t i = 0; i < layer->count; i++) {
        if (strcmp(layer->specs[i].key, key) == 0)
            return &layer->specs[i];
    }
    fail_msg("no provider '%s' in the layer", key);
    return NULL;
}

static void s_assert_same_string(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

/* The persisted form of a provider: every field the file carries. */
static void s_assert_same_provider(const provider_t *a, const provider_t *b)
{
    assert_string_equal(provider_key(a), provider_key(b));
    assert_string_equal(provider_name(a), provider_name(b));
    assert_string_equal(provider_base_api_url(a), provider_base_api_url(b));
    s_assert_same_string(provider_stored_api_key(a), provider_stored_api_key(b));
    assert_int_equal(provider_model_count(a), provider_model_count(b));
    for (size_t i = 0; i < provider_model_count(a); i++) {
        assert_string_equal(provider_model_long(a, i), provider_model_long(b, i));
        assert_string_equal(provider_model_short(a, i), provider_model_short(b, i));
    }
    assert_int_equal(provider_invalid_count(a), provider_invalid_count(b));
    for (size_t i = 0; i < provider_invalid_count(a); i++)
        assert_string_equal(provider_invalid_at(a, i), provider_invalid_at(b, i));
}

/* Persists reg, loads the file back into a new registry and checks it holds the same. */
static void s_assert_round_trip(fixture_t *fx, const registry_t *reg)
{
    assert_int_equal(store_persist(reg, fx->path, fx->err, sizeof fx->err), 0);
    store_layer_t layer;
    if (store_load(fx->path, &layer, s_count_warning, fx, fx->err, sizeof fx->err) != 0)
        fail_msg("reload failed: %s", fx->err);
    registry_t *back = s_registry_from(&layer);
    assert_int_equal(registry_count(back), registry_count(reg));
    for (size_t i = 0; i < registry_count(reg); i++)
        s_assert_same_provider(registry_at(reg, i), registry_at(back, i));
    registry_destroy(&back);
    store_layer_clear(&layer);
}

static int s_count_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        if (strstr(entry->d_name, ".tmp."))
            count++;
    }
    closedir(d);
    return count;
}

/* ------------------------------------------------------------------------------ path */

static void test_store_path(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(store_path("/var/lib/pm", out, sizeof out), 0);
    assert_string_equal(out, "/var/lib/pm/openaicompat-providers.yaml");
    assert_int_equal(store_path("data/", out, sizeof out), 0);
    assert_string_equal(out, "data/openaicompat-providers.yaml");
    assert_int_equal(store_path("./data", out, sizeof out), 0);
    assert_string_equal(out, "./data/openaicompat-providers.yaml");

    /* Exactly fitting, and one byte short. */
    const char *dir = "/d";
    size_t need = strlen(dir) + 1 + strlen(STORE_FILE_NAME) + 1;
    char exact[64];
    assert_int_equal(store_path(dir, exact, need), 0);
    assert_int_equal(strlen(exact), need - 1);
    assert_int_equal(store_path(dir, exact, need - 1), -1);

    char tiny[8];
    assert_int_equal(store_path("/a/very/long/directory", tiny, sizeof tiny), -1);
    assert_int_equal(store_path(NULL, out, sizeof out), -1);
    assert_int_equal(store_path("x", NULL, 0), -1);
}

/* --------------------------------------------------------------------------- loading */

static const char s_seed_example[] = "providers:\n"
                                     "  openai:\n"
                                     "    api_key: sk-...\n"
                                     "    base_api_url: https://api.openai.com/v1\n"
                                     "    name: OpenAI\n"
                                     "    valid_models:\n"
                                     "      gpt-4o-2024-08-06: 4o\n"
                                     "      gpt-4o-mini-2024-07-18: 4o-mini\n"
                                     "    invalid_models:\n"
                                     "      - gpt-3.5-turbo-instruct\n"
                                     "      - text-davinci-003\n";

static void s_assert_seed_layer(const store_layer_t *layer)
{
    assert_int_equal(layer->count, 1);
    const provider_spec_t *s = &layer->specs[0];
    assert_string_equal(s->key, "openai");
    assert_string_equal(s->name, "OpenAI");
    assert_string_equal(s->base_api_url, "https://api.openai.com/v1");
    assert_true(s->has_api_key);
    assert_string_equal(s->api_key, "sk-...");
    assert_true(s->has_valid_models);
    assert_int_equal(s->model_count, 2);
    assert_string_equal(s->model_long[0], "gpt-4o-2024-08-06");
    assert_string_equal(s->model_short[0], "4o");
    assert_string_equal(s->model_long[1], "gpt-4o-mini-2024-07-18");
    assert_string_equal(s->model_short[1], "4o-mini");
    assert_true(s->has_invalid_models);
    assert_int_equal(s->invalid_count, 2);
    assert_string_equal(s->invalid_models[0], "gpt-3.5-turbo-instruct");
    assert_string_equal(s->invalid_models[1], "text-davinci-003");
}

static void test_seed_example_round_trip(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    assert_int_equal(s_load(fx, s_seed_example, &layer), 0);
    assert_int_equal(fx->warnings, 0);
    s_assert_seed_layer(&layer);

    /* Persist what was loaded, read the new file: the same values. */
    registry_t *reg = s_registry_from(&layer);
    store_layer_clear(&layer);
    assert_int_equal(layer.count, 0);
    assert_int_equal(store_persist(reg, fx->path, fx->err, sizeof fx->err), 0);
    assert_int_equal(store_load(fx->path, &layer, s_count_warning, fx, fx->err, sizeof fx->err), 0);
    s_assert_seed_layer(&layer);
    store_layer_clear(&layer);

    /* The seed's format: top-level providers:, fields in the seed's order. */
    char *text = s_slurp(fx->path, NULL);
    assert_true(strncmp(text, "providers:\n  openai:\n", 21) == 0);
    const char *name = strstr(text, "    name: OpenAI\n");
    const char *url = strstr(text, "    base_api_url: https://api.openai.com/v1\n");
    const char *key = strstr(text, "    api_key: sk-...\n");
    const char *valid = strstr(text, "    valid_models:\n");
    const char *invalid = strstr(text, "    invalid_models:\n");
    assert_non_null(name);
    assert_non_null(url);
    assert_non_null(key);
    assert_non_null(valid);
    assert_non_null(invalid);
    assert_true(name < url && url < key && key < valid && valid < invalid);
    assert_non_null(strstr(text, "gpt-4o-2024-08-06: \"4o\"\n"));
    assert_non_null(strstr(text, "- gpt-3.5-turbo-instruct\n"));
    free(text);
    registry_destroy(&reg);
}

static void test_backward_compatible_without_invalid_models(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    assert_int_equal(s_load(fx,
                            "providers:\n"
                            "  openai:\n"
                            "    name: OpenAI\n"
                            "    base_api_url: https://api.openai.com/v1\n"
                            "    api_key: null\n"
                            "    valid_models:\n"
                            "      gpt-4o: 4o\n",
                            &layer),
                     0);
    assert_int_equal(layer.count, 1);
    assert_false(layer.specs[0].has_invalid_models);
    assert_int_equal(layer.specs[0].invalid_count, 0);
    assert_int_equal(layer.specs[0].model_count, 1);

    /* Applied over a provider that has invalid models, an absent list keeps them. */
    registry_t *reg = registry_new();
    provider_t *p = s_provider("openai", "OpenAI", "https://api.openai.com/v1");
    const char *bad[] = {"old-model"};
    assert_int_equal(provider_set_invalid_models(p, bad, 1), 0);
    s_put(reg, p);
    assert_int_equal(provider_spec_apply(&layer.specs[0], reg, PROVIDER_SPEC_MERGE_MODELS, false),
                     0);
    assert_int_equal(provider_invalid_count(registry_get(reg, "openai", 6)), 1);
    assert_int_equal(provider_model_count(registry_get(reg, "openai", 6)), 1);
    registry_destroy(&reg);
    store_layer_clear(&layer);
}

static void test_missing_and_empty_files(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    /* No file at all: an empty layer. */
    assert_int_equal(store_load(fx->path, &layer, NULL, NULL, fx->err, sizeof fx->err), 0);
    assert_int_equal(layer.count, 0);
    assert_null(layer.specs);

    const char *empties[] = {"",
                             "\n\n",
                             "# just a comment\n",
                             "providers:\n",
                             "providers: ~\n",
                             "providers: null\n",
                             "providers: {}\n",
                             "~\n",
                             "---\n...\n"};
    for (size_t i = 0; i < sizeof empties / sizeof empties[0]; i++) {
        if (s_load(fx, empties[i], &layer) != 0)
            fail_msg("'%s' failed: %s", empties[i], fx->err);
        assert_int_equal(layer.count, 0);
        store_layer_clear(&layer);
    }
}

static void test_api_key_null_spellings(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    assert_int_equal(s_load(fx,
                            "providers:\n"
                            "  a: {api_key: null}\n"
                            "  b: {api_key: ~}\n"
                            "  c: {api_key: ''}\n"
                            "  d:\n"
                            "    api_key:\n"
                            "  e: {api_key: \"null\"}\n"
                            "  f: {name: F}\n",
                            &layer),
                     0);
    assert_int_equal(layer.count, 6);
    for (size_t i = 0; i < 4; i++) {
        assert_true(layer.specs[i].has_api_key);
        assert_null(layer.specs[i].api_key);
    }
    /* A quoted "null" is a string, not a null. */
    assert_true(layer.specs[4].has_api_key);
    assert_string_equal(layer.specs[4].api_key, "null");
    assert_false(layer.specs[5].has_api_key);
    store_layer_clear(&layer);
}

static void test_null_short_name_means_long_name(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    assert_int_equal(s_load(fx,
                            "providers:\n"
                            "  local:\n"
                            "    base_api_url: http://localhost:1/v1\n"
                            "    valid_models:\n"
                            "      llama3:\n"
                            "      qwen: ~\n"
                            "      phi: p\n",
                            &layer),
                     0);
    const provider_spec_t *s = s_spec(&layer, "local");
    assert_int_equal(s->model_count, 3);
    assert_null(s->model_short[0]);
    assert_null(s->model_short[1]);
    assert_string_equal(s->model_short[2], "p");
    registry_t *reg = s_registry_from(&layer);
    const provider_t *p = registry_get(reg, "local", 5);
    assert_string_equal(provider_model_short(p, 0), "llama3");
    assert_string_equal(provider_model_short(p, 1), "qwen");
    assert_string_equal(provider_model_short(p, 2), "p");
    /* A provider without a name gets its key. */
    assert_string_equal(provider_name(p), "local");
    registry_destroy(&reg);
    store_layer_clear(&layer);
}

static void test_file_order_is_kept(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    assert_int_equal(s_load(fx,
                            "providers:\n"
                            "  zeta: {name: Z}\n"
                            "  alpha: {name: A}\n"
                            "  mid.dle-1_x: {name: M}\n",
                            &layer),
                     0);
    assert_int_equal(layer.count, 3);
    assert_string_equal(layer.specs[0].key, "zeta");
    assert_string_equal(layer.specs[1].key, "alpha");
    assert_string_equal(layer.specs[2].key, "mid.dle-1_x");
    store_layer_clear(&layer);
}

static void test_corrupt_file_error_has_line_and_column(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    /* The brief's example: libyaml reports the end of the input (no newline there). */
    assert_int_equal(s_load(fx, "providers: {a: [", &layer), -1);
    assert_int_equal(layer.count, 0);
    s_assert_error_at(fx, 0);
    assert_int_equal(s_load(fx, "providers: {a: [\n\n\n", &layer), -1);
    s_assert_error_at(fx, 4);

    assert_int_equal(s_load(fx,
                            "providers:\n"
                            "  openai:\n"
                            "    name: \"unterminated\n"
                            "    base_api_url: x\n",
                            &layer),
                     -1);
    assert_non_null(strstr(fx->err, fx->path));
    assert_non_null(strstr(fx->err, ": "));
    assert_true(strncmp(fx->err + strlen(fx->path), ":", 1) == 0);

    /* Invalid UTF-8 is a reader error: still a line and a column. */
    assert_int_equal(s_load(fx, "providers:\n  a:\n    name: \xff\xfe\n", &layer), -1);
    s_assert_error_at(fx, 3);

    /* A tab where indentation is expected. */
    assert_int_equal(s_load(fx, "providers:\n\topenai: {}\n", &layer), -1);
    s_assert_error_at(fx, 2);
}

static void test_wrong_shapes_rejected(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    struct {
        const char *text;
        int line;
        const char *words;
    } cases[] = {
        {"providers:\n  - openai\n  - groq\n", 2, "must be a mapping"},
        {"- providers\n", 1, "top level"},
        {"providers:\n  openai:\n    valid_models:\n      - gpt-4o\n", 4, "valid_models"},
        {"providers:\n  openai:\n    valid_models: gpt-4o\n", 3, "valid_models"},
        {"providers:\n  openai:\n    invalid_models: {a: b}\n", 3, "invalid_models"},
        {"providers:\n  openai: [1, 2]\n", 2, "provider 'openai' must be a mapping"},
        {"providers:\n  openai:\n    name: [x]\n", 3, "name must be a string"},
        {"providers:\n  openai:\n    api_key: {k: v}\n", 3, "api_key must be a string"},
        {"providers:\n  openai:\n    valid_models:\n      a: [b]\n", 4, "short model name"},
        {"providers:\n  openai:\n    valid_models:\n      ~: b\n", 4, "must be a string"},
        {"providers:\n  openai:\n    invalid_models: [a, [b]]\n", 3, "model name"},
        {"providers:\n  openai:\n    invalid_models: [a, '']\n", 3, "must not be empty"},
        {"providers:\n  Open AI:\n    name: x\n", 2, "invalid provider key"},
        {"providers:\n  UPPER: {}\n", 2, "invalid provider key"},
        {"providers:\n  openai: {}\n  openai: {}\n", 3, "duplicate provider"},
        {"providers:\n  openai: {name: a, name: b}\n", 2, "duplicate key 'name'"},
        {"providers:\n  openai:\n    base_api_url: ftp://x\n", 3, "http://"},
        {"providers: 5\n", 1, "must be a mapping"},
        {"providers:\n  openai:\n    name: \"a\\0b\"\n", 3, "NUL"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (s_load(fx, cases[i].text, &layer) != -1)
            fail_msg("case %zu was accepted:\n%s", i, cases[i].text);
        assert_int_equal(layer.count, 0);
        assert_null(layer.specs);
        s_assert_error_at(fx, cases[i].line);
        if (!strstr(fx->err, cases[i].words))
            fail_msg("case %zu: '%s' does not say '%s'", i, fx->err, cases[i].words);
    }
}

static void test_unknown_keys_warn_and_load(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    assert_int_equal(s_load(fx,
                            "version: 2\n"
                            "providers:\n"
                            "  openai:\n"
                            "    name: OpenAI\n"
                            "    cache_duration: 60\n"
                            "    _cached_models: [a, b]\n"
                            "    base_api_url: https://api.openai.com/v1\n",
                            &layer),
                     0);
    assert_int_equal(fx->warnings, 3);
    char expected[PATH_MAX + 64];
    snprintf(expected, sizeof expected, "%s:6:5: unknown key '_cached_models' ignored", fx->path);
    assert_string_equal(fx->last_warning, expected);
    assert_int_equal(layer.count, 1);
    assert_string_equal(layer.specs[0].name, "OpenAI");
    assert_string_equal(layer.specs[0].base_api_url, "https://api.openai.com/v1");
    store_layer_clear(&layer);

    /* Without a warn callback they are skipped silently. */
    s_write(fx->path, "other: 1\nproviders: {a: {x: 1}}\n");
    assert_int_equal(store_load(fx->path, &layer, NULL, NULL, fx->err, sizeof fx->err), 0);
    assert_int_equal(layer.count, 1);
    store_layer_clear(&layer);
}

static void test_aliases_refused(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    /* The billion laughs: must be refused at once, not expanded. */
    assert_int_equal(s_load(fx,
                            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
                            "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                            "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                            "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                            "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
                            "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
                            "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
                            "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
                            "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
                            "providers: {x: {valid_models: *i}}\n",
                            &layer),
                     -1);
    s_assert_error_at(fx, 2);
    assert_non_null(strstr(fx->err, "alias"));

    assert_int_equal(s_load(fx,
                            "providers:\n"
                            "  a: &p {name: A}\n"
                            "  b: *p\n",
                            &layer),
                     -1);
    s_assert_error_at(fx, 3);
    /* An anchor alone is harmless. */
    assert_int_equal(s_load(fx, "providers:\n  a: &p {name: A}\n", &layer), 0);
    assert_int_equal(layer.count, 1);
    store_layer_clear(&layer);
}

static void test_nesting_limit(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    char text[256];
    /* Unknown key with STORE_MAX_DEPTH levels in all: accepted (and ignored). */
    size_t n = 0;
    n += (size_t)snprintf(text + n, sizeof text - n, "x: ");
    for (int i = 0; i < STORE_MAX_DEPTH - 1; i++)
        text[n++] = '[';
    for (int i = 0; i < STORE_MAX_DEPTH - 1; i++)
        text[n++] = ']';
    text[n++] = '\n';
    text[n] = '\0';
    assert_int_equal(s_load(fx, text, &layer), 0);
    store_layer_clear(&layer);

    /* One more level: refused with a position. */
    n = 0;
    n += (size_t)snprintf(text + n, sizeof text - n, "x: ");
    for (int i = 0; i < STORE_MAX_DEPTH; i++)
        text[n++] = '[';
    for (int i = 0; i < STORE_MAX_DEPTH; i++)
        text[n++] = ']';
    text[n++] = '\n';
    text[n] = '\0';
    assert_int_equal(s_load(fx, text, &layer), -1);
    s_assert_error_at(fx, 1);
    assert_non_null(strstr(fx->err, "nesting"));

    /* A deep bomb does not get far either. */
    char *bomb = malloc(200001);
    assert_non_null(bomb);
    memset(bomb, '[', 200000);
    bomb[200000] = '\0';
    assert_int_equal(s_load(fx, bomb, &layer), -1);
    free(bomb);
}

static void test_second_document_refused(void **state)
{
    fixture_t *fx = *state;
    store_layer_t layer;
    assert_int_equal(s_load(fx, "providers: {}\n---\nproviders: {a: {}}\n", &layer), -1);
    s_assert_error_at(fx, 2);
}

static void test_oversized_file_refused(void **state)
{
    fixture_t *fx = *state;
    int fd = open(fx->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    /* Sparse: costs no disk space. */
    assert_int_equal(ftruncate(fd, (off_t)STORE_MAX_FILE_SIZE + 1), 0);
    close(fd);
    store_layer_t layer;
    assert_int_equal(store_load(fx->path, &layer, NULL, NULL, fx->err, sizeof fx->err), -1);
    assert_non_null(strstr(fx->err, fx->path));
    assert_non_null(strstr(fx->err, "larger than"));

    /* A directory where the file should be. */
    unlink(fx->path);
    assert_int_equal(mkdir(fx->path, 0700), 0);
    assert_int_equal(store_load(fx->path, &layer, NULL, NULL, fx->err, sizeof fx->err), -1);
    rmdir(fx->path);
}

static void test_load_document_for_config(void **state)
{
    fixture_t *fx = *state;
    char other[PATH_MAX];
    snprintf(other, sizeof other, "%s/absent.yaml", fx->dir);
    yaml_document_t doc;
    assert_int_equal(store_load_document(other, &doc, fx->err, sizeof fx->err), 1);

    s_write(fx->path, "workers: 2\nproviders:\n  groq: {name: G}\n");
    assert_int_equal(store_load_document(fx->path, &doc, fx->err, sizeof fx->err), 0);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    assert_non_null(root);
    assert_int_equal(root->type, YAML_MAPPING_NODE);
    yaml_node_pair_t *pair = root->data.mapping.pairs.start + 1;
    store_layer_t layer;
    assert_int_equal(store_parse_providers(fx->path, &doc,
                                           yaml_document_get_node(&doc, pair->value), &layer, NULL,
                                           NULL, fx->err, sizeof fx->err),
                     0);
    assert_int_equal(layer.count, 1);
    assert_string_equal(layer.specs[0].key, "groq");
    store_layer_clear(&layer);
    /* A node of the wrong shape: an error at its position. */
    assert_int_equal(
        store_parse_providers(fx->path, &doc,
                              yaml_document_get_node(&doc, root->data.mapping.pairs.start->value),
                              &layer, NULL, NULL, fx->err, sizeof fx->err),
        -1);
    s_assert_error_at(fx, 1);
    yaml_document_delete(&doc);
}

/* -------------------------------------------------------------------------- persisting */

static void test_runtime_fields_never_written(void **state)
{
    fixture_t *fx = *state;
    registry_t *reg = registry_new();
    provider_t *p = s_provider("openai", "OpenAI", "https://api.openai.com/v1");
    assert_int_equal(provider_put_model(p, "gpt-4o", "4o"), 0);
    const char *cached[] = {"cached-only-model-one", "cached-only-model-two"};
    assert_int_equal(provider_set_cached_models(p, cached, 2, 1234567.0), 0);
    provider_set_cache_duration(p, 42.0);
    s_put(reg, p);
    assert_int_equal(store_persist(reg, fx->path, fx->err, sizeof fx->err), 0);
    char *text = s_slurp(fx->path, NULL);
    assert_null(strstr(text, "cached-only-model"));
    assert_null(strstr(text, "cache"));
    assert_null(strstr(text, "1234567"));
    assert_null(strstr(text, "42"));
    assert_non_null(strstr(text, "gpt-4o"));
    free(text);
    registry_destroy(&reg);
}

static void test_environment_key_never_written(void **state)
{
    fixture_t *fx = *state;
    registry_t *reg = registry_new();
    provider_t *p = s_provider("openai", "OpenAI", "https://api.openai.com/v1");
    assert_int_equal(provider_set_api_key(p, "sk-file"), 0);
    assert_int_equal(provider_set_env_api_key(p, "sk-env"), 0);
    assert_string_equal(provider_api_key(p), "sk-env");
    s_put(reg, p);
    provider_t *q = s_provider("groq", "Groq", "https://api.groq.com/openai/v1");
    assert_int_equal(provider_set_env_api_key(q, "sk-env-only"), 0);
    s_put(reg, q);
    assert_int_equal(store_persist(reg, fx->path, fx->err, sizeof fx->err), 0);

    char *text = s_slurp(fx->path, NULL);
    assert_non_null(strstr(text, "api_key: sk-file\n"));
    assert_null(strstr(text, "sk-env"));
    free(text);

    store_layer_t layer;
    assert_int_equal(store_load(fx->path, &layer, NULL, NULL, fx->err, sizeof fx->err), 0);
    assert_string_equal(s_spec(&layer, "openai")->api_key, "sk-file");
    const provider_spec_t *groq = s_spec(&layer, "groq");
    assert_true(groq->has_api_key);
    assert_null(groq->api_key); /* written as null */
    store_layer_clear(&layer);
    registry_destroy(&reg);
}

static void test_file_mode_and_no_temp_files(void **state)
{
    fixture_t *fx = *state;
    registry_t *reg = registry_new();
    s_put(reg, s_provider("openai", "OpenAI", "https://api.openai.com/v1"));
    mode_t old_umask = umask(0);
    int rc = store_persist(reg, fx->path, fx->err, sizeof fx->err);
    umask(old_umask);
    assert_int_equal(rc, 0);
    struct stat st;
    assert_int_equal(stat(fx->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(s_count_temp_files(fx->dir), 0);

    /* Replacing an existing, more open file: still 0600, still no leftovers. */
    assert_int_equal(chmod(fx->path, 0644), 0);
    assert_int_equal(store_persist(reg, fx->path, fx->err, sizeof fx->err), 0);
    assert_int_equal(stat(fx->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(s_count_temp_files(fx->dir), 0);
    registry_destroy(&reg);
}

static void test_failed_persist_keeps_old_file(void **state)
{
    fixture_t *fx = *state;
    registry_t *reg = registry_new();
    provider_t *p = s_provider("openai", "OpenAI", "https://api.openai.com/v1");
    assert_int_equal(provider_set_api_key(p, "sk-secret-abcd"), 0);
    s_put(reg, p);
    assert_int_equal(store_persist(reg, fx->path, fx->err, sizeof fx->err), 0);
    size_t old_size = 0;
    char *old = s_slurp(fx->path, &old_size);

    assert_int_equal(chmod(fx->dir, 0500), 0);
    /* Root (CAP_DAC_OVERRIDE) writes into a read-only directory anyway: nothing to test. */
    char probe[PATH_MAX];
    snprintf(probe, sizeof probe, "%s/probe", fx->dir);
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
        close(fd);
        unlink(probe);
        free(old);
        registry_destroy(&reg);
        skip();
    }

    registry_t *changed = registry_clone(reg);
    s_put(changed, s_provider("groq", "Groq", "https://api.groq.com/openai/v1"));
    assert_int_equal(store_persist(changed, fx->path, fx->err, sizeof fx->err), -1);
    char expected[PATH_MAX + 64];
    snprintf(expected, sizeof expected, "%s: %s", fx->path, strerror(EACCES));
    assert_string_equal(fx->err, expected);
    assert_null(strstr(fx->err, "sk-"));

    size_t now_size = 0;
    char *now = s_slurp(fx->path, &now_size);
    assert_int_equal(now_size, old_size);
    assert_memory_equal(now, old, old_size);
    assert_int_equal(s_count_temp_files(fx->dir), 0);
    free(now);
    free(old);
    registry_destroy(&changed);
    registry_destroy(&reg);
}

/* Injected fsync failures (store_set_fsync_hook): EIO on the directory or on the file. */
static int s_fsync_fails_for_dir(int fd, bool directory)
{
    if (directory) {
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}

static int s_fsync_fails_for_file(int fd, bool directory)
{
    (void)fd;
    (void)directory;
    errno = EIO;
    return -1;
}

/* The directory cannot be synced after the rename: the new file is in place, so store_persist
 * reports 1 (written, durability unknown) with the directory's error, not -1. */
static void test_dir_fsync_failure_is_written_durability_unknown(void **state)
{
    fixture_t *fx = *state;
    registry_t *reg = registry_new();
    s_put(reg, s_provider("openai", "OpenAI", "https://api.openai.com/v1"));
    assert_int_equal(store_persist(reg, fx->path, fx->err, sizeof fx->err), 0);

    registry_t *changed = registry_clone(reg);
    s_put(changed, s_provider("groq", "Groq", "https://api.groq.com/openai/v1"));
    store_set_fsync_hook(s_fsync_fails_for_dir);
    int rc = store_persist(changed, fx->path, fx->err, sizeof fx->err);
    store_set_fsync_hook(NULL);
    assert_int_equal(rc, 1);
    char expected[PATH_MAX + 64];
    snprintf(expected, sizeof expected, "%s: %s", fx->dir, strerror(EIO));
    assert_string_equal(fx->err, expected);

    /* The file holds the change, and no temp file is left. */
    store_layer_t layer = {0};
    assert_int_equal(store_load(fx->path, &layer, NULL, NULL, fx->err, sizeof fx->err), 0);
    assert_int_equal(layer.count, 2);
    assert_string_equal(layer.specs[1].key, "groq");
    store_layer_clear(&layer);
    assert_int_equal(s_count_temp_files(fx->dir), 0);

    /* A failure before the rename is still "not written": -1, the old file intact. */
    registry_t *again = registry_clone(changed);
    s_put(again, s_provider("mistral", "Mistral", "https://api.mistral.ai/v1"));
    store_set_fsync_hook(s_fsync_fails_for_file);
    rc = store_persist(again, fx->path, fx->err, sizeof fx->err);
    store_set_fsync_hook(NULL);
    assert_int_equal(rc, -1);
    snprintf(expected, sizeof expected, "%s: %s", fx->path, strerror(EIO));
    assert_string_equal(fx->err, expected);
    assert_int_equal(store_load(fx->path, &layer, NULL, NULL, fx->err, sizeof fx->err), 0);
    assert_int_equal(layer.count, 2);
    store_layer_clear(&layer);
    assert_int_equal(s_count_temp_files(fx->dir), 0);
    registry_destroy(&again);
    registry_destroy(&changed);
    registry_destroy(&reg);
}

static void test_persist_into_missing_directory_fails(void **state)
{
    fixture_t *fx = *state;
    registry_t *reg = registry_new();
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/no/such/dir/file.yaml", fx->dir);
    assert_int_equal(store_persist(reg, path, fx->err, sizeof fx->err), -1);
    char expected[PATH_MAX + 64];
    snprintf(expected, sizeof expected, "%s: %s", path, strerror(ENOENT));
    assert_string_equal(fx->err, expected);
    registry_destroy(&reg);
}

static void test_awkward_strings_round_trip(void **state)
{
    fixture_t *fx = *state;
    static const char *const strings[] = {
        "yes",
        "no",
        "Yes",
        "NO",
        "on",
        "off",
        "true",
        "False",
        "y",
        "n",
        "null",
        "Null",
        "~",
        "1.0",
        "1",
        "-1",
        "0x1F",
        "1e3",
        ".inf",
        "-.inf",
        ".nan",
        "2024-08-06",
        "12:30:45",
        "+1",
        "-",
        "--",
        "---",
        "...",
        ": x",
        "x: y",
        "x:y",
        "- item",
        "? q",
        "#hash",
        "a #b",
        "[x]",
        "{y}",
        "*star",
        "&amp",
        "!bang",
        "%pct",
        "@at",
        "`tick",
        "|pipe",
        ">gt",
        "'single'",
        "\"double\"",
        "back\\slash",
        " leading",
        "trailing ",
        "  both  ",
        "tab\tinside",
        "multi\nline",
        "ends with newline\n",
        "\nstarts",
        "crlf\r\nx",
        "unicode é ✓ 日本語",
        "\xc2\x85nel",
        "ls\xe2\x80\xa8sep",
        "bom\xef\xbb\xbf",
        "ctrl\x01\x1f\x7f",
        "=",
        "<<",
        "a,b",
        "a]b",
        "a}b",
        "emoji 😀",
        "quote's",
        "ends:",
        "x #",
        "0",
        "00",
        "0o17",
        "007",
        "1_000",
        "null ",
        " ",
    };
    const size_t count = sizeof strings / sizeof strings[0];
    registry_t *reg = registry_new();

    /* As display names and keys (base URL needs http, so it gets a suffix). */
    for (size_t i = 0; i < count; i++) {
        char key[32];
        char url[256];
        snprintf(key, sizeof key, "p%zu", i);
        snprintf(url, sizeof url, "http://h/%s", strings[i]);
        provider_t *p = s_provider(key, strings[i], url);
        assert_int_equal(provider_set_api_key(p, strings[i]), 0);
        s_put(reg, p);
    }
    /* As long names, short names and invalid models. */
    provider_t *m = s_provider("models", "M", "https://m/v1");
    for (size_t i = 0; i < count; i++)
        assert_int_equal(provider_put_model(m, strings[i], strings[(i + 7) % count]), 0);
    char long_key[1001];
    memset(long_key, 'k', 1000);
    long_key[1000] = '\0';
    long_key[500] = ' '; /* over 128 bytes: libyaml writes it as a "? " complex key */
    assert_int_equal(provider_put_model(m, long_key, "short"), 0);
    assert_int_equal(provider_set_invalid_models(m, strings, count), 0);
    s_put(reg, m);

    s_assert_round_trip(fx, reg);
    assert_int_equal(fx->warnings, 0);
    registry_destroy(&reg);
}

static void test_empty_provider_fields_round_trip(void **state)
{
    fixture_t *fx = *state;
    registry_t *reg = registry_new();
    /* No key, no models, no invalid models, an empty name. */
    s_put(reg, s_provider("bare", "", "https://bare/v1"));
    s_assert_round_trip(fx, reg);
    char *text = s_slurp(fx->path, NULL);
    assert_non_null(strstr(text, "    api_key: null\n"));
    assert_non_null(strstr(text, "    valid_models: {}\n"));
    assert_non_null(strstr(text, "    invalid_models: []\n"));
    free(text);
    registry_destroy(&reg);
}

static void test_many_models_round_trip(void **state)
{
    fixture_t *fx = *state;
    enum { MODELS = 100000 };
    registry_t *reg = registry_new();
    provider_t *p = s_provider("big", "Big", "https://big/v1");
    for (int i = 0; i < MODELS; i++) {
        char long_name[64];
        char short_name[32];
        snprintf(long_name, sizeof long_name, "vendor/model-%06d-instruct", i);
        snprintf(short_name, sizeof short_name, "m%d", i);
        assert_int_equal(provider_put_model(p, long_name, short_name), 0);
    }
    s_put(reg, p);
    s_put(reg, s_provider("small", "Small", "https://small/v1"));
    s_assert_round_trip(fx, reg);
    registry_destroy(&reg);
}

static void test_many_providers_in_order(void **state)
{
    fixture_t *fx = *state;
    registry_t *reg = registry_new();
    for (int i = 0; i < 300; i++) {
        char key[32];
        snprintf(key, sizeof key, "prov-%03d", 299 - i); /* reverse alphabetical */
        s_put(reg, s_provider(key, key, "https://x/v1"));
    }
    s_assert_round_trip(fx, reg); /* compares position by position */
    registry_destroy(&reg);
}

/* -------------------------------------------------------------------------- data dir */

static void test_prepare_dir(void **state)
{
    fixture_t *fx = *state;
    char nested[PATH_MAX];
    snprintf(nested, sizeof nested, "%s/a/b//c/", fx->dir);
    assert_int_equal(store_prepare_dir(nested, fx->err, sizeof fx->err), 0);
    struct stat st;
    char leaf[PATH_MAX];
    snprintf(leaf, sizeof leaf, "%s/a/b/c", fx->dir);
    assert_int_equal(stat(leaf, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    /* Existing: fine. */
    assert_int_equal(store_prepare_dir(leaf, fx->err, sizeof fx->err), 0);

    /* A file in the way. */
    char file[PATH_MAX];
    snprintf(file, sizeof file, "%s/plain", fx->dir);
    s_write(file, "x");
    assert_int_equal(store_prepare_dir(file, fx->err, sizeof fx->err), -1);
    assert_non_null(strstr(fx->err, file));
    char below[PATH_MAX];
    snprintf(below, sizeof below, "%s/plain/sub", fx->dir);
    assert_int_equal(store_prepare_dir(below, fx->err, sizeof fx->err), -1);

    assert_int_equal(store_prepare_dir("", fx->err, sizeof fx->err), -1);
    assert_int_equal(store_prepare_dir(NULL, fx->err, sizeof fx->err), -1);

    /* Not writable (unless we are root, who can write anyway). */
    char locked[PATH_MAX];
    snprintf(locked, sizeof locked, "%s/locked", fx->dir);
    assert_int_equal(mkdir(locked, 0500), 0);
    if (access(locked, W_OK) != 0) {
        assert_int_equal(store_prepare_dir(locked, fx->err, sizeof fx->err), -1);
        assert_non_null(strstr(fx->err, strerror(EACCES)));
    }
    chmod(locked, 0700);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_path),
        cmocka_unit_test_setup_teardown(test_seed_example_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backward_compatible_without_invalid_models, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_missing_and_empty_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_key_null_spellings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_null_short_name_means_long_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_order_is_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_file_error_has_line_and_column, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_wrong_shapes_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_keys_warn_and_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_aliases_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nesting_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_document_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_file_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_document_for_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_runtime_fields_never_written, setup, teardown),
        cmocka_unit_test_setup_teardown(test_environment_key_never_written, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_mode_and_no_temp_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_persist_keeps_old_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persist_into_missing_directory_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dir_fsync_failure_is_written_durability_unknown, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_awkward_strings_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_provider_fields_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_models_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_providers_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prepare_dir, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
