/*
 * Stand-in for /dev/hvisor: see hvisor_dev.h.  Everything here runs in the
 * daemon's process; the world (another process) owns the memory.
 */
#define _GNU_SOURCE
#include "hvisor_dev.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

struct hvdev_region {
    uint64_t zone0_ipa;
    uint64_t size;
    int fd;
};

/* One device per process, as the daemon opens /dev/hvisor once. */
static struct {
    int sock; /* the fd handed out as /dev/hvisor; -1 when closed */
    int bridge_fd;
    unsigned nregions;
    struct hvdev_region regions[HVDEV_MAX_REGIONS];
    volatile struct hvdev_bridge *bridge; /* our own view, for FINISH_REQ */
} g_hv = {.sock = -1, .bridge_fd = -1};

/* Raw mmap: wrapped builds redirect the libc symbol to the wrapper. */
static void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd,
                      off_t off) {
    long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);

    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return MAP_FAILED;
    }
    return (void *)r;
}

static int send_msg(int sock, const void *body, size_t len, int fd) {
    char ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = (void *)body, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

    if (fd >= 0) {
        struct cmsghdr *c;

        memset(ctl, 0, sizeof(ctl));
        mh.msg_control = ctl;
        mh.msg_controllen = sizeof(ctl);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);

        if (n == (ssize_t)len)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n >= 0)
            errno = EPROTO;
        return -1;
    }
}

/* SETUP: u32 type, u32 nregions, then {u64 zone0_ipa, u64 size} each;
 * fds: the bridge page, then one memfd per region. */
static int receive_setup(int sock) {
    uint8_t buf[8 + 16 * HVDEV_MAX_REGIONS];
    char ctl[CMSG_SPACE(sizeof(int) * (HVDEV_MAX_REGIONS + 1))];
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = ctl,
                        .msg_controllen = sizeof(ctl)};
    int fds[HVDEV_MAX_REGIONS + 1];
    unsigned nfds = 0, i;
    uint32_t type, n;
    struct cmsghdr *c;
    ssize_t got;

    do {
        got = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    } while (got < 0 && errno == EINTR);
    if (got < 0)
        return -1;
    for (c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            nfds = (unsigned)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(fds, CMSG_DATA(c), nfds * sizeof(int));
        }
    }
    if (got < 8)
        goto bad;
    memcpy(&type, buf, 4);
    memcpy(&n, buf + 4, 4);
    if (type != HVDEV_MSG_SETUP || n > HVDEV_MAX_REGIONS ||
        (size_t)got != 8 + 16 * (size_t)n || nfds != n + 1 ||
        (mh.msg_flags & MSG_CTRUNC))
        goto bad;
    g_hv.bridge_fd = fds[0];
    g_hv.nregions = n;
    for (i = 0; i < n; i++) {
        memcpy(&g_hv.regions[i].zone0_ipa, buf + 8 + 16 * i, 8);
        memcpy(&g_hv.regions[i].size, buf + 16 + 16 * i, 8);
        g_hv.regions[i].fd = fds[i + 1];
    }
    return 0;
bad:
    for (i = 0; i < nfds; i++)
        close(fds[i]);
    errno = EPROTO;
    return -1;
}

int hvdev_open(void) {
    const char *path = getenv(HVDEV_SOCKET_ENV);
    uint32_t hello[2] = {HVDEV_MSG_HELLO, HVDEV_PROTOCOL_VERSION};
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int sock;

    if (g_hv.sock >= 0) {
        errno = EBUSY;
        return -1;
    }
    if (path == NULL || path[0] == '\0' ||
        strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr,
                "hvisor stand-in: set %s to the bridge world's socket\n",
                HVDEV_SOCKET_ENV);
        errno = ENOENT;
        return -1;
    }
    strcpy(sa.sun_path, path);
    sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return -1;
    if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        send_msg(sock, hello, sizeof(hello), -1) < 0 ||
        receive_setup(sock) < 0) {
        int e = errno;

        fprintf(stderr, "hvisor stand-in: cannot attach to %s: %s\n", path,
                strerror(e));
        close(sock);
        errno = e;
        return -1;
    }
    g_hv.bridge = raw_mmap(NULL, HVDEV_BRIDGE_SIZE, PROT_READ | PROT_WRITE,
                           MAP_SHARED, g_hv.bridge_fd, 0);
    if (g_hv.bridge == MAP_FAILED) {
        int e = errno;

        close(sock);
        errno = e;
        return -1;
    }
    g_hv.sock = sock;
    return sock;
}

