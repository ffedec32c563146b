/*
 * pmclient_internal: what the modules of libpmclient share and callers must not see (never
 * installed). pmclient.c is the request client (it owns pmclient_t and its error slots),
 * pmclient_result.c decodes results into the public types, pmclient_events.c is the events
 * subscriber.
 *
 * The internal names carry the prefix pmc_, not pmclient_, on purpose: pmclient.map exports
 * every pmclient_* symbol from the shared library, and the static library keeps only the
 * symbols listed there global (client/CMakeLists.txt), so pmc_* stays inside both.
 */
#ifndef PMCLIENT_INTERNAL_H
#define PMCLIENT_INTERNAL_H

#include "pmclient.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------ errors (pmclient.c) */

/* Sets the client's last failure: a code word and a printf-style message (truncated to the
 * client's buffers). */
void pmc_set_error(pmclient_t *self, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Sets "bad_reply" with "reply does not match the contract: <what>". Returns -1. */
int pmc_bad_reply(pmclient_t *self, const char *what);
/* Sets "nomem". Returns -1. */
int pmc_nomem(pmclient_t *self);

/* CLOCK_MONOTONIC in milliseconds (0 if the clock fails): deadlines that survive EINTR. */
int64_t pmc_now_ms(void);

/* --------------------------------------------------- reply fields (pmclient_result.c) */

/* True when obj is not NULL and a msgpack str. */
bool pmc_is_str(const msgpack_object *obj);
/* Copies a msgpack str (obj must be one) into a new NUL-terminated string; caller frees.
 * NULL on ENOMEM. */
char *pmc_dup_str(const msgpack_object *obj);
/* A zeroed array of count elements of size bytes, with at least one slot so that count 0 is
 * not mistaken for a failure. NULL on overflow or ENOMEM. */
void *pmc_calloc_array(size_t count, size_t size);
/* *out = a copy of obj, which must be a str; what names the field in the error. 0 or -1
 * ("bad_reply" or "nomem" set on self). */
int pmc_take_str(pmclient_t *self, const msgpack_object *obj, const char *what, char **out);
/* *out = obj, which must be a msgpack integer that fits in int64_t. 0 or -1 ("bad_reply"). */
int pmc_take_int(pmclient_t *self, const msgpack_object *obj, const char *what, int64_t *out);

/* Result decoders: obj is the reply's result (it points into the reply, which the caller
 * keeps alive during the call). On 0 *out is a new result the caller frees with its
 * pm_*_free; on -1 *out is NULL and the error is set on self. Any shape other than the
 * contract's is "bad_reply", never a crash. */
int pmc_decode_provider(pmclient_t *self, const msgpack_object *obj, pm_provider_t **out);
/* pairs: the items shape, [[key, ProviderConfig], ...], with each key checked against its
 * config; else the values shape, [ProviderConfig, ...]. */
int pmc_decode_provider_list(pmclient_t *self, const msgpack_object *obj, bool pairs,
                             pm_provider_list_t **out);
int pmc_decode_strings(pmclient_t *self, const msgpack_object *obj, pm_strings_t **out);
int pmc_decode_merged(pmclient_t *self, const msgpack_object *obj, pm_merged_t **out);
int pmc_decode_matches(pmclient_t *self, const msgpack_object *obj, pm_matches_t **out);
int pmc_decode_health(pmclient_t *self, const msgpack_object *obj, pm_health_t **out);
int pmc_decode_job(pmclient_t *self, const msgpack_object *obj, pm_job_t **out);
/* v1.1: model_status's array of records and provider_status's array of entries. */
int pmc_decode_status_list(pmclient_t *self, const msgpack_object *obj, pm_status_list_t **out);
int pmc_decode_provider_status_list(pmclient_t *self, const msgpack_object *obj,
                                    pm_provider_status_list_t **out);

#endif
