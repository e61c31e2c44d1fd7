/* The probe device's header: it exports only the two ops tables. */
#ifndef NEEDS_RESET_PROBE_VIRTIO_BLK_H
#define NEEDS_RESET_PROBE_VIRTIO_BLK_H

#include "virtio.h"

extern const struct virtio_device_ops virtio_blk_ops;
extern const struct virtio_config_ops virtio_blk_config_ops;

#endif /* NEEDS_RESET_PROBE_VIRTIO_BLK_H */
