"""hvisor-blkgen: spec -> hvisor-tool virtio-blk device -> cross build -> qemu-user tests."""

# The toolkit's version, stated only here (pyproject.toml reads it). Every spec
# hash includes it (toolchain/spec/digest.py): a release that changes what a
# spec means must bump it, so builds from the old meaning are told apart.
__version__ = "0.1.0"
