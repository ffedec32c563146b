/*
 * status_ops: the v1.1 status operations as the writer answers them (proto/PROTOCOL.md,
 * "Model status"): argument checks first (a bad request changes nothing and reaches no
 * upstream), then the result from the status table or a new verification job.
 *
 * The writer answers these because it owns the status table and the jobs; model_status and
 * provider_status change nothing (they are reads for roles and for resending).
 * Each function packs exactly one whole reply (success or error) into pk.
 */
#ifndef PM_STATUS_OPS_H
#define PM_STATUS_OPS_H

#include "discovery.h"
#include "model_status.h"
#include "pm_proto.h"
#include "registry.h"

#include <msgpack.h>

/* model_status: provider (opt), model (opt, long name), states ([str], opt). reg is the
 * registry the table was last synced with. */
void status_ops_model_status(const model_status_t *table, const registry_t *reg,
                             const pm_request_t *req, msgpack_packer *pk);

/* provider_status: provider (opt). */
void status_ops_provider_status(const model_status_t *table, const registry_t *reg,
                                const pm_request_t *req, msgpack_packer *pk);

/* verify_models: provider (opt), models ([str], opt), include_invalid (bool),
 * persist_on_success (bool); starts a verification job on discovery and answers its id.
 * by: the caller's name for the job's changes (NULL: none). */
void status_ops_verify_models(discovery_t *discovery, const registry_t *reg,
                              const pm_request_t *req, const char *by, double now,
                              msgpack_packer *pk);

#endif
