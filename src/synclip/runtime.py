"""Device, dtype and thread choice, made once at an entry point (never inside library code), and the
process group of a torchrun launch (one rank per device)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from contextlib import AbstractContextManager
from typing import TypeVar

import torch
import torch.distributed as dist

from synclip.config import RuntimeParams
from synclip.errors import UserError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=torch.nn.Module)


def select_device(spec: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device that is absent is an error."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {spec!r} requested but torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {spec!r} requested but MPS is not available")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for `device`: bf16 where supported, fp16 on older GPUs, none on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def frozen_autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast for a frozen network's forward passes on the CPU when `precision` is "bf16" and the
    CPU has native bf16, else nothing (fp32). Measured on TAEF2 (docs/benchmarks.md): encode and decode
    twice as fast, reconstructions of real faces within 0.3 grey levels of fp32's, same PSNR / SSIM."""
    if precision == "bf16" and device.type == "cpu" and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(model: M) -> M:
    """`model` with its 4-D weights in channels-last layout (in place): PyTorch's CPU convolutions
    (oneDNN) then run channels-last end to end, which is faster for the conv towers of the SyncNet
    and the VAE (docs/benchmarks.md; the UNet, whose attention layers reshape every activation,
    gains nothing). Safetensors stores contiguous tensors only: savers copy with `.contiguous()`
    or call `contiguous_layout` first."""
    return model.to(memory_format=torch.channels_last)


def contiguous_layout(model: M) -> M:
    """`model` back in PyTorch's default layout (in place), e.g. before a diffusers `save_pretrained`."""
    return model.to(memory_format=torch.contiguous_format)


def launched_world_size() -> int:
    """How many processes torchrun started for this job (its WORLD_SIZE); 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_process_group(spec: str) -> torch.device:
    """Join the process group of a torchrun launch (env:// rendezvous: RANK, WORLD_SIZE, MASTER_ADDR/PORT)
    and return this rank's device: cuda:LOCAL_RANK with NCCL, or the CPU with gloo. `spec` is
    runtime.device; a device index would put several ranks on one GPU, so it is refused."""
    local_rank = int(os.environ["LOCAL_RANK"])
    if spec in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s): "
                "start at most one rank per GPU (torchrun --nproc-per-node)"
            )
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    elif spec in ("auto", "cpu"):
        device, backend = torch.device("cpu"), "gloo"
    else:
        reason = "CUDA is not available" if spec == "cuda" else "each rank takes cuda:LOCAL_RANK"
        raise UserError(f"runtime.device {spec!r} under torchrun ({reason}): use auto, cuda or cpu")
    dist.init_process_group(backend)
    atexit.register(leave_process_group)
    log.info("rank %d of %d on %s (%s)", dist.get_rank(), dist.get_world_size(), device, backend)
    if dist.get_rank():  # the other ranks would repeat rank 0's lines: warnings and errors only
        library = logging.getLogger("synclip")
        library.setLevel(max(library.getEffectiveLevel(), logging.WARNING))
    return device


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """Whether this process writes the outputs: rank 0 of a torchrun launch, or the only process."""
    return not dist.is_initialized() or dist.get_rank() == 0


def configure(runtime: RuntimeParams) -> torch.device:
    """Apply thread settings, join torchrun's process group where there is one, and return the chosen
    device; call once per process."""
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    world = launched_world_size()
    if world > 1 and runtime.distributed == "off":
        raise UserError(f"launched as {world} processes (WORLD_SIZE) but runtime.distributed is off")
    device = join_process_group(runtime.device) if world > 1 else select_device(runtime.device)
    log.debug("device %s, %d torch threads", device, torch.get_num_threads())
    return device
