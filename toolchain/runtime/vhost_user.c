/*
 * vhost-user backend (server side) hosting one hvisor-style virtio-blk
 * device.  The frontend (e.g. QEMU's vhost-user-blk) owns the guest; this
 * process maps the guest memory it is given, and maps the protocol onto the
 * hvisor device model:
 *
 *   kick eventfd readable      -> vq->notify_handler() on the main thread
 *   GET_VRING_BASE, disconnect -> ops.reset() (device quiesces its threads)
 *   SIGINT / SIGTERM           -> ops.close() (device joins its threads)
 *   GET_CONFIG                 -> bytes of the config struct that is the
 *                                 first member of vdev->dev
 *   virtio_dev_needs_reset()   -> the frontend is dropped (device reset),
 *                                 the next one accepted (libvhost-user's
 *                                 vu_panic on a broken ring)
 *
 * Everything the frontend sends is validated before use.  The main thread
 * only rewrites ring state while the device is quiescent (after ops.reset),
 * and resumes it afterwards by calling the notify handlers of the queues
 * that are still runnable, just as a fresh kick would.
 */
#define _GNU_SOURCE
#include "log.h"
#include "rt_clock.h"
#include "runtime.h"
#include "vhost_user_proto.h"
#include "virtio.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/virtio_blk.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* Provided by the device pair (virtio_blk.c). */
extern const struct virtio_device_ops virtio_blk_ops;
extern const struct virtio_config_ops virtio_blk_config_ops;

/* ---- wire format ------------------------------------------------------ */

#define VU_OFFERED_PROTOCOL_FEATURES                                           \
    (uint64_t)((1ull << VU_PROTOCOL_F_MQ) |                                    \
               (1ull << VU_PROTOCOL_F_REPLY_ACK) |                             \
               (1ull << VU_PROTOCOL_F_CONFIG))

#define VU_MAX_FDS 8
#define VU_SCM_MAX_FD 253 /* Linux SCM_MAX_FD */
#define VU_MAX_CONFIG_SIZE 256

/* Seconds a frontend may take to finish a message it has started. */
#define VU_IO_TIMEOUT_SEC 5

struct vu_memory {
    uint32_t nregions;
    uint32_t padding;
    struct vu_region regions[VU_MAX_REGIONS];
};

struct vu_config {
    uint32_t offset;
    uint32_t size;
    uint32_t flags;
    uint8_t region[VU_MAX_CONFIG_SIZE];
};

union vu_payload {
    uint64_t u64;
    struct vu_vring_state state;
    struct vu_vring_addr addr;
    struct vu_memory mem;
    struct vu_config config;
    uint8_t raw[512];
};

struct vu_msg {
    struct vu_header hdr;
    union vu_payload payload;
    int fds[VU_MAX_FDS];
    unsigned nfds;
};

/* Handler results. */
#define RC_OK 0       /* done, no natural reply (ack success if asked) */
#define RC_REPLIED 1  /* a natural reply was sent */
#define RC_FAIL (-1)  /* refused; ack failure if asked, keep connection */
#define RC_PROTO (-2) /* malformed or hostile: drop the connection */

/* ---- runtime state (private) ------------------------------------------ */

struct mem_region {
    uint64_t gpa;
    uint64_t size;
    uint64_t uaddr;
    void *map_base;
    size_t map_len;
    char *hva; /* map_base + mmap_offset */
};

struct mem_table {
    unsigned n;
    struct mem_region r[VU_MAX_REGIONS];
};

struct vq_state {
    int kick_fd; /* ring is "started" while this is valid */
    bool kick_watched;
    int call_fd;      /* read by device threads: atomic access */
    bool call_active; /* false after a no-fd SET_VRING_CALL */
    int err_fd;
    bool enabled; /* SET_VRING_ENABLE value */
    bool addr_set;
    uint64_t desc_uaddr;
    uint64_t avail_uaddr;
    uint64_t used_uaddr;
};

enum ep_kind { EP_LISTEN = 1, EP_CONN, EP_SIGNAL, EP_KICK, EP_NEEDS_RESET };

/* The server: one device, one frontend at a time.  Only the main thread
 * writes it, but for needs_reset_fd, which device threads write to. */
static struct vu_server {
    VirtIODevice *vdev;
    const struct virtio_device_ops *ops;
    struct mem_table mem;
    struct vq_state vq[VIRTIO_MAX_VQUEUES];
    uint64_t protocol_features;
    bool protocol_acked; /* VHOST_USER_F_PROTOCOL_FEATURES negotiated */
    bool device_running; /* a notify handler ran since the last reset */
    int epfd;
    int listen_fd;
    int conn_fd; /* the frontend; -1 between frontends */
    int signal_fd;
    /* Written by any device thread (virtio_dev_needs_reset), read and
     * drained by the main thread; set before the device exists. */
    int needs_reset_fd;
} g_srv = {
    .ops = &virtio_blk_ops,
    .epfd = -1,
    .listen_fd = -1,
    .conn_fd = -1,
    .signal_fd = -1,
    .needs_reset_fd = -1,
};

static uint64_t ep_tag(enum ep_kind kind, uint32_t idx) {
    return ((uint64_t)kind << 32) | idx;
}

