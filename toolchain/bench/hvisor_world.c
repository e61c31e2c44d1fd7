/* SPDX-License-Identifier: MIT */
/* hvisor's side of the bridge for the load generator: see hvisor_world.h. */
#define _GNU_SOURCE
#include "hvisor_world.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define VIRTIO_MMIO_QUEUE_NOTIFY 0x50u
/* Spin this long before yielding, and this long before sleeping, while the
 * vCPU waits for an answer; re-announce a stalled request this often. */
#define SPIN_NS 20000ull
#define YIELD_NS 200000ull
#define SLEEP_NS 20000L
#define REANNOUNCE_NS 2000000ull

static int fail(struct hvw *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->error, sizeof(w->error), fmt, ap);
    va_end(ap);
    return -1;
}

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int write_config(struct hvw *w, const char *dir, uint64_t gpa,
                        uint64_t size, const char *image) {
    char path[4096], tmp[4096];
    snprintf(path, sizeof(path), "%s/zone.json", dir);
    snprintf(tmp, sizeof(tmp), "%s/.zone.json.tmp", dir);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return fail(w, "%s: %s", tmp, strerror(errno));
    fprintf(f,
            "{\"zones\": [{\"id\": %u, \"memory_region\": [{\"zone0_ipa\": "
            "\"0x%" PRIx64 "\", \"zonex_ipa\": \"0x%" PRIx64
            "\", \"size\": \"0x%" PRIx64 "\"}], \"devices\": [{\"type\": "
            "\"blk\", \"addr\": \"0x%llx\", \"len\": \"0x200\", \"irq\": %u, "
            "\"img\": \"",
            HVW_ZONE, (uint64_t)(gpa + HVW_ZONE0_OFFSET), gpa, size,
            HVW_DEVICE_ADDR, HVW_DEVICE_IRQ);
    for (const char *p = image; *p; p++) { /* a JSON string */
        if (*p == '"' || *p == '\\')
            fputc('\\', f);
        fputc(*p, f);
    }
    fprintf(f, "\", \"status\": \"enable\"}]}]}\n");
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        return fail(w, "%s: %s", path, strerror(errno));
    return 0;
}

int hvw_create(struct hvw *w, const char *dir, uint64_t gpa, uint64_t size,
               const char *image) {
    *w = (struct hvw){.listen_fd = -1, .conn_fd = -1, .eventfd = -1};
    w->bridge_fd = memfd_create("hvisor-bridge", MFD_CLOEXEC);
    if (w->bridge_fd < 0 || ftruncate(w->bridge_fd, HVDEV_BRIDGE_SIZE) < 0)
        return fail(w, "bridge page: %s", strerror(errno));
    void *p = mmap(NULL, HVDEV_BRIDGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                   w->bridge_fd, 0);
    if (p == MAP_FAILED)
        return fail(w, "mmap bridge page: %s", strerror(errno));
    w->b = p;
    /* Before the daemon's first pass hvisor must wake it. */
    w->b->need_wakeup = 1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if ((size_t)snprintf(w->sock_path, sizeof(w->sock_path), "%s/hvisor.sock",
                         dir) >= sizeof(sa.sun_path))
        return fail(w, "socket path under %s is too long", dir);
    strcpy(sa.sun_path, w->sock_path);
    unlink(w->sock_path);
    w->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (w->listen_fd < 0 ||
        bind(w->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(w->listen_fd, 1) < 0)
        return fail(w, "%s: %s", w->sock_path, strerror(errno));
    return write_config(w, dir, gpa, size, image);
}

static int send_setup(struct hvw *w, int guest_fd, uint64_t gpa,
                      uint64_t size) {
    uint8_t body[8 + 16];
    uint32_t head[2] = {HVDEV_MSG_SETUP, 1};
    uint64_t region[2] = {gpa + HVW_ZONE0_OFFSET, size};
    memcpy(body, head, 8);
    memcpy(body + 8, region, 16);
    int fds[2] = {w->bridge_fd, guest_fd};
    char ctl[CMSG_SPACE(sizeof(fds))];
    memset(ctl, 0, sizeof(ctl));
    struct iovec iov = {body, sizeof(body)};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = ctl,
                        .msg_controllen = sizeof(ctl)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(c), fds, sizeof(fds));
    if (sendmsg(w->conn_fd, &mh, MSG_NOSIGNAL) != (ssize_t)sizeof(body))
        return fail(w, "SETUP to the stand-in: %s", strerror(errno));
    return 0;
}

