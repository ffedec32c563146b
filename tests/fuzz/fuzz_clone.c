/*
 * fuzz_clone: libFuzzer target over the Clone state machine (replica/clone.c), the code that
 * takes bytes from the network in every replica: libpmclient's local replica and a read-replica
 * daemon apply what a primary (or anything that connects as one) publishes.
 *
 * Each input is up to FUZZ_MAX_PARTS parts separated by the byte 0xc1 (never valid in msgpack,
 * nor inside a msgpack str's UTF-8). The first part is offered as the reply to `snapshot`, the
 * others as event bodies of topic "providers", with the clock moving on by a part-chosen step
 * (so silence, backoff and re-snapshots are reached too); whenever the machine wants a
 * snapshot, the next part is offered as that reply instead. When a part is refused as a
 * snapshot, a fixed good snapshot is applied in its place, so that events meet a synced replica.
 *
 * Oracles besides the sanitizers: after every step the applied state is coherent (synced with
 * a registry, a sealed registry every resolution can walk, the version never below -1, the
 * primary's version at least the applied one once synced), and the keys of an applied change
 * are all readable.
 */
#include "clone.h"
#include "pm_proto.h"
#include "registry.h"

#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_PARTS 16
#define FUZZ_SEPARATOR 0xc1
#define FUZZ_HEARTBEAT_MS 100

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void pm_fuzz_cleanup(void);

/* Nothing outlives an input here (replay_main calls it at the end). */
void pm_fuzz_cleanup(void)
{
}

static void s_pack_str(msgpack_packer *pk, const char *text)
{
    size_t len = strlen(text);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, text, len);
}

/* {"id": 1, "ok": true, "result": {"state_version": 5, "status_version": 1, "epoch": "e1",
 *  "providers": [acme]}} */
static void s_good_snapshot(msgpack_sbuffer *buf)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    s_pack_str(&pk, "id");
    msgpack_pack_int(&pk, 1);
    s_pack_str(&pk, "ok");
    msgpack_pack_true(&pk);
    s_pack_str(&pk, "result");
    msgpack_pack_map(&pk, 4);
    s_pack_str(&pk, "state_version");
    msgpack_pack_int(&pk, 5);
    s_pack_str(&pk, "status_version");
    msgpack_pack_int(&pk, 1);
    s_pack_str(&pk, "epoch");
    s_pack_str(&pk, "e1");
    s_pack_str(&pk, "providers");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 6);
    s_pack_str(&pk, "provider");
    s_pack_str(&pk, "acme");
    s_pack_str(&pk, "name");
    s_pack_str(&pk, "Acme");
    s_pack_str(&pk, "base_api_url");
    s_pack_str(&pk, "http://127.0.0.1:9/v1");
    s_pack_str(&pk, "api_key");
    msgpack_pack_nil(&pk);
    s_pack_str(&pk, "valid_models");
    msgpack_pack_map(&pk, 1);
    s_pack_str(&pk, "m-1");
    s_pack_str(&pk, "one");
    s_pack_str(&pk, "invalid_models");
    msgpack_pack_array(&pk, 0);
}

/* Walks the applied state the way readers do. */
static void s_check(clone_t *clone)
{
    registry_t *reg = clone_registry(clone);
    if (!clone_synced(clone)) {
        if (reg || clone_version(clone) != -1)
            abort();
        return;
    }
    if (!reg || !registry_sealed(reg) || clone_version(clone) < 0 ||
        clone_primary_version(clone) < clone_version(clone))
        abort();
    size_t count = registry_count(reg);
    for (size_t i = 0; i < count; i++) {
        const provider_t *p = registry_at(reg, i);
        const char *key = provider_key(p);
        if (!registry_get(reg, key, strlen(key)))
            abort();
        char model[160];
        int n = snprintf(model, sizeof model, "%s/%s", key,
                         provider_model_count(p) ? provider_model_short(p, 0) : "none");
        if (n > 0 && (size_t)n < sizeof model) {
            registry_resolution_t out;
            (void)registry_resolve(reg, model, (size_t)n, &out);
        }
    }
    size_t changed = 0;
    const char *const *keys = clone_changed_keys(clone, &changed);
    for (size_t i = 0; i < changed; i++) {
        if (!keys || !keys[i] || strlen(keys[i]) > 4096)
            abort();
    }
    if (strlen(clone_epoch(clone)) > CLONE_MAX_EPOCH_LEN)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    clone_t *clone = clone_new(FUZZ_HEARTBEAT_MS, 1000);
    if (!clone)
        return 0;
    int64_t now = 1000000;
    size_t start = 0;
    for (int part = 0; part < FUZZ_MAX_PARTS && start <= size; part++) {
        const uint8_t *end = memchr(data + start, FUZZ_SEPARATOR, size - start);
        size_t len = end ? (size_t)(end - (data + start)) : size - start;
        const uint8_t *bytes = data + start;
        if (part == 0 || clone_pending(clone) != CLONE_CAUSE_NONE) {
            /* A replica asks for a snapshot now: this part is the reply. */
            (void)clone_want_snapshot(clone, now);
            if (clone_apply_snapshot(clone, bytes, len, now) != 0) {
                msgpack_sbuffer good;
                msgpack_sbuffer_init(&good);
                s_good_snapshot(&good);
                if (clone_apply_snapshot(clone, good.data, good.size, now) != 0)
                    abort(); /* the good snapshot must always apply */
                msgpack_sbuffer_destroy(&good);
            }
        } else {
            (void)clone_on_event(clone, bytes, len, now);
        }
        s_check(clone);
        /* The last byte of a part moves the clock: 0-255 x 10 ms (silence is 300 ms). */
        now += len ? (int64_t)bytes[len - 1] * 10 : 1;
        s_check(clone);
        if (!end)
            break;
        start += len + 1;
    }
    clone_destroy(&clone);
    return 0;
}
