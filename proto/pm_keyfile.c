/*
 * pm_keyfile: CURVE key files (see pm_keyfile.h). Reading is line-based and bounded; writing
 * creates each file exclusively with its final mode, so that a secret key is never readable
 * by others even for a moment, and never replaces a key someone already relies on.
 */
#include "pm_keyfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

/* The same value as ZeroMQ's own: zmq_z85_decode() needs a NUL-terminated 40-char string. */
_Static_assert(PM_KEYFILE_Z85_LEN == 40, "a 32-byte CURVE key is 40 characters of Z85");

bool pm_keyfile_z85_valid(const char *key)
{
    uint8_t binary[32];
    if (!key || strnlen(key, PM_KEYFILE_Z85_LEN + 1) != PM_KEYFILE_Z85_LEN)
        return false;
    bool valid = zmq_z85_decode(binary, key) != NULL;
    explicit_bzero(binary, sizeof binary);
    return valid;
}

/* ---------------------------------------------------------------------------- reading */

/* Trims spaces, tabs and CRs at both ends of [*start, *end). */
static void s_trim(const char **start, const char **end)
{
    while (*start < *end && (**start == ' ' || **start == '\t' || **start == '\r'))
        (*start)++;
    while (*end > *start && ((*end)[-1] == ' ' || (*end)[-1] == '\t' || (*end)[-1] == '\r'))
        (*end)--;
}

/* Parses `name = "value"` for name public-key / secret-key; copies a valid Z85 key. Other
 * lines, and keys that are not valid Z85, are skipped (a zcert has metadata lines too). */
static void s_key_line(const char *line, const char *end, char *public_z85, char *secret_z85,
                       bool *have_public, bool *have_secret)
{
    const char *equals = memchr(line, '=', (size_t)(end - line));
    if (!equals)
        return;
    const char *name = line, *name_end = equals;
    const char *value = equals + 1, *value_end = end;
    s_trim(&name, &name_end);
    s_trim(&value, &value_end);
    if (value_end - value >= 2 && *value == '"' && value_end[-1] == '"') {
        value++;
        value_end--;
    }
    if (value_end - value != PM_KEYFILE_Z85_LEN)
        return;
    char key[PM_KEYFILE_Z85_LEN + 1];
    memcpy(key, value, PM_KEYFILE_Z85_LEN);
    key[PM_KEYFILE_Z85_LEN] = '\0';
    if (pm_keyfile_z85_valid(key)) {
        size_t name_len = (size_t)(name_end - name);
        if (name_len == strlen("public-key") && memcmp(name, "public-key", name_len) == 0) {
            memcpy(public_z85, key, sizeof key);
            *have_public = true;
        } else if (secret_z85 && name_len == strlen("secret-key") &&
                   memcmp(name, "secret-key", name_len) == 0) {
            memcpy(secret_z85, key, sizeof key);
            *have_secret = true;
        }
    }
    explicit_bzero(key, sizeof key);
}

int pm_keyfile_read(const char *path, char *public_z85, char *secret_z85, char *err,
                    size_t err_size)
{
    int rc = -1;
    char *text = NULL;
    char public_key[PM_KEYFILE_Z85_LEN + 1], secret_key[PM_KEYFILE_Z85_LEN + 1];
    bool have_public = false, have_secret = false;
    if (!path || !public_z85) {
        snprintf(err, err_size, "no key file given");
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, err_size, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    text = malloc(PM_KEYFILE_MAX_SIZE + 1);
    if (!text) {
        snprintf(err, err_size, "out of memory");
        goto cleanup;
    }
    size_t size = 0;
    for (;;) {
        /* One byte of room past the limit tells "exactly the limit" from "too large". */
        ssize_t n = read(fd, text + size, PM_KEYFILE_MAX_SIZE + 1 - size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, err_size, "cannot read %s: %s", path, strerror(errno));
            goto cleanup;
        }
        if (n == 0)
            break;
        size += (size_t)n;
        if (size > PM_KEYFILE_MAX_SIZE) {
            snprintf(err, err_size, "%s is larger than %d bytes", path, PM_KEYFILE_MAX_SIZE);
            goto cleanup;
        }
    }
    const char *line = text;
    const char *text_end = text + size;
    while (line < text_end) {
        const char *end = memchr(line, '\n', (size_t)(text_end - line));
        if (!end)
            end = text_end;
        const char *first = line;
        while (first < end && (*first == ' ' || *first == '\t'))
            first++;
        /* '#' starts a comment only at the start of a line: Z85 itself contains '#'. */
        if (first < end && *first != '#')
            s_key_line(first, end, public_key, secret_z85 ? secret_key : NULL, &have_public,
                       &have_secret);
        line = end + 1;
    }
    if (!have_public) {
        snprintf(err, err_size, "%s has no valid public-key line", path);
        goto cleanup;
    }
    if (secret_z85 && !have_secret) {
        snprintf(err, err_size, "%s has no valid secret-key line (is it a .pub file?)", path);
        goto cleanup;
    }
    memcpy(public_z85, public_key, sizeof public_key);
    if (secret_z85)
        memcpy(secret_z85, secret_key, sizeof secret_key);
    rc = 0;

cleanup:
    if (text) {
        explicit_bzero(text, PM_KEYFILE_MAX_SIZE + 1);
        free(text);
    }
    explicit_bzero(secret_key, sizeof secret_key);
    close(fd);
    return rc;
}

