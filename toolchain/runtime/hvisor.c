/*
 * hvisor transport: the pair served through hvisor's MMIO bridge, with a
 * clean-room core that reproduces hvisor-tool HEAD's semantics
 * (hvisor-api.md sections 5, 6, 9, 13 and 14), including what HEAD does not
 * check, so that a test on this transport sees what the board would:
 *
 *   - every register write is applied at once, whatever the device's
 *     threads are doing: QueueNum unchecked (not against QueueNumMax, not
 *     for a power of two), Low halves OR-ed into the address without
 *     re-translating, High halves re-translated (NULL when unmapped),
 *     QueueReady stored as written;
 *   - DriverFeatures OR-ed, unmasked by what was offered and never cleared;
 *     its EVENT_IDX bit turns event_idx_enabled on for every queue;
 *   - QueueNotify calls the queue's handler on this (main) thread whatever
 *     `ready` says; an index >= vqs_len is logged and ignored;
 *   - interrupts merge until the driver's InterruptACK clears the status;
 *   - STATUS = 0 runs ops->reset, then wipes every queue;
 *   - config reads are 8-byte loads from vdev->dev + offset, unbounded.
 *
 * Where HEAD has undefined behaviour (QueueSel out of range, src_cpu out of
 * range) this core logs and ignores instead: the runtime must not be what
 * a guest crashes.  Guest memory and the bridge come from the /dev/hvisor
 * stand-in (hvisor_dev.c); the process itself plays the daemon.
 */
#define _GNU_SOURCE
#include "hvisor_dev.h"
#include "log.h"
#include "rt_clock.h"
#include "runtime.h"
#include "virtio.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/virtio_mmio.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Provided by the device pair (virtio_blk.c). */
extern const struct virtio_device_ops virtio_blk_ops;

#define HV_MAX_ZONES 8
#define HV_MAX_REGIONS 8
#define HV_MAGIC 0x74726976u /* "virt" */
#define HV_VERSION 2u
#define HV_VENDOR 0x8888u
/* Empty polls before sleeping: HEAD counts 10M rounds; a time budget keeps
 * the same handshake without holding a shared core for tens of ms. */
#define HV_POLL_NS 200000L

struct hv_region {
    uint64_t zonex_ipa;
    uint64_t size;
    char *hva;
};

struct hv_zone {
    uint32_t id;
    unsigned nregions;
    struct hv_region r[HV_MAX_REGIONS];
};

static struct hv_zone g_zones[HV_MAX_ZONES];
static unsigned g_nzones;
static VirtIODevice *g_devs[HVDEV_MAX_DEVS];
static unsigned g_ndevs;
static volatile struct hvdev_bridge *g_bridge;
static int g_ko_fd = -1;
static pthread_mutex_t g_res_mutex = PTHREAD_MUTEX_INITIALIZER;

/* How long the main thread was held by one guest access, for the stall
 * benchmark and the budget tests (HEAD has no such counters; they only
 * watch). Main thread only; reported once, at shutdown. */
static struct {
    uint64_t accesses;
    int64_t notify_ns, status_ns, other_ns; /* the longest of each kind */
    /* The most CPU time the main thread spent in one: the device's own work,
     * without the time it was preempted (wall time has both). */
    int64_t notify_cpu_ns, status_cpu_ns;
    /* Most used entries published, during one QueueNotify, up to the main
     * thread's own last interrupt request in it: what the main thread
     * completed (and any pass of another thread it waited for), not what
     * other threads published after it. */
    unsigned notify_completions;
    /* the QueueNotify being handled */
    volatile VirtqUsed *used;
    uint16_t used_before;
} g_stall;
static pthread_t g_main_thread;

static void hv_inject_seen(VirtQueue *vq) {
    if (!pthread_equal(pthread_self(), g_main_thread) || g_stall.used == NULL ||
        vq->used_ring != g_stall.used)
        return; /* g_stall is the main thread's alone */
    const unsigned done =
        (uint16_t)(__atomic_load_n(&g_stall.used->idx, __ATOMIC_ACQUIRE) -
                   g_stall.used_before);
    if (done > g_stall.notify_completions)
        g_stall.notify_completions = done;
}

/* ---- memory ------------------------------------------------------------- */

