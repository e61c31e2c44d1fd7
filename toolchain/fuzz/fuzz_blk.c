// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for a generated virtio-blk device (invoke fuzz).
 *
 * One input is one guest: a small guest memory holding a split virtqueue
 * (descriptor table, avail ring, used ring) plus request headers and data,
 * and a disk image. The harness drives the device's own parsing and
 * completion code on it, single-threaded and deterministically, the way
 * every threading model does it: check the ring, pop chains until the ring
 * is empty, handle each one, signal the driver. It then checks invariants a
 * hostile guest must not be able to break, and aborts when one breaks:
 *
 *   - the device writes guest memory only inside the device-writable
 *     buffers of the chains it popped and the used ring (compared once per
 *     batch, against a snapshot);
 *   - the used entry names the popped head, and its length never exceeds the
 *     chain's writable bytes;
 *   - a request that reports a status (used length > 0) wrote 0, 1 or 2 into
 *     the chain's last writable byte;
 *   - blk_pop() reports "empty" and "broken ring" exactly as the avail index
 *     says (a chain whose structure cannot be trusted also breaks the ring);
 *   - at most one interrupt per completion, and none for a batch that
 *     completed nothing;
 *   - the image never changes size, a read-only image never changes, bytes
 *     past the last whole sector never change, and only a successful write
 *     changes data, inside the sectors it names.
 *
 * Memory outside the guest (below it, above it, and a gap between its two
 * regions) is caught by ASan or by the comparison. The two regions are
 * adjacent in guest-physical space but not in host memory, so a buffer that
 * spans them must be refused.
 *
 * The harness includes the generated virtio_blk.c to reach its static
 * functions. The device internals it uses (the only coupling to names that
 * are not hvisor-tool API) are:
 *   types     BlkDev, BlkQueue, struct blk_req
 *   fields    BlkDev.vdev, .img_fd, .read_only, .capacity, .zone_id,
 *             .nqueues, .queues[]; BlkQueue.dev, .vq
 *   functions blk_ring_usable(), blk_pop(), blk_run(), blk_irq()
 * From the runtime it links virtio.c (update_used_ring, virtio_inject_irq,
 * get_virt_addr, notify enable/disable) and log.c, and it provides the
 * transport side of runtime.h (rt_gpa_to_hva, rt_signal_call) itself, in
 * place of vhost_user.c.
 *
 * Input format (little-endian; missing bytes read as zero), produced by
 * tests/fuzz/make_corpus.py for the seed corpus:
 *   u8  config       bit 0 read-only, bits 1/2: accept EVENT_IDX/INDIRECT_DESC
 *                    (if offered), bits 4-7: log2(queue size)
 *   u8  image        bits 0-1: image size, see fz_image_sizes
 *   u16 last_avail_idx, avail_idx, avail_flags, used_idx, used_event
 *   u16 ndesc, navail   (each at most 256)
 *   ndesc  x 16 bytes   descriptors 0.. (addr u64, len u32, flags, next)
 *   navail x u16        avail->ring[0..] (entries past the ring size are
 *                       skipped)
 *   then patches to the end: u16 offset from FZ_GPA_BASE, u16 len, bytes
 * Guest memory starts as a fixed pattern; rings sit at fixed addresses.
 */
#define _GNU_SOURCE /* memfd_create */
#include "virtio_blk.c"

#include "runtime.h"

#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the harness writes ring fields in host order: little-endian only"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The harness's own code is left out of coverage, so that libFuzzer's
 * feedback comes from the device and the runtime only. */
#define FZ_HARNESS __attribute__((no_sanitize("coverage")))

/* ---- guest memory: two regions, a host-only gap between them ---------- */

#define FZ_GPA_BASE 0x40000000ULL
#define FZ_REGION_BYTES 0x8000u
#define FZ_GAP_BYTES 0x1000u
#define FZ_GUEST_BYTES (2 * FZ_REGION_BYTES)
#define FZ_HOST_BYTES (FZ_GUEST_BYTES + FZ_GAP_BYTES)

/* Ring areas, as offsets from FZ_GPA_BASE (room for num = 256). */
#define FZ_DESC_OFF 0x0000u
#define FZ_AVAIL_OFF 0x1000u
#define FZ_USED_OFF 0x1400u
#define FZ_MAX_NUM 256u
#define FZ_MAX_POPS 1024u /* a guest may keep refilling the ring: stop here */