static int ep_add(int fd, enum ep_kind kind, uint32_t idx) {
    struct epoll_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = ep_tag(kind, idx);
    return epoll_ctl(g_srv.epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void ep_del(int fd) {
    if (fd >= 0)
        epoll_ctl(g_srv.epfd, EPOLL_CTL_DEL, fd, NULL);
}

static void close_fd(int *fd) {
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* ---- memory table ------------------------------------------------------ */

void *vu_gpa_to_hva(uint64_t gpa, int zone_id) {
    unsigned i;

    (void)zone_id; /* one guest per vhost-user connection */
    for (i = 0; i < g_srv.mem.n; i++) {
        const struct mem_region *r = &g_srv.mem.r[i];

        if (gpa >= r->gpa && gpa - r->gpa < r->size)
            return r->hva + (gpa - r->gpa);
    }
    return NULL;
}

/* Frontend virtual range -> host pointer; the whole range must fit. */
static char *uaddr_to_hva(uint64_t uaddr, uint64_t len, uint64_t *gpa) {
    unsigned i;

    for (i = 0; i < g_srv.mem.n; i++) {
        const struct mem_region *r = &g_srv.mem.r[i];
        uint64_t off;

        if (uaddr < r->uaddr)
            continue;
        off = uaddr - r->uaddr;
        if (off >= r->size || len > r->size - off)
            continue;
        *gpa = r->gpa + off;
        return r->hva + off;
    }
    return NULL;
}

static void unmap_table(struct mem_table *t) {
    unsigned i;

    for (i = 0; i < t->n; i++)
        munmap(t->r[i].map_base, t->r[i].map_len);
    memset(t, 0, sizeof(*t));
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b,
                           uint64_t blen) {
    return a < b + blen && b < a + alen;
}

/* ---- queue bookkeeping ------------------------------------------------- */

static void quiesce_device(void) {
    if (g_srv.ops->reset != NULL)
        g_srv.ops->reset(g_srv.vdev);
    g_srv.device_running = false;
}

/* Quiesces only if a notify handler may have set the device going. */
static void quiesce_if_running(void) {
    if (g_srv.device_running)
        quiesce_device();
}

static bool vq_runnable(unsigned i) {
    const VirtQueue *vq = &g_srv.vdev->vqs[i];
    const struct vq_state *s = &g_srv.vq[i];

    if (s->kick_fd < 0)
        return false;
    if (g_srv.protocol_acked && !s->enabled)
        return false;
    return vq->num != 0 && vq->desc_table != NULL && vq->avail_ring != NULL &&
           vq->used_ring != NULL;
}

static void call_notify(VirtQueue *vq) {
    int rc;

    if (vq->notify_handler == NULL)
        return;
    g_srv.device_running = true;
    rc = vq->notify_handler(g_srv.vdev, vq);
    if (rc != 0)
        log_debug("notify handler of queue %u returned %d",
                  (unsigned)vq->vq_idx, rc);
}

/*
 * Recomputes vq->ready for every queue.  A queue that just became ready is
 * poked once; if the device was quiesced, every ready queue is poked so the
 * device resumes (a spurious notify is always harmless in virtio).
 */
static void refresh_queues(void) {
    bool resume = !g_srv.device_running;
    unsigned i;

    for (i = 0; i < g_srv.vdev->vqs_len; i++) {
        VirtQueue *vq = &g_srv.vdev->vqs[i];
        bool was = vq->ready != 0;
        bool now = vq_runnable(i);

        vq->ready = now;
        if (now && (resume || !was))
            call_notify(vq);
    }
}

static void clear_ring(VirtQueue *vq) {
    vq->desc_table = NULL;
    vq->avail_ring = NULL;
    vq->used_ring = NULL;
    vq->desc_table_addr = 0;
    vq->avail_addr = 0;
    vq->used_addr = 0;
    vq->ready = 0;
}

/* Validates and maps the three ring areas of queue i.  Device quiescent. */
static bool translate_rings(unsigned i) {
    VirtQueue *vq = &g_srv.vdev->vqs[i];
    struct vq_state *s = &g_srv.vq[i];
    uint64_t num = vq->num;
    uint64_t dgpa = 0, agpa = 0, ugpa = 0;
    char *d, *a, *u;

    clear_ring(vq);
    if (!s->addr_set || num == 0)
        return true; /* nothing to map yet */
    d = uaddr_to_hva(s->desc_uaddr, 16 * num, &dgpa);
    a = uaddr_to_hva(s->avail_uaddr, 6 + 2 * num, &agpa);
    u = uaddr_to_hva(s->used_uaddr, 6 + 8 * num, &ugpa);
    if (d == NULL || a == NULL || u == NULL) {
        log_error("queue %u: ring area outside guest memory "
                  "(desc 0x%" PRIx64 " avail 0x%" PRIx64 " used 0x%" PRIx64
                  ", num %" PRIu64 ")",
                  i, s->desc_uaddr, s->avail_uaddr, s->used_uaddr, num);
        return false;
    }
    if (((uintptr_t)d & 15) || ((uintptr_t)a & 1) || ((uintptr_t)u & 3)) {
        log_error("queue %u: misaligned ring address", i);
        return false;
    }
    vq->desc_table = (volatile VirtqDesc *)(void *)d;
    vq->avail_ring = (volatile VirtqAvail *)(void *)a;
    vq->used_ring = (volatile VirtqUsed *)(void *)u;
    vq->desc_table_addr = dgpa;
    vq->avail_addr = agpa;
    vq->used_addr = ugpa;
    return true;
}

static void stop_kick(struct vq_state *s) {
    if (s->kick_watched)
        ep_del(s->kick_fd);
    s->kick_watched = false;
    close_fd(&s->kick_fd);
}

/* Only with the device quiescent: no thread may be signalling. */
static void release_vq_fds(struct vq_state *s) {
    int fd = __atomic_exchange_n(&s->call_fd, -1, __ATOMIC_ACQ_REL);

    stop_kick(s);
    __atomic_store_n(&s->call_active, false, __ATOMIC_RELEASE);
    if (fd >= 0)
        close(fd);
    close_fd(&s->err_fd);
}

/* Forgets a pending "needs reset": the device has just been reset. */
static void drain_needs_reset(void) {
    uint64_t n;

    while (read(g_srv.needs_reset_fd, &n, sizeof(n)) < 0 && errno == EINTR)
        ;
}

/* Full virtio reset of the device's transport-visible state. */
static void reset_device_state(void) {
    unsigned i;

    quiesce_device();
    /* The device's threads are parked: a request for a reset made before
     * this point is answered by it, and none can arrive until the next
     * notify. */
    drain_needs_reset();
    g_srv.vdev->regs.status = 0;
    g_srv.vdev->regs.interrupt_status = 0;
    g_srv.vdev->regs.drv_feature = 0;
    g_srv.vdev->activated = false;
    for (i = 0; i < g_srv.vdev->vqs_len; i++) {
        rt_wipe_queue(&g_srv.vdev->vqs[i]);
        release_vq_fds(&g_srv.vq[i]);
        g_srv.vq[i].enabled = false;
        g_srv.vq[i].addr_set = false;
    }
    unmap_table(&g_srv.mem);
    g_srv.protocol_features = 0;
    g_srv.protocol_acked = false;
    if (g_srv.vdev->status_changed != NULL)
        g_srv.vdev->status_changed(g_srv.vdev, 0);
}

void vu_signal_call(VirtQueue *vq) {
    const uint64_t one = 1;
    struct vq_state *s;
    int fd;

    if (g_srv.vdev == NULL || vq->dev != g_srv.vdev ||
        vq->vq_idx >= g_srv.vdev->vqs_len)
        return;
    s = &g_srv.vq[vq->vq_idx];
    if (!__atomic_load_n(&s->call_active, __ATOMIC_ACQUIRE))
        return;
    fd = __atomic_load_n(&s->call_fd, __ATOMIC_ACQUIRE);
    if (fd < 0)
        return;
    /* EAGAIN means the counter is saturated: the frontend is notified. */
    if (write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        log_debug("queue %u: call write failed: %s", (unsigned)vq->vq_idx,
                  strerror(errno));
}

/*
 * The device found a ring that breaks a rule and stopped using it.  Any
 * thread may call this, the device's worker included, possibly with its own
 * locks held: so the main loop is only woken (the eventfd), and there drops
 * the frontend, which resets the device (and joins or parks its threads)
 * exactly as on a disconnect.
 */
void vu_needs_reset(VirtIODevice *vdev) {
    const uint64_t one = 1;

    if (vdev == NULL || vdev != g_srv.vdev)
        return;
    /* EAGAIN: the counter is saturated, the main loop is woken anyway. */
    if (write(g_srv.needs_reset_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        log_error("cannot wake the main loop for a device reset: %s",
                  strerror(errno));
}

/* ---- guest memory that shrinks under the device ------------------------- */

static size_t g_page_size;

/*
 * SIGBUS in a mapping of the frontend's memory: the frontend truncated a
 * memory file after SET_MEM_TABLE (a memfd it did not seal against
 * shrinking). The faulting page and the rest of that region get anonymous
 * zero pages in place, so the access that faulted, and any after it, go on
 * harmlessly, and the main loop is woken to drop the frontend (which
 * unmaps the table). Anything else faulting is a real crash: the default
 * action. Only async-signal-safe calls here (mmap, write).
 */
static void on_sigbus(int sig, siginfo_t *si, void *uctx) {
    static const char msg[] =
        "vhost-user-blk: error: guest memory shrank under the device (the "
        "frontend truncated a memory file); zero pages stand in until the "
        "connection is dropped\n";
    const uint64_t one = 1;
    char *addr = si->si_addr;
    unsigned i;

    (void)uctx;
    for (i = 0; i < g_srv.mem.n && i < VU_MAX_REGIONS; i++) {
        char *base = g_srv.mem.r[i].map_base;
        const size_t len = g_srv.mem.r[i].map_len;
        char *page;

        if (base == NULL || addr < base || addr >= base + len)
            continue;
        page = (char *)((uintptr_t)addr & ~(uintptr_t)(g_page_size - 1));
        if (mmap(page, (size_t)(base + len - page), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
            break;
        if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0 ||
            write(g_srv.needs_reset_fd, &one, sizeof(one)) < 0) {
            /* nothing more a handler can do */
        }
        return;
    }
    signal(sig, SIG_DFL); /* not guest memory: the fault repeats, fatally */
}

static int install_sigbus_handler(void) {
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    g_page_size = (size_t)sysconf(_SC_PAGESIZE);
    return sigaction(SIGBUS, &sa, NULL);
}

/* ---- message I/O ------------------------------------------------------- */

static void close_msg_fds(struct vu_msg *m) {
    unsigned i;

    for (i = 0; i < m->nfds; i++)
        close_fd(&m->fds[i]);
    m->nfds = 0;
}

/* The rest of a message, by deadline_ns: a message that has started has one
 * deadline for the whole of it, so a frontend trickling bytes cannot hold
 * the main thread longer than that (SO_RCVTIMEO bounds each recv only). */
static int read_full(int fd, void *buf, size_t len, int64_t deadline_ns) {
    char *p = buf;

    while (len > 0) {
        const int64_t left_ns = deadline_ns - rt_clock_ns(CLOCK_MONOTONIC);
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int ready;

        if (left_ns <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        ready = poll(&pfd, 1, (int)((left_ns + 999999) / 1000000));
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0) {
            if (ready == 0)
                errno = ETIMEDOUT;
            return -1;
        }
        ssize_t n = recv(fd, p, len, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            errno = ECONNRESET; /* the frontend went away mid-message */
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* 1 = message read, 0 = orderly EOF, -1 = error (already logged). */
static int read_msg(int fd, struct vu_msg *m) {
    /* Room for the kernel's per-message maximum, so that surplus fds are
     * received (and closed) here rather than depending on how the kernel,
     * or an emulator such as qemu-user, disposes of what did not fit. */
    char cbuf[CMSG_SPACE(VU_SCM_MAX_FD * sizeof(int))];
    struct iovec iov = {.iov_base = &m->hdr, .iov_len = sizeof(m->hdr)};
    struct msghdr mh;
    struct cmsghdr *c;
    bool too_many = false;
    int64_t deadline;
    ssize_t n;

    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof(cbuf);
    m->nfds = 0;

    do {
        n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n == 0)
        return 0;
    if (n < 0) {
        log_error("receive failed: %s", strerror(errno));
        return -1;
    }
    deadline =
        rt_clock_ns(CLOCK_MONOTONIC) + (int64_t)VU_IO_TIMEOUT_SEC * 1000000000;
    for (c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        size_t cnt, i;

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (i = 0; i < cnt; i++) {
            int rfd;

            memcpy(&rfd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (m->nfds < VU_MAX_FDS) {
                m->fds[m->nfds++] = rfd;
            } else {
                close(rfd);
                too_many = true;
            }
        }
    }
    if (too_many || (mh.msg_flags & MSG_CTRUNC)) {
        log_error("too many file descriptors in one message");
        close_msg_fds(m);
        return -1;
    }
    if ((size_t)n < sizeof(m->hdr) &&
        read_full(fd, (char *)&m->hdr + n, sizeof(m->hdr) - (size_t)n,
                  deadline) < 0) {
        log_error("truncated message header: %s", strerror(errno));
        close_msg_fds(m);
        return -1;
    }
    if ((m->hdr.flags & VU_FLAG_VERSION_MASK) != VU_VERSION) {
        log_error("unsupported protocol version in flags 0x%x", m->hdr.flags);
        close_msg_fds(m);
        return -1;
    }
    if (m->hdr.size > sizeof(m->payload)) {
        log_error("request %u: payload of %u bytes is too large",
                  m->hdr.request, m->hdr.size);
        close_msg_fds(m);
        return -1;
    }
    memset(&m->payload, 0, sizeof(m->payload));
    if (m->hdr.size > 0 &&
        read_full(fd, &m->payload, m->hdr.size, deadline) < 0) {
        log_error("request %u: payload not complete within %d s: %s",
                  m->hdr.request, VU_IO_TIMEOUT_SEC, strerror(errno));
        close_msg_fds(m);
        return -1;
    }
    return 1;
}

static int send_reply(uint32_t request, const void *payload, uint32_t size) {
    struct vu_header hdr = {
        .request = request, .flags = VU_VERSION | VU_FLAG_REPLY, .size = size};
    struct iovec iov[2] = {{.iov_base = &hdr, .iov_len = sizeof(hdr)},
                           {.iov_base = (void *)payload, .iov_len = size}};
    struct msghdr mh;
    size_t total = sizeof(hdr) + size;
    ssize_t n;

    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = iov;
    mh.msg_iovlen = size ? 2 : 1;
    do {
        n = sendmsg(g_srv.conn_fd, &mh, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0 || (size_t)n != total) {
        log_error("request %u: sending the reply failed", request);
        return -1;
    }
    return 0;
}

static int reply_u64(uint32_t request, uint64_t value) {
    return send_reply(request, &value, sizeof(value)) < 0 ? RC_PROTO
                                                          : RC_REPLIED;
}

/* ---- request handlers -------------------------------------------------- */

static bool size_is(const struct vu_msg *m, uint32_t size, const char *what) {
    if (m->hdr.size == size)
        return true;
    log_error("%s: payload size %u, expected %u", what, m->hdr.size, size);
    return false;
}

static bool fds_are(const struct vu_msg *m, unsigned n, const char *what) {
    if (m->nfds == n)
        return true;
    log_error("%s: %u file descriptors, expected %u", what, m->nfds, n);
    return false;
}

static bool index_ok(uint64_t idx, const char *what) {
    if (idx < g_srv.vdev->vqs_len)
        return true;
    log_error("%s: queue index %" PRIu64 " out of range", what, idx);
    return false;
}

static uint64_t offered_features(void) {
    return g_srv.vdev->regs.dev_feature | (1ull << VU_F_PROTOCOL_FEATURES);
}

static int h_set_features(struct vu_msg *m) {
    uint64_t f;
    unsigned i;

    f = m->payload.u64;
    if (f & ~offered_features()) {
        log_error("SET_FEATURES: bits 0x%" PRIx64 " were never offered",
                  f & ~offered_features());
        return RC_PROTO;
    }
    quiesce_if_running();
    g_srv.protocol_acked = (f >> VU_F_PROTOCOL_FEATURES) & 1;
    g_srv.vdev->regs.drv_feature = f & ~(1ull << VU_F_PROTOCOL_FEATURES);
    for (i = 0; i < g_srv.vdev->vqs_len; i++)
        g_srv.vdev->vqs[i].event_idx_enabled =
            (f >> VIRTIO_RING_F_EVENT_IDX) & 1;
    refresh_queues();
    return RC_OK;
}

static int h_set_mem_table(struct vu_msg *m) {
    const struct vu_memory *mem = &m->payload.mem;
    struct mem_table fresh;
    struct mem_table old;
    unsigned i, j;

    if (m->hdr.size < 8) {
        log_error("SET_MEM_TABLE: payload too short");
        return RC_PROTO;
    }
    if (mem->nregions > VU_MAX_REGIONS ||
        m->hdr.size < 8 + mem->nregions * sizeof(struct vu_region)) {
        log_error("SET_MEM_TABLE: bad region count %u for %u bytes",
                  mem->nregions, m->hdr.size);
        return RC_PROTO;
    }
    if (!fds_are(m, mem->nregions, "SET_MEM_TABLE"))
        return RC_PROTO;

    for (i = 0; i < mem->nregions; i++) {
        const struct vu_region *r = &mem->regions[i];
        struct stat st;

        if (r->memory_size == 0 ||
            r->guest_phys_addr + r->memory_size < r->guest_phys_addr ||
            r->userspace_addr + r->memory_size < r->userspace_addr ||
            r->mmap_offset + r->memory_size < r->mmap_offset ||
            r->mmap_offset + r->memory_size > (uint64_t)SIZE_MAX) {
            log_error("SET_MEM_TABLE: region %u has a bad size or offset", i);
            return RC_PROTO;
        }
        /* A mapping past the end of its file faults (SIGBUS) on first
         * touch: the file must hold the whole region. */
        if (fstat(m->fds[i], &st) != 0) {
            log_error("SET_MEM_TABLE: region %u: fstat: %s", i,
                      strerror(errno));
            return RC_PROTO;
        }
        if (S_ISREG(st.st_mode) &&
            (uint64_t)st.st_size < r->mmap_offset + r->memory_size) {
            log_error("SET_MEM_TABLE: region %u needs %" PRIu64
                      " bytes of its file, which has %lld",
                      i, r->mmap_offset + r->memory_size,
                      (long long)st.st_size);
            return RC_PROTO;
        }
        for (j = 0; j < i; j++) {
            const struct vu_region *o = &mem->regions[j];

            if (ranges_overlap(r->guest_phys_addr, r->memory_size,
                               o->guest_phys_addr, o->memory_size) ||
                ranges_overlap(r->userspace_addr, r->memory_size,
                               o->userspace_addr, o->memory_size)) {
                log_error("SET_MEM_TABLE: regions %u and %u overlap", j, i);
                return RC_PROTO;
            }
        }
    }

    memset(&fresh, 0, sizeof(fresh));
    for (i = 0; i < mem->nregions; i++) {
        const struct vu_region *r = &mem->regions[i];
        size_t len = (size_t)(r->mmap_offset + r->memory_size);
        void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_NORESERVE, m->fds[i], 0);

        if (p == MAP_FAILED) {
            log_error("SET_MEM_TABLE: mapping region %u failed: %s", i,
                      strerror(errno));
            unmap_table(&fresh);
            return RC_FAIL;
        }
        fresh.r[i].gpa = r->guest_phys_addr;
        fresh.r[i].size = r->memory_size;
        fresh.r[i].uaddr = r->userspace_addr;
        fresh.r[i].map_base = p;
        fresh.r[i].map_len = len;
        fresh.r[i].hva = (char *)p + r->mmap_offset;
        fresh.n = i + 1;
    }

    /* No device thread may look at guest memory while it is swapped. */
    quiesce_if_running();
    old = g_srv.mem;
    g_srv.mem = fresh;
    for (i = 0; i < g_srv.vdev->vqs_len; i++) {
        if (!translate_rings(i)) {
            log_error("queue %u stays stopped until its addresses are set "
                      "again",
                      i);
            g_srv.vq[i].addr_set = false;
        }
    }
    unmap_table(&old);
    log_info("memory table: %u region(s)", g_srv.mem.n);
    refresh_queues();
    return RC_OK;
}

static int h_set_vring_num(struct vu_msg *m) {
    const struct vu_vring_state *st = &m->payload.state;
    VirtQueue *vq;

    vq = &g_srv.vdev->vqs[st->index];
    if (st->num == 0 || st->num > vq->queue_num_max ||
        (st->num & (st->num - 1)) != 0) {
        log_error("SET_VRING_NUM: queue %u: size %u is not a power of two "
                  "in 1..%u",
                  st->index, st->num, vq->queue_num_max);
        return RC_PROTO;
    }
    quiesce_if_running();
    vq->num = st->num;
    if (!translate_rings(st->index))
        return RC_PROTO;
    refresh_queues();
    return RC_OK;
}

static int h_set_vring_addr(struct vu_msg *m) {
    const struct vu_vring_addr *a = &m->payload.addr;
    struct vq_state *s;

    s = &g_srv.vq[a->index];
    quiesce_if_running();
    s->desc_uaddr = a->desc_user_addr;
    s->avail_uaddr = a->avail_user_addr;
    s->used_uaddr = a->used_user_addr;
    s->addr_set = true;
    if (!translate_rings(a->index)) {
        s->addr_set = false;
        return RC_PROTO;
    }
    refresh_queues();
    return RC_OK;
}

static int h_set_vring_base(struct vu_msg *m) {
    const struct vu_vring_state *st = &m->payload.state;
    VirtQueue *vq;

    if (st->num > 0xffff) {
        log_error("SET_VRING_BASE: index %u does not fit a split ring",
                  st->num);
        return RC_PROTO;
    }
    vq = &g_srv.vdev->vqs[st->index];
    quiesce_if_running();
    vq->last_avail_idx = (uint16_t)st->num;
    vq->last_used_idx = (uint16_t)st->num;
    refresh_queues();
    return RC_OK;
}

static int h_get_vring_base(struct vu_msg *m) {
    struct vu_vring_state st = m->payload.state;
    VirtQueue *vq;
    struct vq_state *s;

    vq = &g_srv.vdev->vqs[st.index];
    s = &g_srv.vq[st.index];

    /* After reset the device has completed everything it took. */
    quiesce_device();
    st.num = vq->last_avail_idx;
    if (send_reply(m->hdr.request, &st, sizeof(st)) < 0)
        return RC_PROTO;

    /* The ring is stopped: forget it until the frontend starts it again. */
    clear_ring(vq);
    s->addr_set = false;
    s->enabled = false;
    stop_kick(s);
    refresh_queues(); /* resumes the other queues, if any */
    return RC_REPLIED;
}

/* Parses the u64 payload of SET_VRING_KICK/CALL/ERR. */
static int vring_fd_arg(struct vu_msg *m, const char *what, unsigned *idx,
                        int *fd) {
    uint64_t v = m->payload.u64;

    if (v & ~(VU_VRING_INDEX_MASK | VU_VRING_NOFD)) {
        log_error("%s: reserved bits set in 0x%" PRIx64, what, v);
        return RC_PROTO;
    }
    if (!index_ok(v & VU_VRING_INDEX_MASK, what))
        return RC_PROTO;
    if (!fds_are(m, (v & VU_VRING_NOFD) ? 0 : 1, what))
        return RC_PROTO;
    *idx = (unsigned)(v & VU_VRING_INDEX_MASK);
    *fd = -1;
    if (m->nfds == 1) {
        *fd = m->fds[0];
        m->fds[0] = -1; /* the handler owns it now */
    }
    return RC_OK;
}

static int h_set_vring_kick(struct vu_msg *m) {
    struct vq_state *s;
    unsigned idx;
    int fd;
    int rc = vring_fd_arg(m, "SET_VRING_KICK", &idx, &fd);

    if (rc != RC_OK)
        return rc;
    if (fd < 0) {
        log_error("SET_VRING_KICK: queue %u: polling mode (no fd) is not "
                  "supported",
                  idx);
        return RC_FAIL;
    }
    s = &g_srv.vq[idx];
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0 ||
        ep_add(fd, EP_KICK, idx) < 0) {
        log_error("SET_VRING_KICK: queue %u: unusable fd: %s", idx,
                  strerror(errno));
        close(fd);
        return RC_FAIL;
    }
    stop_kick(s);
    s->kick_fd = fd;
    s->kick_watched = true;
    refresh_queues();
    return RC_OK;
}

static int h_set_vring_call(struct vu_msg *m) {
    struct vq_state *s;
    unsigned idx;
    int fd;
    int rc = vring_fd_arg(m, "SET_VRING_CALL", &idx, &fd);
    int cur;

    if (rc != RC_OK)
        return rc;
    s = &g_srv.vq[idx];
    if (fd < 0) {
        /* Keep the old fd open (a device thread may hold its number) but
         * stop signalling through it. */
        __atomic_store_n(&s->call_active, false, __ATOMIC_RELEASE);
        return RC_OK;
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        log_error("SET_VRING_CALL: queue %u: unusable fd: %s", idx,
                  strerror(errno));
        close(fd);
        return RC_FAIL;
    }
    cur = __atomic_load_n(&s->call_fd, __ATOMIC_ACQUIRE);
    if (cur >= 0) {
        /* Swap the file behind the existing number in one step, so a
         * concurrent signal goes to either the old or the new eventfd and
         * never to a closed or recycled descriptor. */
        if (dup3(fd, cur, O_CLOEXEC) < 0) {
            log_error("SET_VRING_CALL: queue %u: dup3 failed: %s", idx,
                      strerror(errno));
            close(fd);
            return RC_FAIL;
        }
        close(fd);
    } else {
        __atomic_store_n(&s->call_fd, fd, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&s->call_active, true, __ATOMIC_RELEASE);
    return RC_OK;
}

static int h_set_vring_err(struct vu_msg *m) {
    unsigned idx;
    int fd;
    int rc = vring_fd_arg(m, "SET_VRING_ERR", &idx, &fd);

    if (rc != RC_OK)
        return rc;
    close_fd(&g_srv.vq[idx].err_fd); /* only the runtime ever holds it */
    g_srv.vq[idx].err_fd = fd;
    return RC_OK;
}

static int h_set_protocol_features(struct vu_msg *m) {
    if (m->payload.u64 & ~VU_OFFERED_PROTOCOL_FEATURES) {
        log_error("SET_PROTOCOL_FEATURES: bits 0x%" PRIx64
                  " were never offered",
                  m->payload.u64 & ~VU_OFFERED_PROTOCOL_FEATURES);
        return RC_PROTO;
    }
    g_srv.protocol_features = m->payload.u64;
    return RC_OK;
}

static int h_set_vring_enable(struct vu_msg *m) {
    const struct vu_vring_state *st = &m->payload.state;

    if (st->num > 1) {
        log_error("SET_VRING_ENABLE: bad value %u", st->num);
        return RC_PROTO;
    }
    if (!st->num && g_srv.vdev->vqs[st->index].ready)
        quiesce_if_running();
    g_srv.vq[st->index].enabled = st->num != 0;
    refresh_queues();
    return RC_OK;
}

static int h_get_config(struct vu_msg *m) {
    struct vu_config reply;
    const struct vu_config *req = &m->payload.config;
    size_t cfg_len = sizeof(struct virtio_blk_config);
    uint32_t i;

    if (m->hdr.size < VU_CONFIG_HDR_SIZE || req->size > VU_MAX_CONFIG_SIZE ||
        m->hdr.size < VU_CONFIG_HDR_SIZE + req->size) {
        log_error("GET_CONFIG: bad size (message %u, config %u)", m->hdr.size,
                  req->size);
        return RC_PROTO;
    }
    memset(&reply, 0, sizeof(reply));
    reply.offset = req->offset;
    reply.size = req->size;
    reply.flags = req->flags;
    /* The device's private struct starts with its virtio_blk_config. */
    for (i = 0; i < req->size && g_srv.vdev->dev != NULL; i++) {
        uint64_t at = (uint64_t)req->offset + i;

        if (at >= cfg_len)
            break;
        reply.region[i] = ((const uint8_t *)g_srv.vdev->dev)[at];
    }
    if (send_reply(m->hdr.request, &reply, VU_CONFIG_HDR_SIZE + req->size) < 0)
        return RC_PROTO;
    return RC_REPLIED;
}

static int h_get_features(struct vu_msg *m) {
    return reply_u64(m->hdr.request, offered_features());
}

static int h_set_owner(struct vu_msg *m) {
    (void)m;
    return RC_OK;
}

static int h_reset_owner(struct vu_msg *m) {
    (void)m;
    reset_device_state();
    return RC_OK;
}

static int h_get_protocol_features(struct vu_msg *m) {
    return reply_u64(m->hdr.request, VU_OFFERED_PROTOCOL_FEATURES);
}

static int h_get_queue_num(struct vu_msg *m) {
    return reply_u64(m->hdr.request, g_srv.vdev->vqs_len);
}

static int h_set_config(struct vu_msg *m) {
    (void)m;
    log_warn("SET_CONFIG refused: the config space is read-only");
    return RC_FAIL;
}

/* ---- the request table -------------------------------------------------- */

/* Payload sizes the handler checks itself (variable-length requests). */
#define VU_SIZE_VARIES UINT32_MAX

struct vu_request_info {
    const char *name;
    uint32_t size; /* the exact payload size, or VU_SIZE_VARIES */
    bool indexed;  /* the payload starts with a u32 queue index */
    int (*handler)(struct vu_msg *m);
};

/* Every request served: dispatch() checks the size and the queue index
 * before the handler runs, and logs with the name. */
static const struct vu_request_info vu_requests[VU_REQUEST_END] = {
    [VU_GET_FEATURES] = {"GET_FEATURES", 0, false, h_get_features},
    [VU_SET_FEATURES] = {"SET_FEATURES", 8, false, h_set_features},
    [VU_SET_OWNER] = {"SET_OWNER", 0, false, h_set_owner},
    [VU_RESET_OWNER] = {"RESET_OWNER", 0, false, h_reset_owner},
    [VU_SET_MEM_TABLE] = {"SET_MEM_TABLE", VU_SIZE_VARIES, false,
                          h_set_mem_table},
    [VU_SET_VRING_NUM] = {"SET_VRING_NUM", 8, true, h_set_vring_num},
    [VU_SET_VRING_ADDR] = {"SET_VRING_ADDR", sizeof(struct vu_vring_addr), true,
                           h_set_vring_addr},
    [VU_SET_VRING_BASE] = {"SET_VRING_BASE", 8, true, h_set_vring_base},
    [VU_GET_VRING_BASE] = {"GET_VRING_BASE", 8, true, h_get_vring_base},
    [VU_SET_VRING_KICK] = {"SET_VRING_KICK", 8, false, h_set_vring_kick},
    [VU_SET_VRING_CALL] = {"SET_VRING_CALL", 8, false, h_set_vring_call},
    [VU_SET_VRING_ERR] = {"SET_VRING_ERR", 8, false, h_set_vring_err},
    [VU_GET_PROTOCOL_FEATURES] = {"GET_PROTOCOL_FEATURES", 0, false,
                                  h_get_protocol_features},
    [VU_SET_PROTOCOL_FEATURES] = {"SET_PROTOCOL_FEATURES", 8, false,
                                  h_set_protocol_features},
    [VU_GET_QUEUE_NUM] = {"GET_QUEUE_NUM", 0, false, h_get_queue_num},
    [VU_SET_VRING_ENABLE] = {"SET_VRING_ENABLE", 8, true, h_set_vring_enable},
    [VU_GET_CONFIG] = {"GET_CONFIG", VU_SIZE_VARIES, false, h_get_config},
    [VU_SET_CONFIG] = {"SET_CONFIG", VU_SIZE_VARIES, false, h_set_config},
};

/* The request's entry, or NULL for one this backend does not serve. */
static const struct vu_request_info *request_info(uint32_t r) {
    if (r >= VU_REQUEST_END || vu_requests[r].handler == NULL)
        return NULL;
    return &vu_requests[r];
}

static const char *request_name(uint32_t r) {
    const struct vu_request_info *info = request_info(r);

    return info ? info->name : "unknown";
}

static int dispatch(struct vu_msg *m) {
    const struct vu_request_info *info = request_info(m->hdr.request);

    if (info == NULL) {
        log_warn("unsupported request %u", m->hdr.request);
        return RC_FAIL;
    }
    if (info->size != VU_SIZE_VARIES && !size_is(m, info->size, info->name))
        return RC_PROTO;
    if (info->indexed && !index_ok(m->payload.state.index, info->name))
        return RC_PROTO;
    return info->handler(m);
}

/* Returns false when the connection must be dropped. */
static bool handle_connection(void) {
    struct vu_msg m;
    int rc;

    rc = read_msg(g_srv.conn_fd, &m);
    if (rc == 0) {
        log_info("frontend disconnected");
        return false;
    }
    if (rc < 0)
        return false;

    log_debug("request %s (%u), size %u, %u fd(s)", request_name(m.hdr.request),
              m.hdr.request, m.hdr.size, m.nfds);
    rc = dispatch(&m);
    close_msg_fds(&m);
    if (rc == RC_PROTO) {
        log_error("protocol error in %s (%u): dropping the frontend",
                  request_name(m.hdr.request), m.hdr.request);
        return false;
    }
    if (rc == RC_FAIL)
        log_debug("%s failed", request_name(m.hdr.request));
    if (rc != RC_REPLIED && (m.hdr.flags & VU_FLAG_NEED_REPLY) &&
        (g_srv.protocol_features & (1ull << VU_PROTOCOL_F_REPLY_ACK))) {
        if (reply_u64(m.hdr.request, rc == RC_OK ? 0 : 1) == RC_PROTO)
            return false;
    }
    return true;
}

/* ---- connection life cycle --------------------------------------------- */

static void drop_connection(void) {
    reset_device_state();
    ep_del(g_srv.conn_fd);
    close_fd(&g_srv.conn_fd);
    if (ep_add(g_srv.listen_fd, EP_LISTEN, 0) < 0)
        log_error("cannot watch the listening socket: %s", strerror(errno));
    log_info("waiting for the next frontend");
}

static void accept_connection(void) {
    struct timeval tv = {.tv_sec = VU_IO_TIMEOUT_SEC, .tv_usec = 0};
    int fd = accept4(g_srv.listen_fd, NULL, NULL, SOCK_CLOEXEC);

    if (fd < 0) {
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
            log_error("accept failed: %s", strerror(errno));
        return;
    }
    /* Bound how long a half-sent message can stall the main thread. */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (ep_add(fd, EP_CONN, 0) < 0) {
        log_error("cannot watch the connection: %s", strerror(errno));
        close(fd);
        return;
    }
    ep_del(g_srv.listen_fd); /* one frontend at a time */
    g_srv.conn_fd = fd;
    log_info("frontend connected");
}

/* Main loop: the device asked for a reset (vu_needs_reset). */
static void handle_needs_reset(void) {
    uint64_t n;

    if (read(g_srv.needs_reset_fd, &n, sizeof(n)) != sizeof(n))
        return; /* drained by a reset meanwhile */
    if (g_srv.conn_fd < 0)
        return;
    log_error("the device needs a reset (status %#x): closing the frontend "
              "connection",
              __atomic_load_n(&g_srv.vdev->regs.status, __ATOMIC_RELAXED));
    drop_connection();
}

static void handle_kick(uint32_t idx) {
    struct vq_state *s;
    uint64_t v;
    ssize_t n;

    if (idx >= g_srv.vdev->vqs_len)
        return;
    s = &g_srv.vq[idx];
    if (s->kick_fd < 0 || !s->kick_watched)
        return; /* stale event */
    n = read(s->kick_fd, &v, sizeof(v));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        log_error("queue %u: kick fd failed (%s); no longer watching it", idx,
                  n == 0 ? "end of file" : strerror(errno));
        ep_del(s->kick_fd);
        s->kick_watched = false;
        return;
    }
    if (g_srv.vdev->vqs[idx].ready)
        call_notify(&g_srv.vdev->vqs[idx]);
}

/* ---- setup and main loop ------------------------------------------------ */

static VirtIODevice *create_device(const struct rt_options *opts) {
    VirtIODevice *vdev = NULL;
    cJSON *json = cJSON_CreateObject();

    if (json == NULL || !cJSON_AddStringToObject(json, "type", "blk") ||
        !cJSON_AddStringToObject(json, "img", opts->blk_file) ||
        (opts->read_only && !cJSON_AddBoolToObject(json, "read_only", 1)))
        log_fatal("out of memory");
    else
        vdev = rt_create_device(json, 0, 0, 0, 0);
    cJSON_Delete(json);
    return vdev;
}

static int open_listener(const struct rt_options *opts) {
    struct sockaddr_un sa;
    struct stat st;
    int fd;

    if (opts->socket_path == NULL) {
        int on = 0;
        socklen_t len = sizeof(on);

        if (getsockopt(opts->listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) <
                0 ||
            !on) {
            log_fatal("--fd %d is not a listening socket", opts->listen_fd);
            return -1;
        }
        fcntl(opts->listen_fd, F_SETFD, FD_CLOEXEC);
        return opts->listen_fd;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(opts->socket_path) >= sizeof(sa.sun_path)) {
        log_fatal("socket path is too long: %s", opts->socket_path);
        return -1;
    }
    strcpy(sa.sun_path, opts->socket_path);
    if (lstat(opts->socket_path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            log_fatal("%s exists and is not a socket", opts->socket_path);
            return -1;
        }
        unlink(opts->socket_path); /* stale socket from an earlier run */
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        log_fatal("socket: %s", strerror(errno));
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1) < 0) {
        log_fatal("cannot listen on %s: %s", opts->socket_path,
                  strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void shutdown_all(const struct rt_options *opts) {
    unsigned i;

    /* Device first: it joins its threads, which may still touch memory. */
    g_srv.ops->close(g_srv.vdev);
    g_srv.vdev = NULL;
    for (i = 0; i < VIRTIO_MAX_VQUEUES; i++)
        release_vq_fds(&g_srv.vq[i]);
    unmap_table(&g_srv.mem);
    close_fd(&g_srv.conn_fd);
    close_fd(&g_srv.listen_fd);
    close_fd(&g_srv.signal_fd);
    close_fd(&g_srv.needs_reset_fd);
    close_fd(&g_srv.epfd);
    if (opts->socket_path != NULL)
        unlink(opts->socket_path);
}

int rt_run(const struct rt_options *opts) {
    sigset_t all, term;
    unsigned i;

    for (i = 0; i < VIRTIO_MAX_VQUEUES; i++) {
        g_srv.vq[i].kick_fd = -1;
        g_srv.vq[i].call_fd = -1;
        g_srv.vq[i].err_fd = -1;
    }

    /* Every thread the device starts inherits this mask: everything blocked
     * but SIGBUS, which a frontend shrinking its memory raises in whichever
     * thread touches the lost pages (on_sigbus). */
    sigfillset(&all);
    sigdelset(&all, SIGBUS);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    if (install_sigbus_handler() != 0) {
        log_fatal("sigaction(SIGBUS): %s", strerror(errno));
        return 1;
    }
    sigemptyset(&term);
    sigaddset(&term, SIGINT);
    sigaddset(&term, SIGTERM);
    g_srv.signal_fd = signalfd(-1, &term, SFD_CLOEXEC | SFD_NONBLOCK);
    g_srv.needs_reset_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    g_srv.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g_srv.signal_fd < 0 || g_srv.needs_reset_fd < 0 || g_srv.epfd < 0) {
        log_fatal("signalfd/eventfd/epoll: %s", strerror(errno));
        return 1;
    }

    g_srv.vdev = create_device(opts);
    if (g_srv.vdev == NULL)
        return 1;

    g_srv.listen_fd = open_listener(opts);
    if (g_srv.listen_fd < 0 || ep_add(g_srv.listen_fd, EP_LISTEN, 0) < 0 ||
        ep_add(g_srv.signal_fd, EP_SIGNAL, 0) < 0 ||
        ep_add(g_srv.needs_reset_fd, EP_NEEDS_RESET, 0) < 0) {
        if (g_srv.listen_fd >= 0)
            log_fatal("epoll: %s", strerror(errno));
        g_srv.ops->close(g_srv.vdev);
        return 1;
    }
    if (opts->socket_path != NULL)
        fprintf(stderr, "vhost-user-blk: listening on %s\n", opts->socket_path);
    else
        fprintf(stderr, "vhost-user-blk: listening on fd %d\n",
                g_srv.listen_fd);

    for (;;) {
        struct epoll_event ev[16];
        int n = epoll_wait(g_srv.epfd, ev, 16, -1);
        int k;

        if (n < 0) {
            if (errno == EINTR)
                continue;
            log_fatal("epoll_wait: %s", strerror(errno));
            shutdown_all(opts);
            return 1;
        }
        for (k = 0; k < n; k++) {
            uint32_t kind = (uint32_t)(ev[k].data.u64 >> 32);
            uint32_t idx = (uint32_t)ev[k].data.u64;

            switch (kind) {
            case EP_LISTEN:
                if (g_srv.conn_fd < 0)
                    accept_connection();
                break;
            case EP_CONN:
                if (g_srv.conn_fd >= 0 && !handle_connection())
                    drop_connection();
                break;
            case EP_SIGNAL: {
                struct signalfd_siginfo si;

                if (read(g_srv.signal_fd, &si, sizeof(si)) == sizeof(si)) {
                    log_info("signal %u: shutting down", si.ssi_signo);
                    shutdown_all(opts);
                    return 0;
                }
                break;
            }
            case EP_KICK:
                handle_kick(idx);
                break;
            case EP_NEEDS_RESET:
                handle_needs_reset();
                break;
            default:
                break;
            }
        }
    }
}
