/* Logging backend: one write(2) per message so lines never interleave.
 * Warnings and errors are rate limited per call site: most of them a guest
 * can trigger at will (a register write, a bad ring), and a daemon's log is
 * no place for a guest to fill. */
#include "log.h"
#include "rt_clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Per call site: at most LOG_BURST lines per LOG_WINDOW_NS; the rest are
 * counted and reported in one line when the site next logs. */
#define LOG_BURST 10u
#define LOG_WINDOW_NS 1000000000ll
#define LOG_SITES 64u

struct log_site {
    const char *file; /* NULL: free slot */
    int line;
    int64_t window_start;
    unsigned int count;
    unsigned long suppressed;
};

static struct log_site sites[LOG_SITES];
static pthread_mutex_t sites_lock = PTHREAD_MUTEX_INITIALIZER;

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

static void write_line(const char *buf, size_t len) {
    /* A single write keeps concurrent lines from mixing. */
    if (write(STDERR_FILENO, buf, len) < 0) {
        /* Nothing sensible to do if stderr is gone. */
    }
}

/* Whether this site may log now; *dropped: lines suppressed before it. */
static bool site_allows(const char *file, int line, unsigned long *dropped) {
    const int64_t now = rt_clock_ns(CLOCK_MONOTONIC);
    struct log_site *site = NULL;
    bool allow = true;
    unsigned int i;

    *dropped = 0;
    pthread_mutex_lock(&sites_lock);
    for (i = 0; i < LOG_SITES && site == NULL; i++) {
        if (sites[i].file == NULL) {
            sites[i].file = file;
            sites[i].line = line;
            sites[i].window_start = now;
        }
        if (sites[i].line == line && strcmp(sites[i].file, file) == 0)
            site = &sites[i];
    }
    if (site != NULL) { /* a full table limits no new site */
        if (now - site->window_start >= LOG_WINDOW_NS) {
            site->window_start = now;
            site->count = 0;
            *dropped = site->suppressed;
            site->suppressed = 0;
        }
        if (site->count < LOG_BURST) {
            site->count++;
        } else {
            site->suppressed++;
            allow = false;
        }
    }
    pthread_mutex_unlock(&sites_lock);
    return allow;
}

void log_log(int level, const char *file, int line, const char *fmt, ...) {
    char buf[1024];
    int saved_errno = errno;
    int len;
    int n;
    va_list ap;

    if (level > __atomic_load_n(&current_level, __ATOMIC_RELAXED))
        return;
    if (level == LOG_WARNING || level == LOG_ERR) {
        unsigned long dropped;

        if (!site_allows(file, line, &dropped))
            return;
        if (dropped != 0) {
            len = snprintf(buf, sizeof(buf),
                           "vhost-user-blk: %s: %s:%d: %lu similar message(s) "
                           "suppressed\n",
                           level_name(level), file, line, dropped);
            if (len > 0)
                write_line(buf, (size_t)len < sizeof(buf) ? (size_t)len
                                                          : sizeof(buf) - 1);
        }
    }

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

    write_line(buf, (size_t)len);
    errno = saved_errno;
}