/* ---------------------------------------------------------------------------- writing */

static bool s_name_valid(const char *name)
{
    size_t len = strnlen(name, PM_KEYFILE_MAX_NAME_LEN + 1);
    if (len == 0 || len > PM_KEYFILE_MAX_NAME_LEN || name[0] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* Creates path with mode (never replacing a file) and writes text; fsyncs. 0 or -1. */
static int s_write_new_file(const char *path, mode_t mode, const char *text, char *err,
                            size_t err_size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        snprintf(err, err_size, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    size_t len = strlen(text), done = 0;
    int rc = -1;
    /* The umask may have taken bits away; set exactly the mode asked for. */
    if (fchmod(fd, mode) != 0) {
        snprintf(err, err_size, "cannot chmod %s: %s", path, strerror(errno));
        goto cleanup;
    }
    while (done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, err_size, "cannot write %s: %s", path, strerror(errno));
            goto cleanup;
        }
        done += (size_t)n;
    }
    if (fsync(fd) != 0) {
        snprintf(err, err_size, "cannot fsync %s: %s", path, strerror(errno));
        goto cleanup;
    }
    rc = 0;

cleanup:
    if (close(fd) != 0 && rc == 0) {
        snprintf(err, err_size, "cannot close %s: %s", path, strerror(errno));
        rc = -1;
    }
    if (rc != 0)
        unlink(path);
    return rc;
}

int pm_keyfile_write(const char *dir, const char *name, const char *public_z85,
                     const char *secret_z85, char *err, size_t err_size)
{
    char secret_path[PATH_MAX], public_path[PATH_MAX];
    char secret_text[1024], public_text[1024];
    int rc = -1;
    if (!dir || !*dir || !name || !s_name_valid(name)) {
        snprintf(err, err_size,
                 "the key name must be 1..%d of [A-Za-z0-9._-], not starting with '.'",
                 PM_KEYFILE_MAX_NAME_LEN);
        return -1;
    }
    if (!pm_keyfile_z85_valid(public_z85) || !pm_keyfile_z85_valid(secret_z85)) {
        snprintf(err, err_size, "a CURVE key is not %d characters of Z85", PM_KEYFILE_Z85_LEN);
        return -1;
    }
    int n1 = snprintf(secret_path, sizeof secret_path, "%s/%s.key", dir, name);
    int n2 = snprintf(public_path, sizeof public_path, "%s/%s.pub", dir, name);
    if (n1 < 0 || n2 < 0 || (size_t)n1 >= sizeof secret_path || (size_t)n2 >= sizeof public_path) {
        snprintf(err, err_size, "directory path too long");
        return -1;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, err_size, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    int t1 = snprintf(secret_text, sizeof secret_text,
                      "#   provider-manager CURVE secret key '%s' (Z85). Keep it private.\n"
                      "#   Give %s.pub, never this file, to the other side.\n"
                      "\n"
                      "metadata\n"
                      "    name = \"%s\"\n"
                      "curve\n"
                      "    public-key = \"%s\"\n"
                      "    secret-key = \"%s\"\n",
                      name, name, name, public_z85, secret_z85);
    int t2 = snprintf(public_text, sizeof public_text,
                      "#   provider-manager CURVE public key '%s' (Z85).\n"
                      "\n"
                      "metadata\n"
                      "    name = \"%s\"\n"
                      "curve\n"
                      "    public-key = \"%s\"\n",
                      name, name, public_z85);
    if (t1 < 0 || t2 < 0 || (size_t)t1 >= sizeof secret_text || (size_t)t2 >= sizeof public_text) {
        snprintf(err, err_size, "key file text too long");
        goto cleanup;
    }
    if (s_write_new_file(secret_path, PM_KEYFILE_SECRET_MODE, secret_text, err, err_size) != 0)
        goto cleanup;
    if (s_write_new_file(public_path, PM_KEYFILE_PUBLIC_MODE, public_text, err, err_size) != 0) {
        unlink(secret_path); /* no half-made pair */
        goto cleanup;
    }
    rc = 0;

cleanup:
    explicit_bzero(secret_text, sizeof secret_text);
    return rc;
}

int pm_keyfile_generate(const char *dir, const char *name, char *err, size_t err_size)
{
    char public_z85[PM_KEYFILE_Z85_LEN + 1];
    char secret_z85[PM_KEYFILE_Z85_LEN + 1];
    /* The name is checked before a key pair is made, so a bad name costs no entropy. */
    if (!dir || !*dir || !name || !s_name_valid(name)) {
        snprintf(err, err_size,
                 "the key name must be 1..%d of [A-Za-z0-9._-], not starting with '.'",
                 PM_KEYFILE_MAX_NAME_LEN);
        return -1;
    }
    if (zmq_curve_keypair(public_z85, secret_z85) != 0) {
        snprintf(err, err_size, "cannot generate a key pair: %s", zmq_strerror(errno));
        return -1;
    }
    int rc = pm_keyfile_write(dir, name, public_z85, secret_z85, err, err_size);
    explicit_bzero(secret_z85, sizeof secret_z85);
    return rc;
}
