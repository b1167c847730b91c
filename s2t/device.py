"""What a `device` setting (`TrainConfig.device`, `--device` of eval and translate) means."""
from __future__ import annotations

import torch

from .config import ConfigError


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto": this process's GPU (cuda:LOCAL_RANK under torchrun) when CUDA is available, else the
    CPU; any other name as torch spells it (cpu, cuda, cuda:N). A CUDA device where CUDA is not
    available is refused here (one error line) rather than failing later inside torch."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    return device
