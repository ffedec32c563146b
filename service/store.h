/*
 * store: the persisted provider file <data_dir>/openaicompat-providers.yaml, in the seed's
 * format exactly:
 *
 *   providers:
 *     openai:
 *       name: OpenAI
 *       base_api_url: https://api.openai.com/v1
 *       api_key: sk-...            (null when none)
 *       valid_models: {long: short, ...}
 *       invalid_models: [a, b]     (optional on load)
 *
 * Loading (libyaml) yields provider specs (a layer); persisting writes a sealed registry.
 * Persist is crash-safe (Redis' config-rewrite way): temp file in the same directory, write
 * loop, fsync, fchmod 0600, rename over the target, fsync the directory; the temp file is
 * unlinked on any failure, so the old file is never torn. Runtime-only fields and keys that
 * came from the environment are never written (the stored key is, see
 * provider_stored_api_key()). Only the writer thread calls this module.
 */
#ifndef PM_STORE_H
#define PM_STORE_H

#include "provider_spec.h"
#include "registry.h"
#include <stdbool.h>
#include <stddef.h>

#define STORE_FILE_NAME "openaicompat-providers.yaml"
#define STORE_MAX_FILE_SIZE (256u * 1024 * 1024) /* a larger file is refused, not read */
#define STORE_MAX_DEPTH 16

/* One layer: an ordered list of provider specs. */
typedef struct {
    size_t count;
    provider_spec_t *specs;
} store_layer_t;

void store_layer_clear(store_layer_t *layer);

/* Warning sink for unknown keys and other non-fatal oddities (may be NULL). */
typedef void(store_warn_fn)(void *arg, const char *message);

/* Writes "<data_dir>/openaicompat-providers.yaml" into out. 0, or -1 when it does not fit. */
int store_path(const char *data_dir, char *out, size_t out_size);

/* Loads a providers file. A missing file is an empty layer (returns 0). A file that cannot be
 * read or parsed, or has the wrong shape (providers not a map, a provider not a map,
 * valid_models not a map of scalars, ...) returns -1 with err naming the file, line and
 * column ("<path>:<line>:<col>: <what>"); nothing is ever written in that case. Unknown keys
 * are reported to warn and skipped. A null api_key is an explicit "no key". */
int store_load(const char *path, store_layer_t *out, store_warn_fn *warn, void *warn_arg, char *err,
               size_t err_size);

/* Reads path into a libyaml document (document is a yaml_document_t *) under the same limits
 * as store_load: size checked with stat first, nesting deeper than STORE_MAX_DEPTH, aliases
 * and a second document refused. Untagged plain null scalars (~, null, empty) carry the tag
 * YAML_NULL_TAG. Returns 0 (free with yaml_document_delete; an empty file has no root node),
 * 1 when the file does not exist (nothing to free), or -1 with err ("<path>:<line>:<col>:
 * <what>" or "<path>: <strerror>"). Used by the config file reader. */
int store_load_document(const char *path, void *document, char *err, size_t err_size);

/* Parses the same "providers:" mapping from an already-parsed libyaml document node; used by
 * the config file reader for its providers: section. doc is a yaml_document_t *, node a
 * yaml_node_t * (void to keep libyaml out of this header). Same return and err as store_load. */
int store_parse_providers(const char *path, void *doc, void *node, store_layer_t *out,
                          store_warn_fn *warn, void *warn_arg, char *err, size_t err_size);

/* Atomically writes every provider of reg (sealed or not) to path, mode 0600. The directory
 * must exist. Returns 0; -1 with err ("<path>: <strerror>") when the file was not written (the
 * old file is intact); or 1 with err ("<dir>: <strerror>") when the new file is in place but
 * syncing the directory failed: written, durability unknown (a crash may bring the old file
 * back), so the caller's state must follow the new file, with a warning. */
int store_persist(const registry_t *reg, const char *path, char *err, size_t err_size);

/* For tests only: replaces fsync() in store_persist; directory says whether fd is the
 * directory (after the rename) or the temp file. NULL (the default) restores fsync(). */
typedef int(store_fsync_fn)(int fd, bool directory);
void store_set_fsync_hook(store_fsync_fn *hook);

/* Creates data_dir (mode 0700) when missing, and checks that it is a writable directory.
 * 0, or -1 with err. */
int store_prepare_dir(const char *data_dir, char *err, size_t err_size);

/* Takes an exclusive lock on <data_dir>/.lock (flock, non-blocking) so that two daemons never
 * write the same file. Returns the descriptor, to keep open while running, or -1 with err
 * (another process holds the lock, or the file cannot be opened). */
int store_lock_dir(const char *data_dir, char *err, size_t err_size);

/* Removes the temp files ("<file>.tmp.XXXXXX") that a process killed in the middle of a
 * persist left behind; call it with the lock held, before the first persist. Returns how many
 * were removed, or -1 with err when the directory cannot be read. */
int store_remove_stale_temps(const char *data_dir, char *err, size_t err_size);

#endif
