/*
 * log: timestamped, levelled lines on stderr. See log.h.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Set before any thread starts, and again by a reload (SIGHUP) while threads log: atomic,
 * relaxed (a line logged at the old level during the switch is harmless). */
static _Atomic log_level_t s_level = LOG_INFO;

static const char *const s_level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

void log_set_level(log_level_t level)
{
    atomic_store_explicit(&s_level, level, memory_order_relaxed);
}

log_level_t log_level(void)
{
    return atomic_load_explicit(&s_level, memory_order_relaxed);
}

void log_msg(log_level_t level, const char *format, ...)
{
    if (level > atomic_load_explicit(&s_level, memory_order_relaxed))
        return;
    char text[1024];
    va_list ap;
    va_start(ap, format);
    vsnprintf(text, sizeof text, format, ap);
    va_end(ap);
    /* A message must stay one line: a newline inside would let input forge log lines. */
    for (char *c = text; *c; c++) {
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    }
    struct timespec now = {0, 0};
    struct tm tm;
    char stamp[32] = "";
    if (clock_gettime(CLOCK_REALTIME, &now) == 0 && gmtime_r(&now.tv_sec, &tm))
        strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %-5s %s\n", stamp, now.tv_nsec / 1000000L, s_level_names[level],
            text);
}

const char *log_mask_key(const char *key, char *out, size_t out_size)
{
    size_t len = key ? strlen(key) : 0;
    if (len == 0)
        snprintf(out, out_size, "-");
    else if (len < 12)
        snprintf(out, out_size, "***");
    else
        snprintf(out, out_size, "%.3s...%s", key, key + len - 4);
    return out;
}
