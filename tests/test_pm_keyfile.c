/*
 * test_pm_keyfile: the CURVE key-file format (proto/pm_keyfile): a written pair reads back as
 * the same keys, files get their modes whatever the umask, and bad files are refused with a
 * message that names the file and never the key.
 */
#define _XOPEN_SOURCE 700 /* nftw() */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "pm_keyfile.h"

#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

typedef struct {
    char dir[64];
} s_fixture_t;

static int s_setup(void **state)
{
    s_fixture_t *fixture = calloc(1, sizeof *fixture);
    if (!fixture)
        return -1;
    snprintf(fixture->dir, sizeof fixture->dir, "/tmp/pm-test-keyfile-XXXXXX");
    if (!mkdtemp(fixture->dir)) {
        free(fixture);
        return -1;
    }
    *state = fixture;
    return 0;
}

static int s_remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return remove(path);
}

static int s_teardown(void **state)
{
    s_fixture_t *fixture = *state;
    int rc = nftw(fixture->dir, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(fixture);
    return rc;
}

/* Writes text to dir/name; returns the path in path. */
static void s_write_file(const char *dir, const char *name, const char *text, char *path,
                         size_t path_size)
{
    int n = snprintf(path, path_size, "%s/%s", dir, name);
    assert_true(n > 0 && (size_t)n < path_size);
    FILE *file = fopen(path, "w");
    assert_non_null(file);
    assert_int_equal(fputs(text, file) >= 0, 1);
    assert_int_equal(fclose(file), 0);
}

static void test_round_trip(void **state)
{
    s_fixture_t *fixture = *state;
    char public_z85[PM_KEYFILE_Z85_LEN + 1], secret_z85[PM_KEYFILE_Z85_LEN + 1];
    char read_public[PM_KEYFILE_Z85_LEN + 1], read_secret[PM_KEYFILE_Z85_LEN + 1];
    char pub_public[PM_KEYFILE_Z85_LEN + 1];
    char path[PATH_MAX], err[512];
    assert_int_equal(zmq_curve_keypair(public_z85, secret_z85), 0);
    assert_int_equal(
        pm_keyfile_write(fixture->dir, "node-1", public_z85, secret_z85, err, sizeof err), 0);

    snprintf(path, sizeof path, "%s/node-1.key", fixture->dir);
    assert_int_equal(pm_keyfile_read(path, read_public, read_secret, err, sizeof err), 0);
    assert_string_equal(read_public, public_z85);
    assert_string_equal(read_secret, secret_z85);

    snprintf(path, sizeof path, "%s/node-1.pub", fixture->dir);
    assert_int_equal(pm_keyfile_read(path, pub_public, NULL, err, sizeof err), 0);
    assert_string_equal(pub_public, public_z85);
    /* The public file holds no secret: asking for one fails, naming the likely mistake. */
    assert_int_equal(pm_keyfile_read(path, read_public, read_secret, err, sizeof err), -1);
    assert_non_null(strstr(err, "no valid secret-key line"));
    assert_null(strstr(err, public_z85));

    /* An existing pair is never overwritten. */
    assert_int_equal(pm_keyfile_generate(fixture->dir, "node-1", err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create"));
    snprintf(path, sizeof path, "%s/node-1.key", fixture->dir);
    assert_int_equal(pm_keyfile_read(path, read_public, read_secret, err, sizeof err), 0);
    assert_string_equal(read_secret, secret_z85);
}

static void test_generate_makes_a_working_pair(void **state)
{
    s_fixture_t *fixture = *state;
    char public_z85[PM_KEYFILE_Z85_LEN + 1], secret_z85[PM_KEYFILE_Z85_LEN + 1];
    char derived[PM_KEYFILE_Z85_LEN + 1], path[PATH_MAX], err[512];
    char dir[128];
    /* A missing directory is created. */
    snprintf(dir, sizeof dir, "%s/keys", fixture->dir);
    assert_int_equal(pm_keyfile_generate(dir, "server", err, sizeof err), 0);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    snprintf(path, sizeof path, "%s/server.key", dir);
    assert_int_equal(pm_keyfile_read(path, public_z85, secret_z85, err, sizeof err), 0);
    /* The public key is the one that belongs to the secret key. */
    assert_int_equal(zmq_curve_public(derived, secret_z85), 0);
    assert_string_equal(derived, public_z85);
}

static void test_modes_whatever_the_umask(void **state)
{
    s_fixture_t *fixture = *state;
    char path[PATH_MAX], err[512];
    mode_t old = umask(0);
    int rc = pm_keyfile_generate(fixture->dir, "open", err, sizeof err);
    umask(077);
    int rc2 = pm_keyfile_generate(fixture->dir, "closed", err, sizeof err);
    umask(old);
    assert_int_equal(rc, 0);
    assert_int_equal(rc2, 0);
    const char *names[] = {"open", "closed"};
    for (size_t i = 0; i < 2; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s.key", fixture->dir, names[i]);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);
        snprintf(path, sizeof path, "%s/%s.pub", fixture->dir, names[i]);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0644);
    }
}

static void test_bad_length(void **state)
{
    s_fixture_t *fixture = *state;
    char public_z85[PM_KEYFILE_Z85_LEN + 1] = "unchanged";
    char good_public[PM_KEYFILE_Z85_LEN + 1], good_secret[PM_KEYFILE_Z85_LEN + 1];
    char text[512], path[PATH_MAX], err[512];
    assert_int_equal(zmq_curve_keypair(good_public, good_secret), 0);
    /* One character short, then one too many. */
    snprintf(text, sizeof text, "public-key = \"%.39s\"\n", good_public);
    s_write_file(fixture->dir, "short.pub", text, path, sizeof path);
    assert_int_equal(pm_keyfile_read(path, public_z85, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "no valid public-key line"));
    assert_non_null(strstr(err, "short.pub"));
    assert_string_equal(public_z85, "unchanged");
    snprintf(text, sizeof text, "public-key = \"%s0\"\n", good_public);
    s_write_file(fixture->dir, "long.pub", text, path, sizeof path);
    assert_int_equal(pm_keyfile_read(path, public_z85, NULL, err, sizeof err), -1);
    assert_string_equal(public_z85, "unchanged");

    assert_false(pm_keyfile_z85_valid(NULL));
    assert_false(pm_keyfile_z85_valid(""));
    text[0] = '\0';
    snprintf(text, sizeof text, "%s0", good_public);
    assert_false(pm_keyfile_z85_valid(text));
    assert_true(pm_keyfile_z85_valid(good_public));
    /* A key of the wrong length is not written either. */
    assert_int_equal(pm_keyfile_write(fixture->dir, "bad", "short", good_secret, err, sizeof err),
                     -1);
    snprintf(path, sizeof path, "%s/bad.key", fixture->dir);
    assert_int_equal(access(path, F_OK), -1);

    /* A file larger than the limit is refused before it is parsed. */
    char *big = malloc(PM_KEYFILE_MAX_SIZE + 2);
    assert_non_null(big);
    memset(big, '#', PM_KEYFILE_MAX_SIZE + 1);
    big[PM_KEYFILE_MAX_SIZE + 1] = '\0';
    s_write_file(fixture->dir, "big.pub", big, path, sizeof path);
    free(big);
    assert_int_equal(pm_keyfile_read(path, public_z85, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "larger than"));
}

static void test_bad_z85(void **state)
{
    s_fixture_t *fixture = *state;
    char public_z85[PM_KEYFILE_Z85_LEN + 1], secret_z85[PM_KEYFILE_Z85_LEN + 1];
    char good_public[PM_KEYFILE_Z85_LEN + 1], good_secret[PM_KEYFILE_Z85_LEN + 1];
    char text[512], path[PATH_MAX], err[512];
    assert_int_equal(zmq_curve_keypair(good_public, good_secret), 0);
    /* 40 characters, but '~' and ' ' are not in the Z85 alphabet. */
    const char *bad = "~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~";
    assert_int_equal(strlen(bad), PM_KEYFILE_Z85_LEN);
    assert_false(pm_keyfile_z85_valid(bad));
    snprintf(text, sizeof text, "public-key = \"%s\"\nsecret-key = \"%s\"\n", bad, good_secret);
    s_write_file(fixture->dir, "bad.key", text, path, sizeof path);
    assert_int_equal(pm_keyfile_read(path, public_z85, secret_z85, err, sizeof err), -1);
    assert_non_null(strstr(err, "no valid public-key line"));
    /* The message never quotes a key from the file. */
    assert_null(strstr(err, good_secret));

    snprintf(text, sizeof text, "public-key = \"%s\"\nsecret-key = \"%s\"\n", good_public, bad);
    s_write_file(fixture->dir, "bad2.key", text, path, sizeof path);
    assert_int_equal(pm_keyfile_read(path, public_z85, secret_z85, err, sizeof err), -1);
    assert_non_null(strstr(err, "no valid secret-key line"));
    assert_null(strstr(err, good_public));

    /* Comments, unquoted values, CRLF and zcert metadata are all accepted. */
    snprintf(text, sizeof text,
             "#   a comment with public-key = \"%s\"\r\nmetadata\r\n    name = \"x\"\r\ncurve\r\n"
             "    public-key = %s\r\n    secret-key = \"%s\"\r\n",
             bad, good_public, good_secret);
    s_write_file(fixture->dir, "zcert.key", text, path, sizeof path);
    assert_int_equal(pm_keyfile_read(path, public_z85, secret_z85, err, sizeof err), 0);
    assert_string_equal(public_z85, good_public);
    assert_string_equal(secret_z85, good_secret);
}

static void test_missing_file_and_bad_names(void **state)
{
    s_fixture_t *fixture = *state;
    char public_z85[PM_KEYFILE_Z85_LEN + 1], path[PATH_MAX], err[512];
    snprintf(path, sizeof path, "%s/absent.pub", fixture->dir);
    assert_int_equal(pm_keyfile_read(path, public_z85, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open"));
    assert_non_null(strstr(err, "absent.pub"));
    assert_int_equal(pm_keyfile_read(NULL, public_z85, NULL, err, sizeof err), -1);

    const char *bad_names[] = {"", ".hidden", "a/b", "sp ace",
                               "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        assert_int_equal(pm_keyfile_generate(fixture->dir, bad_names[i], err, sizeof err), -1);
        assert_non_null(strstr(err, "key name"));
    }
    assert_int_equal(pm_keyfile_generate(NULL, "x", err, sizeof err), -1);
    /* 64 characters is still a valid name. */
    assert_int_equal(
        pm_keyfile_generate(fixture->dir,
                            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", err,
                            sizeof err),
        0);
    /* A directory that cannot be created. */
    snprintf(path, sizeof path, "%s/absent/deeper", fixture->dir);
    assert_int_equal(pm_keyfile_generate(path, "x", err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_generate_makes_a_working_pair, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_modes_whatever_the_umask, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_bad_length, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_bad_z85, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_missing_file_and_bad_names, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
