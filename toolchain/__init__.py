"""hvisor-blkgen: spec -> hvisor-tool virtio-blk device -> cross build -> qemu-user tests."""

__version__ = "0.1.0"
