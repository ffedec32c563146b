/*
 * discovery_classify: what one HTTP exchange with an upstream means, as one pure table.
 *
 * Every place that needs to know whether a list or a probe worked, failed for good, failed
 * because of the key, or is worth retrying asks discovery_classify(); nothing else in the
 * service interprets HTTP statuses or curl codes. No I/O, no state: unit-tested row by row.
 */
#ifndef PM_DISCOVERY_CLASSIFY_H
#define PM_DISCOVERY_CLASSIFY_H

#include <stddef.h>

/* What one HTTP exchange means, decided by discovery_classify(). */
typedef enum {
    DISCOVERY_VERDICT_VALID = 0,     /* 2xx */
    DISCOVERY_VERDICT_INVALID_MODEL, /* the upstream says this model does not exist / chat */
    DISCOVERY_VERDICT_AUTH_ERROR,    /* 401 / 403: the whole provider fails */
    DISCOVERY_VERDICT_TRANSIENT,     /* worth retrying: 408/409/425/429/5xx, timeouts, ... */
    DISCOVERY_VERDICT_ERROR          /* anything else */
} discovery_verdict_t;

/* The contract's short name for the auth verdict (v1.1 metric labels say "auth"). */
#define DISCOVERY_VERDICT_AUTH DISCOVERY_VERDICT_AUTH_ERROR

/* The classification table, as a pure function. http_status is the response code (0 when
 * none was received), curl_code a CURLcode (0 = the transfer completed), body/len the
 * response body (may be NULL/0; never needs a NUL). A failed transfer (curl_code != 0) is
 * classified by its curl code alone. */
discovery_verdict_t discovery_classify(long http_status, int curl_code, const char *body,
                                       size_t len);

/* "valid", "invalid_model", "auth", "transient", "error" (the words of protocol v1.1's
 * verdict labels). Static strings. */
const char *discovery_verdict_name(discovery_verdict_t verdict);

#endif
