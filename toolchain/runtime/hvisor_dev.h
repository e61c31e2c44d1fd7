/*
 * Stand-in for hvisor's kernel module (/dev/hvisor), off the board.
 *
 * The "bridge world" (toolchain/bridge, Python) plays hvisor at EL2 and owns
 * the bridge page and zone memory as memfds.  It listens on a unix
 * SOCK_SEQPACKET socket named by $HVISOR_SIM_SOCKET.  This stand-in connects
 * to it and gives the daemon what the module would:
 *
 *   open("/dev/hvisor")             -> hvdev_open(): connect, receive the fds
 *   ioctl HVISOR_INIT_VIRTIO        -> 0 (told to the world)
 *   ioctl HVISOR_SET_EVENTFD, efd   -> the eventfd is passed to the world,
 *                                      which writes it when need_wakeup is 1
 *   mmap(4096, offset 0)            -> the bridge page
 *   mmap(size, offset zone0_ipa)    -> that part of a zone memory region,
 *                                      between two inaccessible guard areas
 *   ioctl HVISOR_FINISH_REQ         -> what hvisor does in the hypercall:
 *                                      drain res_list, one IRQ message per
 *                                      entry to the world
 *
 * Used directly by the standalone runtime's hvisor transport, and through
 * link-time wrapping (toolchain/bridge/wrap.c) by hvisor-tool's own daemon.
 * Written for this project from hvisor-tool's documented ABI.
 */
#ifndef HVISOR_DEV_H
#define HVISOR_DEV_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HVDEV_PATH "/dev/hvisor"
#define HVDEV_SOCKET_ENV "HVISOR_SIM_SOCKET"

/* The module's ioctl numbers (hvisor-tool include/hvisor.h). */
#define HVDEV_IOC_INIT_VIRTIO 0x0100u     /* _IO(1, 0) */
#define HVDEV_IOC_FINISH_REQ 0x0102u      /* _IO(1, 2) */
#define HVDEV_IOC_SET_EVENTFD 0x40040107u /* _IOW(1, 7, int) */

/* The bridge page, as hvisor and the module lay it out (little-endian). */
#define HVDEV_MAX_REQ 32
#define HVDEV_MAX_CPUS 32
#define HVDEV_MAX_DEVS 8
#define HVDEV_BRIDGE_SIZE 4096

struct hvdev_req {
    uint64_t src_cpu;
    uint64_t address; /* the zone's IPA */
    uint64_t size;
    uint64_t value;
    uint32_t src_zone;
    uint8_t is_write;
    uint8_t need_interrupt; /* 1 only for QueueNotify writes */
    uint16_t padding;
};

struct hvdev_res {
    uint32_t target_zone;
    uint32_t irq_id;
};

struct hvdev_bridge {
    uint32_t req_front;
    uint32_t req_rear;
    uint32_t res_front;
    uint32_t res_rear;
    struct hvdev_req req_list[HVDEV_MAX_REQ];
    struct hvdev_res res_list[HVDEV_MAX_REQ];
    uint64_t cfg_flags[HVDEV_MAX_CPUS];
    uint64_t cfg_values[HVDEV_MAX_CPUS];
    uint64_t mmio_addrs[HVDEV_MAX_DEVS];
    uint8_t mmio_avail;
    uint8_t need_wakeup;
};

_Static_assert(sizeof(struct hvdev_req) == 40, "device_req layout");
_Static_assert(sizeof(struct hvdev_res) == 8, "device_res layout");
_Static_assert(offsetof(struct hvdev_bridge, cfg_flags) == 1552,
               "bridge layout");
_Static_assert(offsetof(struct hvdev_bridge, need_wakeup) == 2129,
               "bridge layout");

/* Messages on the world socket: a u32 type, then the body. */
enum hvdev_msg_type {
    HVDEV_MSG_HELLO = 1,       /* stand-in -> world: u32 version */
    HVDEV_MSG_SETUP = 2,       /* world -> stand-in: regions, fds */
    HVDEV_MSG_SET_EVENTFD = 3, /* stand-in -> world: the eventfd (fd) */
    HVDEV_MSG_IRQ = 4,         /* stand-in -> world: u32 zone, u32 irq */
    HVDEV_MSG_INIT = 5,        /* stand-in -> world: HVISOR_INIT_VIRTIO */
};
#define HVDEV_PROTOCOL_VERSION 1
/* Inaccessible space mapped before and after each zone memory region. */
#define HVDEV_GUARD_BYTES (64u * 1024u)
#define HVDEV_MAX_REGIONS 16

/* Connects to the world; returns an fd standing for /dev/hvisor, or -1
 * with errno set.  One per process. */
int hvdev_open(void);
/* True when fd is the one hvdev_open() returned. */
int hvdev_is_dev(int fd);
/* The module's ioctls; -1 with errno (ENOTTY for unknown requests). */
int hvdev_ioctl(int fd, unsigned long request, unsigned long arg);
/* The module's mmap; MAP_FAILED with errno (EINVAL outside any region). */
void *hvdev_mmap(void *addr, size_t len, int prot, int flags, int fd,
                 off_t offset);
/* Forgets the device (the caller closes fd itself). */
void hvdev_forget(int fd);

#endif /* HVISOR_DEV_H */
