/* Nanosecond clocks for the standalone runtime (log rate limits, message
 * deadlines, the hvisor core's main-thread figures). */
#ifndef HVISOR_RT_CLOCK_H
#define HVISOR_RT_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t rt_clock_ns(clockid_t clock) {
    struct timespec ts;

    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif /* HVISOR_RT_CLOCK_H */
