"""hvisor-blkgen: spec -> hvisor-tool virtio-blk device -> cross build -> qemu-user tests."""

# The toolkit's version, stated only here (pyproject.toml reads it).
__version__ = "0.1.0"
