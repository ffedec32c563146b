/*
 * status_store: persistence of the model status table (issue 11) in
 * <data_dir>/model-status.journal, mode 0600. The writer thread calls it; the seed's providers
 * YAML file is never touched.
 *
 * Format: a sequence of frames, each
 *     [u32 length, big-endian][u32 crc32 (IEEE) of the payload, big-endian][payload]
 * and each payload one msgpack array:
 *     [kind ("batch" | "snapshot"), format (1), status_version,
 *      provider removals [key, ...], record removals [[key, model], ...],
 *      provider statuses [[key, status], ...], records [[key, record], ...]]
 * applied in that order (a snapshot first drops everything). Records and provider statuses
 * are stored whole (every contract field plus the internal facts: absences, pruned, kept
 * short name, list position), with states as names so that a reordered enum never
 * misreads an old journal.
 *
 * Why a journal: a status write must cost O(changed records), not O(registry) (issue 11,
 * reading 12). Rewriting a file of 100,000 records for each probe batch would cost as much as
 * a providers-file persist; appending the changed records costs only them. One write() plus
 * fdatasync() per batch makes a batch durable before its job reads `done`.
 *
 * Crash safety: a frame is either whole (its length and CRC check out) or it is the torn tail
 * of an append that a crash interrupted. Load replays frames in order and truncates the file
 * at the first frame that is short, fails its CRC or does not decode: every earlier frame is
 * kept, nothing after a bad frame is trusted, and a bad file never crashes the daemon. A
 * failed append is cut off again at once (ftruncate), so a later good frame never sits behind
 * a torn one.
 *
 * Compaction: when the journal grows beyond max(1 MiB, 4 x the last full snapshot), a single
 * snapshot frame of the whole table is written to a temporary file in the same directory,
 * fsynced, renamed over the journal, and the directory fsynced (the store_persist pattern), so
 * a crash leaves either the old journal or the new one. Since it runs only after the journal
 * has grown by several snapshots' worth of batches, its cost amortises to O(changed) per batch.
 */
#ifndef PM_STATUS_STORE_H
#define PM_STATUS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "model_status.h"

#define STATUS_STORE_FILE_NAME "model-status.journal"
#define STATUS_STORE_FORMAT 1
#define STATUS_STORE_FRAME_HEADER 8
#define STATUS_STORE_MIN_COMPACT_BYTES (1024L * 1024L)
#define STATUS_STORE_COMPACT_FACTOR 4
/* A frame larger than this is corruption, not data (a snapshot of REGISTRY_MAX_MODELS records
 * stays well below it). */
#define STATUS_STORE_MAX_FRAME (1024L * 1024L * 1024L)

typedef struct status_store_t status_store_t;

/* Opens (creating it, 0600) <data_dir>/model-status.journal and replays it into status, which
 * should be empty: records, provider statuses and status_version come back as persisted, with
 * no transitions and no dirty marks. A torn or corrupt tail is truncated (see above; the
 * number of bytes dropped is status_store_truncated_bytes). The caller then syncs status with
 * the registry. Returns NULL with a message in err on an I/O error (unreadable, not a regular
 * file) or out of memory. */
status_store_t *status_store_open(const char *data_dir, model_status_t *status, char *err,
                                  size_t err_size);

/* Closes the journal and sets *self_p to NULL. Safe on NULL and twice. */
void status_store_destroy(status_store_t **self_p);

/* Appends one batch frame: status_version plus what `dirty` lists (taken with
 * model_status_take_dirty just before; its borrowed records must still be alive), in one
 * write and one fdatasync. Nothing is written when dirty is empty and the version has not
 * moved. Compacts afterwards when the journal is over its limit. Returns 0; 1 when the
 * batch is durable but the compaction failed (message in err; it is retried at the next
 * append, the journal stays valid); -1 with a message when the batch was not written (the
 * journal is then as it was before the call; the caller may retry, or compact, which writes
 * everything). */
int status_store_append(status_store_t *self, const model_status_t *status,
                        const status_dirty_t *dirty, char *err, size_t err_size);

/* Rewrites the journal as one snapshot frame of the whole table (atomic replace). 0 / -1. */
int status_store_compact(status_store_t *self, const model_status_t *status, char *err,
                         size_t err_size);

/* Current journal size in bytes, size of the last snapshot frame (0: none yet), and the bytes
 * dropped from a torn or corrupt tail at open. */
uint64_t status_store_size(const status_store_t *self);
uint64_t status_store_snapshot_size(const status_store_t *self);
uint64_t status_store_truncated_bytes(const status_store_t *self);

/* The journal's path (borrowed, lives as long as the store). */
const char *status_store_path(const status_store_t *self);

/* CRC-32 (IEEE 802.3, the zlib / PNG one) of len bytes; exposed for the tests. */
uint32_t status_store_crc32(const void *data, size_t len);

#endif
