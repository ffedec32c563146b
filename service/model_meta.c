/*
 * model_meta: normalisation of /models entry metadata (see model_meta.h). The mapping is one
 * table, so that adding a provider's spelling is one row.
 */
#include "model_meta.h"

#include <stdlib.h>
#include <string.h>

typedef enum { TARGET_CONTEXT = 0, TARGET_OUTPUT, TARGET_OWNED_BY, TARGET_CREATED } target_t;

typedef struct {
    const char *name;
    target_t target;
    unsigned char rank; /* among fields of the same target: lower wins */
} source_t;

static const source_t s_sources[] = {
    {"context_length", TARGET_CONTEXT, 1},
    {"context_window", TARGET_CONTEXT, 2},
    {"max_context_length", TARGET_CONTEXT, 3},
    {"max_completion_tokens", TARGET_OUTPUT, 1},
    {"max_output_tokens", TARGET_OUTPUT, 2},
    {"owned_by", TARGET_OWNED_BY, 1},
    {"created", TARGET_CREATED, 1},
};

static const source_t *s_source(const char *name, size_t name_len)
{
    if (name == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof s_sources / sizeof *s_sources; i++)
        if (strlen(s_sources[i].name) == name_len && memcmp(s_sources[i].name, name, name_len) == 0)
            return &s_sources[i];
    return NULL;
}

bool model_meta_known(const char *name, size_t name_len)
{
    return s_source(name, name_len) != NULL;
}

int model_meta_offer(model_meta_t *m, const model_meta_field_t *field)
{
    const source_t *source = s_source(field->name, field->name_len);
    if (source == NULL)
        return 0;
    switch (source->target) {
    case TARGET_CONTEXT:
        if (field->type != MODEL_META_INT || field->int_value <= 0)
            return 0;
        if (m->context_rank != 0 && m->context_rank <= source->rank)
            return 0;
        m->has_context_length = true;
        m->context_length = field->int_value;
        m->context_rank = source->rank;
        return 0;
    case TARGET_OUTPUT:
        if (field->type != MODEL_META_INT || field->int_value <= 0)
            return 0;
        if (m->output_rank != 0 && m->output_rank <= source->rank)
            return 0;
        m->has_max_output_tokens = true;
        m->max_output_tokens = field->int_value;
        m->output_rank = source->rank;
        return 0;
    case TARGET_OWNED_BY: {
        if (field->type != MODEL_META_STR || field->str_len == 0 ||
            field->str_len > MODEL_META_MAX_OWNED_BY ||
            memchr(field->str, '\0', field->str_len) != NULL)
            return 0;
        char *copy = malloc(field->str_len + 1);
        if (copy == NULL)
            return -1;
        memcpy(copy, field->str, field->str_len);
        copy[field->str_len] = '\0';
        free(m->owned_by);
        m->owned_by = copy;
        return 0;
    }
    case TARGET_CREATED:
        if (field->type != MODEL_META_INT || field->int_value < 0)
            return 0;
        m->has_created = true;
        m->created = field->int_value;
        return 0;
    }
    return 0;
}

bool model_meta_empty(const model_meta_t *m)
{
    return !m->has_context_length && !m->has_max_output_tokens && m->owned_by == NULL &&
           !m->has_created;
}

void model_meta_clear(model_meta_t *m)
{
    if (m == NULL)
        return;
    free(m->owned_by);
    memset(m, 0, sizeof *m);
}

int model_meta_copy(model_meta_t *dst, const model_meta_t *src)
{
    model_meta_clear(dst);
    char *owned_by = NULL;
    if (src->owned_by != NULL) {
        size_t len = strlen(src->owned_by);
        owned_by = malloc(len + 1);
        if (owned_by == NULL)
            return -1;
        memcpy(owned_by, src->owned_by, len + 1);
    }
    *dst = *src;
    dst->owned_by = owned_by;
    return 0;
}

bool model_meta_equal(const model_meta_t *a, const model_meta_t *b)
{
    if (a->has_context_length != b->has_context_length ||
        (a->has_context_length && a->context_length != b->context_length))
        return false;
    if (a->has_max_output_tokens != b->has_max_output_tokens ||
        (a->has_max_output_tokens && a->max_output_tokens != b->max_output_tokens))
        return false;
    if (a->has_created != b->has_created || (a->has_created && a->created != b->created))
        return false;
    if ((a->owned_by == NULL) != (b->owned_by == NULL))
        return false;
    return a->owned_by == NULL || strcmp(a->owned_by, b->owned_by) == 0;
}
