/*
 * selfcheck: proves that the sanitizer runs report what they must. `make sanitize` and
 * `make tsan` build it with their flags and run it with their options (report files,
 * suppressions, ignore_noninstrumented_modules) once per kind of error; each run must leave a
 * report file. A setting that silently dropped reports would otherwise make those targets
 * pass on anything.
 *
 * Usage: selfcheck overflow|leak|undefined|race
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int s_counter; /* written by two threads without a lock: the race */

static void *s_bump(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100000; i++)
        s_counter++;
    return NULL;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "overflow") == 0) {
        volatile char *block = malloc(8);
        if (!block)
            return 2;
        int past = block[8]; /* heap-buffer-overflow */
        free((void *)block);
        return past == 1234;
    }
    if (strcmp(mode, "leak") == 0) {
        void *volatile lost = malloc(64);
        lost = NULL;
        return lost != NULL;
    }
    if (strcmp(mode, "undefined") == 0) {
        volatile int big = 2147483647;
        return big + argc > 0 ? 0 : 1; /* signed overflow */
    }
    if (strcmp(mode, "race") == 0) {
        pthread_t a, b;
        if (pthread_create(&a, NULL, s_bump, NULL) != 0 ||
            pthread_create(&b, NULL, s_bump, NULL) != 0)
            return 2;
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        printf("%d\n", s_counter);
        return 0;
    }
    fprintf(stderr, "usage: selfcheck overflow|leak|undefined|race\n");
    return 2;
}
