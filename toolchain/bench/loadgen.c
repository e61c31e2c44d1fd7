/* SPDX-License-Identifier: MIT */
/*
 * loadgen: a vhost-user-blk frontend that plays the guest and measures.
 *
 * It connects to a backend's socket, negotiates features, shares guest RAM
 * (one memfd region) and sets up one split virtqueue per client thread, then
 * keeps `--qd` requests in flight on every queue for ramp + warm-up +
 * `--seconds`. Only completions inside the measured window count. One JSON
 * object goes to stdout; errors go to stderr with exit status 1 (bad usage 2).
 *
 *   loadgen --socket PATH [--rw randread] [--bs 4096] [--qd 64] [--queues 1]
 *           [--seconds 10] [--warmup 1] [--ramp 0] [--rwmixread 50] [--poll]
 *           [--event-idx] [--ring-size N] [--span BYTES] [--timeout 5]
 *           [--seed N]
 *   loadgen --hvisor DIR --image PATH [the same options but --queues]
 *   loadgen --memcpy-bench [--bs 1048576] [--seconds 1]
 */
#define _GNU_SOURCE
#include "histogram.h"
#include "hvisor_world.h"
#include "vhost_client.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/virtio_config.h>
#include <linux/virtio_mmio.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* virtio feature bits this driver knows. */
#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_F_MQ 12
#define VIRTIO_RING_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32

#define VIRTIO_BLK_T_IN 0u
#define VIRTIO_BLK_T_OUT 1u
#define VIRTIO_BLK_S_OK 0
#define STATUS_PENDING 0xffu

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

#define GUEST_BASE 0x10000000ull
#define PAGE 4096ull
#define MAX_QUEUES 16
#define MAX_RING 32768u
#define POLL_SLICE_MS 50

#define BIT(n) (1ull << (n))

enum rw_mode { RW_READ, RW_WRITE, RW_RANDREAD, RW_RANDWRITE, RW_RANDRW };

static const char *const rw_names[] = {"read", "write", "randread", "randwrite",
                                       "randrw"};

struct options {
    const char *socket;
    const char *hvisor_dir; /* hvisor transport: loadgen plays hvisor */
    const char *image;      /* the image the zone JSON names */
    enum rw_mode rw;
    uint64_t bs;
    unsigned qd;
    unsigned queues;
    double seconds;
    double warmup;
    double ramp;
    unsigned rwmixread;
    bool poll;
    bool event_idx;
    unsigned ring_size;
    uint64_t span;
    double timeout;
    uint64_t seed;
    bool memcpy_bench;
};

/* --- split virtqueue layout (virtio 1.2 section 2.7) -------------------- */

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct blk_header {
    uint32_t type;
    uint32_t ioprio;
    uint64_t sector;
};

/* Per-request-slot bookkeeping; slot i owns descriptors [i*dpr, (i+1)*dpr). */
struct slot {
    struct blk_header *hdr;
    volatile uint8_t *status;
    uint64_t submitted_ns;
    bool busy;
    bool is_read;
};

struct queue {
    unsigned index;
    unsigned size; /* ring entries */
    unsigned dpr;  /* descriptors per request */
    unsigned nslots;
    unsigned *free_slots; /* stack of idle slots */
    unsigned nfree;
    struct vring_desc *desc;
    volatile uint16_t *avail; /* flags, idx, ring[size], used_event */
    volatile uint8_t *used;   /* flags, idx, ring[size], avail_event */
    uint64_t desc_gpa, avail_gpa, used_gpa;
    struct slot *slots;
    int kick_fd, call_fd;
    uint16_t avail_idx, last_used;
};

/* What one client thread measured. */
struct client_stats {
    struct histogram hist;
    uint64_t ios, reads, writes, errors, bytes; /* measured window */
    uint64_t total_ios;                         /* all, warm-up included */
    uint64_t kicks, interrupts;                 /* measured window */
    double first_ns, last_ns;
};

struct client {
    pthread_t thread;
    const struct options *opt;
    struct queue q;
    struct client_stats st;
    uint64_t rng;
    uint64_t seq_block;
    uint64_t nblocks;
    bool event_idx;
    char error[256];
    bool failed;
};

static atomic_bool g_abort;
static atomic_uint g_done;
/* The hvisor transport's world (NULL over vhost-user); one vCPU, one queue,
 * used by the client thread only once the device is set up. */
static struct hvw *g_hv;

/* --- small helpers ------------------------------------------------------ */

