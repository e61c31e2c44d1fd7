/* Logging backend: one write(2) per message so lines never interleave. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int current_level = LOG_INFO;

void log_set_level(int level) {
    __atomic_store_n(&current_level, level, __ATOMIC_RELAXED);
}

static const char *level_name(int level) {
    switch (level) {
    case LOG_DEBUG:
        return "debug";
    case LOG_INFO:
    case LOG_NOTICE:
        return "info";
    case LOG_WARNING:
        return "warn";
    case LOG_ERR:
        return "error";
    default:
        return "fatal";
    }
}

void log_log(int level, const char *file, int line, const char *fmt, ...) {
    char buf[1024];
    int saved_errno = errno;
    int len;
    int n;
    va_list ap;

    if (level > __atomic_load_n(&current_level, __ATOMIC_RELAXED))
        return;

    len =
        snprintf(buf, sizeof(buf),
                 "vhost-user-blk: %s: %s:%d: ", level_name(level), file, line);
    if (len < 0)
        return;
    if ((size_t)len >= sizeof(buf) - 1)
        len = (int)sizeof(buf) - 2;

    va_start(ap, fmt);
    n = vsnprintf(buf + len, sizeof(buf) - 1 - (size_t)len, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    len += n;
    if ((size_t)len > sizeof(buf) - 2)
        len = (int)sizeof(buf) - 2; /* message was truncated */
    /* Drop a trailing newline supplied by the caller, then add exactly one. */
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    buf[len++] = '\n';

    /* A single write keeps concurrent lines from mixing. */
    if (write(STDERR_FILENO, buf, (size_t)len) < 0) {
        /* Nothing sensible to do if stderr is gone. */
    }
    errno = saved_errno;
}
