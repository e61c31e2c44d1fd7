"""Python guest: a vhost-user frontend driving a virtio-blk backend."""

from .backend import Backend, BackendError
from .blk import (
    BlkConfig,
    BlkDevice,
    BlkError,
    BlkRequest,
    BlkStatusError,
    Completion,
)
from .memory import GuestMemory, GuestMemoryError
from .shadow import ShadowDisk, ShadowMismatch
from .transport import NeedsReset
from .vhost_user import ProtocolFeature, Request, VhostUserError, VhostUserFrontend
from .virtq import SplitVirtqueue, UsedElem, VirtqueueError

__all__ = [
    "Backend",
    "BackendError",
    "BlkConfig",
    "BlkDevice",
    "BlkError",
    "BlkRequest",
    "BlkStatusError",
    "Completion",
    "GuestMemory",
    "GuestMemoryError",
    "NeedsReset",
    "ProtocolFeature",
    "Request",
    "ShadowDisk",
    "ShadowMismatch",
    "SplitVirtqueue",
    "UsedElem",
    "VhostUserError",
    "VhostUserFrontend",
    "VirtqueueError",
]