static uint8_t *fz_host;                  /* region 0 | gap | region 1 */
static uint8_t fz_pattern[FZ_HOST_BYTES]; /* what guest memory starts as */
static uint8_t fz_before[FZ_HOST_BYTES];
static uint8_t fz_allowed[FZ_HOST_BYTES];
static unsigned long fz_signals;
static bool fz_trace; /* FUZZ_BLK_TRACE set: one line per request */

/* Host offset of a guest-physical address, or -1 outside guest memory. */
FZ_HARNESS static long fz_host_off(uint64_t gpa) {
    if (gpa < FZ_GPA_BASE || gpa - FZ_GPA_BASE >= FZ_GUEST_BYTES)
        return -1;
    uint64_t off = gpa - FZ_GPA_BASE;
    return (long)(off < FZ_REGION_BYTES ? off : off + FZ_GAP_BYTES);
}

/* runtime.h, transport side: the fuzzer's memory table. */
FZ_HARNESS void *rt_gpa_to_hva(uint64_t gpa, int zone_id) {
    (void)zone_id;
    long off = fz_host_off(gpa);
    return off < 0 ? NULL : fz_host + off;
}

/* runtime.h, transport side: the "interrupt". */
void rt_signal_call(VirtQueue *vq) {
    (void)vq;
    fz_signals++;
}

static void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)))
__attribute__((noreturn));

static void fz_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz_blk: invariant violated: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* Mark the guest bytes of [gpa, gpa + len) that exist in fz_allowed.
 * Returns whether any of them lies in [lo, hi) (offsets from FZ_GPA_BASE). */
FZ_HARNESS static bool fz_allow(uint64_t gpa, uint64_t len, uint64_t lo,
                                uint64_t hi) {
    if (len == 0 || gpa >= FZ_GPA_BASE + FZ_GUEST_BYTES ||
        gpa + len <= FZ_GPA_BASE || gpa + len < gpa)
        return false;
    uint64_t start = gpa < FZ_GPA_BASE ? 0 : gpa - FZ_GPA_BASE;
    uint64_t end = gpa + len - FZ_GPA_BASE;
    if (end > FZ_GUEST_BYTES)
        end = FZ_GUEST_BYTES;
    if (start < FZ_REGION_BYTES) {
        uint64_t e = end < FZ_REGION_BYTES ? end : FZ_REGION_BYTES;
        memset(fz_allowed + start, 1, e - start);
    }
    if (end > FZ_REGION_BYTES) {
        uint64_t s = start > FZ_REGION_BYTES ? start : FZ_REGION_BYTES;
        memset(fz_allowed + s + FZ_GAP_BYTES, 1, end - s);
    }
    return start < hi && lo < end;
}

/* ---- the disk image ------------------------------------------------------ */

static const uint64_t fz_image_sizes[4] = {
    64 * 1024,       /* 128 sectors */
    64 * 1024 + 300, /* a partial last sector the device must not touch */
    512,             /* one sector */
    0,               /* empty */
};
#define FZ_IMAGE_MAX (64 * 1024 + 300)

static int fz_img_fd = -1;
static uint8_t fz_img_pattern[FZ_IMAGE_MAX]; /* what the image starts as */
static uint8_t fz_img_before[FZ_IMAGE_MAX];
static uint8_t fz_img_now[FZ_IMAGE_MAX];

FZ_HARNESS static void fz_image_reset(uint64_t size) {
    memcpy(fz_img_before, fz_img_pattern, size);
    if (ftruncate(fz_img_fd, (off_t)size) != 0 ||
        pwrite(fz_img_fd, fz_img_before, size, 0) != (ssize_t)size) {
        perror("fuzz_blk: image");
        exit(2);
    }
}

FZ_HARNESS static uint64_t fz_image_size(void) {
    struct stat st;
    if (fstat(fz_img_fd, &st) != 0) {
        perror("fuzz_blk: fstat");
        exit(2);
    }
    return (uint64_t)st.st_size;
}

/* ---- one chain as the harness sees it -------------------------------------
 */

struct fz_chain {
    uint64_t writable; /* bytes in device-writable buffers */
    uint64_t readable; /* bytes in readable buffers after the header */
    uint64_t
        last_w_gpa; /* the last writable buffer (its last byte: the status) */
    uint32_t last_w_len;
    bool have_header;
    uint32_t type; /* header fields, when have_header */
    uint64_t sector;
    bool touches_used; /* a writable buffer overlaps the used ring */
};

