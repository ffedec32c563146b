/*
 * replay_main: runs a fuzz target's LLVMFuzzerTestOneInput over files, without libFuzzer, so
 * that the normal build (gcc, no sanitizer needed) replays the seed corpus and every crasher
 * kept in tests/fuzz/regressions/ as a ctest test. Under the ASan+UBSan build the same replay
 * catches what the crasher needed a sanitizer to show.
 *
 * Usage: replay_<target> PATH...   (files, or directories whose files are replayed in name
 * order). Fails when no input at all was found, so that a wrong path cannot pass.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define REPLAY_MAX_INPUT (1024 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void pm_fuzz_cleanup(void);

static int s_replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    uint8_t *data = malloc(REPLAY_MAX_INPUT);
    if (!data) {
        fclose(f);
        return -1;
    }
    size_t size = fread(data, 1, REPLAY_MAX_INPUT, f);
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        fprintf(stderr, "%s: read error\n", path);
        free(data);
        return -1;
    }
    LLVMFuzzerTestOneInput(data, size);
    free(data);
    return 0;
}

static int s_skip_name(const struct dirent *entry)
{
    return entry->d_name[0] != '.' && strcmp(entry->d_name, "README.md") != 0;
}

int main(int argc, char **argv)
{
    size_t replayed = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (s_replay_file(argv[i]) != 0)
                return 1;
            replayed++;
            continue;
        }
        struct dirent **entries;
        int n = scandir(argv[i], &entries, s_skip_name, alphasort);
        if (n < 0) {
            perror(argv[i]);
            return 1;
        }
        for (int k = 0; k < n; k++) {
            char path[4096];
            if (snprintf(path, sizeof path, "%s/%s", argv[i], entries[k]->d_name) <
                    (int)sizeof path &&
                s_replay_file(path) == 0)
                replayed++;
            free(entries[k]);
        }
        free(entries);
    }
    pm_fuzz_cleanup();
    printf("replayed %zu inputs\n", replayed);
    return replayed > 0 ? 0 : 1;
}