static struct hv_zone *find_zone(uint32_t id) {
    unsigned i;

    for (i = 0; i < g_nzones; i++)
        if (g_zones[i].id == id)
            return &g_zones[i];
    return NULL;
}

/* As HEAD's get_virt_addr: the region holding the start; no length check. */
void *hv_gpa_to_hva(uint64_t gpa, int zone_id) {
    struct hv_zone *z = find_zone((uint32_t)zone_id);
    unsigned i;

    if (z == NULL)
        return NULL;
    for (i = 0; i < z->nregions; i++)
        if (gpa >= z->r[i].zonex_ipa && gpa - z->r[i].zonex_ipa < z->r[i].size)
            return z->r[i].hva + (gpa - z->r[i].zonex_ipa);
    return NULL;
}

/* ---- interrupts ---------------------------------------------------------- */

/* HEAD's injection after the suppression checks (virtio.c did those). */
void hv_signal_call(VirtQueue *vq) {
    VirtIODevice *vdev = vq->dev;
    volatile struct hvdev_bridge *b = g_bridge;
    uint32_t rear;
    int ret;

    pthread_mutex_lock(&vdev->interrupt_lock);
    vdev->regs.interrupt_status |= VIRTIO_MMIO_INT_VRING;
    if (vdev->interrupt_line_asserted) { /* merged until the guest ACKs */
        pthread_mutex_unlock(&vdev->interrupt_lock);
        return;
    }
    pthread_mutex_lock(&g_res_mutex);
    while (((b->res_rear + 1) & (HVDEV_MAX_REQ - 1)) == b->res_front)
        ; /* hvisor drains res_list in the hypercall below */
    rear = b->res_rear;
    b->res_list[rear].irq_id = vdev->irq_id;
    b->res_list[rear].target_zone = vdev->zone_id;
    write_barrier();
    b->res_rear = (rear + 1) & (HVDEV_MAX_REQ - 1);
    write_barrier();
    pthread_mutex_unlock(&g_res_mutex);
    do {
        ret = hvdev_ioctl(g_ko_fd, HVDEV_IOC_FINISH_REQ, 0);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0)
        log_error("FINISH_REQ failed: zone %u irq %u: %s", vdev->zone_id,
                  vdev->irq_id, strerror(errno));
    else
        vdev->interrupt_line_asserted = true;
    pthread_mutex_unlock(&vdev->interrupt_lock);
}

/*
 * The device set DEVICE_NEEDS_RESET in regs.status and CONFIG in
 * regs.interrupt_status.  HEAD has no such hook (the device finds it NULL
 * there) and no way to raise an interrupt without a new used entry, so this
 * core does nothing either: the driver sees the bit when it reads Status.
 */
void hv_needs_reset(VirtIODevice *vdev) {
    log_warn("zone %u: the device needs a reset (status %#x); the driver "
             "sees it in Status",
             vdev->zone_id,
             __atomic_load_n(&vdev->regs.status, __ATOMIC_RELAXED));
}

/* ---- registers --------------------------------------------------------- */

/* The selected queue, or NULL (logged) where HEAD would index out of range. */
static VirtQueue *selected(VirtIODevice *vdev, const char *reg) {
    if (vdev->regs.queue_sel >= vdev->vqs_len) {
        log_warn("zone %u: %s with QueueSel %u >= %u queues: ignored (HEAD "
                 "indexes out of bounds here)",
                 vdev->zone_id, reg, vdev->regs.queue_sel, vdev->vqs_len);
        return NULL;
    }
    return &vdev->vqs[vdev->regs.queue_sel];
}

/* HEAD's virtio_dev_reset, in HEAD's order. */
static void reset_device(VirtIODevice *vdev) {
    VirtQueue *vq;
    uint32_t i;

    pthread_mutex_lock(&vdev->interrupt_lock);
    vdev->interrupt_line_asserted = false; /* deassert: a no-op on arm64 */
    vdev->regs.interrupt_status = 0;
    pthread_mutex_unlock(&vdev->interrupt_lock);
    vdev->regs.status = 0;
    vq = selected(vdev, "reset (ready = 0)");
    if (vq != NULL)
        vq->ready = 0;
    if (virtio_blk_ops.reset != NULL)
        virtio_blk_ops.reset(vdev);
    for (i = 0; i < vdev->vqs_len; i++)
        rt_wipe_queue(&vdev->vqs[i]);
    vdev->activated = false;
}