int hvw_attach(struct hvw *w, int guest_fd, uint64_t gpa, uint64_t size,
               int timeout_ms) {
    uint64_t deadline = mono_ns() + (uint64_t)timeout_ms * 1000000ull;
    struct pollfd pfd = {w->listen_fd, POLLIN, 0};
    if (poll(&pfd, 1, timeout_ms) <= 0)
        return fail(w, "no daemon connected to %s within %d ms", w->sock_path,
                    timeout_ms);
    w->conn_fd = accept4(w->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (w->conn_fd < 0)
        return fail(w, "accept: %s", strerror(errno));
    uint32_t hello[4] = {0};
    struct pollfd cp = {w->conn_fd, POLLIN, 0};
    if (poll(&cp, 1, timeout_ms) <= 0 ||
        recv(w->conn_fd, hello, sizeof(hello), 0) < 8 ||
        hello[0] != HVDEV_MSG_HELLO || hello[1] != HVDEV_PROTOCOL_VERSION)
        return fail(w, "no HELLO (protocol %u) from the stand-in",
                    HVDEV_PROTOCOL_VERSION);
    if (send_setup(w, guest_fd, gpa, size) < 0)
        return -1;
    while (w->eventfd < 0 ||
           !__atomic_load_n(&w->b->mmio_avail, __ATOMIC_ACQUIRE)) {
        uint64_t now = mono_ns();
        if (now > deadline)
            return fail(w,
                        "the daemon attached but is not serving MMIO "
                        "after %d ms",
                        timeout_ms);
        poll(&cp, 1, 5);
        if (hvw_pump(w) < 0)
            return fail(w, "the daemon went away during its start");
    }
    return 0;
}

int hvw_pump(struct hvw *w) {
    while (!w->gone && w->conn_fd >= 0) {
        uint32_t msg[16];
        char ctl[CMSG_SPACE(4 * sizeof(int))];
        struct iovec iov = {msg, sizeof(msg)};
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = ctl,
                            .msg_controllen = sizeof(ctl)};
        ssize_t n = recvmsg(w->conn_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n <= 0) {
            w->gone = true;
            break;
        }
        int fds[4], nfds = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                memcpy(fds, CMSG_DATA(c), (size_t)nfds * sizeof(int));
            }
        int used = -1;
        if (msg[0] == HVDEV_MSG_SET_EVENTFD && nfds > 0) {
            if (w->eventfd >= 0)
                close(w->eventfd);
            w->eventfd = used = fds[0];
        } else if (msg[0] == HVDEV_MSG_IRQ && n >= 12) {
            if (msg[1] == HVW_ZONE && msg[2] == HVW_DEVICE_IRQ)
                w->pending_irqs++;
        }
        for (int i = 0; i < nfds; i++)
            if (fds[i] != used)
                close(fds[i]);
    }
    return w->gone ? -1 : 0;
}

static void wake(struct hvw *w) {
    uint64_t one = 1;
    if (w->eventfd >= 0 && write(w->eventfd, &one, sizeof(one)) == 8)
        w->wakeups++;
}

void hvw_kick_if_asleep(struct hvw *w) {
    if (__atomic_load_n(&w->b->req_front, __ATOMIC_ACQUIRE) !=
            __atomic_load_n(&w->b->req_rear, __ATOMIC_ACQUIRE) &&
        __atomic_load_n(&w->b->need_wakeup, __ATOMIC_ACQUIRE))
        wake(w);
}

