/*
 * registry_fixture: the fixture and helpers shared by the registry core's suites
 * (test_provider, test_registry, test_provider_spec). Every helper fails the running cmocka
 * test on an unexpected result, so a suite reads as its assertions. Test code only.
 */
#ifndef PM_REGISTRY_FIXTURE_H
#define PM_REGISTRY_FIXTURE_H

#include "provider_spec.h"
#include "registry.h"

#include <stddef.h>

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

typedef struct {
    const char *long_name;
    const char *short_name; /* NULL: the long name */
} model_pair_t;

typedef struct {
    const char *key;
    const char *long_name;
    const char *short_name;
} merged_t;

/* The fixture's providers, in registry order: openai, anthropic, together, groq. */
extern const model_pair_t OPENAI_MODELS[3];
extern const model_pair_t ANTHROPIC_MODELS[1];
extern const model_pair_t TOGETHER_MODELS[2];
extern const model_pair_t GROQ_MODELS[3];
/* The fixture's merged_models, in order (short names spelled out). */
extern const merged_t FIXTURE_MERGED[9];

/* A mutable provider holding the models in order; the caller destroys it. */
provider_t *make_provider(const char *key, const char *name, const char *url,
                          const model_pair_t *models, size_t count);
/* make_provider, then registry_put into the mutable reg. */
void put_provider(registry_t *reg, const char *key, const char *name, const char *url,
                  const model_pair_t *models, size_t count);
/* The four fixture providers in a new mutable registry; the caller destroys it. */
registry_t *make_fixture(void);
/* cmocka setup / teardown: *state is the fixture, sealed. */
int setup_sealed(void **state);
int teardown_registry(void **state);

/* Resolves text in the sealed reg and checks a success: provider key and LONG name. */
void expect_resolved(const registry_t *reg, const char *text, const char *key,
                     const char *long_name);
/* Checks that provider holds exactly these models, in order (short NULL = the long name). */
void expect_models(const provider_t *provider, const model_pair_t *models, size_t count);

/* strdup that fails the test on allocation failure; NULL stays NULL. */
char *xstrdup(const char *s);
/* A spec with key, name and URL copied (each may be NULL); clear it with provider_spec_clear. */
void spec_init(provider_spec_t *spec, const char *key, const char *name, const char *url);
/* Gives the spec these valid_models (copied). */
void spec_models(provider_spec_t *spec, const model_pair_t *models, size_t count);
/* Gives the spec these invalid_models (copied). */
void spec_invalid(provider_spec_t *spec, const char *const *names, size_t count);

#endif