/* Walk the chain at head and mark its writable buffers in fz_allowed. It
 * stops where every device must (index outside the table, a loop) and
 * follows an indirect table when the driver accepted INDIRECT_DESC; where
 * the rules leave room it errs towards allowing more. */
FZ_HARNESS static void fz_walk(const VirtQueue *vq, bool indirect_ok,
                               uint16_t head, struct fz_chain *c,
                               uint64_t used_bytes) {
    memset(c, 0, sizeof(*c));
    const uint8_t *table = (const uint8_t *)vq->desc_table;
    uint64_t size = vq->num, steps = 0;
    bool nested = false;
    uint16_t idx = head;
    uint8_t hdr_bytes[sizeof(BlkReqHead)];
    size_t hdr_got = 0;
    while (idx < size && steps++ < size) {
        VirtqDesc d;
        memcpy(&d, table + (size_t)idx * sizeof(d), sizeof(d));
        if (d.flags & VRING_DESC_F_INDIRECT) {
            long off = fz_host_off(d.addr);
            if (nested || !indirect_ok || d.len < sizeof(d) || off < 0 ||
                fz_host_off(d.addr + d.len - 1) != off + (long)d.len - 1)
                break;
            table = fz_host + off;
            size = d.len / sizeof(d);
            steps = 0;
            nested = true;
            idx = 0;
            continue;
        }
        if (d.len != 0 && (d.flags & VRING_DESC_F_WRITE)) {
            c->writable += d.len;
            c->last_w_gpa = d.addr;
            c->last_w_len = d.len;
            if (fz_allow(d.addr, d.len, FZ_USED_OFF, FZ_USED_OFF + used_bytes))
                c->touches_used = true;
        } else if (d.len != 0) {
            /* Any layout: the header is the first 16 readable bytes,
             * wherever they lie; the rest is data. */
            uint32_t take = 0;
            while (hdr_got < sizeof(BlkReqHead) && take < d.len) {
                long off = fz_host_off(d.addr + take);
                hdr_bytes[hdr_got++] = off >= 0 ? fz_host[off] : 0;
                take++;
            }
            if (hdr_got == sizeof(BlkReqHead) && !c->have_header) {
                BlkReqHead h;
                memcpy(&h, hdr_bytes, sizeof(h));
                c->type = le32toh(h.type);
                c->sector = le64toh(h.sector);
                c->have_header = true;
            }
            c->readable += d.len - take;
        }
        if (!(d.flags & VRING_DESC_F_NEXT))
            break;
        idx = d.next;
    }
}

FZ_HARNESS static bool fz_type_writes_image(uint32_t type) {
    return type == VIRTIO_BLK_T_OUT || type == VIRTIO_BLK_T_DISCARD ||
           type == VIRTIO_BLK_T_WRITE_ZEROES ||
           type == VIRTIO_BLK_T_SECURE_ERASE;
}

/* Compare guest memory with fz_before outside fz_allowed. */
FZ_HARNESS static void fz_check_memory(const char *when) {
    enum { CHUNK = 256 };
    _Static_assert(FZ_HOST_BYTES % CHUNK == 0, "whole chunks");
    for (size_t c = 0; c < FZ_HOST_BYTES; c += CHUNK) {
        if (memcmp(fz_host + c, fz_before + c, CHUNK) == 0)
            continue;
        for (size_t i = c; i < c + CHUNK; i++) {
            if (fz_host[i] == fz_before[i] || fz_allowed[i])
                continue;
            if (i >= FZ_REGION_BYTES && i < FZ_REGION_BYTES + FZ_GAP_BYTES)
                fz_fail("%s: wrote host memory between the guest regions "
                        "(gap byte %zu)",
                        when, i - FZ_REGION_BYTES);
            uint64_t gpa =
                FZ_GPA_BASE + (i < FZ_REGION_BYTES ? i : i - FZ_GAP_BYTES);
            fz_fail("%s: wrote guest byte 0x%" PRIx64
                    " outside every writable buffer",
                    when, gpa);
        }
    }
}

/* Image bytes the batch's requests may have changed: [start, end). */
struct fz_span {
    uint64_t start, end;
};
static struct fz_span fz_spans[FZ_MAX_POPS];
static unsigned int fz_nspans;