/* One round of a vCPU spinning in EL2, bounded; -1 on timeout or when the
 * daemon is gone. */
static int wait_round(struct hvw *w, uint64_t start, uint64_t deadline,
                      uint64_t *last_check, const char *what) {
    uint64_t now = mono_ns();
    if (now > deadline)
        return fail(w, "the daemon did not give %s in time", what);
    if (now - *last_check > REANNOUNCE_NS) {
        *last_check = now;
        if (hvw_pump(w) < 0)
            return fail(w, "the daemon went away while hvisor waited for %s",
                        what);
        hvw_kick_if_asleep(w);
    }
    if (now - start < SPIN_NS) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
    } else if (now - start < YIELD_NS) {
        sched_yield();
    } else {
        struct timespec ts = {0, SLEEP_NS};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static int post(struct hvw *w, uint32_t offset, unsigned size, bool write,
                uint64_t value, bool notify, uint64_t *answer, int timeout_ms) {
    volatile struct hvdev_bridge *b = w->b;
    uint64_t start = mono_ns(), last = start;
    uint64_t deadline = start + (uint64_t)timeout_ms * 1000000ull;
    if (w->gone)
        return fail(w, "the daemon is gone");
    uint64_t old_flag =
        __atomic_load_n(&b->cfg_flags[w->cpu], __ATOMIC_ACQUIRE);
    uint32_t rear = __atomic_load_n(&b->req_rear, __ATOMIC_RELAXED);
    while ((rear + 1) % HVDEV_MAX_REQ ==
           __atomic_load_n(&b->req_front, __ATOMIC_ACQUIRE))
        if (wait_round(w, start, deadline, &last, "a free req_list slot") < 0)
            return -1;
    volatile struct hvdev_req *r = &b->req_list[rear];
    r->src_cpu = w->cpu;
    r->address = HVW_DEVICE_ADDR + offset;
    r->size = size;
    r->value = value;
    r->src_zone = HVW_ZONE;
    r->is_write = write;
    r->need_interrupt = notify;
    r->padding = 0;
    __atomic_store_n(&b->req_rear, (rear + 1) % HVDEV_MAX_REQ,
                     __ATOMIC_RELEASE);
    /* hvisor's full fence between the store of req_rear and the load of
     * need_wakeup; the daemon's side of the handshake has its own. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&b->need_wakeup, __ATOMIC_ACQUIRE))
        wake(w);
    if (notify)
        return 0;
    while (__atomic_load_n(&b->cfg_flags[w->cpu], __ATOMIC_ACQUIRE) == old_flag)
        if (wait_round(w, start, deadline, &last, "an MMIO answer") < 0)
            return -1;
    if (answer)
        *answer = __atomic_load_n(&b->cfg_values[w->cpu], __ATOMIC_ACQUIRE);
    return 0;
}

int hvw_access(struct hvw *w, uint32_t offset, unsigned size, bool write,
               uint64_t *value, int timeout_ms) {
    return post(w, offset, size, write, write ? *value : 0, false,
                write ? NULL : value, timeout_ms);
}

int hvw_notify(struct hvw *w, uint32_t queue, int timeout_ms) {
    return post(w, VIRTIO_MMIO_QUEUE_NOTIFY, 4, true, queue, true, NULL,
                timeout_ms);
}

void hvw_close(struct hvw *w) {
    if (w->conn_fd >= 0)
        close(w->conn_fd);
    if (w->listen_fd >= 0)
        close(w->listen_fd);
    if (w->eventfd >= 0)
        close(w->eventfd);
    if (w->b)
        munmap((void *)w->b, HVDEV_BRIDGE_SIZE);
    if (w->bridge_fd >= 0)
        close(w->bridge_fd);
    if (w->sock_path[0])
        unlink(w->sock_path);
    *w = (struct hvw){.listen_fd = -1, .conn_fd = -1, .eventfd = -1};
}
