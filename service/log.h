/*
 * log: one line per event on stderr, with a UTC timestamp and a level. Thread-safe (one
 * fprintf per line; stdio locks the stream). Never pass an API key to these functions: use
 * log_mask_key() to show at most "sk-...abcd".
 */
#ifndef PM_LOG_H
#define PM_LOG_H

#include "config.h"
#include <stddef.h>

/* Lines above this level are dropped. Set once at start-up, before threads start. */
void log_set_level(config_log_level_t level);
config_log_level_t log_level(void);

void log_msg(config_log_level_t level, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* Writes a masked form of key into out: "-" for none, "***" for keys shorter than 12 bytes,
 * else the first 3 bytes, "...", and the last 4. Returns out. */
const char *log_mask_key(const char *key, char *out, size_t out_size);

#endif
