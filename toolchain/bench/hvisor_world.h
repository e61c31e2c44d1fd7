/* SPDX-License-Identifier: MIT */
/*
 * The load generator's hvisor transport: loadgen plays hvisor at EL2 and one
 * guest vCPU, as toolchain/bridge/world.py does for the tests, but in C so
 * that the vCPU's side costs no more than hvisor's trap handler would.
 *
 * It owns the bridge page and the guest RAM (memfds), writes the zone JSON
 * the daemon is started with, and listens on the socket the /dev/hvisor
 * stand-in (toolchain/runtime/hvisor_dev.c) connects to.  Every MMIO access
 * of the vCPU goes through the bridge to the daemon's main thread and, but
 * for QueueNotify, blocks until it answers (hvisor-api.md sections 5, 13).
 * Interrupts come back as messages on the socket.
 */
#ifndef LOADGEN_HVISOR_WORLD_H
#define LOADGEN_HVISOR_WORLD_H

#include "hvisor_dev.h"

#include <stdbool.h>
#include <stdint.h>

/* Where the zone's one blk device sits: hvisor-tool's qemu-aarch64 example
 * (the same as the tests' world, toolchain/bridge/backend.py). */
#define HVW_DEVICE_ADDR 0xa003c00ull
#define HVW_DEVICE_IRQ 78u
#define HVW_ZONE 1u
/* zone0_ipa = zonex_ipa + this, as in the tests' world. */
#define HVW_ZONE0_OFFSET 0x4000000000ull

struct hvw {
    int listen_fd, conn_fd, bridge_fd, eventfd;
    volatile struct hvdev_bridge *b;
    unsigned cpu;
    uint64_t pending_irqs; /* injected, not yet taken by the vCPU */
    uint64_t wakeups;      /* eventfd writes */
    bool gone;             /* the daemon closed the socket */
    char sock_path[108];
    char error[256];
};

/* Create the bridge page, listen on DIR/hvisor.sock and write DIR/zone.json
 * (atomically: the harness starts the daemon once it exists) for one zone
 * with `size` bytes of RAM at guest physical address gpa. */
int hvw_create(struct hvw *w, const char *dir, uint64_t gpa, uint64_t size,
               const char *image);

/* Wait (at most timeout_ms) for the daemon: HELLO, SETUP, its eventfd and
 * mmio_avail. */
int hvw_attach(struct hvw *w, int guest_fd, uint64_t gpa, uint64_t size,
               int timeout_ms);

/* One trapped access of the device's registers (offset in its page); a read
 * stores the daemon's answer in *value.  Blocks the vCPU as on the board. */
int hvw_access(struct hvw *w, uint32_t offset, unsigned size, bool write,
               uint64_t *value, int timeout_ms);

/* A QueueNotify write: posted, not waited for. */
int hvw_notify(struct hvw *w, uint32_t queue, int timeout_ms);

/* Read every message the stand-in sent; -1 once the daemon is gone. */
int hvw_pump(struct hvw *w);

/* Re-announce requests the daemon went to sleep on (the world's second line
 * of defence, as toolchain/bridge/world.py's kick_if_asleep). */
void hvw_kick_if_asleep(struct hvw *w);

void hvw_close(struct hvw *w);

#endif /* LOADGEN_HVISOR_WORLD_H */
