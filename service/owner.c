/*
 * owner: the state owner's sockets (see owner.h).
 */
#include "owner.h"

#include "inproc.h"
#include "iothreads.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

int owner_sockets_open(owner_sockets_t *self, void *zmq_ctx, const char *what, const auth_t *auth,
                       const char *events_endpoint, int send_timeout_ms, bool *bind_failed,
                       char *err, size_t err_size)
{
    memset(self, 0, sizeof *self);
    *bind_failed = false;
    int zero = 0;
    inproc_endpoint(self->endpoint, sizeof self->endpoint, what);
    self->pipe = zmq_socket(zmq_ctx, ZMQ_PAIR);
    /* No high-water mark on the pipe: the owner and the front end must never block each other.
     * A send can then only wait while no front end is connected (start-up, or a front end
     * that failed to start): bounded, so that a stop is always heard. */
    if (!self->pipe || zmq_setsockopt(self->pipe, ZMQ_SNDHWM, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(self->pipe, ZMQ_RCVHWM, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(self->pipe, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(self->pipe, ZMQ_SNDTIMEO, &send_timeout_ms, sizeof send_timeout_ms) < 0 ||
        zmq_bind(self->pipe, self->endpoint) < 0) {
        snprintf(err, err_size, "%s pipe: %s", what, zmq_strerror(errno));
        goto fail;
    }
    char control_endpoint[OWNER_ENDPOINT_SIZE + 16];
    char control_what[32];
    snprintf(control_what, sizeof control_what, "%s-control", what);
    inproc_endpoint(control_endpoint, sizeof control_endpoint, control_what);
    self->control = zmq_socket(zmq_ctx, ZMQ_PAIR);
    self->control_peer = zmq_socket(zmq_ctx, ZMQ_PAIR);
    if (!self->control || !self->control_peer ||
        zmq_setsockopt(self->control, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(self->control_peer, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_bind(self->control, control_endpoint) < 0 ||
        zmq_connect(self->control_peer, control_endpoint) < 0) {
        snprintf(err, err_size, "%s control pipe: %s", what, zmq_strerror(errno));
        goto fail;
    }
    self->pub = zmq_socket(zmq_ctx, ZMQ_PUB);
    if (!self->pub || iothreads_pin(zmq_ctx, self->pub, IOTHREADS_EVENTS) < 0 ||
        zmq_setsockopt(self->pub, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        auth_apply(auth, self->pub) < 0) {
        snprintf(err, err_size, "events socket: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_bind(self->pub, events_endpoint) < 0) {
        *bind_failed = true;
        snprintf(err, err_size, "cannot bind events endpoint %s: %s", events_endpoint,
                 zmq_strerror(errno));
        goto fail;
    }
    return 0;
fail:
    owner_sockets_close(self);
    return -1;
}

void owner_sockets_close(owner_sockets_t *self)
{
    void **sockets[] = {&self->pipe, &self->control, &self->control_peer, &self->pub};
    for (size_t i = 0; i < sizeof sockets / sizeof sockets[0]; i++) {
        if (*sockets[i])
            zmq_close(*sockets[i]);
        *sockets[i] = NULL;
    }
}
