/*
 * test_proto: the wire protocol module (proto/pm_proto.c): the pre-decode walker over every
 * msgpack format byte, UTF-8 validation, the request envelope and its exact error messages,
 * the op and error name tables, the argument readers, reply and request packing with their
 * decoders, and a fixed-seed mutation loop that must never crash (run it under ASan+UBSan).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pm_proto.h"

#define ERR_SIZE 512
#define FUZZ_ITERATIONS 100000
#define FUZZ_SEED UINT64_C(0x9E3779B97F4A7C15)

/* ------------------------------------------------------------------------------ helpers */

typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} packbuf_t;

static void pb_init(packbuf_t *b)
{
    msgpack_sbuffer_init(&b->sb);
    msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}

static void pb_destroy(packbuf_t *b)
{
    msgpack_sbuffer_destroy(&b->sb);
}

static void pack_s(packbuf_t *b, const char *s)
{
    assert_int_equal(pm_pack_str(&b->pk, s), 0);
}

/* Asserts that a span holds exactly the text expected. */
static void assert_span(const char *ptr, size_t len, const char *expected)
{
    assert_int_equal(len, strlen(expected));
    if (len > 0)
        assert_memory_equal(ptr, expected, len);
}

static void assert_starts_with(const char *text, const char *prefix)
{
    if (strncmp(text, prefix, strlen(prefix)) != 0)
        fail_msg("\"%s\" does not start with \"%s\"", text, prefix);
}

static void assert_contains(const char *text, const char *needle)
{
    if (strstr(text, needle) == NULL)
        fail_msg("\"%s\" does not contain \"%s\"", text, needle);
}

static int precheck(const void *data, size_t size, int depth, char *err)
{
    err[0] = '\0';
    return pm_proto_precheck(data, size, depth, err, ERR_SIZE);
}

/* Accepted as one whole object, and every strict prefix of it is refused as truncated. */
static void assert_object_and_prefixes(const unsigned char *data, size_t size)
{
    char err[ERR_SIZE];
    assert_int_equal(precheck(data, size, 16, err), 0);
    for (size_t cut = 1; cut < size; cut++) {
        assert_int_equal(precheck(data, cut, 16, err), -1);
        assert_true(strstr(err, "unexpected end of data") != NULL ||
                    strstr(err, "runs past the end") != NULL ||
                    strstr(err, "does not fit") != NULL);
    }
}

/* --------------------------------------------------------------------- precheck: scalars */

static void test_precheck_scalar_families(void **state)
{
    (void)state;
    static const unsigned char one_byte[] = {0x00, 0x01, 0x7f, 0xe0, 0xf0, 0xff, 0xc0, 0xc2, 0xc3};
    char err[ERR_SIZE];
    for (size_t i = 0; i < sizeof one_byte; i++)
        assert_int_equal(precheck(&one_byte[i], 1, 16, err), 0);

    static const unsigned char uint8[] = {0xcc, 0xff};
    static const unsigned char uint16[] = {0xcd, 0x01, 0x02};
    static const unsigned char uint32[] = {0xce, 0x01, 0x02, 0x03, 0x04};
    static const unsigned char uint64[] = {0xcf, 1, 2, 3, 4, 5, 6, 7, 8};
    static const unsigned char int8[] = {0xd0, 0x80};
    static const unsigned char int16[] = {0xd1, 0x80, 0x00};
    static const unsigned char int32[] = {0xd2, 0x80, 0, 0, 0};
    static const unsigned char int64[] = {0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0};
    static const unsigned char float32[] = {0xca, 0x3f, 0xc0, 0x00, 0x00};
    static const unsigned char float64[] = {0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0};
    assert_object_and_prefixes(uint8, sizeof uint8);
    assert_object_and_prefixes(uint16, sizeof uint16);
    assert_object_and_prefixes(uint32, sizeof uint32);
    assert_object_and_prefixes(uint64, sizeof uint64);
    assert_object_and_prefixes(int8, sizeof int8);
    assert_object_and_prefixes(int16, sizeof int16);
    assert_object_and_prefixes(int32, sizeof int32);
    assert_object_and_prefixes(int64, sizeof int64);
    assert_object_and_prefixes(float32, sizeof float32);
    assert_object_and_prefixes(float64, sizeof float64);

    /* A lone format byte of a multi-byte scalar is truncated. */
    static const unsigned char lone[] = {0xcc, 0xcd, 0xce, 0xcf, 0xd0,
                                         0xd1, 0xd2, 0xd3, 0xca, 0xcb};
    for (size_t i = 0; i < sizeof lone; i++) {
        assert_int_equal(precheck(&lone[i], 1, 16, err), -1);
        assert_string_equal(err, "unexpected end of data at offset 0");
    }
}

static void test_precheck_never_used_bin_ext(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    static const unsigned char c1[] = {0xc1};
    assert_int_equal(precheck(c1, 1, 16, err), -1);
    assert_string_equal(err, "format byte 0xc1 (never used) at offset 0");

    static const unsigned char bins[][4] = {
        {0xc4, 0x01, 'a'}, {0xc5, 0x00, 0x01, 'a'}, {0xc6, 0x00, 0x00, 0x00}};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(precheck(bins[i], sizeof bins[i], 16, err), -1);
        assert_string_equal(err, "binary data where text was expected");
    }
    static const unsigned char exts[] = {0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8};
    for (size_t i = 0; i < sizeof exts; i++) {
        unsigned char buf[20] = {0};
        buf[0] = exts[i];
        assert_int_equal(precheck(buf, sizeof buf, 16, err), -1);
        assert_string_equal(err, "ext types are not supported");
    }
    /* Deep inside a map too: {"a": [bin]} */
    static const unsigned char nested_bin[] = {0x81, 0xa1, 'a', 0x91, 0xc4, 0x01, 'x'};
    assert_int_equal(precheck(nested_bin, sizeof nested_bin, 16, err), -1);
    assert_string_equal(err, "binary data where text was expected");
    static const unsigned char nested_c1[] = {0x92, 0xc0, 0xc1};
    assert_int_equal(precheck(nested_c1, sizeof nested_c1, 16, err), -1);
    assert_string_equal(err, "format byte 0xc1 (never used) at offset 2");
}

/* ---------------------------------------------------------------------- precheck: str */

