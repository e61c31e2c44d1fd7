/* SPDX-License-Identifier: MIT */
#include "vhost_client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

__attribute__((format(printf, 2, 3))) static int fail(struct vu_conn *c,
                                                      const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
    return -1;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int set_timeouts(int sock, int io_ms) {
    struct timeval tv = {io_ms / 1000, (io_ms % 1000) * 1000};
    if (setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
        return -1;
    return setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

int vu_connect(struct vu_conn *c, const char *path, int connect_ms, int io_ms) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memset(c, 0, sizeof(*c));
    c->sock = -1;
    if (strlen(path) >= sizeof(addr.sun_path))
        return fail(c, "socket path too long: %s", path);
    strcpy(addr.sun_path, path);
    for (int waited = 0;; waited += 20) {
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0)
            return fail(c, "socket: %s", strerror(errno));
        if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
            if (set_timeouts(s, io_ms) < 0) {
                close(s);
                return fail(c, "setsockopt: %s", strerror(errno));
            }
            c->sock = s;
            return 0;
        }
        int err = errno;
        close(s);
        if (err != ENOENT && err != ECONNREFUSED && err != EAGAIN)
            return fail(c, "connect %s: %s", path, strerror(err));
        if (waited >= connect_ms)
            return fail(c, "connect %s: no backend after %d ms (%s)", path,
                        connect_ms, strerror(err));
        sleep_ms(20);
    }
}

void vu_close(struct vu_conn *c) {
    if (c->sock >= 0)
        close(c->sock);
    c->sock = -1;
}

static bool reply_ack(const struct vu_conn *c) {
    return c->protocol_features >> VU_PROTOCOL_F_REPLY_ACK & 1;
}

static int send_msg(struct vu_conn *c, uint32_t req, uint32_t flags,
                    const void *payload, uint32_t size, const int *fds,
                    unsigned nfds) {
    struct vu_header hdr = {req, VU_VERSION | flags, size};
    struct iovec iov[2] = {{&hdr, sizeof(hdr)}, {(void *)payload, size}};
    union {
        char buf[CMSG_SPACE(sizeof(int) * VU_MAX_REGIONS)];
        struct cmsghdr align;
    } ctl;
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = size ? 2 : 1};
    if (nfds > VU_MAX_REGIONS)
        return fail(c, "request %u: too many fds", req);
    if (nfds) {
        memset(&ctl, 0, sizeof(ctl));
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    ssize_t n = sendmsg(c->sock, &msg, MSG_NOSIGNAL);
    if (n != (ssize_t)(sizeof(hdr) + size))
        return fail(c, "request %u: send failed: %s", req,
                    n < 0 ? strerror(errno) : "short write");
    return 0;
}

static int recv_exact(struct vu_conn *c, uint32_t req, void *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(c->sock, (char *)buf + got, len - got, 0);
        if (n == 0)
            return fail(c, "request %u: backend closed the connection", req);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return fail(c, "request %u: no reply in time (backend hung?)", req);
        if (n < 0)
            return fail(c, "request %u: recv: %s", req, strerror(errno));
        got += (size_t)n;
    }
    return 0;
}

/* Receive the reply to `req` into buf, which must be exactly `size` bytes. */
static int recv_reply(struct vu_conn *c, uint32_t req, void *buf,
                      uint32_t size) {
    struct vu_header hdr;
    if (recv_exact(c, req, &hdr, sizeof(hdr)) < 0)
        return -1;
    if (hdr.request != req || !(hdr.flags & VU_FLAG_REPLY))
        return fail(c, "request %u: unexpected reply %u flags %#x", req,
                    hdr.request, hdr.flags);
    if (hdr.size != size)
        return fail(c, "request %u: reply of %u bytes, expected %u", req,
                    hdr.size, size);
    return recv_exact(c, req, buf, size);
}

