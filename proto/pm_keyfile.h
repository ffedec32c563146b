/*
 * pm_keyfile: the CURVE key files of provider-manager, read by the daemon (service/auth.c)
 * and read and written by the client (pmclient_set_curve_files, `pmctl keygen`). One module
 * for both sides, so that they cannot disagree about the format, and so that the daemon does
 * not link the client library to read its own key.
 *
 * Format: text, lines of `public-key = "<z85>"` and, in the secret file only,
 * `secret-key = "<z85>"`; '#' starts a comment only at the start of a line (Z85 itself
 * contains '#'), quotes are optional, other lines are ignored. That is the layout of CZMQ's
 * zcert files, so those work too. A key is PM_KEYFILE_Z85_LEN characters of Z85 (32 bytes).
 */
#ifndef PM_KEYFILE_H
#define PM_KEYFILE_H

#include <stdbool.h>
#include <stddef.h>

#define PM_KEYFILE_Z85_LEN 40           /* a CURVE key in Z85, without its NUL */
#define PM_KEYFILE_MAX_SIZE (64 * 1024) /* a longer file is refused, never read whole */
#define PM_KEYFILE_MAX_NAME_LEN 64      /* of a key name given to pm_keyfile_write */
#define PM_KEYFILE_SECRET_MODE 0600     /* <name>.key */
#define PM_KEYFILE_PUBLIC_MODE 0644     /* <name>.pub */

/* True when key is exactly PM_KEYFILE_Z85_LEN characters of valid Z85. NULL is false. */
bool pm_keyfile_z85_valid(const char *key);

/* Reads the key file at path: the public key (always) and, when secret_z85 is not NULL, the
 * secret key. Outputs are caller buffers of PM_KEYFILE_Z85_LEN + 1 bytes, written only on
 * success. The file's text is wiped from memory before returning. 0, or -1 with a message in
 * err (which names the path, never a key). */
int pm_keyfile_read(const char *path, char *public_z85, char *secret_z85, char *err,
                    size_t err_size);

/* Writes the key pair (public_z85, secret_z85: valid Z85 keys) as dir/<name>.key (both keys,
 * mode 0600) and dir/<name>.pub (public key, mode 0644), whatever the umask. dir is created
 * (0700) when missing; existing files are never overwritten, and no half pair is left behind.
 * name: 1..PM_KEYFILE_MAX_NAME_LEN of [A-Za-z0-9._-], not starting with '.'. 0, or -1 with a
 * message in err. */
int pm_keyfile_write(const char *dir, const char *name, const char *public_z85,
                     const char *secret_z85, char *err, size_t err_size);

/* Generates a fresh key pair (zmq_curve_keypair) and writes it with pm_keyfile_write. 0, or
 * -1 with a message in err. */
int pm_keyfile_generate(const char *dir, const char *name, char *err, size_t err_size);

#endif
