/*
 * provider_spec: layering one provider description onto a registry. See provider_spec.h.
 *
 * Built only on the public provider and registry calls: the changed provider is built aside
 * (a clone of the current one, or a new one), then swapped in by registry_put, so any failure
 * leaves the registry exactly as it was.
 */
#include "provider_spec.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

void provider_spec_clear(provider_spec_t *self)
{
    if (!self)
        return;
    free(self->key);
    free(self->name);
    free(self->base_api_url);
    free(self->api_key);
    for (size_t i = 0; i < self->model_count; i++) {
        if (self->model_long)
            free(self->model_long[i]);
        if (self->model_short)
            free(self->model_short[i]);
    }
    free(self->model_long);
    free(self->model_short);
    if (self->invalid_models) {
        for (size_t i = 0; i < self->invalid_count; i++)
            free(self->invalid_models[i]);
    }
    free(self->invalid_models);
    memset(self, 0, sizeof(*self));
}

int provider_spec_apply(const provider_spec_t *self, registry_t *registry,
                        provider_spec_mode_t mode, bool pinned)
{
    assert(registry && !registry_sealed(registry));
    if (!self || !self->key || !provider_key_valid(self->key, strlen(self->key)))
        return -1;
    if (self->has_valid_models && self->model_count > 0 && !self->model_long)
        return -1;
    if (self->has_invalid_models && self->invalid_count > 0 && !self->invalid_models)
        return -1;
    const provider_t *old = registry_get(registry, self->key, strlen(self->key));
    bool replace_models = self->has_valid_models && mode == PROVIDER_SPEC_REPLACE_MODELS;

    provider_t *updated;
    if (old) {
        /* Replace mode would throw a copy of the models away at once: do not make it. */
        updated = replace_models ? provider_clone_without_models(old) : provider_clone(old);
        if (!updated)
            return -1;
        if ((self->name && provider_set_name(updated, self->name) != 0) ||
            (self->base_api_url && provider_set_base_api_url(updated, self->base_api_url) != 0))
            goto failed;
    } else {
        if (registry_count(registry) >= REGISTRY_MAX_PROVIDERS)
            return -1;
        updated = provider_new(self->key, self->name ? self->name : self->key,
                               self->base_api_url ? self->base_api_url : "");
        if (!updated)
            return -1;
    }
    if (self->has_api_key && provider_set_api_key(updated, self->api_key) != 0)
        goto failed;
    if (self->has_valid_models &&
        provider_put_models(updated, (const char *const *)self->model_long,
                            (const char *const *)self->model_short, self->model_count) != 0)
        goto failed;
    if (self->has_invalid_models &&
        provider_set_invalid_models(updated, (const char *const *)self->invalid_models,
                                    self->invalid_count) != 0)
        goto failed;
    if (pinned)
        provider_set_pinned(updated, true);

    /* Same key: replaced in place, or appended; refuses past the registry's limits. */
    if (registry_put(registry, &updated) != 0)
        goto failed;
    return 0;

failed:
    provider_destroy(&updated);
    return -1;
}
