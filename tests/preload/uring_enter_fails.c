/* LD_PRELOAD for tests: io_uring_enter works BLKGEN_URING_ENTER_OK times,
 * then fails with EIO for good, as a ring whose kernel side broke would.
 * The device calls io_uring through syscall(2) (the board has no liburing),
 * so interposing syscall() is enough. Every other call passes through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/syscall.h>

typedef long (*syscall_fn)(long, ...);

long syscall(long number, ...) {
    static syscall_fn real;
    static long left = -1;
    va_list ap;
    long a[6];

    va_start(ap, number);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (real == NULL)
        real = (syscall_fn)dlsym(RTLD_NEXT, "syscall");
    if (number == __NR_io_uring_enter) {
        if (left < 0) {
            const char *ok = getenv("BLKGEN_URING_ENTER_OK");
            left = ok != NULL ? atol(ok) : 0;
        }
        if (__atomic_fetch_sub(&left, 1, __ATOMIC_RELAXED) <= 0) {
            __atomic_store_n(&left, 0, __ATOMIC_RELAXED);
            errno = EIO;
            return -1;
        }
    }
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
