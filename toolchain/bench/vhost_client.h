/* SPDX-License-Identifier: MIT */
/*
 * The frontend half of the vhost-user control plane (QEMU's
 * docs/interop/vhost-user.rst): framing, fd passing, and the handful of
 * requests a block driver needs. Every receive is bounded by SO_RCVTIMEO.
 */
#ifndef LOADGEN_VHOST_CLIENT_H
#define LOADGEN_VHOST_CLIENT_H

#include "vhost_user_proto.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A region of guest RAM to share, and the fd it lives in. */
struct vu_client_region {
    uint64_t guest_phys_addr;
    uint64_t size;
    uint64_t user_addr;
    uint64_t mmap_offset;
    int fd;
};

struct vu_conn {
    int sock;
    uint64_t protocol_features; /* negotiated */
    char error[256];            /* why the last call failed */
};

/* Connect, retrying while the socket is absent or refusing, for at most
 * connect_ms; every later send/receive is bounded by io_ms. */
int vu_connect(struct vu_conn *c, const char *path, int connect_ms, int io_ms);
void vu_close(struct vu_conn *c);

int vu_get_u64(struct vu_conn *c, enum vu_request req, uint64_t *out);
int vu_set_u64(struct vu_conn *c, enum vu_request req, uint64_t value);
int vu_set_owner(struct vu_conn *c);
int vu_set_protocol_features(struct vu_conn *c, uint64_t features);
int vu_set_mem_table(struct vu_conn *c, const struct vu_client_region *regions,
                     unsigned count);
int vu_set_vring_state(struct vu_conn *c, enum vu_request req, unsigned index,
                       unsigned num);
int vu_set_vring_addr(struct vu_conn *c, unsigned index, uint64_t desc,
                      uint64_t used, uint64_t avail);
int vu_set_vring_fd(struct vu_conn *c, enum vu_request req, unsigned index,
                    int fd);
int vu_get_config(struct vu_conn *c, uint32_t offset, void *buf, uint32_t size);

#endif