int hvdev_is_dev(int fd) { return fd >= 0 && fd == g_hv.sock; }

/* HVISOR_FINISH_REQ: hvisor takes every pending result and injects it. */
static int finish_req(void) {
    volatile struct hvdev_bridge *b = g_hv.bridge;
    uint32_t front = __atomic_load_n(&b->res_front, __ATOMIC_RELAXED);
    uint32_t rear = __atomic_load_n(&b->res_rear, __ATOMIC_ACQUIRE);

    while (front != rear) {
        uint32_t msg[3] = {HVDEV_MSG_IRQ, b->res_list[front].target_zone,
                           b->res_list[front].irq_id};

        /* A full socket means the world has interrupts pending already;
         * a pending interrupt stays pending once, as on a GIC. */
        if (send(g_hv.sock, msg, sizeof(msg), MSG_DONTWAIT | MSG_NOSIGNAL) <
                0 &&
            errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        front = (front + 1) & (HVDEV_MAX_REQ - 1);
        __atomic_store_n(&b->res_front, front, __ATOMIC_RELEASE);
    }
    return 0;
}

int hvdev_ioctl(int fd, unsigned long request, unsigned long arg) {
    if (!hvdev_is_dev(fd)) {
        errno = EBADF;
        return -1;
    }
    switch (request) {
    case HVDEV_IOC_INIT_VIRTIO: {
        uint32_t msg = HVDEV_MSG_INIT;

        return send_msg(g_hv.sock, &msg, sizeof(msg), -1);
    }
    case HVDEV_IOC_SET_EVENTFD: {
        uint32_t msg = HVDEV_MSG_SET_EVENTFD;

        return send_msg(g_hv.sock, &msg, sizeof(msg), (int)arg);
    }
    case HVDEV_IOC_FINISH_REQ:
        return finish_req();
    default:
        errno = ENOTTY;
        return -1;
    }
}

/*
 * Zone memory with inaccessible guard space on both sides: a daemon that
 * reads or writes past the end (or before the start) of guest RAM faults
 * at once instead of touching whatever the process mapped next to it.
 */
static void *map_guarded(size_t len, int prot, int flags, int fd, off_t off) {
    char *reserve =
        raw_mmap(NULL, len + 2 * HVDEV_GUARD_BYTES, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

    if (reserve == MAP_FAILED)
        return MAP_FAILED;
    return raw_mmap(reserve + HVDEV_GUARD_BYTES, len, prot, flags | MAP_FIXED,
                    fd, off);
}

void *hvdev_mmap(void *addr, size_t len, int prot, int flags, int fd,
                 off_t offset) {
    uint64_t off = (uint64_t)offset;
    unsigned i;

    if (!hvdev_is_dev(fd)) {
        errno = EBADF;
        return MAP_FAILED;
    }
    if (off == 0)
        return len <= HVDEV_BRIDGE_SIZE
                   ? raw_mmap(addr, len, prot, flags, g_hv.bridge_fd, 0)
                   : (errno = EINVAL, MAP_FAILED);
    for (i = 0; i < g_hv.nregions; i++) {
        const struct hvdev_region *r = &g_hv.regions[i];

        if (off >= r->zone0_ipa && off - r->zone0_ipa < r->size &&
            len <= r->size - (off - r->zone0_ipa))
            return map_guarded(len, prot, flags, r->fd,
                               (off_t)(off - r->zone0_ipa));
    }
    errno = EINVAL;
    return MAP_FAILED;
}

void hvdev_forget(int fd) {
    unsigned i;

    if (!hvdev_is_dev(fd))
        return;
    for (i = 0; i < g_hv.nregions; i++)
        close(g_hv.regions[i].fd);
    close(g_hv.bridge_fd);
    munmap((void *)g_hv.bridge, HVDEV_BRIDGE_SIZE);
    g_hv.nregions = 0;
    g_hv.bridge_fd = -1;
    g_hv.bridge = NULL;
    g_hv.sock = -1;
}
