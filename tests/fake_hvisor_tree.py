"""A small stand-in for an hvisor-tool tree, written by the tests themselves.

It has hvisor-tool's layout and API names, so `toolchain.hvisor` can
install a pair and build it: a tools/Makefile with the same variables
(ARCH, CROSS_COMPILE, CC, LOG; goal `all`) that compiles
tools/virtio/devices/blk/*.c with the stub framework and links
tools/hvisor. The framework headers are the project's own clean-room
runtime headers (toolchain/runtime/); everything else is a stub written
here. No hvisor-tool code is involved.
"""

from __future__ import annotations

import shutil
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "toolchain" / "runtime"

MAKEFILE = """\
# Test stand-in for hvisor-tool's tools/Makefile (same variables, same goal).
ifndef LOG
$(error LOG must be given, as with hvisor-tool)
endif
ifneq ($(ARCH),arm64)
$(error only ARCH=arm64 is supported here)
endif
sources := $(wildcard *.c) $(wildcard ./virtio/*.c) ../cJSON/cJSON.c
include ./virtio/devices/blk/Makefile
objects := $(sources:.c=.o)
CFLAGS := -Wall -Wextra -DHLOG=$(LOG) -pthread -O2
include_dirs := -I./include -I./virtio/include -I../cJSON -I.
ifeq ($(origin CC), default)
CC := $(CROSS_COMPILE)gcc
endif

.PHONY: all
all: hvisor

$(objects): %.o: %.c
\t$(CC) $(CFLAGS) $(include_dirs) -c -o $@ $<

hvisor: $(objects)
\t$(CC) -o $@ $^ $(CFLAGS) -lpthread -static
"""

BLK_MAKEFILE = "sources += $(wildcard ./virtio/devices/blk/*.c)\n"

# The framework functions a device calls, as do-nothing stubs.
VIRTIO_C = """\
#include "virtio.h"
#include "virtio_blk.h"
#include <stddef.h>

void write_barrier(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
void read_barrier(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
void rw_barrier(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
bool virtqueue_is_empty(VirtQueue *vq) { return vq_is_empty(vq); }
void virtqueue_disable_notify(VirtQueue *vq) { (void)vq; }
void virtqueue_enable_notify(VirtQueue *vq) { (void)vq; }
void *get_virt_addr(void *zonex_ipa, int zone_id) {
    (void)zone_id;
    return zonex_ipa;
}
void update_used_ring(VirtQueue *vq, uint16_t idx, uint32_t iolen) {
    (void)vq;
    (void)idx;
    (void)iolen;
}
void update_used_ring_batch(VirtQueue *vq, const uint16_t *indices,
                            const uint32_t *lens, size_t count) {
    (void)vq;
    (void)indices;
    (void)lens;
    (void)count;
}
void virtio_inject_irq(VirtQueue *vq) { (void)vq; }

const struct virtio_device_ops *blk_ops(void);
const struct virtio_device_ops *blk_ops(void) { return &virtio_blk_ops; }
"""

HVISOR_C = """\
#include "virtio.h"
#include <stdio.h>

const struct virtio_device_ops *blk_ops(void);

int main(void) {
    const struct virtio_device_ops *ops = blk_ops();
    printf("features=%llu queues=%u queue_max=%u\\n",
           (unsigned long long)ops->features, ops->num_queues,
           ops->queue_max_size);
    return 0;
}
"""

# The tree's "original" device: tiny, but a complete pair.
ORIGINAL_H = """\
/* original stub device of the fake tree */
#ifndef FAKE_VIRTIO_BLK_H
#define FAKE_VIRTIO_BLK_H
#include "virtio.h"
extern const struct virtio_device_ops virtio_blk_ops;
extern const struct virtio_config_ops virtio_blk_config_ops;
#endif
"""

ORIGINAL_C = """\
/* original stub device of the fake tree */
#include "virtio_blk.h"
const struct virtio_device_ops virtio_blk_ops = {
    .type = VirtioTBlock, .features = 1ULL << 32, .num_queues = 1,
    .queue_max_size = 8};
const struct virtio_config_ops virtio_blk_config_ops = {0};
"""

GITIGNORE = "*.o\n/tools/hvisor\n"


def make_fake_tree(root: Path) -> Path:
    """Write the fake tree under root and return root."""
    files = {
        "tools/Makefile": MAKEFILE,
        "tools/virtio/devices/blk/Makefile": BLK_MAKEFILE,
        "tools/virtio/devices/blk/virtio_blk.c": ORIGINAL_C,
        "tools/virtio/include/virtio_blk.h": ORIGINAL_H,
        "tools/virtio/virtio.c": VIRTIO_C,
        "tools/hvisor.c": HVISOR_C,
        ".gitignore": GITIGNORE,
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    copies = {
        "tools/virtio/include/virtio.h": "virtio.h",
        "tools/include/log.h": "log.h",
        "tools/log.c": "log.c",
        "tools/include/rt_clock.h": "rt_clock.h",
        "cJSON/cJSON.h": "cJSON.h",
        "cJSON/cJSON.c": "cjson_min.c",
    }
    for rel, name in copies.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RUNTIME / name, root / rel)
    return root
