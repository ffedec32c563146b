/*
 * test_hashtab: unit tests of the hash index under the registry core (registry/hashtab.h):
 * the hash and name comparison, an empty table, growth (capacity, load <= 0.5, every entry
 * still found after rehashing), full-hash and same-slot collisions told apart by the match
 * callback, backward-shift removal (inside a cluster, across the wrap-around, everything), and
 * 100,000 keys inserted, found, half removed and re-inserted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashtab.h"

#define MANY_KEYS 100000
#define KEY_SIZE 32 /* room for any prefix used here and a size_t in decimal */

/* The names a table indexes: value v is names[v - 1]. */
typedef struct {
    char (*names)[KEY_SIZE];
    size_t count;
} names_t;

static bool match_name(const void *ctx, uint32_t value, const char *name, size_t len)
{
    const names_t *names = ctx;
    assert_true(value >= 1 && value <= names->count);
    const char *held = names->names[value - 1];
    return hashtab_name_equal(held, strlen(held), name, len);
}

/* count names: prefix followed by 0, 1, 2, ... */
static names_t names_new(size_t count, const char *prefix)
{
    names_t names = {calloc(count, KEY_SIZE), count};
    assert_non_null(names.names);
    for (size_t i = 0; i < count; i++)
        snprintf(names.names[i], KEY_SIZE, "%s%zu", prefix, i);
    return names;
}

/* The value of the entry holding names[i] under hash, or 0 when absent. */
static uint32_t lookup(const hashtab_t *table, const names_t *names, uint32_t hash, size_t i)
{
    const char *name = names->names[i];
    const hashtab_slot_t *slot = hashtab_find(table, hash, match_name, names, name, strlen(name));
    return slot ? slot->value : 0;
}

static uint32_t name_hash(const names_t *names, size_t i)
{
    return hashtab_hash(names->names[i], strlen(names->names[i]));
}

/* Every occupied slot is reachable from its home slot without crossing an empty one: the
 * invariant linear probing and backward-shift removal must keep. Also counts the entries. */
static void expect_well_formed(const hashtab_t *table)
{
    size_t occupied = 0;
    for (size_t i = 0; i < table->capacity; i++) {
        if (table->slots[i].value == 0)
            continue;
        occupied++;
        size_t mask = table->capacity - 1;
        for (size_t j = table->slots[i].hash & mask; j != i; j = (j + 1) & mask)
            assert_int_not_equal(table->slots[j].value, 0);
    }
    assert_int_equal(occupied, hashtab_size(table));
    assert_true(hashtab_size(table) * 2 <= table->capacity || table->capacity == 0);
}

static void test_hash_and_equal(void **state)
{
    (void)state;
    assert_int_equal(hashtab_hash("model-000123", 12), hashtab_hash("model-000123", 12));
    assert_int_not_equal(hashtab_hash("model-000123", 12), hashtab_hash("model-000124", 12));
    /* Only the span counts, and a NUL byte is part of it. */
    assert_int_equal(hashtab_hash("abcdef", 3), hashtab_hash("abc", 3));
    assert_int_not_equal(hashtab_hash("a\0b", 3), hashtab_hash("a\0c", 3));
    assert_int_equal(hashtab_hash(NULL, 0), hashtab_hash("", 0));

    /* Similar keys spread over the low bits that a power-of-two mask keeps. */
    bool seen[64] = {false};
    size_t distinct = 0;
    char name[KEY_SIZE];
    for (int i = 0; i < 64; i++) {
        snprintf(name, sizeof(name), "model-%06d", i);
        uint32_t bucket = hashtab_hash(name, strlen(name)) & 63u;
        if (!seen[bucket]) {
            seen[bucket] = true;
            distinct++;
        }
    }
    assert_true(distinct >= 32);

    assert_true(hashtab_name_equal("abc", 3, "abcd", 3));
    assert_false(hashtab_name_equal("abc", 3, "abd", 3));
    assert_false(hashtab_name_equal("abc", 3, "abc", 2));
    assert_true(hashtab_name_equal(NULL, 0, "", 0));
}

static void test_empty_table(void **state)
{
    (void)state;
    hashtab_t table;
    hashtab_init(&table);
    names_t names = names_new(1, "only-");
    assert_null(table.slots);
    assert_int_equal(table.capacity, 0);
    assert_int_equal(hashtab_size(&table), 0);
    assert_int_equal(lookup(&table, &names, name_hash(&names, 0), 0), 0);
    assert_int_equal(hashtab_reserve(&table, 0), 0);
    assert_null(table.slots); /* nothing to hold: nothing allocated */
    hashtab_clear(&table);

    hashtab_t copy;
    assert_int_equal(hashtab_copy(&copy, &table), 0);
    assert_null(copy.slots);
    hashtab_release(&table);
    hashtab_release(&table); /* safe twice */
    hashtab_release(&copy);
    free(names.names);
}