/* After one request: which image bytes it may have changed. status is -1
 * when it cannot be known (the request's buffers overlap the used ring). */
FZ_HARNESS static void fz_permit(const BlkDev *dev, const struct fz_chain *c,
                                 int status) {
    if (dev->read_only || !c->have_header || !fz_type_writes_image(c->type) ||
        (status >= 0 && status != VIRTIO_BLK_S_OK) || fz_nspans >= FZ_MAX_POPS)
        return;
    struct fz_span span = {0, dev->capacity << BLK_SECTOR_SHIFT};
    if (c->type == VIRTIO_BLK_T_OUT) {
        if (c->sector > dev->capacity)
            return;
        span.start = c->sector << BLK_SECTOR_SHIFT;
        span.end = span.start + c->readable;
    }
    fz_spans[fz_nspans++] = span;
}

/* After the batch: size unchanged, changes only where fz_permit allowed,
 * never past the last whole sector. */
FZ_HARNESS static void fz_check_image(const BlkDev *dev, uint64_t size) {
    if (fz_image_size() != size)
        fz_fail("image size changed from %" PRIu64 " to %" PRIu64, size,
                fz_image_size());
    if (pread(fz_img_fd, fz_img_now, size, 0) != (ssize_t)size)
        fz_fail("image cannot be read back");
    if (memcmp(fz_img_now, fz_img_before, size) == 0)
        return;
    const uint64_t whole = dev->capacity << BLK_SECTOR_SHIFT;
    for (uint64_t i = 0; i < size; i++) {
        if (fz_img_now[i] == fz_img_before[i])
            continue;
        bool covered = false;
        for (unsigned int k = 0; !covered && k < fz_nspans; k++)
            covered = i >= fz_spans[k].start && i < fz_spans[k].end;
        if (i >= whole || !covered)
            fz_fail("image byte %" PRIu64 " changed (read-only %d, %" PRIu64
                    " whole sectors), but no successful write covers it",
                    i, (int)dev->read_only, dev->capacity);
    }
}

/* ---- input decoding ------------------------------------------------------ */

struct fz_in {
    const uint8_t *p;
    size_t left;
};

FZ_HARNESS static uint64_t fz_take(struct fz_in *in, unsigned int n) {
    uint64_t v = 0;
    for (unsigned int i = 0; i < n; i++) {
        uint64_t b = 0;
        if (in->left > 0) {
            b = *in->p++;
            in->left--;
        }
        v |= b << (8 * i);
    }
    return v;
}

FZ_HARNESS static void fz_put(uint64_t off, uint64_t v, unsigned int n) {
    for (unsigned int i = 0; i < n; i++, off++) {
        long h = fz_host_off(FZ_GPA_BASE + off);
        if (h >= 0)
            fz_host[h] = (uint8_t)(v >> (8 * i));
    }
}

FZ_HARNESS int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    /* FUZZ_BLK_LOG: show the device's and runtime's log lines. */
    log_set_level(getenv("FUZZ_BLK_LOG") != NULL ? LOG_DEBUG : LOG_EMERG);
    fz_trace = getenv("FUZZ_BLK_TRACE") != NULL;
    fz_host = malloc(FZ_HOST_BYTES);
    fz_img_fd = memfd_create("fuzz-blk-image", MFD_CLOEXEC);
    for (size_t i = 0; i < FZ_HOST_BYTES; i++)
        fz_pattern[i] = (uint8_t)(i * 131 + 17);
    for (size_t i = 0; i < FZ_IMAGE_MAX; i++)
        fz_img_pattern[i] = (uint8_t)(i * 7 + (i >> 9));
    if (fz_host == NULL || fz_img_fd < 0) {
        perror("fuzz_blk: setup");
        exit(2);
    }
    return 0;
}

