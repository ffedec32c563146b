/*
 * model_meta: clearing and deep-copying the metadata value type (see model_meta.h).
 */
#include "model_meta.h"

#include <stdlib.h>
#include <string.h>

/* Frees owned_by and leaves m empty (every key absent), so a cleared value can be reused or
 * cleared again. Safe on NULL. */
void model_meta_clear(model_meta_t *m)
{
    if (!m)
        return;
    free(m->owned_by);
    memset(m, 0, sizeof *m);
}

/* Replaces *dst with a deep copy of *src. dst must hold a valid (possibly empty) value; on
 * failure (-1, out of memory) dst is left unchanged so the caller never sees half a copy.
 * dst == src is a no-op. */
int model_meta_copy(model_meta_t *dst, const model_meta_t *src)
{
    if (!dst || !src)
        return -1;
    if (dst == src)
        return 0;
    char *owned_by = NULL;
    if (src->owned_by) {
        size_t len = strlen(src->owned_by);
        owned_by = malloc(len + 1);
        if (!owned_by)
            return -1;
        memcpy(owned_by, src->owned_by, len + 1);
    }
    free(dst->owned_by);
    *dst = *src;
    dst->owned_by = owned_by;
    return 0;
}
