/*
 * Device creation, shared by both transports, in the order hvisor-tool's
 * create_virtio_device_from_json() follows: parse the device's JSON with the
 * config ops, build the VirtIODevice and its queues, call init (and close
 * on failure), free the parameters whatever happened.
 */
#include "log.h"
#include "runtime.h"

#include <stdlib.h>

/* Provided by the device pair (virtio_blk.c). */
extern const struct virtio_device_ops virtio_blk_ops;
extern const struct virtio_config_ops virtio_blk_config_ops;

VirtIODevice *rt_create_device(const cJSON *device_json, uint32_t zone_id,
                               uint64_t base_addr, uint64_t len,
                               uint32_t irq_id) {
    const struct virtio_device_ops *ops = &virtio_blk_ops;
    const struct virtio_config_ops *cops = &virtio_blk_config_ops;
    VirtIODevice *vdev;
    void *params = NULL;
    uint32_t i;
    int rc;

    if (ops->num_queues < 1 || ops->num_queues > VIRTIO_MAX_VQUEUES ||
        ops->queue_max_size < 1 || ops->queue_max_size > 32768 ||
        ops->init == NULL || ops->close == NULL || cops->parse == NULL) {
        log_fatal("device ops table is unusable");
        return NULL;
    }
    rc = cops->parse(device_json, &params);
    if (rc != 0) {
        log_fatal("the device rejected its configuration (%d)", rc);
        return NULL;
    }
    vdev = calloc(1, sizeof(*vdev));
    if (vdev == NULL)
        goto err_free_params;
    vdev->vqs = calloc(ops->num_queues, sizeof(*vdev->vqs));
    if (vdev->vqs == NULL)
        goto err_free_vdev;

    vdev->type = VirtioTBlock;
    vdev->zone_id = zone_id;
    vdev->irq_id = irq_id;
    vdev->base_addr = base_addr;
    vdev->len = len;
    vdev->regs.device_id = VirtioTBlock;
    vdev->regs.dev_feature = ops->features;
    vdev->virtio_close = ops->close;
    vdev->status_changed = ops->status_changed;
    vdev->vqs_len = ops->num_queues;
    pthread_mutex_init(&vdev->interrupt_lock, NULL);
    for (i = 0; i < vdev->vqs_len; i++) {
        VirtQueue *vq = &vdev->vqs[i];

        vq->dev = vdev;
        vq->vq_idx = i;
        vq->queue_num_max = ops->queue_max_size;
        vq->notify_handler = ops->notify_handlers[i];
        pthread_mutex_init(&vq->used_ring_lock, NULL);
        if (vq->notify_handler == NULL)
            log_warn("queue %u has no notify handler", i);
    }

    rc = ops->init(vdev, params);
    if (cops->free != NULL)
        cops->free(params);
    if (rc != 0) {
        log_fatal("device initialisation failed (%d)", rc);
        ops->close(vdev); /* frees dev, vqs and vdev */
        return NULL;
    }
    return vdev;

err_free_vdev:
    free(vdev);
err_free_params:
    log_fatal("out of memory");
    if (cops->free != NULL)
        cops->free(params);
    return NULL;
}
