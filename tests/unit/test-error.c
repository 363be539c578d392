/* SPDX-License-Identifier: MIT */
/* Unit tests of lib/common/error.c: messages, context prefixes and their
 * per-thread storage. */
#include "testutil.h"

#include "prl/error.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static void test_error_sets_message(void **state)
{
    (void)state;
    prl_error_clear();
    assert_int_equal(prl_error(EINVAL, "%s: bad magic %d", "a.hdd", 7),
                     -EINVAL);
    assert_string_equal(prl_error_message(), "a.hdd: bad magic 7");
    /* A new message replaces the old one. */
    assert_int_equal(prl_error(ENOSPC, "second"), -ENOSPC);
    assert_string_equal(prl_error_message(), "second");
}

static void test_error_errno(void **state)
{
    char want[256];

    (void)state;
    assert_int_equal(prl_error_errno(ENOENT, "open '%s'", "x"), -ENOENT);
    snprintf(want, sizeof(want), "open 'x': %s", strerror(ENOENT));
    assert_string_equal(prl_error_message(), want);
}

static void test_error_context(void **state)
{
    (void)state;
    prl_error(EIO, "read failed at 4096");
    assert_int_equal(prl_error_context(-EIO, "open %s", "b.hdd"), -EIO);
    assert_string_equal(prl_error_message(), "open b.hdd: read failed at "
                                             "4096");
    /* Contexts stack outermost first. */
    assert_int_equal(prl_error_context(-EIO, "convert"), -EIO);
    assert_string_equal(prl_error_message(), "convert: open b.hdd: read "
                                             "failed at 4096");
    /* The return value passes through untouched, whatever it is. */
    assert_int_equal(prl_error_context(-ENOMEM, "x"), -ENOMEM);
}

static void test_error_context_without_message(void **state)
{
    char want[256];

    (void)state;
    prl_error_clear();
    prl_error_context(-ENOSPC, "write c.hdd");
    snprintf(want, sizeof(want), "write c.hdd: %s", strerror(ENOSPC));
    assert_string_equal(prl_error_message(), want);
}

static void test_error_clear(void **state)
{
    (void)state;
    prl_error(EINVAL, "something");
    prl_error_clear();
    assert_non_null(prl_error_message());
    assert_null(strstr(prl_error_message(), "something"));
}

static void test_error_long(void **state)
{
    char big[5000];

    (void)state;
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    /* Truncated, never overflowing; contexts on a full buffer too. */
    prl_error(EINVAL, "%s", big);
    size_t n = strlen(prl_error_message());
    assert_true(n > 0 && n < sizeof(big));
    prl_error_context(-EINVAL, "%s", big);
    assert_true(strlen(prl_error_message()) <= n);
    prl_error_errno(EINVAL, "%s", big);
    assert_true(strlen(prl_error_message()) <= n);
}

struct thread_arg {
    int id;
    char seen[128];
    pthread_barrier_t *barrier;
};

static void *thread_main(void *opaque)
{
    struct thread_arg *a = opaque;

    prl_error_clear();
    prl_error(EINVAL, "thread %d", a->id);
    /* Every thread has set its message before any reads it back. */
    pthread_barrier_wait(a->barrier);
    prl_error_context(-EINVAL, "ctx %d", a->id);
    pthread_barrier_wait(a->barrier);
    snprintf(a->seen, sizeof(a->seen), "%s", prl_error_message());
    return NULL;
}

static void test_error_thread_local(void **state)
{
    enum { N = 4 };
    pthread_t t[N];
    struct thread_arg a[N];
    pthread_barrier_t barrier;

    (void)state;
    prl_error(EPERM, "main thread");
    pthread_barrier_init(&barrier, NULL, N);
    for (int i = 0; i < N; i++) {
        a[i].id = i;
        a[i].barrier = &barrier;
        assert_int_equal(pthread_create(&t[i], NULL, thread_main, &a[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        char want[64];
        pthread_join(t[i], NULL);
        snprintf(want, sizeof(want), "ctx %d: thread %d", i, i);
        assert_string_equal(a[i].seen, want);
    }
    pthread_barrier_destroy(&barrier);
    assert_string_equal(prl_error_message(), "main thread");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_sets_message),
        cmocka_unit_test(test_error_errno),
        cmocka_unit_test(test_error_context),
        cmocka_unit_test(test_error_context_without_message),
        cmocka_unit_test(test_error_clear),
        cmocka_unit_test(test_error_long),
        cmocka_unit_test(test_error_thread_local),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);

    tu_cleanup();
    return r;
}