static void test_growth_keeps_every_entry(void **state)
{
    (void)state;
    hashtab_t table = {0};
    names_t names = names_new(1000, "grow-");
    size_t last_capacity = 0, growths = 0;
    for (size_t i = 0; i < names.count; i++) {
        assert_int_equal(hashtab_reserve(&table, i + 1), 0);
        /* A power of two, never below the minimum, load <= 0.5. */
        assert_true(table.capacity >= HASHTAB_MIN_CAPACITY);
        assert_int_equal(table.capacity & (table.capacity - 1), 0);
        assert_true((i + 1) * 2 <= table.capacity);
        if (table.capacity != last_capacity) {
            growths++;
            last_capacity = table.capacity;
            /* Everything inserted so far survived the rehash. */
            for (size_t j = 0; j < i; j++)
                assert_int_equal(lookup(&table, &names, name_hash(&names, j), j), j + 1);
        }
        hashtab_insert(&table, name_hash(&names, i), (uint32_t)i + 1);
    }
    assert_int_equal(table.capacity, 2048); /* 1000 entries at load <= 0.5 */
    assert_int_equal(growths, 8);           /* 16, 32, ..., 2048 */
    assert_int_equal(hashtab_size(&table), 1000);
    expect_well_formed(&table);

    /* Reserving less than held never shrinks or moves anything. */
    hashtab_slot_t *slots = table.slots;
    assert_int_equal(hashtab_reserve(&table, 10), 0);
    assert_ptr_equal(table.slots, slots);
    assert_int_equal(table.capacity, 2048);

    /* clear keeps the capacity and finds nothing; the table is refilled without allocating. */
    hashtab_clear(&table);
    assert_int_equal(hashtab_size(&table), 0);
    assert_int_equal(table.capacity, 2048);
    assert_int_equal(lookup(&table, &names, name_hash(&names, 5), 5), 0);
    hashtab_insert(&table, name_hash(&names, 5), 6);
    assert_int_equal(lookup(&table, &names, name_hash(&names, 5), 5), 6);
    assert_ptr_equal(table.slots, slots);
    hashtab_release(&table);
    free(names.names);
}

static void test_collisions(void **state)
{
    (void)state;
    hashtab_t table = {0};
    names_t names = names_new(6, "same-");
    assert_int_equal(hashtab_reserve(&table, names.count), 0);
    assert_int_equal(table.capacity, 16);
    /* Full 32-bit collisions: the match callback alone tells the entries apart. */
    for (size_t i = 0; i < 3; i++)
        hashtab_insert(&table, 7u, (uint32_t)i + 1);
    /* Different hashes, same home slot (7 modulo 16). */
    for (size_t i = 3; i < 6; i++)
        hashtab_insert(&table, 7u + 16u * (uint32_t)i, (uint32_t)i + 1);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(lookup(&table, &names, 7u, i), i + 1);
    for (size_t i = 3; i < 6; i++)
        assert_int_equal(lookup(&table, &names, 7u + 16u * (uint32_t)i, i), i + 1);
    /* The right name under the wrong hash is not found: the stored hash is compared first. */
    assert_int_equal(lookup(&table, &names, 8u, 0), 0);
    assert_int_equal(lookup(&table, &names, 7u, 3), 0);
    /* One cluster of six from slot 7. */
    for (size_t i = 7; i < 13; i++)
        assert_int_not_equal(table.slots[i].value, 0);
    assert_int_equal(table.slots[13].value, 0);
    expect_well_formed(&table);

    /* A found slot's value may be rewritten in place (the registry moves a first holder). */
    hashtab_slot_t *slot = hashtab_find(&table, 7u, match_name, &names, "same-1", 6);
    assert_non_null(slot);
    slot->value = 5; /* names[4] under the hash of names[1]: the entry now holds "same-4" */
    assert_int_equal(lookup(&table, &names, 7u, 1), 0);
    assert_int_equal(lookup(&table, &names, 7u, 4), 5);
    hashtab_release(&table);
    free(names.names);
}

