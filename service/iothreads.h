/*
 * iothreads: which of the daemon's ZeroMQ I/O threads carries what.
 *
 * Why two: the events fan-out (every change and heartbeat copied to each subscriber, a
 * hundred client replicas or more) is I/O-thread work, and with one I/O thread it queues in
 * front of the request socket's traffic: each request would wait behind the copies of the
 * last event. With the request socket pinned to one thread and the events socket to the
 * other, the kernel can run them on two cores at once. A context with a single I/O thread
 * (the unit tests') gets no pinning at all, since ZeroMQ refuses an affinity naming a thread
 * it does not have.
 */
#ifndef PM_IOTHREADS_H
#define PM_IOTHREADS_H

#include <stdint.h>
#include <zmq.h>

#define IOTHREADS_COUNT 2
#define IOTHREADS_REQUESTS UINT64_C(1) /* ZMQ_AFFINITY bit of I/O thread 0 */
#define IOTHREADS_EVENTS UINT64_C(2)   /* ... of I/O thread 1 */

/* Pins socket to the I/O thread(s) in affinity when the context has IOTHREADS_COUNT of them;
 * call it before the socket binds or connects. 0, or -1 (errno) when ZeroMQ refuses. */
static inline int iothreads_pin(void *zmq_ctx, void *socket, uint64_t affinity)
{
    if (zmq_ctx_get(zmq_ctx, ZMQ_IO_THREADS) < IOTHREADS_COUNT)
        return 0;
    return zmq_setsockopt(socket, ZMQ_AFFINITY, &affinity, sizeof affinity);
}

#endif
