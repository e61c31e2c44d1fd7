/*
 * Framework functions a virtio device calls, with the semantics of
 * hvisor-tool's virtio core, written independently for the standalone
 * vhost-user runtime.  Guest memory and the "interrupt" (call eventfd) are
 * provided by vhost_user.c through runtime.h.
 */
#include "virtio.h"
#include "log.h"
#include "runtime.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

bool rt_hvisor_core;

_Noreturn void rt_board_crash(const char *what, const VirtQueue *vq) {
    log_fatal("hvisor-tool HEAD dereferences NULL here: %s (queue %u); the "
              "daemon would crash on the board",
              what, vq != NULL ? (unsigned)vq->vq_idx : 0u);
    abort();
}

void write_barrier(void) {
#if defined(__aarch64__)
    __asm__ __volatile__("dmb ishst" ::: "memory");
#else
    /* x86 keeps stores in order; only the compiler must be restrained. */
    __asm__ __volatile__("" ::: "memory");
#endif
}

void read_barrier(void) {
#if defined(__aarch64__)
    __asm__ __volatile__("dmb ishld" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

void rw_barrier(void) {
#if defined(__aarch64__)
    __asm__ __volatile__("dmb ish" ::: "memory");
#else
    /* x86 may let a later load pass an earlier store: needs a real fence. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

bool virtqueue_is_empty(VirtQueue *vq) { return vq_is_empty(vq); }

/* hvisor's virtqueue_reset: all but handler, device, index and limit. */
void rt_wipe_queue(VirtQueue *vq) {
    int (*handler)(VirtIODevice *, VirtQueue *) = vq->notify_handler;
    VirtIODevice *dev = vq->dev;
    uint32_t num_max = vq->queue_num_max;
    uint64_t idx = vq->vq_idx;

    pthread_mutex_destroy(&vq->used_ring_lock);
    memset(vq, 0, sizeof(*vq));
    vq->notify_handler = handler;
    vq->dev = dev;
    vq->queue_num_max = num_max;
    vq->vq_idx = idx;
    pthread_mutex_init(&vq->used_ring_lock, NULL);
}

/*
 * Location of the avail_event word: the u16 that follows the num used
 * elements.  Computed with byte arithmetic so no object is accessed through
 * an incompatible type.
 */
static volatile uint16_t *avail_event_slot(VirtQueue *vq) {
    volatile char *base = (volatile char *)vq->used_ring;

    return (volatile uint16_t *)(base + offsetof(struct vring_used, ring) +
                                 vq->num * sizeof(struct vring_used_elem));
}

void virtqueue_disable_notify(VirtQueue *vq) {
    if (vq->used_ring == NULL) {
        if (rt_hvisor_core)
            rt_board_crash("virtqueue_disable_notify without a used ring", vq);
        return;
    }
    if (vq->event_idx_enabled) {
        /* Ask for a kick only once avail->idx moves past an index the
         * driver has already passed, i.e. practically never. */
        *avail_event_slot(vq) = (uint16_t)(vq->last_avail_idx - 1);
    } else {
        vq->used_ring->flags |= VRING_USED_F_NO_NOTIFY;
    }
    write_barrier();
}

void virtqueue_enable_notify(VirtQueue *vq) {
    if (vq->used_ring == NULL || vq->avail_ring == NULL) {
        if (rt_hvisor_core)
            rt_board_crash("virtqueue_enable_notify without rings", vq);
        return;
    }
    if (vq->event_idx_enabled) {
        *avail_event_slot(vq) = vq->avail_ring->idx;
    } else {
        vq->used_ring->flags &= (uint16_t)~VRING_USED_F_NO_NOTIFY;
    }
    write_barrier();
}

void *get_virt_addr(void *zonex_ipa, int zone_id) {
    void *hva = rt_gpa_to_hva((uint64_t)(uintptr_t)zonex_ipa, zone_id);

    if (hva == NULL)
        log_error("guest address 0x%llx is not in the memory table",
                  (unsigned long long)(uintptr_t)zonex_ipa);
    return hva;
}

/*
 * As hvisor-tool HEAD: one barrier before (the device's stores into guest
 * buffers come first) and one after, but none between the element and the
 * index that publishes it.  On AArch64 the driver can see the new index
 * before the element; a device that needs them ordered uses the batch
 * helper below (hvisor-api.md section 14).  The index is read back from the
 * guest's used ring, not from a device-side copy.
 */
void update_used_ring(VirtQueue *vq, uint16_t idx, uint32_t iolen) {
    volatile VirtqUsed *used = vq->used_ring;
    volatile VirtqUsedElem *elem;
    uint16_t used_idx;

    if (used == NULL) {
        if (rt_hvisor_core)
            rt_board_crash("update_used_ring without a used ring", vq);
        return;
    }
    write_barrier();
    used_idx = used->idx;
    elem = &used->ring[used_idx & (uint16_t)(vq->num - 1)];
    elem->id = idx;
    elem->len = iolen;
    used->idx = (uint16_t)(used_idx + 1);
    write_barrier();
}

void update_used_ring_batch(VirtQueue *vq, const uint16_t *indices,
                            const uint32_t *lens, size_t count) {
    volatile VirtqUsed *used = vq->used_ring;
    uint16_t mask;
    uint16_t head;
    size_t i;

    if (count == 0)
        return;
    if (used == NULL) {
        if (rt_hvisor_core)
            rt_board_crash("update_used_ring_batch without a used ring", vq);
        return;
    }
    mask = (uint16_t)(vq->num - 1);
    head = used->idx;

    /* Buffer contents the device wrote must be visible before the entry. */
    write_barrier();
    for (i = 0; i < count; i++) {
        volatile VirtqUsedElem *elem = &used->ring[(head + i) & mask];

        elem->id = indices[i];
        elem->len = lens[i];
    }
    /* Entries must be visible before the index that publishes them. */
    write_barrier();
    used->idx = (uint16_t)(head + count);
    write_barrier();
}

void (*rt_inject_hook)(VirtQueue *vq); /* runtime.h */

/*
 * As hvisor-tool HEAD: last_used_idx follows the guest's used->idx, and the
 * suppression state is loaded right after it with no full barrier (the
 * store of used->idx by update_used_ring may still be in flight: a device
 * issues rw_barrier() itself before calling this).
 */
void virtio_inject_irq(VirtQueue *vq) {
    volatile VirtqUsed *used = vq->used_ring;
    volatile VirtqAvail *avail = vq->avail_ring;
    uint16_t old_idx;
    uint16_t new_idx;

    if (rt_inject_hook != NULL)
        rt_inject_hook(vq);
    if (used == NULL || avail == NULL) {
        if (rt_hvisor_core)
            rt_board_crash("virtio_inject_irq without rings", vq);
        return;
    }
    old_idx = vq->last_used_idx;
    new_idx = used->idx;
    vq->last_used_idx = new_idx;
    if (new_idx == old_idx)
        return; /* nothing published since the last signal */
    if (vq->event_idx_enabled) {
        uint16_t used_event = avail->ring[vq->num];

        if (!vring_need_event(used_event, new_idx, old_idx))
            return;
    } else if (avail->flags & VRING_AVAIL_F_NO_INTERRUPT) {
        return;
    }
    rt_signal_call(vq);
}
