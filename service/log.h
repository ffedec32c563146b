/*
 * log: one line per event on stderr, with a UTC timestamp and a level. Thread-safe (one
 * fprintf per line; stdio locks the stream). Never pass an API key to these functions: use
 * log_mask_key() to show at most "sk-...abcd".
 */
#ifndef PM_LOG_H
#define PM_LOG_H

#include <stddef.h>

/* Severity of a line; a lower value is more severe. The config file's log_level names these. */
typedef enum { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG } log_level_t;

/* Lines above this level are dropped. Set once at start-up, before threads start. */
void log_set_level(log_level_t level);
log_level_t log_level(void);

void log_msg(log_level_t level, const char *format, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* Writes a masked form of key into out: "-" for none, "***" for keys shorter than 12 bytes,
 * else the first 3 bytes, "...", and the last 4. Returns out. */
const char *log_mask_key(const char *key, char *out, size_t out_size);

#endif
