/*
 * inproc: unique names for the daemon's inproc endpoints.
 *
 * A name made from an object's address is not unique over time: libzmq unbinds a closed
 * socket's inproc endpoint asynchronously, so a new object that malloc places at the address
 * of one just destroyed could find "its" endpoint still bound (EADDRINUSE). A process-wide
 * counter never repeats.
 */
#ifndef PM_INPROC_H
#define PM_INPROC_H

#include <stddef.h>

/* Writes "inproc://pm-<what>-<pid>-<n>" into out, n never used before in this process.
 * Thread-safe. Returns out. */
const char *inproc_endpoint(char *out, size_t out_size, const char *what);

#endif
