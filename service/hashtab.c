/*
 * hashtab: open addressing with linear probing over (hash, value) slots. See hashtab.h.
 *
 * Why linear probing at load <= 0.5: the slots are 8 bytes, so a probe sequence stays in one
 * or two cache lines, and at that load the expected probe count of a miss is about 2.5.
 */
#include "hashtab.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* FNV-1a over the bytes, then MurmurHash3's 64-bit finaliser: FNV-1a alone leaves the low
 * bits (the ones a power-of-two mask keeps) poorly mixed for short, similar keys such as
 * "model-000123". The result is folded to the 32 bits a slot stores. */
uint32_t hashtab_hash(const char *name, size_t len)
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

bool hashtab_name_equal(const char *a, size_t a_len, const char *b, size_t b_len)
{
    return a_len == b_len && (a_len == 0 || memcmp(a, b, a_len) == 0);
}

void hashtab_init(hashtab_t *self)
{
    assert(self);
    self->slots = NULL;
    self->capacity = 0;
    self->used = 0;
}

void hashtab_release(hashtab_t *self)
{
    assert(self);
    free(self->slots);
    hashtab_init(self);
}

hashtab_slot_t *hashtab_find(const hashtab_t *self, uint32_t hash, hashtab_match_fn *match,
                             const void *ctx, const char *name, size_t len)
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

int hashtab_reserve(hashtab_t *self, size_t entries)
{
    if (entries <= self->capacity / 2)
        return 0;
    if (entries > SIZE_MAX / 2 / sizeof(hashtab_slot_t))
        return -1;
    size_t capacity = HASHTAB_MIN_CAPACITY;
    while (capacity / 2 < entries)
        capacity *= 2;
    hashtab_slot_t *slots = calloc(capacity, sizeof(*slots));
    if (!slots)
        return -1;
    for (size_t i = 0; i < self->capacity; i++) {
        const hashtab_slot_t *old = &self->slots[i];
        if (old->value == 0)
            continue;
        size_t j = old->hash & (capacity - 1);
        while (slots[j].value != 0)
            j = (j + 1) & (capacity - 1);
        slots[j] = *old;
    }
    free(self->slots);
    self->slots = slots;
    self->capacity = capacity;
    return 0;
}

void hashtab_insert(hashtab_t *self, uint32_t hash, uint32_t value)
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

/* Backward-shift deletion: a tombstone-free table keeps "an empty slot ends the probe" true. An
 * entry further on in the cluster moves into the hole unless its home slot lies cyclically in
 * (hole, entry], where moving it would put it before its home. */
void hashtab_remove(hashtab_t *self, hashtab_slot_t *slot)
{
    assert(self->capacity > 0 && slot >= self->slots && slot < self->slots + self->capacity);
    assert(slot->value != 0);
    size_t mask = self->capacity - 1;
    size_t hole = (size_t)(slot - self->slots);
    for (size_t j = (hole + 1) & mask; self->slots[j].value != 0; j = (j + 1) & mask) {
        size_t home = self->slots[j].hash & mask;
        bool home_in_between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!home_in_between) {
            self->slots[hole] = self->slots[j];
            hole = j;
        }
    }
    self->slots[hole].hash = 0;
    self->slots[hole].value = 0;
    self->used--;
}

void hashtab_clear(hashtab_t *self)
{
    if (self->capacity > 0)
        memset(self->slots, 0, self->capacity * sizeof(*self->slots));
    self->used = 0;
}

int hashtab_copy(hashtab_t *dest, const hashtab_t *src)
{
    hashtab_init(dest);
    if (src->capacity == 0)
        return 0;
    dest->slots = malloc(src->capacity * sizeof(*src->slots));
    if (!dest->slots)
        return -1;
    memcpy(dest->slots, src->slots, src->capacity * sizeof(*src->slots));
    dest->capacity = src->capacity;
    dest->used = src->used;
    return 0;
}

size_t hashtab_size(const hashtab_t *self)
{
    return self->used;
}
