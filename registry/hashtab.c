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
