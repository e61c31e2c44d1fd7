/*
 * Private interface between the hvisor-style framework functions
 * (virtio.c) and the transports behind them (vhost_user.c: vhost-user;
 * hvisor.c: hvisor's MMIO bridge).  Not for devices.
 */
#ifndef HVISOR_RT_RUNTIME_H
#define HVISOR_RT_RUNTIME_H

#include "cJSON.h"
#include "virtio.h"

#include <stdbool.h>
#include <stdint.h>

/* Host pointer for a guest physical address of a zone, or NULL when
 * unmapped (the active transport's memory map). */
void *rt_gpa_to_hva(uint64_t gpa, int zone_id);

/* Raises the queue's interrupt: vhost-user writes the call eventfd; hvisor
 * sets InterruptStatus and injects through res_list unless the line is
 * still asserted. */
void rt_signal_call(VirtQueue *vq);

/*
 * True on the hvisor transport: the framework functions then behave as
 * hvisor-tool HEAD's do where HEAD has no check (a NULL ring is
 * dereferenced, i.e. the process dies), so that tests see what the board
 * would.  vhost-user keeps its own guards.
 */
extern bool rt_hvisor_core;

/*
 * The optional core hook a device calls after it has set
 * VIRTIO_CONFIG_S_NEEDS_RESET in regs.status (and VIRTIO_MMIO_INT_CONFIG in
 * regs.interrupt_status): a ring broke a rule and the device stops using it
 * until a reset.  Devices declare it weak themselves (hvisor-tool HEAD does
 * not define it, so there it is NULL and never called); main.c defines it
 * and forwards to the transport.  Callable from any thread, never blocks,
 * never calls back into the device.
 */
void virtio_dev_needs_reset(VirtIODevice *vdev);

/* Returns a queue to its just-created state, as hvisor's virtqueue_reset:
 * everything but the handler, device, index and size limit is zeroed. */
void rt_wipe_queue(VirtQueue *vq);

/* Called when the pair makes the core do what crashes HEAD: log, abort. */
_Noreturn void rt_board_crash(const char *what, const VirtQueue *vq);

struct rt_options {
    const char *socket_path; /* NULL when listen_fd is used */
    int listen_fd;           /* -1 unless --fd was given */
    const char *blk_file;
    bool read_only;
    const char *hvisor_config; /* --hvisor ZONE.json, or NULL */
};

/* The transports' hooks (main.c selects one). */
void *vu_gpa_to_hva(uint64_t gpa, int zone_id);
void vu_signal_call(VirtQueue *vq);
void vu_needs_reset(VirtIODevice *vdev);
void *hv_gpa_to_hva(uint64_t gpa, int zone_id);
void hv_signal_call(VirtQueue *vq);
void hv_needs_reset(VirtIODevice *vdev);
/* Called by virtio_inject_irq() first, before the suppression checks, when
 * set: the hvisor core notes there what the main thread completed. NULL
 * otherwise (vhost-user, the fuzz harness). */
extern void (*rt_inject_hook)(VirtQueue *vq);

/*
 * Creates a device as hvisor-tool's create_virtio_device() does: the ops
 * table's parse on the device's JSON object, the VirtIODevice with its
 * queues, then init (close on failure).  NULL on any failure (logged).
 */
VirtIODevice *rt_create_device(const cJSON *device_json, uint32_t zone_id,
                               uint64_t base_addr, uint64_t len,
                               uint32_t irq_id);

/* vhost-user: creates the device and serves frontends until SIGTERM. */
int rt_run(const struct rt_options *opts);
/* hvisor: serves every blk device of the zone JSON through the bridge
 * (hvisor_dev.h) until SIGTERM, with hvisor-tool HEAD's core semantics. */
int rt_hvisor_run(const struct rt_options *opts);

#endif /* HVISOR_RT_RUNTIME_H */