static uint64_t mmio_read(VirtIODevice *vdev, uint64_t off, uint64_t size) {
    VirtQueue *vq;

    if (off >= VIRTIO_MMIO_CONFIG) {
        uint64_t v;

        /* HEAD: an 8-byte load whatever the size, no bound; the pair keeps
         * zeros after its config so nothing private is read. */
        memcpy(&v, (const char *)vdev->dev + (off - VIRTIO_MMIO_CONFIG),
               sizeof(v));
        return v;
    }
    if (size != 4) {
        log_error("mmio read of %#" PRIx64 ": size %" PRIu64 " (not 4)", off,
                  size);
        return 0;
    }
    switch (off) {
    case VIRTIO_MMIO_MAGIC_VALUE:
        return HV_MAGIC;
    case VIRTIO_MMIO_VERSION:
        return HV_VERSION;
    case VIRTIO_MMIO_DEVICE_ID:
        return vdev->regs.device_id;
    case VIRTIO_MMIO_VENDOR_ID:
        return HV_VENDOR;
    case VIRTIO_MMIO_DEVICE_FEATURES:
        return vdev->regs.dev_feature_sel ? vdev->regs.dev_feature >> 32
                                          : (uint32_t)vdev->regs.dev_feature;
    case VIRTIO_MMIO_QUEUE_NUM_MAX:
        if (vdev->regs.queue_sel >= vdev->vqs_len)
            return 0;
        return vdev->vqs[vdev->regs.queue_sel].queue_num_max;
    case VIRTIO_MMIO_QUEUE_READY:
        vq = selected(vdev, "QueueReady read");
        return vq != NULL ? vq->ready : 0;
    case VIRTIO_MMIO_INTERRUPT_STATUS: {
        uint32_t status;

        pthread_mutex_lock(&vdev->interrupt_lock);
        status = vdev->regs.interrupt_status;
        pthread_mutex_unlock(&vdev->interrupt_lock);
        return status;
    }
    case VIRTIO_MMIO_STATUS:
        return vdev->regs.status;
    case VIRTIO_MMIO_CONFIG_GENERATION:
        return vdev->regs.generation;
    default:
        log_error("mmio read of %#" PRIx64 ": write-only or unknown", off);
        return 0;
    }
}

/* Low half OR-ed in; High half OR-ed in, then the pointer re-translated. */
static void ring_addr(VirtIODevice *vdev, uint64_t *addr, uint64_t value,
                      bool high, volatile void **ptr) {
    if (!high) {
        *addr |= value & UINT32_MAX;
        return;
    }
    *addr |= value << 32;
    *ptr = get_virt_addr((void *)(uintptr_t)*addr, (int)vdev->zone_id);
}

