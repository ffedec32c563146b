/*
 * hashtab: the small hash index under the registry core (provider names, invalid models,
 * registry keys, the sealed registry's global first-hit index).
 *
 * Open addressing with linear probing, power-of-two capacity, load <= 0.5. The table stores
 * no strings: a slot holds the 32-bit hash of a name (cheap rejection, and growth without the
 * strings) and a caller-chosen non-zero value, usually an array index + 1 (0 marks an empty
 * slot). The caller keeps the names in its own array and answers "does entry `value` hold
 * this name?" through a match callback, so one table costs 8 bytes per slot whatever the names.
 *
 * hashtab_t is a value type, not an opaque class: a provider embeds three of them and a
 * registry two, an empty table allocates nothing, and a copy keeps every slot position (so it
 * stays valid for a copied array). Pure C11, no I/O, no globals; not thread-safe for writers
 * (a table that no one changes may be read from any thread).
 *
 * The hot calls (hash, compare, find, insert) are static inline here: inlined at each call
 * site together with its match callback they cost what the registry's private table cost
 * before it became a module; behind a call and a function pointer, sealing a 100,000-model
 * registry took half as long again.
 */
#ifndef PM_HASHTAB_H
#define PM_HASHTAB_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define HASHTAB_MIN_CAPACITY 16u

typedef struct {
    uint32_t hash;
    uint32_t value; /* the caller's value; 0 = empty */
} hashtab_slot_t;

typedef struct {
    hashtab_slot_t *slots;
    size_t capacity; /* 0 or a power of two */
    size_t used;
} hashtab_t;

/* Does the entry `value` of the caller's structure ctx hold the name (name, len)? */
typedef bool(hashtab_match_fn)(const void *ctx, uint32_t value, const char *name, size_t len);

/* The hash every table user stores for a name (len bytes, NUL not required). FNV-1a over the
 * bytes, then MurmurHash3's 64-bit finaliser: FNV-1a alone leaves the low bits (the ones a
 * power-of-two mask keeps) poorly mixed for short, similar keys such as "model-000123". The
 * result is folded to the 32 bits a slot stores. */
static inline uint32_t hashtab_hash(const char *name, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325); /* FNV-1a 64-bit offset basis */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)name[i];
        h *= UINT64_C(0x100000001b3); /* FNV-1a 64-bit prime */
    }
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= UINT64_C(0xc4ceb53a185ebe1a);
    h ^= h >> 33;
    return (uint32_t)(h ^ (h >> 32));
}

/* True when the byte strings (a, a_len) and (b, b_len) are equal: the usual body of a match
 * callback. */
static inline bool hashtab_name_equal(const char *a, size_t a_len, const char *b, size_t b_len)
{
    return a_len == b_len && (a_len == 0 || memcmp(a, b, a_len) == 0);
}

/* An empty table (no allocation). Same as zero-initialising it. */
void hashtab_init(hashtab_t *self);

/* Frees the slots; the table is empty and reusable afterwards. Safe twice. */
void hashtab_release(hashtab_t *self);

/* The slot whose hash is `hash` and whose value match() accepts for (name, len), or NULL.
 * The slot is borrowed: valid until the table changes; its value may be rewritten in place
 * (same name, another entry). Probes one cluster: O(1) on average at load <= 0.5. */
static inline hashtab_slot_t *hashtab_find(const hashtab_t *self, uint32_t hash,
                                           hashtab_match_fn *match, const void *ctx,
                                           const char *name, size_t len)
{
    if (self->capacity == 0)
        return NULL;
    size_t mask = self->capacity - 1;
    /* Terminates: load <= 0.5 guarantees an empty slot. */
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        hashtab_slot_t *slot = &self->slots[i];
        if (slot->value == 0)
            return NULL;
        if (slot->hash == hash && match(ctx, slot->value, name, len))
            return slot;
    }
}

/* Makes room for `entries` entries in all (load <= 0.5), growing and rehashing from the stored
 * hashes when needed. 0, or -1 on allocation failure (the table is then unchanged). */
int hashtab_reserve(hashtab_t *self, size_t entries);

/* Inserts an entry known to be absent; value must not be 0. The caller has reserved room
 * (hashtab_reserve for used + 1 entries or more): this never allocates and cannot fail. */
static inline void hashtab_insert(hashtab_t *self, uint32_t hash, uint32_t value)
{
    assert(value != 0);
    assert(self->capacity > 0 && (self->used + 1) * 2 <= self->capacity);
    size_t mask = self->capacity - 1;
    size_t i = hash & mask;
    while (self->slots[i].value != 0)
        i = (i + 1) & mask;
    self->slots[i].hash = hash;
    self->slots[i].value = value;
    self->used++;
}

/* Removes the entry in `slot` (from hashtab_find on this table), moving later entries of its
 * cluster back so that every remaining entry stays reachable. Other slot pointers are invalid
 * afterwards. O(cluster length). */
void hashtab_remove(hashtab_t *self, hashtab_slot_t *slot);

/* Empties the table and keeps its capacity (a rebuild refills it without allocating). */
void hashtab_clear(hashtab_t *self);

/* Makes dest (any previous content is NOT freed: pass an empty or released table) a copy of
 * src with the same capacity and slot positions. 0, or -1 on allocation failure (dest is then
 * empty). */
int hashtab_copy(hashtab_t *dest, const hashtab_t *src);

/* Entries in the table. */
size_t hashtab_size(const hashtab_t *self);

#endif
