"""Running out of memory or disk while training, said as what to change (the spec field, the batch size, the
workdir); anything else is left as it is."""

import errno

import torch


class ResourceError(Exception):
    """Out of memory or out of disk: the message says what to change."""


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def is_out_of_memory(e: BaseException) -> bool:
    """torch's OOM on any device: torch.OutOfMemoryError, or a RuntimeError from the CPU allocator."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("not enough memory" in text or "DefaultCPUAllocator" in text
                                            or "out of memory" in text)


def resource_error(e: BaseException, gen_field: str, train_bytes: int | None = None,
                   memory: int | None = None) -> ResourceError | None:
    """A ResourceError that says what to change for an OOM or a failed write; None for anything else.
    `train_bytes`: what the model's weights, gradients and optimizer state take; `memory`: what the device has."""
    if is_out_of_memory(e):
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:200]
        if train_bytes and memory and train_bytes > memory:  # no batch size helps
            return ResourceError(f"{gen_field} ran out of memory ({first}): its weights, gradients and optimizer "
                                 f"state alone take {train_bytes / 1e9:.1f} GB of {memory / 1e9:.1f} GB; lower the "
                                 "model's channels (or width), or train on a device with more memory")
        return ResourceError(f"{gen_field} ran out of memory ({first}); lower {gen_field}.train.batch_size "
                             "or the model's channels, or train on a device with more memory")
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        where = e.filename or "the workdir"
        return ResourceError(f"cannot write {where} ({e.strerror}); free space there or set `workdir:` "
                             "to a writable disk with room")
    return None
