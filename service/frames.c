/*
 * frames: bounded receive of a multipart message. See frames.h.
 */
#include "frames.h"

#include <errno.h>

int frames_recv(void *socket, int flags, zmq_msg_t *frames, size_t max, bool *overflow)
{
    size_t count = 0;
    bool more = true;
    *overflow = false;
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        /* Only the first frame may be absent: the rest of a message arrives with it. */
        if (zmq_msg_recv(&part, socket, count == 0 && !*overflow ? flags : 0) < 0) {
            int saved = errno;
            zmq_msg_close(&part);
            frames_close(frames, count);
            errno = saved;
            return saved == EAGAIN && count == 0 && !*overflow ? 0 : -1;
        }
        more = zmq_msg_more(&part);
        if (count < max) {
            frames[count++] = part;
        } else {
            *overflow = true;
            zmq_msg_close(&part);
        }
    }
    return (int)count;
}

void frames_close(zmq_msg_t *frames, size_t count)
{
    for (size_t i = 0; i < count; i++)
        zmq_msg_close(&frames[i]);
}
