/*
 * Minimal logging for the standalone hvisor-tool runtime.
 *
 * Each message becomes one line on stderr of the form
 *   vhost-user-blk: <level>: <file>:<line>: <message>
 * Levels use the syslog numbering so that code written against hvisor-tool
 * (which logs to syslog) keeps its meaning.
 */
#ifndef HVISOR_RT_LOG_H
#define HVISOR_RT_LOG_H

#include <syslog.h>

void log_log(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Messages with a level number above this one are dropped. */
void log_set_level(int level);

#define log_debug(...) log_log(LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)
#define log_info(...) log_log(LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define log_warn(...) log_log(LOG_WARNING, __FILE__, __LINE__, __VA_ARGS__)
#define log_error(...) log_log(LOG_ERR, __FILE__, __LINE__, __VA_ARGS__)
#define log_fatal(...) log_log(LOG_CRIT, __FILE__, __LINE__, __VA_ARGS__)

#endif /* HVISOR_RT_LOG_H */
