/*
 * model_meta: the metadata of one model, normalised from a provider's /models entry
 * (protocol-v1.1 "Model status": context_length, max_output_tokens, owned_by, created).
 *
 * A plain value type: only the keys a provider actually sent are present (has_* flags, NULL
 * owned_by), so that the wire can omit the unknown ones. owned_by is owned by the struct.
 */
#ifndef PM_MODEL_META_H
#define PM_MODEL_META_H

#include <stdbool.h>

typedef struct {
    bool has_context_length;
    long long context_length;
    bool has_max_output_tokens;
    long long max_output_tokens;
    char *owned_by; /* NULL: absent */
    bool has_created;
    long long created;
} model_meta_t;

void model_meta_clear(model_meta_t *m);
int model_meta_copy(model_meta_t *dst, const model_meta_t *src); /* 0 / -1 */

#endif
