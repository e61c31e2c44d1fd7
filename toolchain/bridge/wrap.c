/*
 * Link-time wrapping that puts the /dev/hvisor stand-in
 * (toolchain/runtime/hvisor_dev.c) under hvisor-tool's own daemon, unmodified:
 * linked with -Wl,--wrap=open,--wrap=ioctl,--wrap=mmap,--wrap=close,
 * --wrap=openlog,--wrap=syslog (see toolchain/bridge/daemon.py), every call
 * the daemon makes on /dev/hvisor goes to the stand-in, everything else to
 * libc.  syslog() goes to stderr, where the test keeps it, because off the
 * board nothing reads the daemon's syslog.
 */
#define _GNU_SOURCE
#include "hvisor_dev.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

int __real_open(const char *path, int flags, ...);
int __real_ioctl(int fd, unsigned long request, ...);
void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd,
                  off_t offset);
int __real_close(int fd);

int __wrap_open(const char *path, int flags, ...);
int __wrap_ioctl(int fd, unsigned long request, ...);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd,
                  off_t offset);
int __wrap_close(int fd);
void __wrap_openlog(const char *ident, int option, int facility);
void __wrap_syslog(int priority, const char *fmt, ...);

int __wrap_open(const char *path, int flags, ...) {
    mode_t mode = 0;

    if (path != NULL && strcmp(path, HVDEV_PATH) == 0)
        return hvdev_open();
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;

        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    return __real_open(path, flags, mode);
}

int __wrap_ioctl(int fd, unsigned long request, ...) {
    unsigned long arg;
    va_list ap;

    va_start(ap, request);
    arg = va_arg(ap, unsigned long);
    va_end(ap);
    if (hvdev_is_dev(fd))
        return hvdev_ioctl(fd, request, arg);
    return __real_ioctl(fd, request, arg);
}

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd,
                  off_t offset) {
    if (hvdev_is_dev(fd))
        return hvdev_mmap(addr, len, prot, flags, fd, offset);
    return __real_mmap(addr, len, prot, flags, fd, offset);
}

int __wrap_close(int fd) {
    hvdev_forget(fd);
    return __real_close(fd);
}

void __wrap_openlog(const char *ident, int option, int facility) {
    (void)ident;
    (void)option;
    (void)facility;
}

void __wrap_syslog(int priority, const char *fmt, ...) {
    static const char *const names[] = {"emerg", "alert", "crit", "error",
                                        "warn",  "notice", "info", "debug"};
    struct timespec ts;
    va_list ap;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    flockfile(stderr);
    fprintf(stderr, "hvisor[%ld.%06ld] %s: ", (long)ts.tv_sec,
            ts.tv_nsec / 1000, names[priority & 7]);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    funlockfile(stderr);
}
