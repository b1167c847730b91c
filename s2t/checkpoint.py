"""Checkpoints: one safetensors file holds everything, so it is written atomically in one rename
and read without unpickling anything.

    <run>/last.safetensors        newest checkpoint (resume reads it)
    <run>/step-000500.safetensors periodic checkpoints (the newest `keep_checkpoints` are kept)
    <run>/config.yaml             resolved TrainConfig
    <run>/run.json                cache path, vocabulary (model id -> token id), input sizes

Inside a checkpoint: tensors "model.*" (weights), "optim.<param>.<name>" (AdamW moments),
"queue.<name>.<key>", "rng.<name>" (torch generator states as uint8 tensors); metadata "s2t"
(JSON: step, optimizer hyper-parameters, GradScaler, sampler state, counters), "crc32"
(JSON: a CRC32 per tensor, so a flipped bit is caught, not only a truncated file) and "s2t_crc32"
(the CRC32 of "s2t": an edited step would otherwise resume silently from the wrong place).
A save writes NAME.tmp-PID first; one left by a kill is removed by the next save (or start).
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from preprocess.store import write_json_atomic

from .config import ConfigError, config_from_dict
from .model import ModelConfig, SignTranslator
from .vocab import Vocab

RUN_INFO = "run.json"
CONFIG = "config.yaml"
LAST = "last.safetensors"
BEST = "best.safetensors"  # the checkpoint with the best validation value of cfg.best_metric


class CheckpointError(RuntimeError):
    pass


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _text_crc(text: str) -> str:
    return str(zlib.crc32(text.encode()))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(run_dir) -> list[Path]:
    """Remove temporary checkpoints (NAME.safetensors.tmp-PID) that no running save will finish:
    those of processes that are gone (killed while saving) and this process's own (a save that
    failed). Returns what was removed."""
    removed = []
    for tmp in Path(run_dir).glob("*.safetensors.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # a live process may still be writing it
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def default_checkpoint(run_dir) -> str:
    """best.safetensors (best on validation) when the run has one, else last.safetensors."""
    return BEST if (Path(run_dir) / BEST).is_file() else LAST


def save_checkpoint(path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write tensors + JSON metadata to `path` atomically (temp file, fsync, rename)."""
    path = Path(path)
    remove_stale_temps(path.parent)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta_text = json.dumps(meta)
    metadata = {"s2t": meta_text, "crc32": json.dumps({k: _crc(v) for k, v in tensors.items()}),
                "s2t_crc32": _text_crc(meta_text)}
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def link_checkpoint(src: Path, dst: Path) -> None:
    """Make `dst` the same checkpoint as `src`, atomically (hard link, or a copy where links fail)."""
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path, prefix: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (only those starting with `prefix`, if given) and metadata of a checkpoint.
    Anything unreadable, truncated or with a checksum mismatch raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if prefix is None or k.startswith(prefix)}
        # (checkpoints written before the metadata had a checksum have no s2t_crc32)
        if "s2t_crc32" in metadata and metadata["s2t_crc32"] != _text_crc(metadata["s2t"]):
            raise CheckpointError(f"{path}: checksum mismatch in its metadata (step, optimizer and sampler "
                                  "state): the file is damaged or was edited; resume from an earlier "
                                  "step-*.safetensors (copy it over last.safetensors) or start a new run")
        meta = json.loads(metadata["s2t"])
        crcs = json.loads(metadata["crc32"])
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises several types for a damaged header or short file
        raise CheckpointError(f"{path}: not a readable checkpoint (damaged or truncated?): {e}") from None
    bad = [k for k, t in tensors.items() if crcs.get(k) != _crc(t)]
    if bad:
        raise CheckpointError(f"{path}: checksum mismatch in {bad[:5]}: the file is damaged; resume from an "
                              "earlier step-*.safetensors (copy it over last.safetensors) or start a new run")
    return tensors, meta


def strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def write_run_info(run_dir: Path, cfg, info: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (CONFIG + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, run_dir / CONFIG)
    write_json_atomic(run_dir / RUN_INFO, info)


def read_run(run_dir) -> tuple:
    """(TrainConfig, run info dict) of a run folder."""
    run_dir = Path(run_dir)
    for name in (CONFIG, RUN_INFO):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir}: not a run folder (no {name})")
    try:
        saved = yaml.safe_load((run_dir / CONFIG).read_text())
        if not isinstance(saved, dict):
            raise ConfigError(f"expected a mapping, found {type(saved).__name__}")
        cfg = config_from_dict(saved)
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as e:
        raise CheckpointError(f"{run_dir / CONFIG}: the run's config is damaged or not valid ({e}); "
                              "restore or fix it, or start a new run") from None
    try:
        info = json.loads((run_dir / RUN_INFO).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{run_dir / RUN_INFO}: the run's info is damaged ({e}); restore it or "
                              "start a new run") from None
    return cfg, info


def build_model(cfg, info: dict):
    vocab = Vocab.from_json(info["vocab"])
    mc = ModelConfig.from_train_config(cfg, in_dim=info["in_dim"], text_dim=info["text_dim"],
                                       vocab_size=vocab.size, pad_id=vocab.pad, bos_id=vocab.bos,
                                       eos_id=vocab.eos, text_model=info.get("text_model"))
    return SignTranslator(mc, torch.as_tensor(vocab.token_ids)), vocab


def load_run(run_dir, device="cpu", checkpoint: str = LAST):
    """Rebuild a trained model from its run folder -> (model in eval mode, cfg, info).

    info: {"cache": training cache path, "vocab": Vocab (decode with info["vocab"].decode),
           "components", "in_dim", "text_dim", "step", "checkpoint": path}."""
    run_dir = Path(run_dir)
    cfg, info = read_run(run_dir)
    try:  # text_encoder: finetune rebuilds the text tower from the text model's local folder
        model, vocab = build_model(cfg, info)
    except ConfigError as e:
        raise CheckpointError(f"{run_dir}: cannot rebuild its model: {e}") from None
    path = run_dir / checkpoint
    tensors, meta = load_checkpoint(path, prefix="model.")
    try:
        model.load_state_dict(strip(tensors, "model."))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model of {run_dir / CONFIG}: {e}") from None
    model.to(device).eval()
    return model, cfg, {**info, "vocab": vocab, "step": meta["step"], "checkpoint": str(path)}