static void mmio_write(VirtIODevice *vdev, uint64_t off, uint64_t value,
                       uint64_t size) {
    VirtMmioRegs *regs = &vdev->regs;
    VirtQueue *vq;

    if (off >= VIRTIO_MMIO_CONFIG) {
        log_error("config space write at %#" PRIx64 " refused", off);
        return;
    }
    if (size != 4) {
        log_error("mmio write of %#" PRIx64 ": size %" PRIu64 " (not 4)", off,
                  size);
        return;
    }
    switch (off) {
    case VIRTIO_MMIO_DEVICE_FEATURES_SEL:
        regs->dev_feature_sel = value ? 1 : 0;
        return;
    case VIRTIO_MMIO_DRIVER_FEATURES_SEL:
        regs->drv_feature_sel = value ? 1 : 0;
        return;
    case VIRTIO_MMIO_DRIVER_FEATURES: {
        uint32_t i;

        regs->drv_feature |= regs->drv_feature_sel ? value << 32 : value;
        if (regs->drv_feature & (1ull << VIRTIO_RING_F_EVENT_IDX))
            for (i = 0; i < vdev->vqs_len; i++)
                vdev->vqs[i].event_idx_enabled = 1;
        return;
    }
    case VIRTIO_MMIO_QUEUE_SEL:
        regs->queue_sel = (uint32_t)value;
        return;
    case VIRTIO_MMIO_QUEUE_NOTIFY:
        if (value < vdev->vqs_len && vdev->vqs[value].notify_handler != NULL)
            vdev->vqs[value].notify_handler(vdev, &vdev->vqs[value]);
        else
            log_warn("zone %u: QueueNotify %" PRIu64 " ignored (%u queues)",
                     vdev->zone_id, value, vdev->vqs_len);
        return;
    case VIRTIO_MMIO_INTERRUPT_ACK:
        pthread_mutex_lock(&vdev->interrupt_lock);
        regs->interrupt_status &= ~(
            (uint32_t)value & (VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG));
        if (regs->interrupt_status == 0)
            vdev->interrupt_line_asserted = false;
        pthread_mutex_unlock(&vdev->interrupt_lock);
        return;
    case VIRTIO_MMIO_STATUS:
        regs->status = (uint32_t)value;
        if (regs->status == 0)
            reset_device(vdev);
        if (vdev->status_changed != NULL)
            vdev->status_changed(vdev, (uint32_t)value);
        return;
    default:
        break;
    }

    /* The queue registers: all act on vqs[QueueSel]. */
    vq = selected(vdev, "queue register write");
    if (vq == NULL)
        return;
    switch (off) {
    case VIRTIO_MMIO_QUEUE_NUM:
        vq->num = (uint32_t)value;
        return;
    case VIRTIO_MMIO_QUEUE_READY:
        vq->ready = (uint8_t)value;
        return;
    case VIRTIO_MMIO_QUEUE_DESC_LOW:
    case VIRTIO_MMIO_QUEUE_DESC_HIGH:
        ring_addr(vdev, &vq->desc_table_addr, value,
                  off == VIRTIO_MMIO_QUEUE_DESC_HIGH,
                  (volatile void **)&vq->desc_table);
        return;
    case VIRTIO_MMIO_QUEUE_AVAIL_LOW:
    case VIRTIO_MMIO_QUEUE_AVAIL_HIGH:
        ring_addr(vdev, &vq->avail_addr, value,
                  off == VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                  (volatile void **)&vq->avail_ring);
        return;
    case VIRTIO_MMIO_QUEUE_USED_LOW:
    case VIRTIO_MMIO_QUEUE_USED_HIGH:
        ring_addr(vdev, &vq->used_addr, value,
                  off == VIRTIO_MMIO_QUEUE_USED_HIGH,
                  (volatile void **)&vq->used_ring);
        return;
    default:
        log_error("mmio write of %#" PRIx64 ": read-only or unknown", off);
        return;
    }
}

/* ---- the request ring --------------------------------------------------- */

static void finish_cfg_req(uint64_t cpu, uint64_t value) {
    g_bridge->cfg_values[cpu] = value;
    write_barrier();
    g_bridge->cfg_flags[cpu]++;
    write_barrier();
}

static void note_longest(int64_t *longest, int64_t ns) {
    if (ns > *longest)
        *longest = ns;
}

/* A QueueNotify for the queue whose used ring is used (NULL: none, or not a
 * notify) starts: count what the main thread completes in it. Only a ring
 * aligned as virtio requires: an atomic load from a misaligned one faults on
 * AArch64, and the device refuses such a ring anyway (the measurement must
 * not be what a guest crashes). */
static void stall_begin(volatile VirtqUsed *used) {
    g_stall.used = used != NULL && ((uintptr_t)used & 3) == 0 ? used : NULL;
    if (g_stall.used != NULL)
        g_stall.used_before =
            __atomic_load_n(&g_stall.used->idx, __ATOMIC_ACQUIRE);
}

