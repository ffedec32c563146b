/*
 * owner: the sockets of the thread that owns the provider state, the writer on a primary and
 * the follower on a read replica, opened the same way for both.
 *
 * Why one place: the front end talks to either through the same PAIR protocol (writer.h), and
 * both need the same guarantees of it: no high-water mark (the owner and the front end never
 * block each other), a bounded send while no front end is connected (so a stop is always
 * heard), a stop pipe of their own, and the events PUB pinned to its I/O thread.
 */
#ifndef PM_OWNER_H
#define PM_OWNER_H

#include "auth.h"

#include <stdbool.h>
#include <stddef.h>

#define OWNER_ENDPOINT_SIZE 64

typedef struct {
    void *pipe;         /* PAIR bound at endpoint; the front end connects to it */
    void *control;      /* the stop pipe: the owner's caller's end (bound) */
    void *control_peer; /* ... and the thread's end (connected) */
    void *pub;          /* events PUB, bound at the events endpoint */
    char endpoint[OWNER_ENDPOINT_SIZE];
} owner_sockets_t;

/* Opens all four, named after what ("writer", "follower"), the PUB with auth's settings and
 * bound at events_endpoint. 0, or -1 with err (nothing left open; *bind_failed when the events
 * endpoint could not be bound, e.g. in use). */
int owner_sockets_open(owner_sockets_t *self, void *zmq_ctx, const char *what, const auth_t *auth,
                       const char *events_endpoint, int send_timeout_ms, bool *bind_failed,
                       char *err, size_t err_size);

/* Closes whatever is open and zeroes the pointers. Safe twice. */
void owner_sockets_close(owner_sockets_t *self);

#endif
