/* SPDX-License-Identifier: MIT */
#include "histogram.h"

#include <string.h>

void hist_init(struct histogram *h) {
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

static size_t bucket_of(uint64_t v) {
    if (v < 2 * HIST_SUB)
        return (size_t)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    if (msb > HIST_TOP_BIT) {
        return HIST_BUCKETS - 1;
    }
    unsigned shift = msb - HIST_SUB_BITS;
    uint64_t top = v >> shift; /* in [HIST_SUB, 2 * HIST_SUB) */
    return 2 * HIST_SUB + (size_t)(shift - 1) * HIST_SUB +
           (size_t)(top - HIST_SUB);
}

uint64_t hist_bucket_high(size_t index) {
    if (index < 2 * HIST_SUB)
        return index;
    size_t rel = index - 2 * HIST_SUB;
    unsigned shift = (unsigned)(rel / HIST_SUB) + 1;
    uint64_t top = HIST_SUB + rel % HIST_SUB;
    return ((top + 1) << shift) - 1;
}

void hist_record(struct histogram *h, uint64_t value) {
    h->counts[bucket_of(value)]++;
    h->total++;
    h->sum += (double)value;
    if (value < h->min)
        h->min = value;
    if (value > h->max)
        h->max = value;
}

void hist_merge(struct histogram *into, const struct histogram *from) {
    for (size_t i = 0; i < HIST_BUCKETS; i++)
        into->counts[i] += from->counts[i];
    into->total += from->total;
    into->sum += from->sum;
    if (from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
}

uint64_t hist_percentile(const struct histogram *h, double percent) {
    if (h->total == 0)
        return 0;
    double want = percent / 100.0 * (double)h->total;
    uint64_t need = (uint64_t)want;
    if ((double)need < want)
        need++;
    if (need == 0)
        need = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= need) {
            uint64_t high = hist_bucket_high(i);
            return high < h->max ? high : h->max;
        }
    }
    return h->max;
}

double hist_mean(const struct histogram *h) {
    return h->total ? h->sum / (double)h->total : 0.0;
}