static void handle_req(volatile struct hvdev_req *slot) {
    struct hvdev_req req;
    uint64_t value = 0;
    unsigned i;

    memcpy(&req, (const void *)slot, sizeof(req));
    if (req.src_cpu >= HVDEV_MAX_CPUS) {
        log_error("request from cpu %" PRIu64 " ignored (HEAD writes "
                  "cfg_flags out of bounds here)",
                  req.src_cpu);
        return;
    }
    for (i = 0; i < g_ndevs; i++)
        if (req.src_zone == g_devs[i]->zone_id &&
            req.address >= g_devs[i]->base_addr &&
            req.address - g_devs[i]->base_addr < g_devs[i]->len)
            break;
    if (i == g_ndevs) {
        log_warn("zone %u: no device at %#" PRIx64, req.src_zone, req.address);
        finish_cfg_req(req.src_cpu, 0);
        return;
    }
    const uint64_t off = req.address - g_devs[i]->base_addr;
    const bool notify = req.is_write && off == VIRTIO_MMIO_QUEUE_NOTIFY;
    const bool status = req.is_write && off == VIRTIO_MMIO_STATUS;
    stall_begin(notify && req.value < g_devs[i]->vqs_len
                    ? g_devs[i]->vqs[req.value].used_ring
                    : NULL);
    const int64_t cpu_start =
        notify || status ? rt_clock_ns(CLOCK_THREAD_CPUTIME_ID) : 0;
    const int64_t start = rt_clock_ns(CLOCK_MONOTONIC);
    if (req.is_write)
        mmio_write(g_devs[i], off, req.value, req.size);
    else
        value = mmio_read(g_devs[i], off, req.size);
    const int64_t took = rt_clock_ns(CLOCK_MONOTONIC) - start;
    g_stall.used = NULL;
    g_stall.accesses++;
    if (notify || status) {
        const int64_t cpu = rt_clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
        note_longest(notify ? &g_stall.notify_ns : &g_stall.status_ns, took);
        note_longest(notify ? &g_stall.notify_cpu_ns : &g_stall.status_cpu_ns,
                     cpu);
    } else {
        note_longest(&g_stall.other_ns, took);
    }
    if (!req.need_interrupt)
        finish_cfg_req(req.src_cpu, value);
}

/* HEAD's consume_pending_requests: drain, poll a while, then the
 * need_wakeup / full fence / re-check handshake before sleeping. */
static void consume_requests(void) {
    volatile struct hvdev_bridge *b = g_bridge;
    uint32_t front = __atomic_load_n(&b->req_front, __ATOMIC_RELAXED);
    int64_t idle_since = 0; /* 0: busy; the clock is read only when idle */

    __atomic_store_n(&b->need_wakeup, 0, __ATOMIC_RELAXED);
    for (;;) {
        uint32_t rear = __atomic_load_n(&b->req_rear, __ATOMIC_RELAXED);

        if (front != rear) {
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            handle_req(&b->req_list[front & (HVDEV_MAX_REQ - 1)]);
            front = (front + 1) & (HVDEV_MAX_REQ - 1);
            __atomic_store_n(&b->req_front, front, __ATOMIC_RELEASE);
            idle_since = 0;
            continue;
        }
        if (idle_since == 0)
            idle_since = rt_clock_ns(CLOCK_MONOTONIC);
        if (rt_clock_ns(CLOCK_MONOTONIC) - idle_since < HV_POLL_NS)
            continue;
        __atomic_store_n(&b->need_wakeup, 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(&b->req_rear, __ATOMIC_RELAXED) == front)
            return;
        __atomic_store_n(&b->need_wakeup, 0, __ATOMIC_RELAXED);
    }
}

/* ---- configuration ------------------------------------------------------ */

/* A number or a "0x.." string, as hvisor-tool's JSON allows. */
static int json_u64(const cJSON *item, uint64_t *out) {
    char *end;

    if (cJSON_IsNumber(item) && item->valuedouble >= 0) {
        *out = (uint64_t)item->valuedouble;
        return 0;
    }
    if (!cJSON_IsString(item) || item->valuestring[0] == '\0')
        return -1;
    errno = 0;
    *out = strtoull(item->valuestring, &end, 0);
    return errno != 0 || *end != '\0' ? -1 : 0;
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    long n;

    if (f == NULL)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && n < (1 << 20) &&
        fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) != NULL) {
        if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        } else {
            buf[n] = '\0';
        }
    }
    fclose(f);
    return buf;
}

