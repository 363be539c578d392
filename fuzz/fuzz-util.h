/* SPDX-License-Identifier: MIT */
/* What the fuzz targets share: the CHECK macro, in-memory files for
 * inputs, and a cap on how large the library may make any file. */
#ifndef PRL_FUZZ_UTIL_H
#define PRL_FUZZ_UTIL_H

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

/* A broken invariant is a library bug: abort, so that libFuzzer saves the
 * input and fuzz/run names it. */
#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* Largest file the process may write, bytes.  The targets' files live in
 * memory (memfd), which no RSS limit sees, and a hostile header can make
 * the library write zeroes up to an offset it names; past this size
 * writes fail with EFBIG instead, which the targets treat as any other
 * I/O error. */
#define FUZZ_MAX_FILE (256u << 20)

/* Call once at start-up. */
static inline void fuzz_limit_files(void)
{
    struct rlimit rl = {FUZZ_MAX_FILE, FUZZ_MAX_FILE};

    /* EFBIG from write/truncate/fallocate, not a fatal signal. */
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0) {
        perror("setrlimit(RLIMIT_FSIZE)");
        abort();
    }
}

/* A new in-memory file holding |data|; *path (at least 32 bytes) names it
 * for the library.  Returns the descriptor, which keeps the file alive.
 * A failure here is the harness's environment, so it aborts. */
static inline int fuzz_memfd(const char *name, const uint8_t *data, size_t size,
                             char *path, size_t pathlen)
{
    int fd = memfd_create(name, MFD_CLOEXEC);
    size_t done = 0;

    /* Again for every input: libFuzzer installs its own SIGXFSZ handler
     * after the targets' initialization. */
    signal(SIGXFSZ, SIG_IGN);
    if (fd < 0) {
        perror("memfd_create");
        abort();
    }
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            perror("write memfd");
            abort();
        }
        done += (size_t)n;
    }
    snprintf(path, pathlen, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