/* A request without a protocol reply; acknowledged when REPLY_ACK is on. */
static int set_request(struct vu_conn *c, uint32_t req, const void *payload,
                       uint32_t size, const int *fds, unsigned nfds) {
    bool ack = reply_ack(c);
    if (send_msg(c, req, ack ? VU_FLAG_NEED_REPLY : 0, payload, size, fds,
                 nfds) < 0)
        return -1;
    if (!ack)
        return 0;
    uint64_t status;
    if (recv_reply(c, req, &status, sizeof(status)) < 0)
        return -1;
    if (status != 0)
        return fail(c, "request %u: backend refused (%llu)", req,
                    (unsigned long long)status);
    return 0;
}

int vu_get_u64(struct vu_conn *c, enum vu_request req, uint64_t *out) {
    if (send_msg(c, req, 0, NULL, 0, NULL, 0) < 0)
        return -1;
    return recv_reply(c, req, out, sizeof(*out));
}

int vu_set_u64(struct vu_conn *c, enum vu_request req, uint64_t value) {
    return set_request(c, req, &value, sizeof(value), NULL, 0);
}

int vu_set_owner(struct vu_conn *c) {
    return set_request(c, VU_SET_OWNER, NULL, 0, NULL, 0);
}

int vu_set_protocol_features(struct vu_conn *c, uint64_t features) {
    if (vu_set_u64(c, VU_SET_PROTOCOL_FEATURES, features) < 0)
        return -1;
    c->protocol_features = features;
    return 0;
}

int vu_set_mem_table(struct vu_conn *c, const struct vu_client_region *regions,
                     unsigned count) {
    struct {
        uint32_t nregions;
        uint32_t padding;
        struct vu_region r[VU_MAX_REGIONS];
    } msg;
    int fds[VU_MAX_REGIONS];
    if (count == 0 || count > VU_MAX_REGIONS)
        return fail(c, "SET_MEM_TABLE: %u regions", count);
    memset(&msg, 0, sizeof(msg));
    msg.nregions = count;
    for (unsigned i = 0; i < count; i++) {
        msg.r[i] =
            (struct vu_region){regions[i].guest_phys_addr, regions[i].size,
                               regions[i].user_addr, regions[i].mmap_offset};
        fds[i] = regions[i].fd;
    }
    return set_request(c, VU_SET_MEM_TABLE, &msg,
                       8 + sizeof(struct vu_region) * count, fds, count);
}

int vu_set_vring_state(struct vu_conn *c, enum vu_request req, unsigned index,
                       unsigned num) {
    struct vu_vring_state state = {index, num};
    return set_request(c, req, &state, sizeof(state), NULL, 0);
}

int vu_set_vring_addr(struct vu_conn *c, unsigned index, uint64_t desc,
                      uint64_t used, uint64_t avail) {
    struct vu_vring_addr addr = {index, 0, desc, used, avail, 0};
    return set_request(c, VU_SET_VRING_ADDR, &addr, sizeof(addr), NULL, 0);
}

int vu_set_vring_fd(struct vu_conn *c, enum vu_request req, unsigned index,
                    int fd) {
    uint64_t value = index & VU_VRING_INDEX_MASK;
    return set_request(c, req, &value, sizeof(value), &fd, 1);
}

int vu_get_config(struct vu_conn *c, uint32_t offset, void *buf,
                  uint32_t size) {
    struct {
        uint32_t offset, size, flags;
        uint8_t data[256];
    } cfg;
    if (size > sizeof(cfg.data))
        return fail(c, "GET_CONFIG: %u bytes is too many", size);
    memset(&cfg, 0, sizeof(cfg));
    cfg.offset = offset;
    cfg.size = size;
    if (send_msg(c, VU_GET_CONFIG, 0, &cfg, VU_CONFIG_HDR_SIZE + size, NULL,
                 0) < 0)
        return -1;
    if (recv_reply(c, VU_GET_CONFIG, &cfg, VU_CONFIG_HDR_SIZE + size) < 0)
        return -1;
    if (cfg.offset != offset || cfg.size != size)
        return fail(c, "GET_CONFIG: reply for %u+%u", cfg.offset, cfg.size);
    memcpy(buf, cfg.data, size);
    return 0;
}