static void test_remove_inside_cluster_and_wrapped(void **state)
{
    (void)state;
    hashtab_t table = {0};
    names_t names = names_new(6, "rm-");
    assert_int_equal(hashtab_reserve(&table, names.count), 0);
    assert_int_equal(table.capacity, 16);
    /* Homes 14, 14, 15, 15, 0, 1: the cluster wraps from slot 14 round to slot 3. */
    const uint32_t hashes[6] = {14, 30, 15, 31, 16, 1};
    for (size_t i = 0; i < 6; i++)
        hashtab_insert(&table, hashes[i], (uint32_t)i + 1);
    assert_int_equal(table.slots[14].value, 1);
    assert_int_equal(table.slots[15].value, 2);
    assert_int_equal(table.slots[0].value, 3);
    assert_int_equal(table.slots[1].value, 4);
    assert_int_equal(table.slots[2].value, 5);
    assert_int_equal(table.slots[3].value, 6);

    /* Removing the cluster's head moves later entries back, but none before its home. */
    hashtab_remove(&table, hashtab_find(&table, 14, match_name, &names, "rm-0", 4));
    assert_int_equal(hashtab_size(&table), 5);
    expect_well_formed(&table);
    for (size_t i = 1; i < 6; i++)
        assert_int_equal(lookup(&table, &names, hashes[i], i), i + 1);
    assert_int_equal(lookup(&table, &names, hashes[0], 0), 0);
    /* "rm-5" (home 1) must still sit at or after slot 1. */
    hashtab_slot_t *last = hashtab_find(&table, 1, match_name, &names, "rm-5", 4);
    assert_non_null(last);
    assert_true(last - table.slots >= 1 && last - table.slots <= 3);

    /* Removing across the wrap-around, then the rest, empties every slot. */
    hashtab_remove(&table, hashtab_find(&table, 16, match_name, &names, "rm-4", 4));
    expect_well_formed(&table);
    for (size_t i = 1; i < 6; i++) {
        if (i == 4)
            continue;
        assert_int_equal(lookup(&table, &names, hashes[i], i), i + 1);
    }
    const size_t order[4] = {3, 1, 5, 2};
    for (size_t k = 0; k < 4; k++) {
        size_t i = order[k];
        hashtab_remove(&table, hashtab_find(&table, hashes[i], match_name, &names, names.names[i],
                                            strlen(names.names[i])));
        expect_well_formed(&table);
        for (size_t m = k + 1; m < 4; m++)
            assert_int_equal(lookup(&table, &names, hashes[order[m]], order[m]), order[m] + 1);
    }
    assert_int_equal(hashtab_size(&table), 0);
    for (size_t i = 0; i < table.capacity; i++)
        assert_int_equal(table.slots[i].value, 0);
    hashtab_release(&table);
    free(names.names);
}

static void test_many_keys(void **state)
{
    (void)state;
    hashtab_t table = {0};
    names_t names = names_new(MANY_KEYS, "model-");
    names_t absent = names_new(1000, "absent-");
    assert_int_equal(hashtab_reserve(&table, MANY_KEYS), 0);
    for (size_t i = 0; i < MANY_KEYS; i++)
        hashtab_insert(&table, name_hash(&names, i), (uint32_t)i + 1);
    assert_int_equal(hashtab_size(&table), MANY_KEYS);
    for (size_t i = 0; i < MANY_KEYS; i++)
        assert_int_equal(lookup(&table, &names, name_hash(&names, i), i), i + 1);
    for (size_t i = 0; i < absent.count; i++) {
        const char *name = absent.names[i];
        assert_null(
            hashtab_find(&table, name_hash(&absent, i), match_name, &names, name, strlen(name)));
    }

    /* A copy keeps every slot position and is independent of the original. */
    hashtab_t copy;
    assert_int_equal(hashtab_copy(&copy, &table), 0);
    assert_int_equal(copy.capacity, table.capacity);
    assert_memory_equal(copy.slots, table.slots, table.capacity * sizeof(*table.slots));

    /* Remove every even key: the odd ones stay found, the even ones are gone. */
    for (size_t i = 0; i < MANY_KEYS; i += 2) {
        const char *name = names.names[i];
        hashtab_slot_t *slot =
            hashtab_find(&table, name_hash(&names, i), match_name, &names, name, strlen(name));
        assert_non_null(slot);
        hashtab_remove(&table, slot);
    }
    assert_int_equal(hashtab_size(&table), MANY_KEYS / 2);
    expect_well_formed(&table);
    for (size_t i = 0; i < MANY_KEYS; i++)
        assert_int_equal(lookup(&table, &names, name_hash(&names, i), i), i % 2 ? i + 1 : 0);
    /* The copy did not change. */
    assert_int_equal(hashtab_size(&copy), MANY_KEYS);
    assert_int_equal(lookup(&copy, &names, name_hash(&names, 0), 0), 1);

    /* Re-inserting them fits the same capacity (removal leaves no tombstones to fill it). */
    size_t capacity = table.capacity;
    assert_int_equal(hashtab_reserve(&table, MANY_KEYS), 0);
    assert_int_equal(table.capacity, capacity);
    for (size_t i = 0; i < MANY_KEYS; i += 2)
        hashtab_insert(&table, name_hash(&names, i), (uint32_t)i + 1);
    for (size_t i = 0; i < MANY_KEYS; i++)
        assert_int_equal(lookup(&table, &names, name_hash(&names, i), i), i + 1);
    expect_well_formed(&table);

    hashtab_release(&copy);
    hashtab_release(&table);
    free(names.names);
    free(absent.names);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_and_equal),
        cmocka_unit_test(test_empty_table),
        cmocka_unit_test(test_growth_keeps_every_entry),
        cmocka_unit_test(test_collisions),
        cmocka_unit_test(test_remove_inside_cluster_and_wrapped),
        cmocka_unit_test(test_many_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