__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt,
                                                                ...) {
    va_list ap;
    fputs("loadgen: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

__attribute__((format(printf, 2, 3))) static void
client_fail(struct client *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
    c->failed = true;
    atomic_store(&g_abort, true);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t next_pow2(uint64_t v) {
    uint64_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

static uint64_t align_up(uint64_t v, uint64_t a) {
    return (v + a - 1) & ~(a - 1);
}

/* splitmix64: small, fast, good enough for offsets. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *s, uint64_t n) {
    return (uint64_t)(((unsigned __int128)rng_next(s) * n) >> 64);
}

static void full_barrier(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* --- command line -------------------------------------------------------- */

static void usage(void) {
    fputs("usage: loadgen --socket PATH [--rw read|write|randread|randwrite|"
          "randrw]\n"
          "               [--bs BYTES] [--qd N] [--queues N] [--seconds S]\n"
          "               [--warmup S] [--ramp S] [--rwmixread PCT] [--poll]\n"
          "               [--event-idx] [--ring-size N] [--span BYTES]\n"
          "               [--timeout S] [--seed N]\n"
          "       loadgen --hvisor DIR --image PATH [the options above but "
          "--queues]\n"
          "       loadgen --memcpy-bench [--bs BYTES] [--seconds S]\n",
          stderr);
    exit(2);
}

static uint64_t parse_u64(const char *name, const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    uint64_t mult = 1;
    if (*end == 'k' || *end == 'K')
        mult = 1024, end++;
    else if (*end == 'm' || *end == 'M')
        mult = 1024 * 1024, end++;
    else if (*end == 'g' || *end == 'G')
        mult = 1024ull * 1024 * 1024, end++;
    if (errno || *end || s[0] == '-') {
        fprintf(stderr, "loadgen: --%s: not a number: %s\n", name, s);
        exit(2);
    }
    return (uint64_t)v * mult;
}

static double parse_seconds(const char *name, const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (*end || v < 0 || v > 86400) {
        fprintf(stderr, "loadgen: --%s: bad duration: %s\n", name, s);
        exit(2);
    }
    return v;
}

static enum rw_mode parse_rw(const char *s) {
    for (unsigned i = 0; i < sizeof(rw_names) / sizeof(rw_names[0]); i++)
        if (strcmp(s, rw_names[i]) == 0)
            return (enum rw_mode)i;
    fprintf(stderr, "loadgen: --rw: unknown mode %s\n", s);
    exit(2);
}

static void check_options(const struct options *o) {
    const char *bad = NULL;
    if (o->memcpy_bench)
        bad = o->bs == 0 ? "--bs must be > 0" : NULL;
    else if (!o->socket == !o->hvisor_dir)
        bad = "give one of --socket PATH and --hvisor DIR";
    else if (o->hvisor_dir && !o->image)
        bad = "--hvisor needs --image PATH (the image the zone JSON names)";
    else if (o->hvisor_dir && o->queues != 1)
        bad = "--hvisor drives one queue (one vCPU)";
    else if (o->bs == 0 || o->bs % 512)
        bad = "--bs must be a positive multiple of 512";
    else if (o->qd == 0 || o->qd > 4096)
        bad = "--qd must be 1..4096";
    else if (o->queues == 0 || o->queues > MAX_QUEUES)
        bad = "--queues must be 1..16";
    else if (o->rwmixread > 100)
        bad = "--rwmixread must be 0..100";
    else if (o->seconds <= 0)
        bad = "--seconds must be > 0";
    else if (o->timeout <= 0)
        bad = "--timeout must be > 0";
    else if (o->ring_size && (o->ring_size & (o->ring_size - 1)))
        bad = "--ring-size must be a power of two";
    if (bad) {
        fprintf(stderr, "loadgen: %s\n", bad);
        exit(2);
    }
}

static void parse_args(int argc, char **argv, struct options *o) {
    enum {
        O_RAMP = 256,
        O_MIX,
        O_POLL,
        O_EIDX,
        O_RING,
        O_SPAN,
        O_TMO,
        O_SEED,
        O_MEMCPY,
        O_WARM,
        O_HVISOR,
        O_IMAGE
    };
    static const struct option longs[] = {
        {"socket", required_argument, NULL, 's'},
        {"rw", required_argument, NULL, 'r'},
        {"bs", required_argument, NULL, 'b'},
        {"qd", required_argument, NULL, 'q'},
        {"queues", required_argument, NULL, 'n'},
        {"seconds", required_argument, NULL, 't'},
        {"warmup", required_argument, NULL, O_WARM},
        {"ramp", required_argument, NULL, O_RAMP},
        {"rwmixread", required_argument, NULL, O_MIX},
        {"poll", no_argument, NULL, O_POLL},
        {"event-idx", no_argument, NULL, O_EIDX},
        {"ring-size", required_argument, NULL, O_RING},
        {"span", required_argument, NULL, O_SPAN},
        {"timeout", required_argument, NULL, O_TMO},
        {"seed", required_argument, NULL, O_SEED},
        {"memcpy-bench", no_argument, NULL, O_MEMCPY},
        {"hvisor", required_argument, NULL, O_HVISOR},
        {"image", required_argument, NULL, O_IMAGE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct options){.rw = RW_RANDREAD,
                          .bs = 4096,
                          .qd = 64,
                          .queues = 1,
                          .seconds = 10,
                          .warmup = 1,
                          .rwmixread = 50,
                          .timeout = 5,
                          .seed = 1};
    int ch;
    bool bs_given = false;
    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (ch) {
        case 's':
            o->socket = optarg;
            break;
        case 'r':
            o->rw = parse_rw(optarg);
            break;
        case 'b':
            o->bs = parse_u64("bs", optarg);
            break;
        case 'q':
            o->qd = (unsigned)parse_u64("qd", optarg);
            break;
        case 'n':
            o->queues = (unsigned)parse_u64("queues", optarg);
            break;
        case 't':
            o->seconds = parse_seconds("seconds", optarg);
            break;
        case O_WARM:
            o->warmup = parse_seconds("warmup", optarg);
            break;
        case O_RAMP:
            o->ramp = parse_seconds("ramp", optarg);
            break;
        case O_MIX:
            o->rwmixread = (unsigned)parse_u64("rwmixread", optarg);
            break;
        case O_POLL:
            o->poll = true;
            break;
        case O_EIDX:
            o->event_idx = true;
            break;
        case O_RING:
            o->ring_size = (unsigned)parse_u64("ring-size", optarg);
            break;
        case O_SPAN:
            o->span = parse_u64("span", optarg);
            break;
        case O_TMO:
            o->timeout = parse_seconds("timeout", optarg);
            break;
        case O_SEED:
            o->seed = parse_u64("seed", optarg);
            break;
        case O_MEMCPY:
            o->memcpy_bench = true;
            break;
        case O_HVISOR:
            o->hvisor_dir = optarg;
            break;
        case O_IMAGE:
            o->image = optarg;
            break;
        default:
            usage();
        }
    }
    if (optind != argc)
        usage();
    if (o->memcpy_bench && !bs_given)
        o->bs = 1024 * 1024;
    check_options(o);
}

/* --- memcpy bandwidth ---------------------------------------------------- */

/* Copy `bs`-byte blocks from a 64 MiB source (beyond the caches, like an
 * image much larger than them) into a 16 MiB destination (the guest buffers
 * of 16 x 1 MiB requests in flight) for `seconds`; report GiB/s. */
static int memcpy_bench(const struct options *o) {
    const size_t src_area = 64ull << 20, dst_area = 16ull << 20;
    size_t bs = o->bs < dst_area ? o->bs : dst_area;
    double seconds = o->seconds > 0 ? o->seconds : 1;
    char *src = mmap(NULL, src_area, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    char *dst = mmap(NULL, dst_area, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (src == MAP_FAILED || dst == MAP_FAILED)
        die("memcpy-bench: mmap: %s", strerror(errno));
    memset(src, 0x5a, src_area);
    memset(dst, 0, dst_area);
    size_t src_blocks = src_area / bs, dst_blocks = dst_area / bs, i = 0;
    uint64_t copied = 0, sink = 0;
    uint64_t start = now_ns(), stop = start + (uint64_t)(seconds * 1e9), t;
    do {
        for (int k = 0; k < 16; k++, i++) {
            char *d = dst + (i % dst_blocks) * bs;
            memcpy(d, src + ((i * 7 + 3) % src_blocks) * bs, bs);
            sink += (unsigned char)d[(size_t)k % bs];
        }
        copied += 16 * bs;
        t = now_ns();
    } while (t < stop);
    double secs = (double)(t - start) / 1e9;
    double bps = (double)copied / secs;
    printf("{\"memcpy\": {\"block_bytes\": %zu, \"bytes\": %" PRIu64
           ", \"seconds\": %.6f, \"gib_s\": %.3f, \"mib_s\": %.1f, "
           "\"checksum\": %" PRIu64 "}}\n",
           bs, copied, secs, bps / (1024.0 * 1024 * 1024),
           bps / (1024.0 * 1024), sink);
    munmap(src, src_area);
    munmap(dst, dst_area);
    return 0;
}

/* --- guest memory and rings ----------------------------------------------- */

struct guest {
    int fd;
    uint8_t *base;
    uint64_t size;
};

static uint64_t gpa_of(const struct guest *g, const void *p) {
    return GUEST_BASE + (uint64_t)((const uint8_t *)p - g->base);
}

/* Bytes one queue needs: rings, then per slot a header+status line, then
 * data buffers (page aligned). */
static uint64_t queue_bytes(unsigned size, unsigned nslots, uint64_t bs) {
    uint64_t rings = align_up(16ull * size, PAGE) +
                     align_up(6 + 2ull * size, PAGE) +
                     align_up(6 + 8ull * size, PAGE);
    return rings + align_up(32ull * nslots, PAGE) +
           (uint64_t)nslots * align_up(bs, PAGE);
}

static void guest_create(struct guest *g, uint64_t size) {
    g->size = align_up(size, 2ull << 20);
    g->fd = memfd_create("loadgen-guest-ram", MFD_CLOEXEC);
    if (g->fd < 0)
        die("memfd_create: %s", strerror(errno));
    if (ftruncate(g->fd, (off_t)g->size) < 0)
        die("ftruncate guest RAM (%" PRIu64 " bytes): %s", g->size,
            strerror(errno));
    void *p = mmap(NULL, g->size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, g->fd, 0);
    if (p == MAP_FAILED)
        die("mmap guest RAM: %s", strerror(errno));
    g->base = p;
}

/* Lay out queue `q` at `*cursor` in guest RAM and fix every descriptor:
 * slot i = header (driver-readable), data segments, status (writable). */
static void queue_layout(struct queue *q, struct guest *g, uint64_t *cursor,
                         uint64_t bs, uint64_t seg) {
    uint8_t *p = g->base + *cursor;
    q->desc = (struct vring_desc *)p;
    p += align_up(16ull * q->size, PAGE);
    q->avail = (volatile uint16_t *)p;
    p += align_up(6 + 2ull * q->size, PAGE);
    q->used = p;
    p += align_up(6 + 8ull * q->size, PAGE);
    uint8_t *meta = p;
    p += align_up(32ull * q->nslots, PAGE);
    memset(q->desc, 0, (size_t)(meta - (uint8_t *)q->desc)); /* rings */
    memset(meta, 0, 32ull * q->nslots);
    q->desc_gpa = gpa_of(g, q->desc);
    q->avail_gpa = gpa_of(g, (const void *)q->avail);
    q->used_gpa = gpa_of(g, (const void *)q->used);
    q->slots = calloc(q->nslots, sizeof(*q->slots));
    q->free_slots = calloc(q->nslots, sizeof(*q->free_slots));
    if (!q->slots || !q->free_slots)
        die("out of memory");
    for (unsigned i = 0; i < q->nslots; i++)
        q->free_slots[i] = q->nslots - 1 - i;
    q->nfree = q->nslots;
    for (unsigned i = 0; i < q->nslots; i++, p += align_up(bs, PAGE)) {
        struct slot *s = &q->slots[i];
        struct vring_desc *d = &q->desc[i * q->dpr];
        s->hdr = (struct blk_header *)(meta + 32ull * i);
        s->status = meta + 32ull * i + 16;
        s->is_read = true;
        d[0] = (struct vring_desc){gpa_of(g, s->hdr), 16, VRING_DESC_F_NEXT,
                                   (uint16_t)(i * q->dpr + 1)};
        for (unsigned k = 0; k < q->dpr - 2; k++) {
            uint64_t off = (uint64_t)k * seg;
            uint64_t len = bs - off < seg ? bs - off : seg;
            d[1 + k] =
                (struct vring_desc){gpa_of(g, p + off), (uint32_t)len,
                                    VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
                                    (uint16_t)(i * q->dpr + 2 + k)};
        }
        d[q->dpr - 1] = (struct vring_desc){gpa_of(g, (const void *)s->status),
                                            1, VRING_DESC_F_WRITE, 0};
    }
    *cursor += queue_bytes(q->size, q->nslots, bs);
}

static void fill_random(uint8_t *p, uint64_t n, uint64_t seed) {
    uint64_t s = seed;
    for (uint64_t i = 0; i + 8 <= n; i += 8) {
        uint64_t v = rng_next(&s);
        memcpy(p + i, &v, 8);
    }
}

/* avail: flags at [0], idx at [1], ring at [2..], used_event after it. */
static volatile uint16_t *used_event_slot(struct queue *q) {
    return &q->avail[2 + q->size];
}

static uint16_t used_idx(const struct queue *q) {
    return __atomic_load_n((const volatile uint16_t *)(q->used + 2),
                           __ATOMIC_ACQUIRE);
}

static uint16_t avail_event(const struct queue *q) {
    return *(const volatile uint16_t *)(q->used + 4 + 8ull * q->size);
}

static uint16_t used_flags(const struct queue *q) {
    return *(const volatile uint16_t *)q->used;
}

static struct vring_used_elem used_elem(const struct queue *q, uint16_t pos) {
    struct vring_used_elem e;
    memcpy(&e, (const uint8_t *)q->used + 4 + 8ull * (pos & (q->size - 1)),
           sizeof(e));
    return e;
}

static bool need_event(uint16_t event, uint16_t new_idx, uint16_t old) {
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

/* --- the client thread ---------------------------------------------------- */

struct window {
    uint64_t t0, measure_start, measure_end, ramp_ns;
};

static struct window g_win;

static bool want_read(struct client *c) {
    switch (c->opt->rw) {
    case RW_READ:
    case RW_RANDREAD:
        return true;
    case RW_WRITE:
    case RW_RANDWRITE:
        return false;
    case RW_RANDRW:
        return rng_below(&c->rng, 100) < c->opt->rwmixread;
    }
    return true;
}

static uint64_t next_block(struct client *c) {
    if (c->opt->rw == RW_READ || c->opt->rw == RW_WRITE) {
        uint64_t b = c->seq_block;
        c->seq_block = (c->seq_block + 1) % c->nblocks;
        return b;
    }
    return rng_below(&c->rng, c->nblocks);
}

/* Fill slot `i`'s header and put its head in the avail ring (unpublished). */
static void submit_slot(struct client *c, unsigned i, uint64_t t) {
    struct queue *q = &c->q;
    struct slot *s = &q->slots[i];
    bool rd = want_read(c);
    s->hdr->type = rd ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT;
    s->hdr->ioprio = 0;
    s->hdr->sector = next_block(c) * (c->opt->bs / 512);
    *s->status = STATUS_PENDING;
    if (rd != s->is_read) {
        for (unsigned k = 1; k + 1 < q->dpr; k++) {
            struct vring_desc *d = &q->desc[i * q->dpr + k];
            d->flags =
                (uint16_t)(VRING_DESC_F_NEXT | (rd ? VRING_DESC_F_WRITE : 0));
        }
        s->is_read = rd;
    }
    s->busy = true;
    s->submitted_ns = t;
    q->avail[2 + (q->avail_idx & (q->size - 1))] = (uint16_t)(i * q->dpr);
    q->avail_idx++;
}

static bool in_window(uint64_t t) {
    return t >= g_win.measure_start && t < g_win.measure_end;
}

/* Publish avail->idx and kick if the device wants it. */
static void publish(struct client *c, uint16_t old) {
    struct queue *q = &c->q;
    if (q->avail_idx == old)
        return;
    __atomic_store_n(&q->avail[1], q->avail_idx, __ATOMIC_RELEASE);
    full_barrier(); /* avail idx store before reading the device's flags */
    bool kick = c->event_idx ? need_event(avail_event(q), q->avail_idx, old)
                             : !(used_flags(q) & VRING_USED_F_NO_NOTIFY);
    if (!kick)
        return;
    uint64_t one = 1;
    if (g_hv) {
        if (hvw_notify(g_hv, q->index, (int)(c->opt->timeout * 1000)) < 0)
            client_fail(c, "queue %u: QueueNotify: %s", q->index, g_hv->error);
    } else if (write(q->kick_fd, &one, sizeof(one)) != sizeof(one)) {
        client_fail(c, "queue %u: kick: %s", q->index, strerror(errno));
    }
    if (in_window(now_ns()))
        c->st.kicks++;
}

static unsigned target_depth(const struct client *c, uint64_t t) {
    unsigned qd = c->opt->qd;
    if (t >= g_win.measure_end)
        return 0;
    if (g_win.ramp_ns && t < g_win.t0 + g_win.ramp_ns) {
        double f = (double)(t - g_win.t0) / (double)g_win.ramp_ns;
        unsigned d = 1 + (unsigned)(f * (qd - 1));
        return d < qd ? d : qd;
    }
    return qd;
}

static void top_up(struct client *c, unsigned *outstanding, uint64_t t) {
    unsigned want = target_depth(c, t);
    uint16_t old = c->q.avail_idx;
    while (*outstanding < want && c->q.nfree > 0) {
        submit_slot(c, c->q.free_slots[--c->q.nfree], t);
        (*outstanding)++;
    }
    publish(c, old);
}

static void account(struct client *c, struct slot *s, uint64_t t) {
    c->st.total_ios++;
    if (!in_window(t))
        return;
    struct client_stats *st = &c->st;
    st->ios++;
    st->bytes += c->opt->bs;
    if (s->is_read)
        st->reads++;
    else
        st->writes++;
    if (*s->status != VIRTIO_BLK_S_OK)
        st->errors++;
    hist_record(&st->hist, t - s->submitted_ns);
}

/* Consume every new used entry; resubmit into freed slots. Returns how many
 * completed, or -1 on a ring violation. */
static int reap(struct client *c, unsigned *outstanding, uint64_t t) {
    struct queue *q = &c->q;
    uint16_t end = used_idx(q);
    uint16_t n = (uint16_t)(end - q->last_used);
    if (n > *outstanding) {
        client_fail(c, "queue %u: used idx %u is %u ahead with %u in flight",
                    q->index, end, n, *outstanding);
        return -1;
    }
    for (uint16_t k = 0; k < n; k++) {
        struct vring_used_elem e = used_elem(q, (uint16_t)(q->last_used + k));
        unsigned i = e.id / q->dpr;
        if (e.id % q->dpr || i >= q->nslots || !q->slots[i].busy) {
            client_fail(c, "queue %u: device returned bad id %u", q->index,
                        e.id);
            return -1;
        }
        account(c, &q->slots[i], t);
        q->slots[i].busy = false;
        q->free_slots[q->nfree++] = i;
        (*outstanding)--;
    }
    q->last_used = end;
    if (c->event_idx)
        *used_event_slot(q) = c->opt->poll ? (uint16_t)(end + 0x8000) : end;
    if (n)
        top_up(c, outstanding, t);
    return n;
}

/* Linux's vm_interrupt: read InterruptStatus, acknowledge what it says
 * (two trapped accesses the daemon's main thread answers); the used ring is
 * reaped by the caller whatever the status.  Injections that arrived while
 * the vCPU was busy merge into one, as a pending IRQ does. */
static uint64_t hv_take_interrupt(struct client *c) {
    int tmo = (int)(c->opt->timeout * 1000);
    if (hvw_pump(g_hv) < 0) {
        client_fail(c, "the daemon went away");
        return 0;
    }
    uint64_t n = g_hv->pending_irqs, status = 0;
    if (!n)
        return 0;
    g_hv->pending_irqs = 0;
    if (hvw_access(g_hv, VIRTIO_MMIO_INTERRUPT_STATUS, 4, false, &status, tmo) <
            0 ||
        (status && hvw_access(g_hv, VIRTIO_MMIO_INTERRUPT_ACK, 4, true, &status,
                              tmo) < 0))
        client_fail(c, "interrupt: %s", g_hv->error);
    return n;
}

static void count_interrupts(struct client *c, uint64_t t) {
    uint64_t v;
    if (g_hv) {
        v = hv_take_interrupt(c);
        if (v && in_window(t))
            c->st.interrupts += v;
    } else if (read(c->q.call_fd, &v, sizeof(v)) == sizeof(v) && in_window(t)) {
        c->st.interrupts += v;
    }
}

/* Wait (bounded) for the call eventfd; false on abort. */
static bool wait_interrupt(struct client *c, unsigned outstanding) {
    struct queue *q = &c->q;
    if (c->event_idx) {
        *used_event_slot(q) = q->last_used;
        full_barrier();
    }
    if (used_idx(q) != q->last_used || outstanding == 0)
        return true;
    if (g_hv && g_hv->pending_irqs) { /* arrived during an MMIO wait */
        count_interrupts(c, now_ns());
        return true;
    }
    struct pollfd pfd = {g_hv ? g_hv->conn_fd : q->call_fd, POLLIN, 0};
    int r = poll(&pfd, 1, POLL_SLICE_MS);
    if (r < 0 && errno != EINTR) {
        client_fail(c, "queue %u: poll: %s", q->index, strerror(errno));
        return false;
    }
    if (r > 0)
        count_interrupts(c, now_ns());
    return true;
}

static void *client_main(void *arg) {
    struct client *c = arg;
    struct queue *q = &c->q;
    unsigned outstanding = 0;
    uint64_t timeout_ns = (uint64_t)(c->opt->timeout * 1e9);
    uint64_t last_progress = now_ns(), spins = 0;
    bool window_open = false, window_closed = false;
    if (c->opt->poll)
        q->avail[0] = VRING_AVAIL_F_NO_INTERRUPT;
    top_up(c, &outstanding, last_progress);
    while (!atomic_load_explicit(&g_abort, memory_order_relaxed)) {
        uint64_t t = now_ns();
        if (!window_open && t >= g_win.measure_start) {
            count_interrupts(c, 0); /* discard what came before */
            window_open = true;
        }
        if (!window_closed && t >= g_win.measure_end) {
            count_interrupts(c, g_win.measure_start);
            window_closed = true;
        }
        int n = reap(c, &outstanding, t);
        if (n < 0)
            break;
        if (n > 0) {
            last_progress = t;
        } else if (outstanding == 0) {
            if (t >= g_win.measure_end)
                break;
            top_up(c, &outstanding, t); /* ramp may allow more */
            last_progress = t;
        } else if (t - last_progress > timeout_ns) {
            client_fail(c,
                        "queue %u: backend stopped answering: %u requests "
                        "in flight, no completion for %.1f s",
                        q->index, outstanding, c->opt->timeout);
            break;
        } else if (!c->opt->poll) {
            if (!wait_interrupt(c, outstanding))
                break;
        } else if ((++spins & 63) == 0) {
            sched_yield();
        } else {
            __builtin_ia32_pause();
        }
    }
    atomic_fetch_add(&g_done, 1);
    return NULL;
}

/* --- connection and negotiation ---------------------------------------------
 */

struct device {
    struct vu_conn conn;
    uint64_t offered, features, protocol_offered;
    uint64_t max_queues;
    uint64_t capacity_bytes;
    uint32_t size_max, seg_max;
    uint32_t queue_num_max; /* hvisor transport: QueueNumMax of queue 0 */
};

static void vu_check(struct vu_conn *c, int rc, const char *what) {
    if (rc < 0)
        die("%s: %s", what, c->error);
}

static void negotiate(struct device *d, const struct options *o) {
    struct vu_conn *c = &d->conn;
    uint64_t known = BIT(VIRTIO_BLK_F_SIZE_MAX) | BIT(VIRTIO_BLK_F_SEG_MAX) |
                     BIT(VIRTIO_BLK_F_RO) | BIT(VIRTIO_BLK_F_BLK_SIZE) |
                     BIT(VIRTIO_BLK_F_FLUSH) | BIT(VIRTIO_F_VERSION_1) |
                     BIT(VU_F_PROTOCOL_FEATURES);
    if (o->queues > 1)
        known |= BIT(VIRTIO_BLK_F_MQ);
    if (o->event_idx)
        known |= BIT(VIRTIO_RING_F_EVENT_IDX);
    vu_check(c, vu_get_u64(c, VU_GET_FEATURES, &d->offered), "GET_FEATURES");
    if (!(d->offered & BIT(VIRTIO_F_VERSION_1)))
        die("backend does not offer VIRTIO_F_VERSION_1");
    d->max_queues = 1;
    if (d->offered & BIT(VU_F_PROTOCOL_FEATURES)) {
        vu_check(c,
                 vu_get_u64(c, VU_GET_PROTOCOL_FEATURES, &d->protocol_offered),
                 "GET_PROTOCOL_FEATURES");
        uint64_t want = BIT(VU_PROTOCOL_F_MQ) | BIT(VU_PROTOCOL_F_REPLY_ACK) |
                        BIT(VU_PROTOCOL_F_CONFIG);
        vu_check(c, vu_set_protocol_features(c, d->protocol_offered & want),
                 "SET_PROTOCOL_FEATURES");
        if (c->protocol_features & BIT(VU_PROTOCOL_F_MQ))
            vu_check(c, vu_get_u64(c, VU_GET_QUEUE_NUM, &d->max_queues),
                     "GET_QUEUE_NUM");
    }
    if (o->queues > d->max_queues)
        die("backend serves %" PRIu64 " queue(s), asked for %u", d->max_queues,
            o->queues);
    if (o->queues > 1 && !(d->offered & BIT(VIRTIO_BLK_F_MQ)))
        die("backend does not offer VIRTIO_BLK_F_MQ, asked for %u queues",
            o->queues);
    if (o->event_idx && !(d->offered & BIT(VIRTIO_RING_F_EVENT_IDX)))
        fprintf(stderr, "loadgen: EVENT_IDX asked but not offered; running "
                        "without it\n");
    vu_check(c, vu_set_owner(c), "SET_OWNER");
    d->features = d->offered & known;
    vu_check(c, vu_set_u64(c, VU_SET_FEATURES, d->features), "SET_FEATURES");
}

static void read_config(struct device *d, const struct options *o) {
    uint8_t cfg[16] = {0};
    uint64_t sectors = 0;
    if (!(d->conn.protocol_features & BIT(VU_PROTOCOL_F_CONFIG))) {
        if (!o->span)
            die("backend has no CONFIG protocol feature; pass --span BYTES");
        d->capacity_bytes = o->span;
        return;
    }
    vu_check(&d->conn, vu_get_config(&d->conn, 0, cfg, sizeof(cfg)),
             "GET_CONFIG");
    memcpy(&sectors, cfg, 8);
    memcpy(&d->size_max, cfg + 8, 4);
    memcpy(&d->seg_max, cfg + 12, 4);
    d->capacity_bytes = sectors * 512;
}

/* Descriptors per request: header, data segments (split by size_max), status.
 */
static unsigned descs_per_request(const struct device *d,
                                  const struct options *o, uint64_t *seg) {
    *seg = o->bs;
    if ((d->features & BIT(VIRTIO_BLK_F_SIZE_MAX)) && d->size_max &&
        d->size_max < o->bs)
        *seg = d->size_max & ~511u;
    if (*seg == 0)
        die("size_max %u is below one sector", d->size_max);
    uint64_t nseg = (o->bs + *seg - 1) / *seg;
    if ((d->features & BIT(VIRTIO_BLK_F_SEG_MAX)) && d->seg_max &&
        nseg > d->seg_max)
        die("a %" PRIu64 "-byte request needs %" PRIu64
            " segments; seg_max is %u",
            o->bs, nseg, d->seg_max);
    return (unsigned)nseg + 2;
}

static void setup_queue(struct device *d, struct queue *q) {
    struct vu_conn *c = &d->conn;
    q->kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    q->call_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->kick_fd < 0 || q->call_fd < 0)
        die("eventfd: %s", strerror(errno));
    uint64_t ua = (uint64_t)(uintptr_t)q->desc;
    vu_check(c, vu_set_vring_state(c, VU_SET_VRING_NUM, q->index, q->size),
             "SET_VRING_NUM");
    vu_check(c, vu_set_vring_state(c, VU_SET_VRING_BASE, q->index, 0),
             "SET_VRING_BASE");
    vu_check(c,
             vu_set_vring_addr(c, q->index, ua, (uint64_t)(uintptr_t)q->used,
                               (uint64_t)(uintptr_t)q->avail),
             "SET_VRING_ADDR");
    vu_check(c, vu_set_vring_fd(c, VU_SET_VRING_CALL, q->index, q->call_fd),
             "SET_VRING_CALL");
    vu_check(c, vu_set_vring_fd(c, VU_SET_VRING_KICK, q->index, q->kick_fd),
             "SET_VRING_KICK");
    if (c->protocol_features || (d->features & BIT(VU_F_PROTOCOL_FEATURES)))
        vu_check(c, vu_set_vring_state(c, VU_SET_VRING_ENABLE, q->index, 1),
                 "SET_VRING_ENABLE");
}

/* --- the hvisor transport: virtio-mmio set-up (virtio 1.2 section 4.2.3) -- */

static uint32_t mmio_read(const struct options *o, uint32_t off) {
    uint64_t v = 0;
    if (hvw_access(g_hv, off, 4, false, &v, (int)(o->timeout * 1000)) < 0)
        die("hvisor: read %#x: %s", off, g_hv->error);
    return (uint32_t)v;
}

static void mmio_write(const struct options *o, uint32_t off, uint32_t val) {
    uint64_t v = val;
    if (hvw_access(g_hv, off, 4, true, &v, (int)(o->timeout * 1000)) < 0)
        die("hvisor: write %#x: %s", off, g_hv->error);
}

static void hv_negotiate(struct device *d, const struct options *o) {
    uint32_t magic = mmio_read(o, VIRTIO_MMIO_MAGIC_VALUE);
    uint32_t version = mmio_read(o, VIRTIO_MMIO_VERSION);
    uint32_t id = mmio_read(o, VIRTIO_MMIO_DEVICE_ID);
    if (magic != 0x74726976u || version != 2 || id != 2)
        die("hvisor: not a virtio-mmio v2 block device (magic %#x, version "
            "%u, device id %u)",
            magic, version, id);
    mmio_write(o, VIRTIO_MMIO_STATUS, 0);
    mmio_write(o, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    mmio_write(o, VIRTIO_MMIO_STATUS,
               VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    mmio_write(o, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    uint64_t lo = mmio_read(o, VIRTIO_MMIO_DEVICE_FEATURES);
    mmio_write(o, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    uint64_t hi = mmio_read(o, VIRTIO_MMIO_DEVICE_FEATURES);
    d->offered = hi << 32 | lo;
    if (!(d->offered & BIT(VIRTIO_F_VERSION_1)))
        die("device does not offer VIRTIO_F_VERSION_1");
    uint64_t known = BIT(VIRTIO_BLK_F_SIZE_MAX) | BIT(VIRTIO_BLK_F_SEG_MAX) |
                     BIT(VIRTIO_BLK_F_RO) | BIT(VIRTIO_BLK_F_BLK_SIZE) |
                     BIT(VIRTIO_BLK_F_FLUSH) | BIT(VIRTIO_F_VERSION_1);
    if (o->event_idx)
        known |= BIT(VIRTIO_RING_F_EVENT_IDX);
    if (o->event_idx && !(d->offered & BIT(VIRTIO_RING_F_EVENT_IDX)))
        fprintf(stderr, "loadgen: EVENT_IDX asked but not offered; running "
                        "without it\n");
    d->features = d->offered & known;
    mmio_write(o, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    mmio_write(o, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)d->features);
    mmio_write(o, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    mmio_write(o, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(d->features >> 32));
    uint32_t want = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER |
                    VIRTIO_CONFIG_S_FEATURES_OK;
    mmio_write(o, VIRTIO_MMIO_STATUS, want);
    if (!(mmio_read(o, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK))
        die("device refused features %#" PRIx64, d->features);
    d->max_queues = 1;
    d->capacity_bytes = ((uint64_t)mmio_read(o, VIRTIO_MMIO_CONFIG + 4) << 32 |
                         mmio_read(o, VIRTIO_MMIO_CONFIG)) *
                        512;
    d->size_max = mmio_read(o, VIRTIO_MMIO_CONFIG + 8);
    d->seg_max = mmio_read(o, VIRTIO_MMIO_CONFIG + 12);
    mmio_write(o, VIRTIO_MMIO_QUEUE_SEL, 0);
    d->queue_num_max = mmio_read(o, VIRTIO_MMIO_QUEUE_NUM_MAX);
}

static void hv_setup_queue(const struct options *o, struct queue *q) {
    mmio_write(o, VIRTIO_MMIO_QUEUE_SEL, q->index);
    mmio_write(o, VIRTIO_MMIO_QUEUE_NUM, q->size);
    /* Low halves before high ones, as Linux writes them. */
    mmio_write(o, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)q->desc_gpa);
    mmio_write(o, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(q->desc_gpa >> 32));
    mmio_write(o, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (uint32_t)q->avail_gpa);
    mmio_write(o, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (uint32_t)(q->avail_gpa >> 32));
    mmio_write(o, VIRTIO_MMIO_QUEUE_USED_LOW, (uint32_t)q->used_gpa);
    mmio_write(o, VIRTIO_MMIO_QUEUE_USED_HIGH, (uint32_t)(q->used_gpa >> 32));
    mmio_write(o, VIRTIO_MMIO_QUEUE_READY, 1);
}

/* --- output --------------------------------------------------------------- */

static double us(uint64_t ns) { return (double)ns / 1000.0; }

static void print_cdf(const struct histogram *h) {
    uint64_t seen = 0;
    bool first = true;
    printf("\"cdf\": [");
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        if (!h->counts[i])
            continue;
        seen += h->counts[i];
        uint64_t v = hist_bucket_high(i);
        printf("%s[%.3f, %.6f]", first ? "" : ", ", us(v < h->max ? v : h->max),
               (double)seen / (double)h->total);
        first = false;
    }
    printf("]");
}

static void print_latency(const struct histogram *h) {
    static const struct {
        const char *name;
        double pct;
    } pcts[] = {{"p50", 50},
                {"p90", 90},
                {"p99", 99},
                {"p99_9", 99.9},
                {"p99_99", 99.99}};
    printf("\"latency_us\": {\"min\": %.3f, \"mean\": %.3f, ",
           us(h->total ? h->min : 0), hist_mean(h) / 1000.0);
    for (size_t i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++)
        printf("\"%s\": %.3f, ", pcts[i].name,
               us(hist_percentile(h, pcts[i].pct)));
    printf("\"max\": %.3f, ", us(h->max));
    print_cdf(h);
    printf("}");
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void print_result(const struct options *o, const struct device *d,
                         unsigned ring, struct client *clients) {
    struct client_stats all = {0};
    hist_init(&all.hist);
    for (unsigned i = 0; i < o->queues; i++) {
        struct client_stats *s = &clients[i].st;
        hist_merge(&all.hist, &s->hist);
        all.ios += s->ios, all.reads += s->reads, all.writes += s->writes;
        all.errors += s->errors, all.bytes += s->bytes;
        all.total_ios += s->total_ios, all.kicks += s->kicks;
        all.interrupts += s->interrupts;
    }
    double secs = (double)(g_win.measure_end - g_win.measure_start) / 1e9;
    double per_io = all.ios ? 1.0 / (double)all.ios : 0;
    printf("{\"tool\": \"loadgen\", \"version\": 1, ");
    printf("\"job\": {\"rw\": \"%s\", \"bs\": %" PRIu64 ", \"qd\": %u, "
           "\"queues\": %u, \"seconds\": %.3f, \"warmup\": %.3f, "
           "\"ramp\": %.3f, \"rwmixread\": %u, \"mode\": \"%s\", "
           "\"event_idx\": %s, \"seed\": %" PRIu64 "}, ",
           rw_names[o->rw], o->bs, o->qd, o->queues, o->seconds, o->warmup,
           o->ramp, o->rwmixread, o->poll ? "poll" : "interrupt",
           (d->features & BIT(VIRTIO_RING_F_EVENT_IDX)) ? "true" : "false",
           o->seed);
    printf("\"device\": {\"features_offered\": %" PRIu64
           ", \"features\": %" PRIu64 ", \"protocol_features\": %" PRIu64
           ", \"max_queues\": %" PRIu64 ", \"capacity_bytes\": %" PRIu64
           ", \"ring_size\": %u}, ",
           d->offered, d->features, d->conn.protocol_features, d->max_queues,
           d->capacity_bytes, ring);
    printf("\"elapsed_s\": %.6f, \"ios\": %" PRIu64 ", \"reads\": %" PRIu64
           ", \"writes\": %" PRIu64 ", \"errors\": %" PRIu64
           ", \"bytes\": %" PRIu64 ", \"total_ios\": %" PRIu64 ", ",
           secs, all.ios, all.reads, all.writes, all.errors, all.bytes,
           all.total_ios);
    printf("\"iops\": %.1f, \"mib_s\": %.2f, ", (double)all.ios / secs,
           (double)all.bytes / secs / (1024.0 * 1024));
    printf("\"kicks\": %" PRIu64 ", \"interrupts\": %" PRIu64
           ", \"kicks_per_io\": %.5f, \"interrupts_per_io\": %.5f, ",
           all.kicks, all.interrupts, (double)all.kicks * per_io,
           (double)all.interrupts * per_io);
    printf("\"client_cpu_s\": %.4f, ", cpu_seconds());
    print_latency(&all.hist);
    printf("}\n");
}

/* --- main -------------------------------------------------------------------
 */

/* Wait for the clients; a backend that closes the control socket aborts. */
static void supervise(struct device *d, unsigned nclients) {
    while (g_hv && atomic_load(&g_done) < nclients) /* the client reads */
        poll(NULL, 0, POLL_SLICE_MS);
    while (atomic_load(&g_done) < nclients) {
        struct pollfd pfd = {d->conn.sock, POLLIN | POLLRDHUP, 0};
        int r = poll(&pfd, 1, POLL_SLICE_MS);
        if (r > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLRDHUP | POLLERR))) {
            fprintf(stderr, "loadgen: backend closed the connection\n");
            atomic_store(&g_abort, true);
            break;
        }
    }
}

static void setup_clients(struct device *d, struct guest *g,
                          const struct options *o, struct client *clients,
                          unsigned ring, unsigned dpr, uint64_t seg,
                          uint64_t span) {
    uint64_t cursor = 0;
    for (unsigned i = 0; i < o->queues; i++) {
        struct client *c = &clients[i];
        c->opt = o;
        c->q = (struct queue){
            .index = i, .size = ring, .dpr = dpr, .nslots = o->qd};
        queue_layout(&c->q, g, &cursor, o->bs, seg);
        c->rng = o->seed * 0x100000001b3ull + i;
        c->nblocks = span / o->bs;
        c->seq_block = c->nblocks / o->queues * i;
        c->event_idx = d->features & BIT(VIRTIO_RING_F_EVENT_IDX);
        hist_init(&c->st.hist);
    }
    if (g_hv) {
        hv_setup_queue(o, &clients[0].q);
        mmio_write(o, VIRTIO_MMIO_STATUS,
                   VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER |
                       VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
        return;
    }
    struct vu_client_region region = {GUEST_BASE, g->size,
                                      (uint64_t)(uintptr_t)g->base, 0, g->fd};
    vu_check(&d->conn, vu_set_mem_table(&d->conn, &region, 1), "SET_MEM_TABLE");
    for (unsigned i = 0; i < o->queues; i++)
        setup_queue(d, &clients[i].q);
}

/* The hvisor transport: guest RAM first (the daemon maps it when it
 * starts), sized for the largest ring, then the world and the device. */
static void hv_connect(struct device *d, struct guest *g,
                       const struct options *o) {
    static struct hvw hv;
    guest_create(g, queue_bytes(MAX_RING, o->qd, o->bs));
    fill_random(g->base, g->size, o->seed);
    if (hvw_create(&hv, o->hvisor_dir, GUEST_BASE, g->size, o->image) < 0 ||
        hvw_attach(&hv, g->fd, GUEST_BASE, g->size, (int)(o->timeout * 2000)) <
            0)
        die("hvisor: %s", hv.error);
    g_hv = &hv;
    hv_negotiate(d, o);
}

static int run(const struct options *o) {
    static struct client clients[MAX_QUEUES];
    struct device d = {0};
    struct guest g;
    if (o->hvisor_dir) {
        hv_connect(&d, &g, o);
    } else {
        if (vu_connect(&d.conn, o->socket, (int)(o->timeout * 2000),
                       (int)(o->timeout * 1000)) < 0)
            die("%s", d.conn.error);
        negotiate(&d, o);
        read_config(&d, o);
    }
    uint64_t span =
        o->span && o->span < d.capacity_bytes ? o->span : d.capacity_bytes;
    if (span / o->bs < o->queues)
        die("image of %" PRIu64 " bytes is too small for --bs %" PRIu64, span,
            o->bs);
    uint64_t seg;
    unsigned dpr = descs_per_request(&d, o, &seg);
    unsigned ring = o->ring_size ? o->ring_size
                                 : (unsigned)next_pow2((uint64_t)dpr * o->qd);
    if (g_hv && !o->ring_size && ring > d.queue_num_max)
        ring = d.queue_num_max; /* Linux's choice: QueueNumMax */
    if (ring > MAX_RING || (uint64_t)dpr * o->qd > ring)
        die("qd %u x %u descriptors does not fit a ring of %u", o->qd, dpr,
            ring);
    if (g_hv && (ring > d.queue_num_max || (ring & (ring - 1))))
        die("a ring of %u entries: the device's QueueNumMax is %u", ring,
            d.queue_num_max);
    if (!g_hv) {
        guest_create(&g, (uint64_t)o->queues * queue_bytes(ring, o->qd, o->bs));
        fill_random(g.base, g.size, o->seed); /* data; rings zeroed below */
    }
    setup_clients(&d, &g, o, clients, ring, dpr, seg, span);

    uint64_t t0 = now_ns();
    g_win.t0 = t0;
    g_win.ramp_ns = (uint64_t)(o->ramp * 1e9);
    g_win.measure_start = t0 + g_win.ramp_ns + (uint64_t)(o->warmup * 1e9);
    g_win.measure_end = g_win.measure_start + (uint64_t)(o->seconds * 1e9);
    for (unsigned i = 0; i < o->queues; i++)
        if (pthread_create(&clients[i].thread, NULL, client_main, &clients[i]))
            die("pthread_create failed");
    supervise(&d, o->queues);
    int failed = 0;
    for (unsigned i = 0; i < o->queues; i++) {
        pthread_join(clients[i].thread, NULL);
        if (clients[i].failed) {
            fprintf(stderr, "loadgen: %s\n", clients[i].error);
            failed = 1;
        }
    }
    if (atomic_load(&g_abort) || failed)
        return 1;
    print_result(o, &d, ring, clients);
    if (g_hv)
        hvw_close(g_hv);
    else
        vu_close(&d.conn);
    return 0;
}

int main(int argc, char **argv) {
    struct options o;
    parse_args(argc, argv, &o);
    if (o.memcpy_bench)
        return memcpy_bench(&o);
    return run(&o);
}
