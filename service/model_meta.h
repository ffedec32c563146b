/*
 * model_meta: a model's metadata as the service keeps it, normalised from a provider's
 * /models entry (protocol v1.1, "Model status"). Pure: no I/O, no JSON library; the worker
 * that parses the list offers the entry's top-level scalar fields, this module decides which
 * ones count and which one wins, and the status table stores the result.
 *
 *   context_length    <- context_length, else context_window, else max_context_length
 *   max_output_tokens <- max_completion_tokens, else max_output_tokens
 *   owned_by          <- owned_by (a string)
 *   created           <- created (integer unix seconds)
 * Unknown fields are dropped; a known field with the wrong type (or a length <= 0, a
 * negative time, an owned_by that is empty or too long) is ignored as if absent.
 */
#ifndef PM_MODEL_META_H
#define PM_MODEL_META_H

#include <stdbool.h>
#include <stddef.h>

#define MODEL_META_MAX_OWNED_BY 256 /* longer owned_by strings are ignored */

typedef struct {
    bool has_context_length;
    long long context_length;
    bool has_max_output_tokens;
    long long max_output_tokens;
    char *owned_by; /* NULL: absent; owned */
    bool has_created;
    long long created;
    /* Which source field set context_length / max_output_tokens (0 = none; a lower rank
     * wins), so that the order in which fields are offered does not matter. */
    unsigned char context_rank;
    unsigned char output_rank;
} model_meta_t;

/* One top-level field of a /models entry, as the parser saw it. Borrowed strings; str need
 * not be NUL-terminated. */
typedef enum { MODEL_META_INT = 0, MODEL_META_STR, MODEL_META_OTHER } model_meta_type_t;

typedef struct {
    const char *name;
    size_t name_len;
    model_meta_type_t type;
    long long int_value; /* MODEL_META_INT */
    const char *str;     /* MODEL_META_STR */
    size_t str_len;
} model_meta_field_t;

/* Offers one field to m. 0 (kept or ignored), or -1 on ENOMEM (m unchanged). */
int model_meta_offer(model_meta_t *m, const model_meta_field_t *field);

/* True when the field name is one model_meta reads (the parser may skip the others). */
bool model_meta_known(const char *name, size_t name_len);

/* True when nothing is known. */
bool model_meta_empty(const model_meta_t *m);

/* Frees owned_by and zeroes m. Safe on a zeroed struct and twice. */
void model_meta_clear(model_meta_t *m);

/* Deep copy: dst (cleared first) becomes equal to src. 0, or -1 on ENOMEM (dst zeroed). */
int model_meta_copy(model_meta_t *dst, const model_meta_t *src);

/* True when a and b hold the same values (ranks not compared). */
bool model_meta_equal(const model_meta_t *a, const model_meta_t *b);

#endif