static void test_precheck_strings(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    static const unsigned char fixstr[] = {0xa3, 'a', 'b', 'c'};
    static const unsigned char empty[] = {0xa0};
    static const unsigned char str8[] = {0xd9, 0x02, 'h', 'i'};
    static const unsigned char str16[] = {0xda, 0x00, 0x02, 'h', 'i'};
    static const unsigned char str32[] = {0xdb, 0x00, 0x00, 0x00, 0x02, 'h', 'i'};
    assert_int_equal(precheck(empty, sizeof empty, 16, err), 0);
    assert_object_and_prefixes(fixstr, sizeof fixstr);
    assert_object_and_prefixes(str8, sizeof str8);
    assert_object_and_prefixes(str16, sizeof str16);
    assert_object_and_prefixes(str32, sizeof str32);

    static const unsigned char short8[] = {0xd9, 0x05, 'a', 'b', 'c'};
    assert_int_equal(precheck(short8, sizeof short8, 16, err), -1);
    assert_string_equal(err, "string of 5 bytes at offset 0 runs past the end (3 bytes left)");
    static const unsigned char huge32[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'};
    assert_int_equal(precheck(huge32, sizeof huge32, 16, err), -1);
    assert_contains(err, "string of 4294967295 bytes");

    /* A 300-byte str8 / 70000-byte str32: real lengths beyond the fix range. */
    unsigned char *big = malloc(70005);
    assert_non_null(big);
    big[0] = 0xdb;
    big[1] = 0x00;
    big[2] = 0x01;
    big[3] = 0x11;
    big[4] = 0x70; /* 0x00011170 = 70000 */
    memset(big + 5, 'x', 70000);
    assert_int_equal(precheck(big, 70005, 16, err), 0);
    big[5 + 69999] = (char)0xff; /* last byte invalid UTF-8 */
    assert_int_equal(precheck(big, 70005, 16, err), -1);
    assert_string_equal(err, "string at offset 0 is not valid UTF-8");
    free(big);
}

/* ---------------------------------------------------------------- precheck: containers */

static void test_precheck_containers(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    static const unsigned char fixarray[] = {0x93, 0x01, 0xc0, 0xa1, 'x'};
    static const unsigned char array16[] = {0xdc, 0x00, 0x02, 0xc2, 0xc3};
    static const unsigned char array32[] = {0xdd, 0x00, 0x00, 0x00, 0x01, 0x05};
    static const unsigned char fixmap[] = {0x82, 0xa1, 'a', 0x01, 0xa1, 'b', 0x90};
    static const unsigned char map16[] = {0xde, 0x00, 0x01, 0xa1, 'k', 0x80};
    static const unsigned char map32[] = {0xdf, 0x00, 0x00, 0x00, 0x01, 0x01, 0x02};
    assert_object_and_prefixes(fixarray, sizeof fixarray);
    assert_object_and_prefixes(array16, sizeof array16);
    assert_object_and_prefixes(array32, sizeof array32);
    assert_object_and_prefixes(fixmap, sizeof fixmap);
    assert_object_and_prefixes(map16, sizeof map16);
    assert_object_and_prefixes(map32, sizeof map32);

    static const unsigned char empties[][5] = {{0x90},
                                               {0x80},
                                               {0xdc, 0x00, 0x00},
                                               {0xde, 0x00, 0x00},
                                               {0xdd, 0x00, 0x00, 0x00, 0x00},
                                               {0xdf, 0x00, 0x00, 0x00, 0x00}};
    static const size_t empty_sizes[] = {1, 1, 3, 3, 5, 5};
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(precheck(empties[i], empty_sizes[i], 16, err), 0);

    /* Counts larger than the bytes left, each family; a map needs two objects per entry. */
    static const unsigned char fixarray_lie[] = {0x9f, 0x01};
    assert_int_equal(precheck(fixarray_lie, sizeof fixarray_lie, 16, err), -1);
    assert_string_equal(err, "array of 15 elements at offset 0 does not fit in the 1 bytes left");
    static const unsigned char map_lie[] = {0x82, 0x01, 0x02, 0x03}; /* needs 4, has 3 */
    assert_int_equal(precheck(map_lie, sizeof map_lie, 16, err), -1);
    assert_string_equal(err, "map of 2 entries at offset 0 does not fit in the 3 bytes left");
    static const unsigned char map16_lie[] = {0xde, 0xff, 0xff, 0x01, 0x01};
    assert_int_equal(precheck(map16_lie, sizeof map16_lie, 16, err), -1);
    assert_contains(err, "map of 65535 entries");
    /* Exactly enough declared, but the data ends early. */
    static const unsigned char short_array[] = {0x92, 0xcd, 0x01, 0x02};
    assert_int_equal(precheck(short_array, sizeof short_array, 16, err), -1);
    assert_string_equal(err, "unexpected end of data at offset 4");
}

static void test_precheck_huge_array32_refused(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    /* 4 billion elements declared, ten bytes given: refused by arithmetic, nothing read. */
    unsigned char buf[15] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(precheck(buf, sizeof buf, 16, err), -1);
    assert_string_equal(err,
                        "array of 4294967295 elements at offset 0 does not fit in the 10 bytes "
                        "left");
    static const unsigned char map32[] = {0xdf, 0x80, 0x00, 0x00, 0x00, 0x01, 0x01};
    assert_int_equal(precheck(map32, sizeof map32, 16, err), -1);
    assert_contains(err, "map of 2147483648 entries");

    /* Through the request decoder: {"op": "keys", "args": {"x": array32(0xffffffff)}} is a
     * bad request whose message comes from the walker, i.e. msgpack-c never saw it. */
    static const unsigned char request[] = {0x82, 0xa2, 'o',  'p',  0xa4, 'k',  'e',  'y',
                                            's',  0xa4, 'a',  'r',  'g',  's',  0x81, 0xa1,
                                            'x',  0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0};
    pm_request_t req;
    assert_int_equal(pm_request_decode(&req, request, sizeof request, err, ERR_SIZE),
                     PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request is not valid msgpack: array of 4294967295 elements at "
                             "offset 17 does not fit in the 2 bytes left");
    assert_null(req.id);
    assert_null(req.unpacked.zone); /* the unpacker never ran */
    pm_request_clear(&req);
}

static void test_precheck_depth(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    unsigned char nest[40];
    /* 16 nested one-element arrays around nil: depth 16. */
    memset(nest, 0x91, 16);
    nest[16] = 0xc0;
    assert_int_equal(precheck(nest, 17, 16, err), 0);
    assert_int_equal(precheck(nest, 17, 15, err), -1);
    assert_string_equal(err, "nesting deeper than 15 levels");
    /* 17 levels (the innermost empty) are one too many. */
    memset(nest, 0x91, 16);
    nest[16] = 0x90;
    assert_int_equal(precheck(nest, 17, 16, err), -1);
    assert_string_equal(err, "nesting deeper than 16 levels");
    /* Maps count the same way: {"a": {"a": ... nil}} */
    unsigned char maps[64];
    size_t n = 0;
    for (int i = 0; i < 16; i++) {
        maps[n++] = 0x81;
        maps[n++] = 0xa1;
        maps[n++] = 'a';
    }
    maps[n++] = 0xc0;
    assert_int_equal(precheck(maps, n, 16, err), 0);
    assert_int_equal(precheck(maps, n, 15, err), -1);
    /* Depth 0 allows scalars only. */
    static const unsigned char scalar[] = {0x05};
    static const unsigned char empty_array[] = {0x90};
    assert_int_equal(precheck(scalar, 1, 0, err), 0);
    assert_int_equal(precheck(empty_array, 1, 0, err), -1);
    /* Siblings do not add depth: [[1], [2], [[3]]] at depth 3. */
    static const unsigned char siblings[] = {0x93, 0x91, 0x01, 0x91, 0x02, 0x91, 0x91, 0x03};
    assert_int_equal(precheck(siblings, sizeof siblings, 3, err), 0);
    assert_int_equal(precheck(siblings, sizeof siblings, 2, err), -1);

    /* A million nested arrays: refused at level 17, without recursion. */
    size_t deep_size = 1000000;
    unsigned char *deep = malloc(deep_size);
    assert_non_null(deep);
    memset(deep, 0x91, deep_size);
    assert_int_equal(precheck(deep, deep_size, 16, err), -1);
    assert_string_equal(err, "nesting deeper than 16 levels");
    /* A requested depth above the walker's stack is clamped to 64. */
    assert_int_equal(precheck(deep, deep_size, 1000000, err), -1);
    assert_string_equal(err, "nesting deeper than 64 levels");
    free(deep);
}

static void test_precheck_one_object_only(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    static const unsigned char two[] = {0xc0, 0xc0};
    assert_int_equal(precheck(two, sizeof two, 16, err), -1);
    assert_string_equal(err, "1 trailing bytes after the object");
    static const unsigned char map_then_junk[] = {0x80, 0x01, 0x02, 0x03};
    assert_int_equal(precheck(map_then_junk, sizeof map_then_junk, 16, err), -1);
    assert_string_equal(err, "3 trailing bytes after the object");
    assert_int_equal(precheck("", 0, 16, err), -1);
    assert_string_equal(err, "empty message");
    assert_int_equal(pm_proto_precheck(NULL, 0, 16, NULL, 0), -1); /* err may be NULL */
}

/* ------------------------------------------------------------------------------ UTF-8 */

static void test_utf8(void **state)
{
    (void)state;
    struct {
        const char *bytes;
        bool valid;
    } cases[] = {
        {"", true},
        {"plain ascii", true},
        {"\xc3\xa9", true},              /* U+00E9 */
        {"\xe2\x82\xac", true},          /* U+20AC */
        {"\xf0\x9f\x98\x80", true},      /* U+1F600, 4 bytes */
        {"\xf4\x8f\xbf\xbf", true},      /* U+10FFFF, the last one */
        {"\xed\x9f\xbf", true},          /* U+D7FF, just below the surrogates */
        {"\xee\x80\x80", true},          /* U+E000, just above */
        {"\xc2\x80", true},              /* U+0080, smallest 2-byte */
        {"\xe0\xa0\x80", true},          /* U+0800, smallest 3-byte */
        {"\xf0\x90\x80\x80", true},      /* U+10000, smallest 4-byte */
        {"\xc0\x80", false},             /* overlong NUL */
        {"\xc1\xbf", false},             /* overlong */
        {"\xe0\x80\x80", false},         /* overlong 3-byte */
        {"\xe0\x9f\xbf", false},         /* overlong 3-byte, top */
        {"\xf0\x80\x80\x80", false},     /* overlong 4-byte */
        {"\xf0\x8f\xbf\xbf", false},     /* overlong 4-byte, top */
        {"\xed\xa0\x80", false},         /* U+D800 surrogate */
        {"\xed\xbf\xbf", false},         /* U+DFFF surrogate */
        {"\xf4\x90\x80\x80", false},     /* U+110000 */
        {"\xf5\x80\x80\x80", false},     /* lead byte F5 */
        {"\xff", false},                 /* never valid */
        {"\x80", false},                 /* lone continuation */
        {"a\xbf", false},                /* continuation after ASCII */
        {"\xe2\x82", false},             /* truncated 3-byte */
        {"\xf0\x9f\x98", false},         /* truncated 4-byte */
        {"\xc3", false},                 /* truncated 2-byte */
        {"\xc3\x28", false},             /* bad continuation */
        {"\xe2\x28\xa1", false},         /* bad first continuation */
        {"\xe2\x82\x28", false},         /* bad second continuation */
        {"\xf0\x9f\x98\x28", false},     /* bad third continuation */
        {"abcdefgh\xc3\xa9", true},      /* after the 8-byte fast path */
        {"abcdefghijklmno\x80", false},  /* invalid byte in the second word's last slot */
        {"abcdefg\x80hijklmnop", false}, /* invalid byte inside the first word */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (pm_utf8_valid(cases[i].bytes, strlen(cases[i].bytes)) != cases[i].valid)
            fail_msg("case %zu: expected %s", i, cases[i].valid ? "valid" : "invalid");
    }
    /* Length is what counts, not a NUL: U+0000 is valid UTF-8, and a sequence cut by len is
     * truncated even though the bytes continue. */
    assert_true(pm_utf8_valid("a\0b", 3));
    assert_false(pm_utf8_valid("\xe2\x82\xac", 2));
    assert_true(pm_utf8_valid(NULL, 0));

    /* The precheck applies it to every str, nested ones included. */
    char err[ERR_SIZE];
    static const unsigned char surrogate_in_array[] = {0x92, 0xa1, 'a', 0xa3, 0xed, 0xa0, 0x80};
    assert_int_equal(precheck(surrogate_in_array, sizeof surrogate_in_array, 16, err), -1);
    assert_string_equal(err, "string at offset 3 is not valid UTF-8");
    static const unsigned char overlong_key[] = {0x81, 0xa2, 0xc0, 0x80, 0x01};
    assert_int_equal(precheck(overlong_key, sizeof overlong_key, 16, err), -1);
    static const unsigned char four_byte[] = {0xa4, 0xf0, 0x9f, 0x98, 0x80};
    assert_int_equal(precheck(four_byte, sizeof four_byte, 16, err), 0);
}

/* ---------------------------------------------------------------------------- envelope */

/* Decodes b's bytes; returns the code and leaves the message in err. */
static pm_error_t decode(pm_request_t *req, const packbuf_t *b, char *err)
{
    err[0] = '\0';
    return pm_request_decode(req, b->sb.data, b->sb.size, err, ERR_SIZE);
}

static void test_envelope_valid(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    packbuf_t b;
    pb_init(&b);
    msgpack_pack_map(&b.pk, 3);
    pack_s(&b, "op");
    pack_s(&b, "get");
    pack_s(&b, "args");
    msgpack_pack_map(&b.pk, 1);
    pack_s(&b, "provider_name");
    pack_s(&b, "openai");
    pack_s(&b, "id");
    msgpack_pack_int(&b.pk, 42);

    pm_request_t req;
    assert_int_equal(decode(&req, &b, err), PM_OK);
    assert_int_equal(req.op, PM_OP_GET);
    assert_non_null(req.args);
    assert_int_equal(req.args->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(req.args->via.map.size, 1);
    assert_non_null(req.id);
    assert_int_equal(req.id->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(req.id->via.u64, 42);
    /* Strings point into the caller's bytes (documented lifetime). */
    pm_str_t s;
    assert_int_equal(pm_arg_str(&req, "provider_name", &s, err, ERR_SIZE), 1);
    assert_true(s.ptr >= b.sb.data && s.ptr + s.len <= b.sb.data + b.sb.size);
    pm_request_clear(&req);
    pm_request_clear(&req); /* safe twice */
    assert_int_equal(req.op, PM_OP_COUNT_);
    assert_null(req.id);
    pb_destroy(&b);

    /* No args, no id. */
    pb_init(&b);
    msgpack_pack_map(&b.pk, 1);
    pack_s(&b, "op");
    pack_s(&b, "health");
    assert_int_equal(decode(&req, &b, err), PM_OK);
    assert_int_equal(req.op, PM_OP_HEALTH);
    assert_null(req.args);
    assert_null(req.id);
    pm_request_clear(&req);
    pb_destroy(&b);
}

static void test_envelope_not_msgpack(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    pm_request_t req;
    static const unsigned char c1[] = {0xc1};
    assert_int_equal(pm_request_decode(&req, c1, 1, err, ERR_SIZE), PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request is not valid msgpack: format byte 0xc1 (never used) at "
                             "offset 0");
    assert_null(req.id);
    pm_request_clear(&req);

    /* A map with an id whose later bytes are broken: the id cannot be read. */
    static const unsigned char broken[] = {0x82, 0xa2, 'i', 'd', 0x07, 0xa2, 'o', 'p', 0xa1};
    assert_int_equal(pm_request_decode(&req, broken, sizeof broken, err, ERR_SIZE),
                     PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request is not valid msgpack: string of 1 bytes at offset 8 runs "
                             "past the end (0 bytes left)");
    assert_null(req.id);
    pm_request_clear(&req);

    /* Invalid UTF-8 and bin inside args. */
    static const unsigned char bad_text[] = {0x82, 0xa2, 'o',  'p',  0xa3, 'g', 'e',
                                             't',  0xa4, 'a',  'r',  'g',  's', 0x81,
                                             0xa1, 'k',  0xa2, 0xc3, 0x28};
    assert_int_equal(pm_request_decode(&req, bad_text, sizeof bad_text, err, ERR_SIZE),
                     PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request is not valid msgpack: string at offset 16 is not valid "
                             "UTF-8");
    pm_request_clear(&req);
    static const unsigned char bin_arg[] = {0x82, 0xa2, 'o', 'p', 0xa3, 'g',  'e', 't',  0xa4,
                                            'a',  'r',  'g', 's', 0x81, 0xa1, 'k', 0xc4, 0x00};
    assert_int_equal(pm_request_decode(&req, bin_arg, sizeof bin_arg, err, ERR_SIZE),
                     PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request is not valid msgpack: binary data where text was expected");
    pm_request_clear(&req);

    /* Empty, and trailing bytes after a good request. */
    assert_int_equal(pm_request_decode(&req, "", 0, err, ERR_SIZE), PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request is not valid msgpack: empty message");
    pm_request_clear(&req);
    static const unsigned char trailing[] = {0x81, 0xa2, 'o', 'p', 0xa4, 'k', 'e', 'y', 's', 0xc0};
    assert_int_equal(pm_request_decode(&req, trailing, sizeof trailing, err, ERR_SIZE),
                     PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request is not valid msgpack: 1 trailing bytes after the object");
    pm_request_clear(&req);

    /* Deeper than 16: args holding 15 nested arrays is depth 17. */
    packbuf_t b;
    pb_init(&b);
    msgpack_pack_map(&b.pk, 2);
    pack_s(&b, "op");
    pack_s(&b, "keys");
    pack_s(&b, "args");
    msgpack_pack_map(&b.pk, 1);
    pack_s(&b, "x");
    for (int i = 0; i < 14; i++)
        msgpack_pack_array(&b.pk, 1);
    msgpack_pack_nil(&b.pk);
    assert_int_equal(decode(&req, &b, err), PM_OK); /* depth 16 */
    pm_request_clear(&req);
    pb_destroy(&b);
    pb_init(&b);
    msgpack_pack_map(&b.pk, 2);
    pack_s(&b, "op");
    pack_s(&b, "keys");
    pack_s(&b, "args");
    msgpack_pack_map(&b.pk, 1);
    pack_s(&b, "x");
    for (int i = 0; i < 15; i++)
        msgpack_pack_array(&b.pk, 1);
    msgpack_pack_nil(&b.pk);
    assert_int_equal(decode(&req, &b, err), PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request is not valid msgpack: nesting deeper than 16 levels");
    pm_request_clear(&req);
    pb_destroy(&b);
}

/* Packs {"op": "set_provider", "id": <id>, "args": {"provider": "p", "valid_models":
 * {"m": <bad>}}} where bad is a bin (bad_kind 0), invalid UTF-8 (1), or in args directly (2:
 * "name": bin). id_kind: 0 int 7, 1 str "r-1", 2 a bin id, 3 no id, 4 an id of invalid UTF-8,
 * 5 the id key given twice (7, then "second"). id_first puts the id before op. */
static void pack_bad_request(packbuf_t *b, int id_kind, int bad_kind, bool id_first)
{
    static const char bad_utf8[] = {(char)0xc3, (char)0x28};
    int entries = id_kind == 3 ? 2 : id_kind == 5 ? 4 : 3;
    msgpack_pack_map(&b->pk, (uint32_t)entries);
    for (int pass = 0; pass < 2; pass++) {
        if ((pass == 0) != id_first) {
            pack_s(b, "op");
            pack_s(b, "set_provider");
            pack_s(b, "args");
            msgpack_pack_map(&b->pk, 2);
            pack_s(b, "provider");
            pack_s(b, "p");
            if (bad_kind == 2) {
                pack_s(b, "name");
                msgpack_pack_bin(&b->pk, 2);
                msgpack_pack_bin_body(&b->pk, "ab", 2);
                continue;
            }
            pack_s(b, "valid_models");
            msgpack_pack_map(&b->pk, 1);
            pack_s(b, "m");
            if (bad_kind == 0) {
                msgpack_pack_bin(&b->pk, 2);
                msgpack_pack_bin_body(&b->pk, "ab", 2);
            } else {
                msgpack_pack_str(&b->pk, sizeof bad_utf8);
                msgpack_pack_str_body(&b->pk, bad_utf8, sizeof bad_utf8);
            }
            continue;
        }
        if (id_kind == 3)
            continue;
        pack_s(b, "id");
        if (id_kind == 0 || id_kind == 5) {
            msgpack_pack_int(&b->pk, 7);
        } else if (id_kind == 1) {
            pack_s(b, "r-1");
        } else if (id_kind == 2) {
            msgpack_pack_bin(&b->pk, 1);
            msgpack_pack_bin_body(&b->pk, "x", 1);
        } else {
            msgpack_pack_str(&b->pk, sizeof bad_utf8);
            msgpack_pack_str_body(&b->pk, bad_utf8, sizeof bad_utf8);
        }
        if (id_kind == 5) {
            pack_s(b, "id");
            pack_s(b, "second");
        }
    }
}

/* Issue 13: the id comes back whenever the envelope and the id itself are well-formed, even
 * when something inside args breaks an encoding rule. */
static void test_envelope_id_echoed_when_args_are_bad(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    pm_request_t req;
    for (int bad = 0; bad < 3; bad++) {
        for (int first = 0; first < 2; first++) {
            packbuf_t b;
            pb_init(&b);
            pack_bad_request(&b, 0, bad, first);
            assert_int_equal(decode(&req, &b, err), PM_ERR_BAD_REQUEST);
            assert_starts_with(err, "request is not valid msgpack: ");
            assert_non_null(req.id);
            assert_int_equal(req.id->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
            assert_int_equal(req.id->via.u64, 7);
            pm_request_clear(&req);
            pb_destroy(&b);

            pb_init(&b);
            pack_bad_request(&b, 1, bad, first);
            assert_int_equal(decode(&req, &b, err), PM_ERR_BAD_REQUEST);
            assert_non_null(req.id);
            assert_int_equal(req.id->type, MSGPACK_OBJECT_STR);
            assert_span(req.id->via.str.ptr, req.id->via.str.size, "r-1");
            pm_request_clear(&req);
            pb_destroy(&b);

            /* The first id wins, as in a well-formed request. */
            pb_init(&b);
            pack_bad_request(&b, 5, bad, first);
            assert_int_equal(decode(&req, &b, err), PM_ERR_BAD_REQUEST);
            assert_non_null(req.id);
            assert_int_equal(req.id->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
            assert_int_equal(req.id->via.u64, 7);
            pm_request_clear(&req);
            pb_destroy(&b);

            /* An id that breaks the rules itself, or none: no id. */
            for (int id_kind = 2; id_kind <= 4; id_kind++) {
                pb_init(&b);
                pack_bad_request(&b, id_kind, bad, first);
                assert_int_equal(decode(&req, &b, err), PM_ERR_BAD_REQUEST);
                assert_null(req.id);
                pm_request_clear(&req);
                pb_destroy(&b);
            }
        }
    }

    /* A container id with a nested array is decoded whole. */
    static const unsigned char nested[] = {0x82, 0xa2, 'i', 'd', 0x92, 0x01, 0x91, 0xa1,
                                           'x',  0xa4, 'a', 'r', 'g',  's',  0xc4, 0x00};
    assert_int_equal(pm_request_decode(&req, nested, sizeof nested, err, ERR_SIZE),
                     PM_ERR_BAD_REQUEST);
    assert_non_null(req.id);
    assert_int_equal(req.id->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(req.id->via.array.size, 2);
    assert_int_equal(req.id->via.array.ptr[1].type, MSGPACK_OBJECT_ARRAY);
    pm_request_clear(&req);

    /* Ext values and a deep nest in args are skipped by their extent. */
    unsigned char deep[64] = {0x83, 0xa2, 'i',  'd',  0x05, 0xa1, 'x',
                              0xd5, 0x01, 0x00, 0x00, 0xa1, 'y'};
    size_t n = 13;
    for (int i = 0; i < 30; i++)
        deep[n++] = 0x91;
    deep[n++] = 0xc0;
    assert_int_equal(pm_request_decode(&req, deep, n, err, ERR_SIZE), PM_ERR_BAD_REQUEST);
    assert_non_null(req.id);
    assert_int_equal(req.id->via.u64, 5);
    pm_request_clear(&req);

    /* The envelope cannot be read: truncated, a lying count, trailing bytes, not a map. */
    static const unsigned char truncated[] = {0x82, 0xa2, 'i', 'd',  0x07, 0xa4, 'a',
                                              'r',  'g',  's', 0xc4, 0x05, 'a'};
    static const unsigned char lying[] = {0x83, 0xa2, 'i', 'd', 0x07, 0xa1, 'x', 0xc4, 0x00};
    static const unsigned char trailing[] = {0x81, 0xa2, 'i', 'd', 0x07, 0xc4, 0x00};
    static const unsigned char array[] = {0x92, 0xa2, 'i', 'd', 0xc4, 0x00};
    const unsigned char *unreadable[] = {truncated, lying, trailing, array};
    size_t sizes[] = {sizeof truncated, sizeof lying, sizeof trailing, sizeof array};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(pm_request_decode(&req, unreadable[i], sizes[i], err, ERR_SIZE),
                         PM_ERR_BAD_REQUEST);
        assert_null(req.id);
        pm_request_clear(&req);
    }
}

static void test_envelope_too_large(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    pm_request_t req;
    size_t size = PM_PROTO_MAX_MESSAGE_SIZE + 1;
    unsigned char *big = calloc(1, size);
    assert_non_null(big);
    assert_int_equal(pm_request_decode(&req, big, size, err, ERR_SIZE), PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request of 1048577 bytes exceeds the limit of 1048576 bytes");
    pm_request_clear(&req);
    free(big);
}

static void test_envelope_not_a_map(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    pm_request_t req;
    static const unsigned char array[] = {0x92, 0x01, 0x02};
    static const unsigned char string[] = {0xa2, 'o', 'p'};
    static const unsigned char nil[] = {0xc0};
    const unsigned char *inputs[] = {array, string, nil};
    size_t sizes[] = {sizeof array, sizeof string, sizeof nil};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(pm_request_decode(&req, inputs[i], sizes[i], err, ERR_SIZE),
                         PM_ERR_BAD_REQUEST);
        assert_string_equal(err, "request must be a map");
        assert_null(req.id);
        pm_request_clear(&req);
    }
}

static void test_envelope_no_op(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    pm_request_t req;
    packbuf_t b;

    /* No op at all; int id kept. */
    pb_init(&b);
    msgpack_pack_map(&b.pk, 1);
    pack_s(&b, "id");
    msgpack_pack_int(&b.pk, 7);
    assert_int_equal(decode(&req, &b, err), PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request has no 'op' string");
    assert_non_null(req.id);
    assert_int_equal(req.id->via.u64, 7);
    pm_request_clear(&req);
    pb_destroy(&b);

    /* op of the wrong type; str id kept. */
    pb_init(&b);
    msgpack_pack_map(&b.pk, 2);
    pack_s(&b, "op");
    msgpack_pack_int(&b.pk, 5);
    pack_s(&b, "id");
    pack_s(&b, "req-1");
    assert_int_equal(decode(&req, &b, err), PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request has no 'op' string");
    assert_non_null(req.id);
    assert_int_equal(req.id->type, MSGPACK_OBJECT_STR);
    assert_span(req.id->via.str.ptr, req.id->via.str.size, "req-1");
    pm_request_clear(&req);
    pb_destroy(&b);

    /* Empty map, no id. */
    static const unsigned char empty_map[] = {0x80};
    assert_int_equal(pm_request_decode(&req, empty_map, 1, err, ERR_SIZE), PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "request has no 'op' string");
    assert_null(req.id);
    pm_request_clear(&req);
}

static void test_envelope_args_not_map(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    pm_request_t req;
    packbuf_t b;

    pb_init(&b);
    msgpack_pack_map(&b.pk, 3);
    pack_s(&b, "op");
    pack_s(&b, "get");
    pack_s(&b, "args");
    msgpack_pack_array(&b.pk, 1);
    msgpack_pack_int(&b.pk, 1);
    pack_s(&b, "id");
    msgpack_pack_array(&b.pk, 2); /* an array id */
    msgpack_pack_int(&b.pk, 1);
    pack_s(&b, "x");
    assert_int_equal(decode(&req, &b, err), PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "'args' must be a map");
    assert_non_null(req.id);
    assert_int_equal(req.id->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(req.id->via.array.size, 2);
    pm_request_clear(&req);
    pb_destroy(&b);

    /* nil is not a map either. */
    pb_init(&b);
    msgpack_pack_map(&b.pk, 2);
    pack_s(&b, "op");
    pack_s(&b, "get");
    pack_s(&b, "args");
    msgpack_pack_nil(&b.pk);
    assert_int_equal(decode(&req, &b, err), PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "'args' must be a map");
    assert_null(req.id);
    pm_request_clear(&req);
    pb_destroy(&b);
}

static void test_envelope_unknown_op(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    pm_request_t req;
    packbuf_t b;

    pb_init(&b);
    msgpack_pack_map(&b.pk, 2);
    pack_s(&b, "id");
    msgpack_pack_int(&b.pk, -3);
    pack_s(&b, "op");
    pack_s(&b, "frobnicate");
    assert_int_equal(decode(&req, &b, err), PM_ERR_UNKNOWN_OP);
    assert_string_equal(err, "Unknown op 'frobnicate'");
    assert_int_equal(req.op, PM_OP_COUNT_);
    assert_non_null(req.id);
    assert_int_equal(req.id->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_int_equal(req.id->via.i64, -3);
    pm_request_clear(&req);
    pb_destroy(&b);

    /* Case matters; so do prefixes and suffixes. */
    const char *near_misses[] = {"GET", "ge", "gets", "", "keys ", "get\n", "health\0"};
    size_t near_lens[] = {3, 2, 4, 0, 5, 4, 7};
    for (size_t i = 0; i < 7; i++) {
        pb_init(&b);
        msgpack_pack_map(&b.pk, 1);
        pack_s(&b, "op");
        assert_int_equal(pm_pack_strn(&b.pk, near_misses[i], near_lens[i]), 0);
        assert_int_equal(decode(&req, &b, err), PM_ERR_UNKNOWN_OP);
        assert_starts_with(err, "Unknown op '");
        pm_request_clear(&req);
        pb_destroy(&b);
    }

    /* A 300-byte op is quoted by its first 128 bytes. */
    char long_op[301];
    memset(long_op, 'z', 300);
    long_op[300] = '\0';
    pb_init(&b);
    msgpack_pack_map(&b.pk, 1);
    pack_s(&b, "op");
    pack_s(&b, long_op);
    assert_int_equal(decode(&req, &b, err), PM_ERR_UNKNOWN_OP);
    char expected[ERR_SIZE];
    snprintf(expected, sizeof expected, "Unknown op '%.128s'", long_op);
    assert_string_equal(err, expected);
    assert_int_equal(strlen(err), strlen("Unknown op ''") + 128);
    pm_request_clear(&req);
    pb_destroy(&b);

    /* The cut never splits a character: 127 ASCII bytes then a 3-byte euro sign. */
    char utf8_op[140];
    memset(utf8_op, 'a', 127);
    memcpy(utf8_op + 127, "\xe2\x82\xac", 3);
    memcpy(utf8_op + 130, "tail", 5);
    pb_init(&b);
    msgpack_pack_map(&b.pk, 1);
    pack_s(&b, "op");
    pack_s(&b, utf8_op);
    assert_int_equal(decode(&req, &b, err), PM_ERR_UNKNOWN_OP);
    snprintf(expected, sizeof expected, "Unknown op '%.127s'", utf8_op);
    assert_string_equal(err, expected);
    pm_request_clear(&req);
    pb_destroy(&b);

    /* A message cut by a small err buffer never ends in half a character: "Unknown op '"
     * is 12 bytes, then "a" and a euro sign (3 bytes) that a 15-byte buffer cannot hold. */
    pb_init(&b);
    msgpack_pack_map(&b.pk, 1);
    pack_s(&b, "op");
    pack_s(&b, "a\xe2\x82\xac");
    char small[17];
    assert_int_equal(pm_request_decode(&req, b.sb.data, b.sb.size, small, 15), PM_ERR_UNKNOWN_OP);
    assert_string_equal(small, "Unknown op 'a");
    pm_request_clear(&req);
    assert_int_equal(pm_request_decode(&req, b.sb.data, b.sb.size, small, 17), PM_ERR_UNKNOWN_OP);
    assert_string_equal(small, "Unknown op 'a\xe2\x82\xac"); /* the quote did not fit */
    pm_request_clear(&req);
    pb_destroy(&b);

    /* A NUL inside the op is shown as \0, not cut (that would name the known op "health"). */
    pb_init(&b);
    msgpack_pack_map(&b.pk, 1);
    pack_s(&b, "op");
    assert_int_equal(pm_pack_strn(&b.pk, "health\0x\0", 9), 0);
    assert_int_equal(decode(&req, &b, err), PM_ERR_UNKNOWN_OP);
    assert_string_equal(err, "Unknown op 'health\\0x\\0'");
    pm_request_clear(&req);
    pb_destroy(&b);
    /* 128 NULs: all shown, and the message is not cut short. */
    char nuls[PM_PROTO_MAX_OP_ECHO + 10];
    memset(nuls, 0, sizeof nuls);
    pb_init(&b);
    msgpack_pack_map(&b.pk, 1);
    pack_s(&b, "op");
    assert_int_equal(pm_pack_strn(&b.pk, nuls, sizeof nuls), 0);
    assert_int_equal(decode(&req, &b, err), PM_ERR_UNKNOWN_OP);
    assert_int_equal(strlen(err), strlen("Unknown op ''") + 2 * PM_PROTO_MAX_OP_ECHO);
    pm_request_clear(&req);
    pb_destroy(&b);

    /* Unknown op with args that are not a map: the envelope error comes first. */
    pb_init(&b);
    msgpack_pack_map(&b.pk, 2);
    pack_s(&b, "op");
    pack_s(&b, "nope");
    pack_s(&b, "args");
    msgpack_pack_int(&b.pk, 1);
    assert_int_equal(decode(&req, &b, err), PM_ERR_BAD_REQUEST);
    assert_string_equal(err, "'args' must be a map");
    pm_request_clear(&req);
    pb_destroy(&b);
}

static void test_envelope_duplicates_and_odd_keys(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    pm_request_t req;
    packbuf_t b;

    /* Duplicate keys: the first wins, for op, id and args alike. */
    pb_init(&b);
    msgpack_pack_map(&b.pk, 6);
    pack_s(&b, "op");
    pack_s(&b, "keys");
    pack_s(&b, "id");
    msgpack_pack_int(&b.pk, 1);
    pack_s(&b, "op");
    pack_s(&b, "health");
    pack_s(&b, "id");
    msgpack_pack_int(&b.pk, 2);
    pack_s(&b, "args");
    msgpack_pack_map(&b.pk, 0);
    pack_s(&b, "args");
    msgpack_pack_int(&b.pk, 3); /* would be an error if it won */
    assert_int_equal(decode(&req, &b, err), PM_OK);
    assert_int_equal(req.op, PM_OP_KEYS);
    assert_int_equal(req.id->via.u64, 1);
    assert_int_equal(req.args->type, MSGPACK_OBJECT_MAP);
    pm_request_clear(&req);
    pb_destroy(&b);

    /* Non-string keys and unknown keys are ignored. */
    pb_init(&b);
    msgpack_pack_map(&b.pk, 5);
    msgpack_pack_int(&b.pk, 1);
    pack_s(&b, "op");
    msgpack_pack_nil(&b.pk);
    pack_s(&b, "x");
    msgpack_pack_array(&b.pk, 0);
    msgpack_pack_int(&b.pk, 2);
    pack_s(&b, "op");
    pack_s(&b, "contains");
    pack_s(&b, "extra");
    msgpack_pack_double(&b.pk, 1.5);
    assert_int_equal(decode(&req, &b, err), PM_OK);
    assert_int_equal(req.op, PM_OP_CONTAINS);
    assert_null(req.args);
    assert_null(req.id);
    pm_request_clear(&req);
    pb_destroy(&b);

    /* An id may be anything: nil is an id too (present, so echoed). */
    pb_init(&b);
    msgpack_pack_map(&b.pk, 2);
    pack_s(&b, "op");
    pack_s(&b, "keys");
    pack_s(&b, "id");
    msgpack_pack_nil(&b.pk);
    assert_int_equal(decode(&req, &b, err), PM_OK);
    assert_non_null(req.id);
    assert_int_equal(req.id->type, MSGPACK_OBJECT_NIL);
    pm_request_clear(&req);
    pb_destroy(&b);
}

/* ----------------------------------------------------------------------- name tables */

static void test_op_names(void **state)
{
    (void)state;
    static const char *const expected[PM_OP_COUNT_] = {
        "get",
        "get_provider_config",
        "getitem",
        "contains",
        "keys",
        "get_all_provider_names",
        "values",
        "items",
        "merged_models",
        "valid_scoped_models",
        "get_api_for_model_string",
        "validate_model",
        "get_available_models",
        "get_short_name",
        "find_model",
        "discover_models",
        "job_status",
        "persist_provider_configs",
        "set_provider",
        "remove_provider",
        "set_short_name",
        "health",
        "model_status",
        "provider_status",
        "verify_models",
        "snapshot",
    };
    for (int op = 0; op < PM_OP_COUNT_; op++) {
        const char *name = pm_op_name((pm_op_t)op);
        assert_non_null(name);
        assert_string_equal(name, expected[op]);
        size_t len = strlen(name);
        assert_int_equal(pm_op_from_name(name, len), op);
        /* Unterminated: the name followed by other bytes, read by length only. */
        char buf[64];
        memcpy(buf, name, len);
        memcpy(buf + len, "_more", 5);
        assert_int_equal(pm_op_from_name(buf, len), op);
        assert_int_equal(pm_op_from_name(buf, len + 5), PM_OP_COUNT_);
        if (len > 1)
            assert_int_equal(pm_op_from_name(name, len - 1), PM_OP_COUNT_);
        /* One byte changed at each position is never another op. */
        for (size_t i = 0; i < len; i++) {
            memcpy(buf, name, len);
            buf[i] = 'X';
            assert_int_equal(pm_op_from_name(buf, len), PM_OP_COUNT_);
        }
    }
    assert_null(pm_op_name(PM_OP_COUNT_));
    assert_null(pm_op_name((pm_op_t)-1));
    assert_int_equal(pm_op_from_name(NULL, 3), PM_OP_COUNT_);
    assert_int_equal(pm_op_from_name("", 0), PM_OP_COUNT_);

    for (int op = 0; op < PM_OP_COUNT_; op++) {
        bool write = op == PM_OP_DISCOVER_MODELS || op == PM_OP_JOB_STATUS ||
                     op == PM_OP_PERSIST_PROVIDER_CONFIGS || op == PM_OP_SET_PROVIDER ||
                     op == PM_OP_REMOVE_PROVIDER || op == PM_OP_SET_SHORT_NAME ||
                     op == PM_OP_MODEL_STATUS || op == PM_OP_PROVIDER_STATUS ||
                     op == PM_OP_VERIFY_MODELS;
        if (pm_op_is_write((pm_op_t)op) != write)
            fail_msg("pm_op_is_write(%s) should be %d", expected[op], write);
    }
    assert_false(pm_op_is_write(PM_OP_COUNT_));

    /* Safe to resend: every read, and the reads that go through the writer (job_status,
     * model_status, provider_status); no write. */
    for (int op = 0; op < PM_OP_COUNT_; op++) {
        bool safe = op == PM_OP_JOB_STATUS || op == PM_OP_MODEL_STATUS ||
                    op == PM_OP_PROVIDER_STATUS || !pm_op_is_write((pm_op_t)op);
        if (pm_op_safe_to_resend((pm_op_t)op) != safe)
            fail_msg("pm_op_safe_to_resend(%s) should be %d", expected[op], safe);
    }
    assert_true(pm_op_safe_to_resend(PM_OP_JOB_STATUS));
    assert_true(pm_op_safe_to_resend(PM_OP_HEALTH));
    assert_false(pm_op_safe_to_resend(PM_OP_SET_PROVIDER));
    assert_false(pm_op_safe_to_resend(PM_OP_DISCOVER_MODELS));
    assert_false(pm_op_safe_to_resend(PM_OP_VERIFY_MODELS));
    assert_true(pm_op_safe_to_resend(PM_OP_MODEL_STATUS));
    assert_true(pm_op_is_write(PM_OP_VERIFY_MODELS));
    /* snapshot is a read answered by the front end: never through the writer, resendable. */
    assert_false(pm_op_is_write(PM_OP_SNAPSHOT));
    assert_true(pm_op_safe_to_resend(PM_OP_SNAPSHOT));
    assert_false(pm_op_safe_to_resend(PM_OP_COUNT_));
    assert_false(pm_op_safe_to_resend((pm_op_t)-1));
}

static void test_error_names(void **state)
{
    (void)state;
    static const char *const expected[PM_ERR_COUNT_] = {
        "ok",       "bad_request",  "unknown_op",  "not_found", "invalid_model",
        "conflict", "unauthorized", "unavailable", "internal"};
    for (int code = 0; code < PM_ERR_COUNT_; code++) {
        assert_string_equal(pm_error_name((pm_error_t)code), expected[code]);
        assert_int_equal(pm_error_from_name(expected[code], strlen(expected[code])), code);
    }
    assert_string_equal(pm_error_name(PM_ERR_COUNT_), "internal");
    assert_string_equal(pm_error_name((pm_error_t)-5), "internal");
    assert_int_equal(pm_error_from_name("not_foundx", 10), PM_ERR_COUNT_);
    assert_int_equal(pm_error_from_name("not_foundx", 9), PM_ERR_NOT_FOUND);
    assert_int_equal(pm_error_from_name("Conflict", 8), PM_ERR_COUNT_);
    assert_int_equal(pm_error_from_name(NULL, 0), PM_ERR_COUNT_);
}

/* ----------------------------------------------------------------------- argument readers */

/* {"op": "set_provider", "args": {...every kind of value...}} */
static void pack_args_request(packbuf_t *b)
{
    msgpack_packer *pk = &b->pk;
    msgpack_pack_map(pk, 2);
    pack_s(b, "op");
    pack_s(b, "set_provider");
    pack_s(b, "args");
    msgpack_pack_map(pk, 17);
    pack_s(b, "s");
    pack_s(b, "text");
    pack_s(b, "empty");
    pack_s(b, "");
    pack_s(b, "t");
    msgpack_pack_true(pk);
    pack_s(b, "f");
    msgpack_pack_false(pk);
    pack_s(b, "n");
    msgpack_pack_nil(pk);
    pack_s(b, "i");
    msgpack_pack_int(pk, 5);
    pack_s(b, "m");
    msgpack_pack_map(pk, 2);
    pack_s(b, "long-a");
    pack_s(b, "a");
    pack_s(b, "long-b");
    msgpack_pack_nil(pk);
    pack_s(b, "em");
    msgpack_pack_map(pk, 0);
    pack_s(b, "arr");
    msgpack_pack_array(pk, 2);
    pack_s(b, "x");
    pack_s(b, "y");
    pack_s(b, "ea");
    msgpack_pack_array(pk, 0);
    pack_s(b, "map_int_value");
    msgpack_pack_map(pk, 1);
    pack_s(b, "k");
    msgpack_pack_int(pk, 1);
    pack_s(b, "map_int_key");
    msgpack_pack_map(pk, 1);
    msgpack_pack_int(pk, 1);
    pack_s(b, "v");
    pack_s(b, "arr_mixed");
    msgpack_pack_array(pk, 2);
    pack_s(b, "x");
    msgpack_pack_int(pk, 2);
    pack_s(b, "arr_nil");
    msgpack_pack_array(pk, 1);
    msgpack_pack_nil(pk);
    pack_s(b, "nul");
    assert_int_equal(pm_pack_strn(pk, "a\0b", 3), 0);
    pack_s(b, "map_nul");
    msgpack_pack_map(pk, 1);
    pack_s(b, "k");
    assert_int_equal(pm_pack_strn(pk, "v\0", 2), 0);
    pack_s(b, "s");
    pack_s(b, "second"); /* duplicate: the first "s" wins */
}

static void test_arg_readers(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    pm_request_t req;
    packbuf_t b;
    pb_init(&b);
    pack_args_request(&b);
    assert_int_equal(decode(&req, &b, err), PM_OK);
    assert_int_equal(req.op, PM_OP_SET_PROVIDER);

    pm_str_t s = {"untouched", 9};
    /* strings */
    assert_int_equal(pm_arg_str(&req, "s", &s, err, ERR_SIZE), 1);
    assert_span(s.ptr, s.len, "text");
    assert_int_equal(pm_arg_str(&req, "empty", &s, err, ERR_SIZE), 1);
    assert_int_equal(s.len, 0);
    s = (pm_str_t){"untouched", 9};
    assert_int_equal(pm_arg_str(&req, "absent", &s, err, ERR_SIZE), 0);
    assert_int_equal(pm_arg_str(&req, "n", &s, err, ERR_SIZE), 0); /* nil = not given */
    assert_span(s.ptr, s.len, "untouched");                        /* out left alone */
    assert_int_equal(pm_arg_str(&req, "i", &s, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'i' must be a string");
    assert_int_equal(pm_arg_str(&req, "t", &s, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 't' must be a string");
    assert_int_equal(pm_arg_str(&req, "m", &s, err, ERR_SIZE), -1);
    assert_int_equal(pm_arg_str(&req, "nul", &s, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'nul' must not contain NUL bytes");

    /* string or nil */
    assert_int_equal(pm_arg_str_or_nil(&req, "n", &s, err, ERR_SIZE), 2);
    assert_null(s.ptr);
    assert_int_equal(s.len, 0);
    assert_int_equal(pm_arg_str_or_nil(&req, "s", &s, err, ERR_SIZE), 1);
    assert_span(s.ptr, s.len, "text");
    assert_int_equal(pm_arg_str_or_nil(&req, "absent", &s, err, ERR_SIZE), 0);
    assert_int_equal(pm_arg_str_or_nil(&req, "f", &s, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'f' must be a string");

    /* booleans */
    bool flag = false;
    assert_int_equal(pm_arg_bool(&req, "t", &flag, err, ERR_SIZE), 1);
    assert_true(flag);
    assert_int_equal(pm_arg_bool(&req, "f", &flag, err, ERR_SIZE), 1);
    assert_false(flag);
    flag = true;
    assert_int_equal(pm_arg_bool(&req, "absent", &flag, err, ERR_SIZE), 0);
    assert_int_equal(pm_arg_bool(&req, "n", &flag, err, ERR_SIZE), 0);
    assert_true(flag); /* a default set by the caller survives */
    assert_int_equal(pm_arg_bool(&req, "i", &flag, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'i' must be a boolean");
    assert_int_equal(pm_arg_bool(&req, "s", &flag, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 's' must be a boolean");

    /* maps of strings */
    const msgpack_object *obj = NULL;
    /* "m" holds a nil short name: values must be strings (the contract's str -> str). */
    assert_int_equal(pm_arg_str_map(&req, "m", &obj, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'm' must be a map of strings");
    assert_int_equal(pm_arg_str_map(&req, "em", &obj, err, ERR_SIZE), 1);
    assert_int_equal(obj->via.map.size, 0);
    assert_int_equal(pm_arg_str_map(&req, "absent", &obj, err, ERR_SIZE), 0);
    assert_int_equal(pm_arg_str_map(&req, "n", &obj, err, ERR_SIZE), 0);
    assert_int_equal(pm_arg_str_map(&req, "map_int_value", &obj, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'map_int_value' must be a map of strings");
    assert_int_equal(pm_arg_str_map(&req, "map_int_key", &obj, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'map_int_key' must be a map of strings");
    assert_int_equal(pm_arg_str_map(&req, "arr", &obj, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'arr' must be a map of strings");
    assert_int_equal(pm_arg_str_map(&req, "map_nul", &obj, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'map_nul' must not contain NUL bytes");

    /* arrays of strings */
    assert_int_equal(pm_arg_str_array(&req, "arr", &obj, err, ERR_SIZE), 1);
    assert_int_equal(obj->via.array.size, 2);
    assert_span(obj->via.array.ptr[1].via.str.ptr, obj->via.array.ptr[1].via.str.size, "y");
    assert_int_equal(pm_arg_str_array(&req, "ea", &obj, err, ERR_SIZE), 1);
    assert_int_equal(obj->via.array.size, 0);
    assert_int_equal(pm_arg_str_array(&req, "absent", &obj, err, ERR_SIZE), 0);
    assert_int_equal(pm_arg_str_array(&req, "arr_mixed", &obj, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'arr_mixed' must be an array of strings");
    assert_int_equal(pm_arg_str_array(&req, "arr_nil", &obj, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'arr_nil' must be an array of strings");
    assert_int_equal(pm_arg_str_array(&req, "m", &obj, err, ERR_SIZE), -1);
    assert_string_equal(err, "argument 'm' must be an array of strings");
    assert_int_equal(pm_arg_str_array(&req, "s", &obj, err, ERR_SIZE), -1);

    /* raw lookup; nil is found; first duplicate wins */
    const msgpack_object *raw = pm_arg_find(&req, "n");
    assert_non_null(raw);
    assert_int_equal(raw->type, MSGPACK_OBJECT_NIL);
    assert_null(pm_arg_find(&req, "absent"));
    raw = pm_arg_find(&req, "s");
    assert_span(raw->via.str.ptr, raw->via.str.size, "text");

    assert_int_equal(pm_arg_require("provider_name", err, ERR_SIZE), -1);
    assert_string_equal(err, "missing required argument 'provider_name'");

    pm_request_clear(&req);
    pb_destroy(&b);

    /* A request without args: every reader says "absent". */
    pb_init(&b);
    msgpack_pack_map(&b.pk, 1);
    pack_s(&b, "op");
    pack_s(&b, "keys");
    assert_int_equal(decode(&req, &b, err), PM_OK);
    assert_int_equal(pm_arg_str(&req, "s", &s, err, ERR_SIZE), 0);
    assert_int_equal(pm_arg_bool(&req, "t", &flag, err, ERR_SIZE), 0);
    assert_int_equal(pm_arg_str_map(&req, "m", &obj, err, ERR_SIZE), 0);
    assert_int_equal(pm_arg_str_array(&req, "arr", &obj, err, ERR_SIZE), 0);
    assert_null(pm_arg_find(&req, "s"));
    pm_request_clear(&req);
    pb_destroy(&b);
}

static void test_str_dup_and_map_get(void **state)
{
    (void)state;
    char *copy = pm_str_dup((pm_str_t){"hello world", 5});
    assert_non_null(copy);
    assert_string_equal(copy, "hello");
    free(copy);
    copy = pm_str_dup((pm_str_t){NULL, 0});
    assert_non_null(copy);
    assert_string_equal(copy, "");
    free(copy);

    /* pm_map_get over a hand-made map */
    msgpack_object_kv kvs[3];
    memset(kvs, 0, sizeof kvs);
    kvs[0].key.type = MSGPACK_OBJECT_POSITIVE_INTEGER;
    kvs[0].key.via.u64 = 1;
    kvs[1].key.type = MSGPACK_OBJECT_STR;
    kvs[1].key.via.str.ptr = "keyXX";
    kvs[1].key.via.str.size = 3;
    kvs[1].val.type = MSGPACK_OBJECT_BOOLEAN;
    kvs[1].val.via.boolean = true;
    kvs[2].key.type = MSGPACK_OBJECT_STR;
    kvs[2].key.via.str.ptr = "";
    kvs[2].key.via.str.size = 0;
    kvs[2].val.type = MSGPACK_OBJECT_NIL;
    msgpack_object map = {.type = MSGPACK_OBJECT_MAP};
    map.via.map.size = 3;
    map.via.map.ptr = kvs;
    assert_ptr_equal(pm_map_get(&map, "key"), &kvs[1].val);
    assert_null(pm_map_get(&map, "keyX"));
    assert_null(pm_map_get(&map, "ke"));
    assert_ptr_equal(pm_map_get(&map, ""), &kvs[2].val);
    assert_null(pm_map_get(NULL, "key"));
    assert_null(pm_map_get(&map, NULL));
    msgpack_object not_map = {.type = MSGPACK_OBJECT_ARRAY};
    assert_null(pm_map_get(&not_map, "key"));
}

/* --------------------------------------------------------------------------- replies */

/* The str keys of a map, in order, joined by ','. */
static void key_order(const msgpack_object *map, char *out, size_t out_size)
{
    out[0] = '\0';
    size_t used = 0;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        int n = snprintf(out + used, out_size - used, "%s%.*s", i ? "," : "", (int)k->via.str.size,
                         k->via.str.ptr);
        assert_true(n > 0 && (size_t)n < out_size - used);
        used += (size_t)n;
    }
}

/* Decodes a request carrying the id kind requested, so that reply tests echo a real,
 * decoded id object: 0 none, 1 int, 2 str, 3 array. */
static const msgpack_object *make_id(pm_request_t *req, packbuf_t *b, int kind)
{
    char err[ERR_SIZE];
    pb_init(b);
    msgpack_pack_map(&b->pk, kind ? 2 : 1);
    pack_s(b, "op");
    pack_s(b, "health");
    if (kind) {
        pack_s(b, "id");
        if (kind == 1) {
            msgpack_pack_long_long(&b->pk, 1234567890123LL);
        } else if (kind == 2) {
            pack_s(b, "abc-\xc3\xa9");
        } else {
            msgpack_pack_array(&b->pk, 3);
            msgpack_pack_int(&b->pk, 1);
            pack_s(b, "two");
            msgpack_pack_array(&b->pk, 0);
        }
    }
    assert_int_equal(decode(req, b, err), PM_OK);
    return req->id;
}

static void test_reply_ok_round_trip(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    for (int kind = 0; kind < 4; kind++) {
        pm_request_t req;
        packbuf_t in;
        const msgpack_object *id = make_id(&req, &in, kind);
        assert_true((id == NULL) == (kind == 0));

        packbuf_t out;
        pb_init(&out);
        assert_int_equal(pm_reply_ok_begin(&out.pk, id), 0);
        msgpack_pack_map(&out.pk, 1);
        pack_s(&out, "status");
        pack_s(&out, "ok");

        pm_reply_t rep;
        assert_int_equal(pm_reply_decode(&rep, out.sb.data, out.sb.size, err, ERR_SIZE), 0);
        assert_true(rep.ok);
        assert_int_equal(rep.code, PM_OK);
        assert_non_null(rep.result);
        const msgpack_object *status = pm_map_get(rep.result, "status");
        assert_non_null(status);
        assert_span(status->via.str.ptr, status->via.str.size, "ok");
        char order[128];
        key_order(&rep.unpacked.data, order, sizeof order);
        if (kind == 0) {
            assert_null(rep.id);
            assert_string_equal(order, "ok,result");
        } else {
            assert_non_null(rep.id);
            assert_true(msgpack_object_equal(*rep.id, *id));
            assert_string_equal(order, "ok,id,result");
        }
        pm_reply_clear(&rep);
        pm_reply_clear(&rep);
        pb_destroy(&out);
        pm_request_clear(&req);
        pb_destroy(&in);
    }

    /* A nil result is a result. */
    packbuf_t out;
    pb_init(&out);
    assert_int_equal(pm_reply_ok_begin(&out.pk, NULL), 0);
    msgpack_pack_nil(&out.pk);
    pm_reply_t rep;
    assert_int_equal(pm_reply_decode(&rep, out.sb.data, out.sb.size, err, ERR_SIZE), 0);
    assert_true(rep.ok);
    assert_non_null(rep.result);
    assert_int_equal(rep.result->type, MSGPACK_OBJECT_NIL);
    pm_reply_clear(&rep);
    pb_destroy(&out);
}

static void test_reply_error_round_trip(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    for (int kind = 0; kind < 4; kind++) {
        for (int code = PM_ERR_BAD_REQUEST; code < PM_ERR_COUNT_; code++) {
            pm_request_t req;
            packbuf_t in;
            const msgpack_object *id = make_id(&req, &in, kind);

            packbuf_t out;
            pb_init(&out);
            assert_int_equal(
                pm_reply_error(&out.pk, id, (pm_error_t)code, "Provider 'x\xc3\xa9' not found"), 0);
            pm_reply_t rep;
            assert_int_equal(pm_reply_decode(&rep, out.sb.data, out.sb.size, err, ERR_SIZE), 0);
            assert_false(rep.ok);
            assert_null(rep.result);
            assert_int_equal(rep.code, code);
            assert_span(rep.code_name.ptr, rep.code_name.len, pm_error_name((pm_error_t)code));
            assert_span(rep.message.ptr, rep.message.len, "Provider 'x\xc3\xa9' not found");
            char order[128];
            key_order(&rep.unpacked.data, order, sizeof order);
            assert_string_equal(order, kind ? "ok,id,error" : "ok,error");
            key_order(pm_map_get(&rep.unpacked.data, "error"), order, sizeof order);
            assert_string_equal(order, "code,message");
            if (kind)
                assert_true(msgpack_object_equal(*rep.id, *id));
            else
                assert_null(rep.id);
            pm_reply_clear(&rep);
            pb_destroy(&out);
            pm_request_clear(&req);
            pb_destroy(&in);
        }
    }
}

static void test_reply_error_repairs_text(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    struct {
        const char *message;
        const char *expected;
    } cases[] = {
        {NULL, ""},
        {"", ""},
        {"clean", "clean"},
        {"bad \xff byte", "bad \xef\xbf\xbd byte"},
        {"\xc3", "\xef\xbf\xbd"},
        {"cut \xe2\x82", "cut \xef\xbf\xbd\xef\xbf\xbd"},
        {"\xed\xa0\x80!", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd!"},
        {"ok \xe2\x82\xac", "ok \xe2\x82\xac"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        packbuf_t out;
        pb_init(&out);
        assert_int_equal(pm_reply_error(&out.pk, NULL, PM_ERR_INTERNAL, cases[i].message), 0);
        pm_reply_t rep;
        assert_int_equal(pm_reply_decode(&rep, out.sb.data, out.sb.size, err, ERR_SIZE), 0);
        assert_span(rep.message.ptr, rep.message.len, cases[i].expected);
        pm_reply_clear(&rep);
        pb_destroy(&out);
    }
    /* An out-of-range code packs "internal". */
    packbuf_t out;
    pb_init(&out);
    assert_int_equal(pm_reply_error(&out.pk, NULL, PM_ERR_COUNT_, "x"), 0);
    pm_reply_t rep;
    assert_int_equal(pm_reply_decode(&rep, out.sb.data, out.sb.size, err, ERR_SIZE), 0);
    assert_span(rep.code_name.ptr, rep.code_name.len, "internal");
    pm_reply_clear(&rep);
    pb_destroy(&out);
}

/* Packs {"ok": false, "error": {"code": code, "message": "m"}}. */
static void pack_error_reply(packbuf_t *b, const char *code)
{
    msgpack_pack_map(&b->pk, 2);
    pack_s(b, "ok");
    msgpack_pack_false(&b->pk);
    pack_s(b, "error");
    msgpack_pack_map(&b->pk, 2);
    pack_s(b, "code");
    pack_s(b, code);
    pack_s(b, "message");
    pack_s(b, "m");
}

static void test_reply_decode_errors(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    pm_reply_t rep;
    packbuf_t b;

    /* Unknown code word from a newer server: internal, name kept. */
    pb_init(&b);
    pack_error_reply(&b, "rate_limited");
    assert_int_equal(pm_reply_decode(&rep, b.sb.data, b.sb.size, err, ERR_SIZE), 0);
    assert_false(rep.ok);
    assert_int_equal(rep.code, PM_ERR_INTERNAL);
    assert_span(rep.code_name.ptr, rep.code_name.len, "rate_limited");
    pm_reply_clear(&rep);
    pb_destroy(&b);
    pb_init(&b);
    pack_error_reply(&b, "ok");
    assert_int_equal(pm_reply_decode(&rep, b.sb.data, b.sb.size, err, ERR_SIZE), 0);
    assert_int_equal(rep.code, PM_ERR_INTERNAL);
    pm_reply_clear(&rep);
    pb_destroy(&b);

    struct {
        const unsigned char *bytes;
        size_t size;
        const char *message;
    } cases[] = {
        {(const unsigned char *)"\xc1", 1,
         "reply is not valid msgpack: format byte 0xc1 "
         "(never used) at offset 0"},
        {(const unsigned char *)"\x90", 1, "reply must be a map"},
        {(const unsigned char *)"\x80", 1, "reply has no boolean 'ok'"},
        {(const unsigned char *)"\x81\xa2ok\x01", 5, "reply has no boolean 'ok'"},
        {(const unsigned char *)"\x81\xa2ok\xc3", 5, "reply has no 'result'"},
        {(const unsigned char *)"\x81\xa2ok\xc2", 5, "reply has no 'error' map"},
        {(const unsigned char *)"\x82\xa2ok\xc2\xa5"
                                "error\x90",
         12, "reply has no 'error' map"},
        {(const unsigned char *)"\x82\xa2ok\xc2\xa5"
                                "error\x80",
         12, "reply error has no 'code' string"},
        {(const unsigned char *)"\x82\xa2ok\xc2\xa5"
                                "error\x81\xa4"
                                "code\xa1x",
         19, "reply error has no 'message' string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        assert_int_equal(pm_reply_decode(&rep, cases[i].bytes, cases[i].size, err, ERR_SIZE), -1);
        assert_string_equal(err, cases[i].message);
        pm_reply_clear(&rep);
    }

    /* Depth: results may nest deeper than requests, up to 32. */
    unsigned char nest[64];
    pb_init(&b);
    assert_int_equal(pm_reply_ok_begin(&b.pk, NULL), 0); /* depth 1 */
    size_t header = b.sb.size;
    memcpy(nest, b.sb.data, header);
    pb_destroy(&b);
    memset(nest + header, 0x91, 31); /* depth 32 */
    nest[header + 31] = 0xc0;
    assert_int_equal(pm_reply_decode(&rep, nest, header + 32, err, ERR_SIZE), 0);
    pm_reply_clear(&rep);
    nest[header + 31] = 0x91; /* depth 33 */
    nest[header + 32] = 0xc0;
    assert_int_equal(pm_reply_decode(&rep, nest, header + 33, err, ERR_SIZE), -1);
    assert_string_equal(err, "reply is not valid msgpack: nesting deeper than 32 levels");
    pm_reply_clear(&rep);
}

/* --------------------------------------------------------------------------- requests */

static void test_request_begin_decodes(void **state)
{
    (void)state;
    char err[ERR_SIZE];
    for (int with_id = 0; with_id < 2; with_id++) {
        packbuf_t b;
        pb_init(&b);
        assert_int_equal(pm_request_begin(&b.pk, "set_short_name", with_id, -77), 0);
        msgpack_pack_map(&b.pk, 3);
        pack_s(&b, "provider");
        pack_s(&b, "openai");
        pack_s(&b, "long_name");
        pack_s(&b, "gpt-4o-2024-08-06");
        pack_s(&b, "short_name");
        pack_s(&b, "4o");

        pm_request_t req;
        assert_int_equal(decode(&req, &b, err), PM_OK);
        assert_int_equal(req.op, PM_OP_SET_SHORT_NAME);
        pm_str_t s;
        assert_int_equal(pm_arg_str(&req, "long_name", &s, err, ERR_SIZE), 1);
        assert_span(s.ptr, s.len, "gpt-4o-2024-08-06");
        char order[128];
        key_order(&req.unpacked.data, order, sizeof order);
        if (with_id) {
            assert_non_null(req.id);
            assert_int_equal(req.id->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
            assert_int_equal(req.id->via.i64, -77);
            assert_string_equal(order, "op,id,args");
        } else {
            assert_null(req.id);
            assert_string_equal(order, "op,args");
        }
        pm_request_clear(&req);
        pb_destroy(&b);
    }

    /* Every op packed by name decodes to itself. */
    for (int op = 0; op < PM_OP_COUNT_; op++) {
        packbuf_t b;
        pb_init(&b);
        assert_int_equal(pm_request_begin(&b.pk, pm_op_name((pm_op_t)op), true, op), 0);
        msgpack_pack_map(&b.pk, 0);
        pm_request_t req;
        assert_int_equal(decode(&req, &b, err), PM_OK);
        assert_int_equal(req.op, op);
        assert_int_equal(req.id->via.u64, (uint64_t)op);
        assert_int_equal(req.args->via.map.size, 0);
        pm_request_clear(&req);
        pb_destroy(&b);
    }

    /* pm_pack_str(NULL) is nil; pm_pack_strn keeps embedded bytes. */
    packbuf_t b;
    pb_init(&b);
    assert_int_equal(pm_pack_str(&b.pk, NULL), 0);
    assert_int_equal(b.sb.size, 1);
    assert_int_equal((unsigned char)b.sb.data[0], 0xc0);
    assert_int_equal(pm_pack_strn(&b.pk, "a\0b", 3), 0);
    assert_int_equal(b.sb.size, 5);
    assert_memory_equal(b.sb.data + 1,
                        "\xa3"
                        "a\0b",
                        4);
    pb_destroy(&b);
}

/* A write callback that always fails: the packers must say so. */
static int failing_write(void *data, const char *buf, size_t len)
{
    (void)data;
    (void)buf;
    (void)len;
    return -1;
}

static void test_packers_report_write_failure(void **state)
{
    (void)state;
    msgpack_packer pk;
    msgpack_packer_init(&pk, NULL, failing_write);
    assert_int_equal(pm_reply_ok_begin(&pk, NULL), -1);
    assert_int_equal(pm_reply_error(&pk, NULL, PM_ERR_NOT_FOUND, "x"), -1);
    assert_int_equal(pm_request_begin(&pk, "keys", true, 1), -1);
    assert_int_equal(pm_pack_str(&pk, "x"), -1);
    assert_int_equal(pm_pack_str(&pk, NULL), -1);
}

/* ------------------------------------------------------------------------------- fuzz */

static uint64_t s_rng_state;

static uint64_t rng_next(void)
{
    /* xorshift64*: fixed seed, same sequence on every run and machine. */
    s_rng_state ^= s_rng_state >> 12;
    s_rng_state ^= s_rng_state << 25;
    s_rng_state ^= s_rng_state >> 27;
    return s_rng_state * UINT64_C(2685821657736338717);
}

static size_t rng_below(size_t n)
{
    return n == 0 ? 0 : (size_t)(rng_next() % n);
}

/* Exercises every reader on a decoded request, as a handler would. */
static void poke_args(const pm_request_t *req)
{
    static const char *const names[] = {
        "provider_name", "provider",       "name",          "api_key",
        "valid_models",  "invalid_models", "force_refresh", "x"};
    char err[ERR_SIZE];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        pm_str_t s;
        bool flag;
        const msgpack_object *obj;
        (void)pm_arg_str(req, names[i], &s, err, ERR_SIZE);
        (void)pm_arg_str_or_nil(req, names[i], &s, err, ERR_SIZE);
        (void)pm_arg_bool(req, names[i], &flag, err, ERR_SIZE);
        (void)pm_arg_str_map(req, names[i], &obj, err, ERR_SIZE);
        (void)pm_arg_str_array(req, names[i], &obj, err, ERR_SIZE);
    }
}

static void test_fuzz_never_crashes(void **state)
{
    (void)state;
    /* Seeds: real requests and replies of several shapes. */
    enum { FUZZ_SEEDS = 4, FUZZ_MAX_INPUT = 512 };
    packbuf_t seeds[FUZZ_SEEDS];
    for (int i = 0; i < FUZZ_SEEDS; i++)
        pb_init(&seeds[i]);
    pm_request_begin(&seeds[0].pk, "set_provider", true, 9);
    pack_args_request(&seeds[0]); /* a nested request as the args value */
    pm_request_begin(&seeds[1].pk, "get", false, 0);
    msgpack_pack_map(&seeds[1].pk, 1);
    pack_s(&seeds[1], "provider_name");
    pack_s(&seeds[1], "openai");
    pm_reply_error(&seeds[2].pk, NULL, PM_ERR_NOT_FOUND, "Provider 'x' not found");
    pm_reply_ok_begin(&seeds[3].pk, NULL);
    msgpack_pack_array(&seeds[3].pk, 3);
    msgpack_pack_uint64(&seeds[3].pk, UINT64_MAX);
    msgpack_pack_double(&seeds[3].pk, -2.5);
    pack_s(&seeds[3], "\xf0\x9f\x98\x80");

    static const unsigned char interesting[] = {0xc1, 0xdd, 0xdf, 0xdb, 0xda, 0xd9, 0xdc,
                                                0xde, 0xff, 0x00, 0x7f, 0x80, 0x9f, 0xbf,
                                                0xc4, 0xc7, 0xd4, 0xed, 0xf4, 0xc0};
    unsigned char input[FUZZ_MAX_INPUT];
    char err[ERR_SIZE];
    s_rng_state = FUZZ_SEED;
    size_t accepted = 0;
    size_t prechecked = 0;

    for (int iteration = 0; iteration < FUZZ_ITERATIONS; iteration++) {
        size_t size;
        if (iteration % 8 == 0) {
            /* Pure noise. */
            size = rng_below(64);
            for (size_t i = 0; i < size; i++)
                input[i] = (unsigned char)rng_next();
        } else {
            const packbuf_t *seed = &seeds[rng_below(FUZZ_SEEDS)];
            size = seed->sb.size < FUZZ_MAX_INPUT ? seed->sb.size : FUZZ_MAX_INPUT;
            memcpy(input, seed->sb.data, size);
            /* Mostly one mutation, so that many inputs stay close to valid and reach the
             * envelope and argument checks; sometimes up to four. */
            size_t mutations = rng_below(4) == 0 ? 1 + rng_below(4) : 1;
            for (size_t m = 0; m < mutations && size > 0; m++) {
                switch (rng_below(5)) {
                case 0: /* flip a bit */
                    input[rng_below(size)] ^= (unsigned char)(1u << rng_below(8));
                    break;
                case 1: /* an interesting byte */
                    input[rng_below(size)] = interesting[rng_below(sizeof interesting)];
                    break;
                case 2: /* truncate */
                    size = rng_below(size + 1);
                    break;
                case 3: /* insert a random byte */
                    if (size < FUZZ_MAX_INPUT) {
                        size_t at = rng_below(size + 1);
                        memmove(input + at + 1, input + at, size - at);
                        input[at] = (unsigned char)rng_next();
                        size++;
                    }
                    break;
                default: /* overwrite a length field with a big one */
                {
                    size_t at = rng_below(size);
                    for (size_t k = at; k < size && k < at + 4; k++)
                        input[k] = 0xff;
                    break;
                }
                }
            }
        }

        pm_request_t req;
        pm_error_t code = pm_request_decode(&req, input, size, err, ERR_SIZE);
        assert_true(code == PM_OK || code == PM_ERR_BAD_REQUEST || code == PM_ERR_UNKNOWN_OP);
        if (code == PM_OK) {
            accepted++;
            assert_true(req.op < PM_OP_COUNT_);
            poke_args(&req);
        }
        pm_request_clear(&req);

        pm_reply_t rep;
        if (pm_reply_decode(&rep, input, size, err, ERR_SIZE) == 0 && !rep.ok)
            assert_true(rep.code > PM_OK && rep.code < PM_ERR_COUNT_);
        pm_reply_clear(&rep);

        /* Whatever the walker accepts, msgpack-c must decode completely. */
        if (size > 0 && pm_proto_precheck(input, size, PM_PROTO_MAX_DEPTH, NULL, 0) == 0) {
            prechecked++;
            msgpack_unpacked unpacked;
            msgpack_unpacked_init(&unpacked);
            size_t offset = 0;
            assert_int_equal(msgpack_unpack_next(&unpacked, (const char *)input, size, &offset),
                             MSGPACK_UNPACK_SUCCESS);
            assert_int_equal(offset, size);
            msgpack_unpacked_destroy(&unpacked);
        }
    }
    print_message("fuzz: %d inputs, %zu valid requests, %zu single objects\n", FUZZ_ITERATIONS,
                  accepted, prechecked);
    /* The loop really reached the decoders' inner paths, not just the first byte. */
    assert_true(accepted > 1000);
    assert_true(prechecked > accepted);
    for (int i = 0; i < FUZZ_SEEDS; i++)
        pb_destroy(&seeds[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_precheck_scalar_families),
        cmocka_unit_test(test_precheck_never_used_bin_ext),
        cmocka_unit_test(test_precheck_strings),
        cmocka_unit_test(test_precheck_containers),
        cmocka_unit_test(test_precheck_huge_array32_refused),
        cmocka_unit_test(test_precheck_depth),
        cmocka_unit_test(test_precheck_one_object_only),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_envelope_valid),
        cmocka_unit_test(test_envelope_not_msgpack),
        cmocka_unit_test(test_envelope_id_echoed_when_args_are_bad),
        cmocka_unit_test(test_envelope_too_large),
        cmocka_unit_test(test_envelope_not_a_map),
        cmocka_unit_test(test_envelope_no_op),
        cmocka_unit_test(test_envelope_args_not_map),
        cmocka_unit_test(test_envelope_unknown_op),
        cmocka_unit_test(test_envelope_duplicates_and_odd_keys),
        cmocka_unit_test(test_op_names),
        cmocka_unit_test(test_error_names),
        cmocka_unit_test(test_arg_readers),
        cmocka_unit_test(test_str_dup_and_map_get),
        cmocka_unit_test(test_reply_ok_round_trip),
        cmocka_unit_test(test_reply_error_round_trip),
        cmocka_unit_test(test_reply_error_repairs_text),
        cmocka_unit_test(test_reply_decode_errors),
        cmocka_unit_test(test_request_begin_decodes),
        cmocka_unit_test(test_packers_report_write_failure),
        cmocka_unit_test(test_fuzz_never_crashes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
