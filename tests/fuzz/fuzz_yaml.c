/*
 * fuzz_yaml: libFuzzer target over the YAML loaders: the persisted providers file
 * (store_load) and the config file (config_load --config, whose providers: section goes
 * through the same parser), then the five layering steps over both (config_build_registry,
 * the input being the config file and the providers file at once).
 *
 * Oracle besides the sanitizers: whatever loads must persist, and persist idempotently. A
 * registry that loaded is written with store_persist (must succeed), that file is loaded into
 * a fresh registry (must succeed) and written again: both files must be byte for byte equal.
 * So the writer never emits a file the loader refuses or reads differently.
 */
#include "config.h"
#include "registry.h"
#include "store.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void pm_fuzz_cleanup(void);

#define FUZZ_MAX_FILE 4096

static char s_dir[64];
static char s_input_dir[128], s_first_dir[128], s_second_dir[128];
static char s_input[256], s_first[256], s_second[256];

static void s_die(const char *what)
{
    fprintf(stderr, "fuzz_yaml: %s\n", what);
    abort();
}

static const char *s_no_env(const char *name)
{
    (void)name;
    return NULL;
}

static void s_quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static void s_path(char *out, size_t out_size, const char *dir, const char *name)
{
    if (snprintf(out, out_size, "%s/%s", dir, name) >= (int)out_size)
        s_die("path too long");
}

static void s_init(void)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(s_dir, sizeof s_dir, "%s/pm-fuzz-yaml-XXXXXX", base);
    if (!mkdtemp(s_dir))
        s_die("mkdtemp");
    s_path(s_input_dir, sizeof s_input_dir, s_dir, "input");
    s_path(s_first_dir, sizeof s_first_dir, s_dir, "first");
    s_path(s_second_dir, sizeof s_second_dir, s_dir, "second");
    if (mkdir(s_input_dir, 0700) != 0 || mkdir(s_first_dir, 0700) != 0 ||
        mkdir(s_second_dir, 0700) != 0)
        s_die("mkdir");
    s_path(s_input, sizeof s_input, s_input_dir, STORE_FILE_NAME);
    s_path(s_first, sizeof s_first, s_first_dir, STORE_FILE_NAME);
    s_path(s_second, sizeof s_second, s_second_dir, STORE_FILE_NAME);
    atexit(pm_fuzz_cleanup); /* libFuzzer ends with exit() */
}

void pm_fuzz_cleanup(void)
{
    if (!s_dir[0])
        return;
    unlink(s_input);
    unlink(s_first);
    unlink(s_second);
    rmdir(s_input_dir);
    rmdir(s_first_dir);
    rmdir(s_second_dir);
    rmdir(s_dir);
}

static void s_write(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0)
        s_die("cannot write the input file");
}

static char *s_read(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        s_die("cannot open a persisted file");
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    for (;;) {
        if (!text)
            s_die("out of memory");
        len += fread(text + len, 1, cap - len, f);
        if (len < cap)
            break;
        cap *= 2;
        text = realloc(text, cap);
    }
    fclose(f);
    *size = len;
    return text;
}

/* Builds the registry of data_dir (with config_path as the config file when not NULL).
 * Returns NULL when the files do not load; err says why. */
static registry_t *s_build(const char *config_path, const char *data_dir, char *err,
                           size_t err_size)
{
    config_t cfg;
    char *argv[6] = {"fuzz_yaml", "--data-dir", (char *)data_dir, NULL, NULL, NULL};
    int argc = 3;
    if (config_path) {
        argv[argc++] = "--config";
        argv[argc++] = (char *)config_path;
    }
    if (config_load(&cfg, argc, argv, s_no_env, err, err_size) != 0)
        return NULL;
    registry_t *reg = NULL;
    if (config_build_registry(&cfg, s_no_env, &reg, s_quiet, NULL, err, err_size) != 0)
        reg = NULL;
    config_clear(&cfg);
    return reg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_FILE)
        return 0;
    if (!s_dir[0])
        s_init();
    s_write(s_input, data, size);

    store_layer_t layer = {0, NULL};
    char err[1024];
    if (store_load(s_input, &layer, s_quiet, NULL, err, sizeof err) == 0)
        store_layer_clear(&layer);

    /* The same bytes as the config file and as the providers file of the data dir. */
    registry_t *reg = s_build(s_input, s_input_dir, err, sizeof err);
    if (!reg)
        return 0;
    if (store_persist(reg, s_first, err, sizeof err) != 0)
        s_die(err);
    registry_destroy(&reg);

    registry_t *again = s_build(NULL, s_first_dir, err, sizeof err);
    if (!again) {
        fprintf(stderr, "fuzz_yaml: the persisted file does not load: %s\n", err);
        abort();
    }
    if (store_persist(again, s_second, err, sizeof err) != 0)
        s_die(err);
    registry_destroy(&again);

    size_t first_size, second_size;
    char *first = s_read(s_first, &first_size);
    char *second = s_read(s_second, &second_size);
    if (first_size != second_size || memcmp(first, second, first_size) != 0)
        s_die("persist(load(persist(x))) differs from persist(x)");
    free(first);
    free(second);
    return 0;
}
