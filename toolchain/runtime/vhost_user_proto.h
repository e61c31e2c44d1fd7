/* SPDX-License-Identifier: MIT */
/*
 * The vhost-user wire format (QEMU's docs/interop/vhost-user.rst), as far as
 * this project speaks it: the runtime's backend (vhost_user.c) and the load
 * generator's frontend (toolchain/bench/vhost_client.c) both include it, so
 * a request number or a payload layout is written once.
 */
#ifndef VHOST_USER_PROTO_H
#define VHOST_USER_PROTO_H

#include <stdint.h>

enum vu_request {
    VU_GET_FEATURES = 1,
    VU_SET_FEATURES = 2,
    VU_SET_OWNER = 3,
    VU_RESET_OWNER = 4,
    VU_SET_MEM_TABLE = 5,
    VU_SET_VRING_NUM = 8,
    VU_SET_VRING_ADDR = 9,
    VU_SET_VRING_BASE = 10,
    VU_GET_VRING_BASE = 11,
    VU_SET_VRING_KICK = 12,
    VU_SET_VRING_CALL = 13,
    VU_SET_VRING_ERR = 14,
    VU_GET_PROTOCOL_FEATURES = 15,
    VU_SET_PROTOCOL_FEATURES = 16,
    VU_GET_QUEUE_NUM = 17,
    VU_SET_VRING_ENABLE = 18,
    VU_GET_CONFIG = 24,
    VU_SET_CONFIG = 25,
    VU_REQUEST_END /* one past the highest request known */
};

/* Header flags. */
#define VU_VERSION 0x1u
#define VU_FLAG_VERSION_MASK 0x3u
#define VU_FLAG_REPLY (1u << 2)
#define VU_FLAG_NEED_REPLY (1u << 3)

/* The feature bit that opens protocol-feature negotiation, and the protocol
 * features spoken here. */
#define VU_F_PROTOCOL_FEATURES 30
#define VU_PROTOCOL_F_MQ 0
#define VU_PROTOCOL_F_REPLY_ACK 3
#define VU_PROTOCOL_F_CONFIG 9

#define VU_MAX_REGIONS 8
/* SET_VRING_KICK/CALL/ERR's u64: the queue index, and "no fd passed". */
#define VU_VRING_INDEX_MASK 0xffull
#define VU_VRING_NOFD (1ull << 8)
/* GET_CONFIG/SET_CONFIG: offset, size and flags before the bytes. */
#define VU_CONFIG_HDR_SIZE 12u

struct vu_header {
    uint32_t request;
    uint32_t flags;
    uint32_t size; /* of the payload that follows */
};

struct vu_vring_state {
    uint32_t index;
    uint32_t num;
};

struct vu_vring_addr {
    uint32_t index;
    uint32_t flags;
    uint64_t desc_user_addr;
    uint64_t used_user_addr;
    uint64_t avail_user_addr;
    uint64_t log_guest_addr;
};

/* One region of SET_MEM_TABLE (its fd travels alongside, in order). */
struct vu_region {
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t mmap_offset;
};

#endif /* VHOST_USER_PROTO_H */