FZ_HARNESS int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static VirtIODevice vdev;
    static VirtQueue vq;
    static BlkDev dev;
    static struct blk_req req;
    struct fz_in in = {data, size};

    const uint8_t config = (uint8_t)fz_take(&in, 1);
    const uint64_t img_size = fz_image_sizes[fz_take(&in, 1) & 3];
    const uint16_t last_avail = (uint16_t)fz_take(&in, 2);
    const uint16_t avail_idx = (uint16_t)fz_take(&in, 2);
    const uint16_t avail_flags = (uint16_t)fz_take(&in, 2);
    const uint16_t used_idx = (uint16_t)fz_take(&in, 2);
    const uint16_t used_event = (uint16_t)fz_take(&in, 2);
    uint64_t num = 1u << ((config >> 4) % 9);
    while (num > FZ_MAX_NUM || num > VIRTQUEUE_BLK_MAX_SIZE)
        num >>= 1;
    const uint64_t used_bytes = 4 + num * sizeof(VirtqUsedElem) + 2;

    /* Guest memory: pattern, rings, then the input's descriptors, avail
     * entries and patches. */
    memcpy(fz_host, fz_pattern, FZ_HOST_BYTES);
    const uint64_t ndesc = fz_take(&in, 2), navail = fz_take(&in, 2);
    fz_put(FZ_AVAIL_OFF, avail_flags, 2);
    fz_put(FZ_AVAIL_OFF + 2, avail_idx, 2);
    fz_put(FZ_AVAIL_OFF + 4 + 2 * num, used_event, 2);
    fz_put(FZ_USED_OFF, 0, 2);
    fz_put(FZ_USED_OFF + 2, used_idx, 2);
    /* Entries past the ring size are consumed, and land outside it. */
    for (uint64_t i = 0; i < ndesc && i < FZ_MAX_NUM; i++)
        for (unsigned int k = 0; k < 16; k += 8)
            fz_put(FZ_DESC_OFF + 16 * i + k, fz_take(&in, 8), 8);
    for (uint64_t i = 0; i < navail && i < FZ_MAX_NUM; i++) {
        const uint64_t head = fz_take(&in, 2);
        if (i < num)
            fz_put(FZ_AVAIL_OFF + 4 + 2 * i, head, 2);
    }
    while (in.left > 0) {
        uint64_t off = fz_take(&in, 2), len = fz_take(&in, 2);
        for (uint64_t i = 0; i < len && in.left > 0; i++)
            fz_put(off + i, fz_take(&in, 1), 1);
    }

    /* The queue, as the transport would have set it up. */
    memset(&vdev, 0, sizeof(vdev));
    memset(&vq, 0, sizeof(vq));
    vdev.vqs = &vq;
    vdev.vqs_len = 1;
    /* The driver accepts what the device offers, EVENT_IDX and INDIRECT_DESC
     * only when the input asks for them. */
    vdev.regs.dev_feature = BLK_SUPPORTED_FEATURES;
    vdev.regs.drv_feature = BLK_SUPPORTED_FEATURES;
    if (!(config & 2))
        vdev.regs.drv_feature &= ~(1ULL << VIRTIO_RING_F_EVENT_IDX);
    if (!(config & 4))
        vdev.regs.drv_feature &= ~(1ULL << VIRTIO_RING_F_INDIRECT_DESC);
    const bool indirect_ok =
        (vdev.regs.drv_feature >> VIRTIO_RING_F_INDIRECT_DESC) & 1;
    vq.dev = &vdev;
    vq.num = num;
    vq.queue_num_max = VIRTQUEUE_BLK_MAX_SIZE;
    vq.desc_table_addr = FZ_GPA_BASE + FZ_DESC_OFF;
    vq.avail_addr = FZ_GPA_BASE + FZ_AVAIL_OFF;
    vq.used_addr = FZ_GPA_BASE + FZ_USED_OFF;
    vq.desc_table = rt_gpa_to_hva(vq.desc_table_addr, 0);
    vq.avail_ring = rt_gpa_to_hva(vq.avail_addr, 0);
    vq.used_ring = rt_gpa_to_hva(vq.used_addr, 0);
    vq.last_avail_idx = last_avail;
    vq.last_used_idx = used_idx;
    vq.event_idx_enabled =
        (vdev.regs.drv_feature >> VIRTIO_RING_F_EVENT_IDX) & 1;
    vq.ready = 1;

    /* The device, as its init() would have set it up, minus the threads. */
    fz_image_reset(img_size);
    memset(&dev, 0, sizeof(dev));
    dev.img_fd = fz_img_fd;
    dev.vdev = &vdev;
    /* As init() does: the spec may make the disk read-only. */
    dev.read_only =
        (config & 1) || ((BLK_SUPPORTED_FEATURES >> VIRTIO_BLK_F_RO) & 1);
    dev.capacity = img_size >> BLK_SECTOR_SHIFT;
    dev.zone_id = 0;
    dev.nqueues = 1;
    BlkQueue *q = &dev.queues[0];
    q->dev = &dev;
    q->vq = &vq;
