/*
 * test_log: key masking (never more than "sk-...abcd") and one line per message (a newline in
 * caller text cannot forge a second log line).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_mask_key(void **state)
{
    (void)state;
    char out[32];
    assert_string_equal(log_mask_key(NULL, out, sizeof out), "-");
    assert_string_equal(log_mask_key("", out, sizeof out), "-");
    assert_string_equal(log_mask_key("sk-short", out, sizeof out), "***");
    assert_string_equal(log_mask_key("sk-proj-ABCDEFGHIJKLMNOP-wxyz", out, sizeof out),
                        "sk-...wxyz");
    /* A tiny buffer truncates, never overflows. */
    char tiny[4];
    log_mask_key("sk-proj-ABCDEFGHIJKLMNOP-wxyz", tiny, sizeof tiny);
    assert_int_equal(strlen(tiny), 3);
}

static void test_one_line_per_message_and_levels(void **state)
{
    (void)state;
    char path[] = "/tmp/pm-test-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    assert_int_equal(dup2(fd, 2), 2);
    log_set_level(LOG_INFO);
    log_info("first\nINFO forged line");
    log_debug("hidden at info level");
    log_error("second");
    fflush(stderr);
    assert_int_equal(dup2(saved, 2), 2);
    close(saved);

    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char lines[4][512];
    int count = 0;
    while (count < 4 && fgets(lines[count], sizeof lines[count], f))
        count++;
    fclose(f);
    close(fd);
    unlink(path);
    assert_int_equal(count, 2);
    assert_non_null(strstr(lines[0], " INFO  first INFO forged line"));
    assert_non_null(strstr(lines[1], " ERROR second"));
    assert_null(strstr(lines[0], "hidden"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mask_key),
        cmocka_unit_test(test_one_line_per_message_and_levels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