static int map_zone(const cJSON *zj, struct hv_zone *z) {
    const cJSON *regions = cJSON_GetObjectItem(zj, "memory_region");
    uint64_t id;
    int i, n = cJSON_GetArraySize(regions);

    if (json_u64(cJSON_GetObjectItem(zj, "id"), &id) != 0 || id > UINT32_MAX ||
        !cJSON_IsArray(regions) || n < 1 || n > HV_MAX_REGIONS) {
        log_fatal("zone JSON: each zone needs an \"id\" and 1..%d "
                  "\"memory_region\" entries",
                  HV_MAX_REGIONS);
        return -1;
    }
    z->id = (uint32_t)id;
    for (i = 0; i < n; i++) {
        const cJSON *r = cJSON_GetArrayItem(regions, i);
        uint64_t zone0, zonex, size;
        void *hva;

        if (json_u64(cJSON_GetObjectItem(r, "zone0_ipa"), &zone0) != 0 ||
            json_u64(cJSON_GetObjectItem(r, "zonex_ipa"), &zonex) != 0 ||
            json_u64(cJSON_GetObjectItem(r, "size"), &size) != 0 || size == 0) {
            log_fatal("zone %u: memory_region %d needs zone0_ipa, zonex_ipa "
                      "and a non-zero size",
                      z->id, i);
            return -1;
        }
        hva = hvdev_mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED,
                         g_ko_fd, (off_t)zone0);
        if (hva == MAP_FAILED) {
            log_fatal("zone %u: cannot map %#" PRIx64 "+%#" PRIx64 ": %s",
                      z->id, zone0, size, strerror(errno));
            return -1;
        }
        z->r[z->nregions++] =
            (struct hv_region){.zonex_ipa = zonex, .size = size, .hva = hva};
    }
    return 0;
}

static int create_devices(const cJSON *zj, uint32_t zone_id) {
    const cJSON *devices = cJSON_GetObjectItem(zj, "devices");
    int i, n = cJSON_GetArraySize(devices);

    for (i = 0; i < n; i++) {
        const cJSON *d = cJSON_GetArrayItem(devices, i);
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(d, "type"));
        const char *status =
            cJSON_GetStringValue(cJSON_GetObjectItem(d, "status"));
        uint64_t addr, len, irq;
        VirtIODevice *vdev;

        if (status != NULL && strcmp(status, "disable") == 0)
            continue;
        if (type == NULL || strcmp(type, "blk") != 0) {
            log_warn("zone %u: device %d of type '%s' skipped (blk only)",
                     zone_id, i, type != NULL ? type : "?");
            continue;
        }
        if (json_u64(cJSON_GetObjectItem(d, "addr"), &addr) != 0 || !addr ||
            json_u64(cJSON_GetObjectItem(d, "len"), &len) != 0 || !len ||
            json_u64(cJSON_GetObjectItem(d, "irq"), &irq) != 0 || !irq ||
            irq > UINT32_MAX) {
            log_fatal("zone %u: device %d needs non-zero addr, len and irq",
                      zone_id, i);
            return -1;
        }
        if (g_ndevs == HVDEV_MAX_DEVS) {
            log_fatal("more than %d devices", HVDEV_MAX_DEVS);
            return -1;
        }
        vdev = rt_create_device(d, zone_id, addr, len, (uint32_t)irq);
        if (vdev == NULL)
            return -1;
        g_devs[g_ndevs++] = vdev;
    }
    return 0;
}

