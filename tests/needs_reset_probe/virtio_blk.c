/*
 * A probe device for the runtime's "tell the driver" hook
 * (tests/test_needs_reset.py); not a block device.
 *
 * It is built with the standalone runtime exactly as a generated pair is,
 * and does what a device does on a structural fault of its ring (the
 * contract of the conformance rewrite): set VIRTIO_CONFIG_S_NEEDS_RESET in
 * regs.status and VIRTIO_MMIO_INT_CONFIG in regs.interrupt_status, then call
 * the optional, weak core hook virtio_dev_needs_reset() from its worker
 * thread.  Every other chain completes at once with used length 0 and
 * nothing written, so a test can tell a working queue from a broken one and
 * see the reset recover it.
 *
 * Faults (the only two it knows): avail->idx more than num ahead of
 * last_avail_idx, and a head index >= num.
 */
#include "virtio_blk.h"
#include "log.h"
#include "virtio.h"

#include <linux/virtio_blk.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Optional core hook: NULL where the core does not provide it (HEAD). */
extern void virtio_dev_needs_reset(VirtIODevice *vdev) __attribute__((weak));

#define PROBE_QUEUE_SIZE 256
#define PROBE_CONFIG_WINDOW 256

typedef struct {
    struct virtio_blk_config config; /* first: config reads index vdev->dev */
    uint8_t zeros[PROBE_CONFIG_WINDOW - sizeof(struct virtio_blk_config)];
    VirtIODevice *vdev; /* set at init */
    pthread_t worker;   /* started at init, joined by close */
    pthread_mutex_t mtx;
    pthread_cond_t cond;
    bool kicked; /* under mtx: a notify arrived since the last pass */
    bool busy;   /* under mtx: the worker is looking at the ring */
    bool stop;   /* under mtx: close() wants the worker gone */
    bool broken; /* under mtx: told the driver; the ring is left alone */
} ProbeDev;

/* Worker, with busy set: the tell-the-driver sequence of the contract. */
static void probe_tell(ProbeDev *dev, const char *why) {
    VirtIODevice *vdev = dev->vdev;

    log_error("needs-reset probe: %s; telling the driver", why);
    __atomic_fetch_or(&vdev->regs.status, VIRTIO_CONFIG_S_NEEDS_RESET,
                      __ATOMIC_SEQ_CST);
    __atomic_fetch_or(&vdev->regs.interrupt_status, VIRTIO_MMIO_INT_CONFIG,
                      __ATOMIC_SEQ_CST);
    if (virtio_dev_needs_reset != NULL)
        virtio_dev_needs_reset(vdev);
}

/* Worker, with busy set: complete every chain, or find the fault. */
static bool probe_drain(ProbeDev *dev) {
    VirtQueue *vq = &dev->vdev->vqs[0];
    bool used = false;

    if (vq->avail_ring == NULL || vq->used_ring == NULL || vq->num == 0)
        return true;
    for (;;) {
        uint16_t idx = __atomic_load_n(&vq->avail_ring->idx, __ATOMIC_ACQUIRE);
        uint16_t ahead = (uint16_t)(idx - vq->last_avail_idx);
        uint16_t head;

        if (ahead == 0)
            break;
        if (ahead > vq->num) {
            probe_tell(dev, "avail index more than a ring ahead");
            return false;
        }
        head = vq->avail_ring->ring[vq->last_avail_idx & (vq->num - 1)];
        if (head >= vq->num) {
            probe_tell(dev, "head index out of the ring");
            return false;
        }
        vq->last_avail_idx++;
        update_used_ring(vq, head, 0);
        used = true;
    }
    if (used) {
        rw_barrier();
        virtio_inject_irq(vq);
    }
    return true;
}

static void *probe_worker(void *arg) {
    ProbeDev *dev = arg;

    pthread_mutex_lock(&dev->mtx);
    for (;;) {
        while (!dev->kicked && !dev->stop)
            pthread_cond_wait(&dev->cond, &dev->mtx);
        if (dev->stop)
            break;
        dev->kicked = false;
        if (dev->broken)
            continue;
        dev->busy = true;
        pthread_mutex_unlock(&dev->mtx);
        bool ok = probe_drain(dev);
        pthread_mutex_lock(&dev->mtx);
        dev->busy = false;
        if (!ok)
            dev->broken = true;
        pthread_cond_broadcast(&dev->cond);
    }
    pthread_mutex_unlock(&dev->mtx);
    return NULL;
}

/* Main thread: wake the worker. */
static int probe_notify(VirtIODevice *vdev, VirtQueue *vq) {
    ProbeDev *dev = vdev->dev;

    (void)vq;
    pthread_mutex_lock(&dev->mtx);
    dev->kicked = true;
    pthread_cond_signal(&dev->cond);
    pthread_mutex_unlock(&dev->mtx);
    return 0;
}

/* Main thread: wait for the worker to leave the ring; forget the fault. */
static void probe_reset(VirtIODevice *vdev) {
    ProbeDev *dev = vdev->dev;

    pthread_mutex_lock(&dev->mtx);
    while (dev->busy)
        pthread_cond_wait(&dev->cond, &dev->mtx);
    dev->kicked = false;
    dev->broken = false;
    pthread_mutex_unlock(&dev->mtx);
}

static int probe_init(VirtIODevice *vdev, const void *params) {
    ProbeDev *dev = calloc(1, sizeof(*dev));

    (void)params;
    if (dev == NULL)
        return -1;
    dev->config.capacity = 0;
    dev->vdev = vdev;
    pthread_mutex_init(&dev->mtx, NULL);
    pthread_cond_init(&dev->cond, NULL);
    if (pthread_create(&dev->worker, NULL, probe_worker, dev) != 0) {
        free(dev);
        return -1;
    }
    vdev->dev = dev;
    return 0;
}

static void probe_close(VirtIODevice *vdev) {
    ProbeDev *dev = vdev->dev;

    if (dev != NULL) {
        pthread_mutex_lock(&dev->mtx);
        dev->stop = true;
        pthread_cond_broadcast(&dev->cond);
        pthread_mutex_unlock(&dev->mtx);
        pthread_join(dev->worker, NULL);
        free(dev);
        vdev->dev = NULL;
    }
    free(vdev->vqs);
    free(vdev);
}

const struct virtio_device_ops virtio_blk_ops = {
    .type = VirtioTBlock,
    .features = 1ull << VIRTIO_F_VERSION_1,
    .num_queues = 1,
    .queue_max_size = PROBE_QUEUE_SIZE,
    .init = probe_init,
    .close = probe_close,
    .reset = probe_reset,
    .status_changed = NULL,
    .notify_handlers = {probe_notify},
};

static int probe_parse(const cJSON *json, void **params_out) {
    (void)json;
    *params_out = NULL;
    return 0;
}

static void probe_free(void *params) { (void)params; }

const struct virtio_config_ops virtio_blk_config_ops = {
    .parse = probe_parse,
    .free = probe_free,
};