#ifdef BLK_BOUNCE_BYTES
    /* backend.direct: what init() and the queue's start set up */
    static uint8_t *fz_bounce;
    if (fz_bounce == NULL &&
        posix_memalign((void **)&fz_bounce, 4096, BLK_BOUNCE_BYTES) != 0) {
        perror("fuzz_blk: bounce buffer");
        exit(2);
    }
    q->bounce = fz_bounce;
    dev.dio_align = BLK_BLOCK_SIZE;
#endif
    vdev.dev = &dev;
    fz_signals = 0;
    unsigned int completed = 0;

    /* What a worker does with a notify. Memory and image are compared once
     * per batch: a request may write only into writable buffers (of the
     * batch) and the used ring. */
    memcpy(fz_before, fz_host, FZ_HOST_BYTES);
    memset(fz_allowed, 0, sizeof(fz_allowed));
    fz_allow(vq.used_addr, used_bytes, 0, 0);
    fz_nspans = 0;
    virtqueue_disable_notify(&vq);
    if (!blk_ring_usable(q))
        fz_fail("a valid ring (num %" PRIu64 ") was refused", num);
    for (unsigned int pops = 0; pops < FZ_MAX_POPS; pops++) {
        const uint16_t avail_now = vq.avail_ring->idx;
        const uint16_t pending = (uint16_t)(avail_now - vq.last_avail_idx);
        /* 1, or -1 when the chain cannot be trusted: the harness's walk does
         * not decide that. */
        const int expect = pending == 0 ? 0 : pending > num ? -1 : 1;
        struct fz_chain chain;
        uint16_t head = 0;

        if (expect == 1) {
            head = vq.avail_ring->ring[vq.last_avail_idx & (num - 1)];
            fz_walk(&vq, indirect_ok, head, &chain, used_bytes);
        }
        const uint16_t used_before = vq.used_ring->idx;

        int r = blk_pop(q, &req);
        if (r != expect && !(expect == 1 && r == -1))
            fz_fail("blk_pop returned %d with %u pending on a ring of %" PRIu64,
                    r, pending, num);
        if (r <= 0)
            break;
        blk_run(q, &req);
        completed++;

        int status = -1;
        if (!chain.touches_used) {
            /* Otherwise the request's own data may have moved used->idx. */
            if (vq.used_ring->idx != (uint16_t)(used_before + 1))
                fz_fail("used->idx went from %u to %u for one request",
                        used_before, vq.used_ring->idx);
            VirtqUsedElem e;
            memcpy(&e,
                   (const void *)&vq.used_ring->ring[used_before & (num - 1)],
                   sizeof(e));
            if (e.id != head)
                fz_fail("used id %" PRIu32 " for head %u", e.id, head);
            if (e.len > chain.writable)
                fz_fail("used length %" PRIu32 " > %" PRIu64 " writable bytes",
                        e.len, chain.writable);
            if (e.len > 0) {
                long off = fz_host_off(chain.last_w_gpa);
                long end = fz_host_off(chain.last_w_gpa + chain.last_w_len - 1);
                if (chain.last_w_len == 0 || off < 0 ||
                    end != off + (long)chain.last_w_len - 1)
                    fz_fail(
                        "status reported without a writable byte to hold it");
                status = fz_host[end];
                if (status > VIRTIO_BLK_S_UNSUPP)
                    fz_fail("status byte %d", status);
            }
        }
        if (fz_trace)
            fprintf(stderr,
                    "fuzz_blk: head %u type %" PRIu32 " sector %" PRIu64
                    " -> used len %" PRIu32 ", status %d\n",
                    head, chain.type, chain.sector,
                    vq.used_ring->ring[used_before & (num - 1)].len, status);
        fz_permit(&dev, &chain, status);
    }
    virtqueue_enable_notify(&vq);
    blk_irq(q, BLK_IRQ_BATCH_END);
    fz_check_memory("the batch");
    fz_check_image(&dev, img_size);
    if (fz_signals > completed)
        fz_fail("%lu interrupts for %u completions", fz_signals, completed);
    return 0;
}
