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
    if (vq->used_ring == NULL)
        return;
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
    if (vq->used_ring == NULL || vq->avail_ring == NULL)
        return;
    if (vq->event_idx_enabled) {
        *avail_event_slot(vq) = vq->avail_ring->idx;
    } else {
        vq->used_ring->flags &= (uint16_t)~VRING_USED_F_NO_NOTIFY;
    }
    write_barrier();
}

void *get_virt_addr(void *zonex_ipa, int zone_id) {
    void *hva = rt_gpa_to_hva((uint64_t)(uintptr_t)zonex_ipa);

    (void)zone_id; /* one guest per runtime process */
    if (hva == NULL)
        log_error("guest address 0x%llx is not in the memory table",
                  (unsigned long long)(uintptr_t)zonex_ipa);
    return hva;
}

void update_used_ring(VirtQueue *vq, uint16_t idx, uint32_t iolen) {
    update_used_ring_batch(vq, &idx, &iolen, 1);
}

void update_used_ring_batch(VirtQueue *vq, const uint16_t *indices,
                            const uint32_t *lens, size_t count) {
    volatile VirtqUsed *used = vq->used_ring;
    uint16_t mask;
    uint16_t head;
    size_t i;

    if (count == 0 || used == NULL || vq->num == 0)
        return;
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

void virtio_inject_irq(VirtQueue *vq) {
    volatile VirtqUsed *used = vq->used_ring;
    volatile VirtqAvail *avail = vq->avail_ring;
    uint16_t old_idx;
    uint16_t new_idx;

    if (used == NULL || avail == NULL)
        return;
    new_idx = used->idx;
    if (new_idx == vq->last_used_idx)
        return; /* nothing published since the last signal */
    old_idx = vq->last_used_idx;
    vq->last_used_idx = new_idx;

    /*
     * Full barrier: the used->idx store above must be globally visible
     * before we read the driver's suppression state.  A store-only barrier
     * (what hvisor-tool issues here) lets the load overtake the store, so a
     * driver that re-enables interrupts at the same moment could see the
     * old idx while we see the old flags/used_event: lost interrupt.
     */
    rw_barrier();

    if (vq->event_idx_enabled) {
        uint16_t used_event = avail->ring[vq->num];

        if (!vring_need_event(used_event, new_idx, old_idx))
            return;
    } else if (avail->flags & VRING_AVAIL_F_NO_INTERRUPT) {
        return;
    }
    rt_signal_call(vq);
}
