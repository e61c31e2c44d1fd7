/*
 * Standalone runtime: the subset of hvisor-tool's virtio framework API that
 * a generated virtio-blk device uses.  Type, field and function names match
 * hvisor-tool's tools/virtio/include/virtio.h so the same device sources
 * build against either.  The implementation behind it (virtio.c,
 * vhost_user.c) serves the device over the vhost-user protocol instead of
 * hvisor's MMIO trap path.
 *
 * The kernel headers are the ones HEAD's header includes, so a device sees
 * the same macros here as in an hvisor-tool tree: VIRTIO_CONFIG_S_NEEDS_RESET
 * (linux/virtio_config.h), VIRTIO_MMIO_INT_VRING / VIRTIO_MMIO_INT_CONFIG
 * (linux/virtio_mmio.h).
 */
#ifndef HVISOR_RT_VIRTIO_H
#define HVISOR_RT_VIRTIO_H

#include "cJSON.h"
#include <linux/virtio_config.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_ring.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>
#include <unistd.h>

/* Lets device sources tell this runtime apart from hvisor-tool proper. */
#define HVISOR_STANDALONE_RUNTIME_ABI 1

/* Emulated virtio-mmio register state (only partly meaningful here). */
typedef struct VirtMmioRegs {
    uint32_t device_id;
    uint32_t dev_feature_sel;
    uint32_t drv_feature_sel;
    uint32_t queue_sel;
    uint32_t interrupt_status;
    uint32_t status;
    uint32_t generation;
    uint64_t dev_feature; /* features offered to the driver */
    uint64_t drv_feature; /* features the driver accepted */
} VirtMmioRegs;

typedef enum {
    VirtioTNone,
    VirtioTNet,
    VirtioTBlock,
    VirtioTConsole,
    VirtioTGPU = 16,
    VirtioTSCMI = 32,
} VirtioDeviceType;

typedef struct vring_desc VirtqDesc;
typedef struct vring_avail VirtqAvail;
typedef struct vring_used_elem VirtqUsedElem;
typedef struct vring_used VirtqUsed;

struct VirtIODevice;
typedef struct VirtIODevice VirtIODevice;
struct VirtQueue;
typedef struct VirtQueue VirtQueue;

struct VirtQueue {
    VirtIODevice *dev;      /* owning device */
    uint64_t vq_idx;        /* position in dev->vqs */
    uint64_t num;           /* ring size chosen by the driver (power of two) */
    uint32_t queue_num_max; /* largest ring size the device accepts */

    /* Guest physical addresses of the three ring areas. */
    uint64_t desc_table_addr;
    uint64_t avail_addr;
    uint64_t used_addr;

    /* The same areas as pointers in this process; NULL until configured. */
    volatile VirtqDesc *desc_table;
    volatile VirtqAvail *avail_ring;
    volatile VirtqUsed *used_ring;

    /* Called on the main thread when the driver kicks this queue. */
    int (*notify_handler)(VirtIODevice *vdev, VirtQueue *vq);

    uint16_t last_avail_idx; /* next avail entry the device will take */
    uint16_t last_used_idx;  /* used->idx when the driver was last signalled */

    uint8_t ready;
    uint8_t event_idx_enabled;      /* VIRTIO_RING_F_EVENT_IDX was negotiated */
    pthread_mutex_t used_ring_lock; /* for the device; the runtime never
                                       takes it */
};

/*
 * True when the driver has published nothing new: no ring mapped, or
 * avail->idx (read with acquire ordering) equals last_avail_idx.
 */
static inline bool vq_is_empty(VirtQueue *vq) {
    if (vq->avail_ring == NULL)
        return true;
    return __atomic_load_n(&vq->avail_ring->idx, __ATOMIC_ACQUIRE) ==
           vq->last_avail_idx;
}

struct VirtIODevice {
    uint32_t vqs_len;
    uint32_t zone_id;
    uint32_t irq_id;
    uint64_t base_addr;
    uint64_t len;
    VirtioDeviceType type;
    VirtMmioRegs regs;
    VirtQueue *vqs; /* vqs_len entries, allocated by the runtime */
    void *dev;      /* device-private state, owned by the device */
    void (*virtio_close)(VirtIODevice *vdev);
    void (*status_changed)(VirtIODevice *vdev, uint32_t status);
    bool activated;
    pthread_mutex_t interrupt_lock;
    bool interrupt_line_asserted;
};

/* Per-device-type registration table. */
struct virtio_device_ops {
    VirtioDeviceType type;
    uint64_t features;
    uint32_t num_queues;
    uint32_t queue_max_size;
    int (*init)(VirtIODevice *vdev, const void *params);
    void (*close)(VirtIODevice *vdev);
    void (*reset)(VirtIODevice *vdev);
    void (*status_changed)(VirtIODevice *vdev, uint32_t status);
#define VIRTIO_MAX_VQUEUES 4
    int (*notify_handlers[VIRTIO_MAX_VQUEUES])(VirtIODevice *, VirtQueue *);
};

/* Turns the device's JSON description into init parameters. */
struct virtio_config_ops {
    int (*parse)(const cJSON *json, void **params_out);
    void (*free)(void *params);
};

void write_barrier(void);
void read_barrier(void);
void rw_barrier(void);

bool virtqueue_is_empty(VirtQueue *vq);
void virtqueue_disable_notify(VirtQueue *vq);
void virtqueue_enable_notify(VirtQueue *vq);

/* Guest physical address -> pointer in this process, or NULL. */
void *get_virt_addr(void *zonex_ipa, int zone_id);

void update_used_ring(VirtQueue *vq, uint16_t idx, uint32_t iolen);
void update_used_ring_batch(VirtQueue *vq, const uint16_t *indices,
                            const uint32_t *lens, size_t count);

/* Signals the driver about new used entries, honouring suppression. */
void virtio_inject_irq(VirtQueue *vq);

#endif /* HVISOR_RT_VIRTIO_H */
