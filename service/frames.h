/*
 * frames: receiving one whole multipart ZeroMQ message into a bounded array of frames, the
 * loop that the front end, the writer and the ZAP handler all need.
 */
#ifndef PM_FRAMES_H
#define PM_FRAMES_H

#include <stdbool.h>
#include <stddef.h>
#include <zmq.h>

/* Receives one whole message from socket. Its first max frames go into frames (the caller
 * closes them with frames_close); any further frames are received and dropped, and
 * *overflow says so. Returns the number of frames kept; 0 when no message arrived (flags has
 * ZMQ_DONTWAIT and none was waiting, or the socket's ZMQ_RCVTIMEO expired; errno EAGAIN);
 * -1 on any other error (errno set, nothing kept). */
int frames_recv(void *socket, int flags, zmq_msg_t *frames, size_t max, bool *overflow);

/* Closes count frames. */
void frames_close(zmq_msg_t *frames, size_t count);

#endif
