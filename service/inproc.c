/*
 * inproc: unique inproc endpoint names. See inproc.h.
 */
#include "inproc.h"

#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

static atomic_ulong s_next = 1;

const char *inproc_endpoint(char *out, size_t out_size, const char *what)
{
    unsigned long n = atomic_fetch_add(&s_next, 1);
    snprintf(out, out_size, "inproc://pm-%s-%ld-%lu", what, (long)getpid(), n);
    return out;
}
