/*
 * Private interface between the hvisor-style framework functions
 * (virtio.c) and the vhost-user transport (vhost_user.c).  Not for devices.
 */
#ifndef HVISOR_RT_RUNTIME_H
#define HVISOR_RT_RUNTIME_H

#include "virtio.h"

#include <stdint.h>

/* Host pointer for a guest physical address, or NULL when unmapped. */
void *rt_gpa_to_hva(uint64_t gpa);

/* Writes to the queue's call eventfd, if the frontend gave one. */
void rt_signal_call(VirtQueue *vq);

struct rt_options {
    const char *socket_path; /* NULL when listen_fd is used */
    int listen_fd;           /* -1 unless --fd was given */
    const char *blk_file;
    bool read_only;
};

/* Creates the device and serves frontends until SIGINT/SIGTERM. */
int rt_run(const struct rt_options *opts);

#endif /* HVISOR_RT_RUNTIME_H */