static int load_config(const char *path) {
    char *text = read_text(path);
    cJSON *root = text != NULL ? cJSON_Parse(text) : NULL;
    const cJSON *zones = cJSON_GetObjectItem(root, "zones");
    int i, n = cJSON_GetArraySize(zones), rc = -1;

    free(text);
    if (root == NULL || !cJSON_IsArray(zones) || n < 1 || n > HV_MAX_ZONES) {
        log_fatal("%s: not a zone JSON with 1..%d \"zones\"", path,
                  HV_MAX_ZONES);
        goto out;
    }
    for (i = 0; i < n; i++) {
        const cJSON *zj = cJSON_GetArrayItem(zones, i);

        if (map_zone(zj, &g_zones[g_nzones]) != 0)
            goto out;
        g_nzones++;
        if (create_devices(zj, g_zones[g_nzones - 1].id) != 0)
            goto out;
    }
    if (g_ndevs == 0) {
        log_fatal("%s: no enabled blk device", path);
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* ---- main loop ---------------------------------------------------------- */

static void close_all(void) {
    unsigned i, j;

    if (g_stall.accesses != 0)
        fprintf(stderr,
                "main thread: %" PRIu64
                " accesses; longest QueueNotify %" PRId64
                " ns (most on CPU %" PRId64 " ns; the main thread completed at "
                "most %u in one), longest STATUS write %" PRId64
                " ns (most on CPU %" PRId64
                " ns), longest other access %" PRId64 " ns\n",
                g_stall.accesses, g_stall.notify_ns, g_stall.notify_cpu_ns,
                g_stall.notify_completions, g_stall.status_ns,
                g_stall.status_cpu_ns, g_stall.other_ns);

    for (i = 0; i < g_ndevs; i++)
        g_devs[i]->virtio_close(g_devs[i]); /* joins the device's threads */
    g_ndevs = 0;
    if (g_ko_fd >= 0) {
        hvdev_forget(g_ko_fd);
        close(g_ko_fd);
        g_ko_fd = -1;
    }
    if (g_bridge != NULL)
        munmap((void *)g_bridge, HVDEV_BRIDGE_SIZE);
    g_bridge = NULL;
    for (i = 0; i < g_nzones; i++)
        for (j = 0; j < g_zones[i].nregions; j++)
            munmap(g_zones[i].r[j].hva, g_zones[i].r[j].size);
    g_nzones = 0;
}

int rt_hvisor_run(const struct rt_options *opts) {
    struct epoll_event ev = {.events = EPOLLIN};
    sigset_t all, term;
    int efd, sfd, epfd;
    unsigned i;

    rt_hvisor_core = true;
    g_main_thread = pthread_self();
    rt_inject_hook = hv_inject_seen;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    sigemptyset(&term);
    sigaddset(&term, SIGINT);
    sigaddset(&term, SIGTERM);
    sfd = signalfd(-1, &term, SFD_CLOEXEC | SFD_NONBLOCK);
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (sfd < 0 || efd < 0 || epfd < 0) {
        log_fatal("signalfd/eventfd/epoll: %s", strerror(errno));
        return 1;
    }
    g_ko_fd = hvdev_open();
    if (g_ko_fd < 0 || hvdev_ioctl(g_ko_fd, HVDEV_IOC_INIT_VIRTIO, 0) < 0 ||
        hvdev_ioctl(g_ko_fd, HVDEV_IOC_SET_EVENTFD, (unsigned long)efd) < 0) {
        log_fatal("cannot attach to the bridge world: %s", strerror(errno));
        return 1;
    }
    g_bridge = hvdev_mmap(NULL, HVDEV_BRIDGE_SIZE, PROT_READ | PROT_WRITE,
                          MAP_SHARED, g_ko_fd, 0);
    if (g_bridge == MAP_FAILED) {
        g_bridge = NULL;
        log_fatal("cannot map the bridge page: %s", strerror(errno));
        close_all();
        return 1;
    }
    if (load_config(opts->hvisor_config) != 0) {
        close_all();
        return 1;
    }
    for (i = 0; i < g_ndevs; i++)
        g_bridge->mmio_addrs[i] = g_devs[i]->base_addr;
    write_barrier();
    g_bridge->mmio_avail = 1;
    write_barrier();
    __atomic_store_n(&g_bridge->need_wakeup, 1, __ATOMIC_RELAXED);

    ev.data.fd = sfd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);
    ev.data.fd = efd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev);
    fprintf(stderr,
            "vhost-user-blk: serving %u device(s) through the hvisor "
            "bridge\n",
            g_ndevs);
    for (;;) {
        struct epoll_event got[4];
        int n = epoll_wait(epfd, got, 4, -1), k;

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            log_fatal("epoll_wait: %s", strerror(errno));
            close_all();
            return 1;
        }
        for (k = 0; k < n; k++) {
            if (got[k].data.fd == sfd) {
                struct signalfd_siginfo si;

                if (read(sfd, &si, sizeof(si)) == sizeof(si)) {
                    log_info("signal %u: shutting down", si.ssi_signo);
                    close_all();
                    return 0;
                }
            } else {
                uint64_t count;

                if (read(efd, &count, sizeof(count)) == sizeof(count))
                    consume_requests();
            }
        }
    }
}
