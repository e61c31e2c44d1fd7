"""End-to-end: a real Linux guest (virtio_blk driver + fio) drives a backend under QEMU.

`debian` fetches the guest's kernel and packages (cached outside the repo),
`elf` reads what they need, `initramfs` assembles the guest's root file
system, `qemu` builds the command lines, `fio` defines the jobs and reads
their output, `runner` starts everything with bounded time and writes
results under build/e2e/<timestamp>/.
"""
