/* SPDX-License-Identifier: MIT */
/*
 * Log-linear latency histogram (HdrHistogram-style, own implementation).
 *
 * Values are nanoseconds. Values below 2 * HIST_SUB are recorded exactly;
 * above, every power-of-two range is split into HIST_SUB equal buckets, so a
 * bucket is at most 1/HIST_SUB (0.8%) of its value wide. Values past
 * HIST_MAX_NS are clamped into the last bucket (the exact max is kept apart).
 */
#ifndef LOADGEN_HISTOGRAM_H
#define LOADGEN_HISTOGRAM_H

#include <stddef.h>
#include <stdint.h>

#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_TOP_BIT 40 /* largest tracked value: < 2^41 ns (~36 min) */
#define HIST_BUCKETS (2 * HIST_SUB + (HIST_TOP_BIT - HIST_SUB_BITS) * HIST_SUB)

struct histogram {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t min;
    uint64_t max;
    double sum;
};

void hist_init(struct histogram *h);
void hist_record(struct histogram *h, uint64_t value);
void hist_merge(struct histogram *into, const struct histogram *from);
/* Smallest bucket upper bound below which `percent` of the values lie. */
uint64_t hist_percentile(const struct histogram *h, double percent);
/* Bucket bounds, for walking the distribution (a CDF). */
uint64_t hist_bucket_high(size_t index);
double hist_mean(const struct histogram *h);

#endif
