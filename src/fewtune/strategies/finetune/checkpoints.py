"""Fine-tuning checkpoints: the trained tensors as safetensors, the rest as JSON, in one folder.

:func:`save` writes the folder after every epoch as a whole (a staging folder put in place in
one step), so a Ctrl-C or a crash leaves the last finished epoch; :func:`load` resumes from it
only with the same settings and the same open layers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fewtune.errors import FewtuneError
from fewtune.storage import atomic
from fewtune.strategies.finetune.config import FinetuneConfig
from fewtune.strategies.finetune.head import CosineHead


def save(
    folder: Path, trainable: Mapping[str, torch.Tensor], head: CosineHead, optimizer: torch.optim.Optimizer,
    schedule: Any, config: FinetuneConfig, epoch: int, history: list[dict[str, float]],
) -> None:  # fmt: skip
    from safetensors.torch import save_file

    tensors = {f"body.{n}": p.detach().contiguous() for n, p in trainable.items()}
    tensors.update({f"head.{n}": p.detach().contiguous() for n, p in head.state_dict().items()})
    state = optimizer.state_dict()
    for index, slots in state["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).contiguous()
    meta = {
        "epoch": epoch,
        "history": history,
        "config": asdict(config),
        "schedule": schedule.state_dict()["last_epoch"],
    }
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(tensors, staging / "tensors.safetensors")
    (staging / "state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    atomic.put_in_place(staging, folder, lambda step: None)
    shutil.rmtree(staging, ignore_errors=True)  # the previous checkpoint, if there was one


def load(
    folder: Path, trainable: Mapping[str, torch.Tensor], head: CosineHead, optimizer: torch.optim.Optimizer,
    schedule: Any, config: FinetuneConfig,
) -> tuple[int, list[dict[str, float]]]:  # fmt: skip
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(folder / "tensors.safetensors")
    except (OSError, ValueError, SafetensorError) as exc:
        raise FewtuneError(
            f"{folder}: damaged checkpoint ({exc}); delete it and train without --resume"
        ) from None
    if meta.get("config") != asdict(config):
        changed = sorted(k for k, v in asdict(config).items() if meta.get("config", {}).get(k) != v)
        raise FewtuneError(
            f"{folder}: the checkpoint was made with other settings ({', '.join(changed)}); "
            "resume with the same flags, or delete it to start again"
        )
    body = {n[5:]: t for n, t in tensors.items() if n.startswith("body.")}
    if set(body) != set(trainable):
        raise FewtuneError(
            f"{folder}: the checkpoint trains other layers than this model; delete it and train again"
        )
    with torch.no_grad():
        for name, value in body.items():
            trainable[name].copy_(value)
        head.load_state_dict({n[5:]: t for n, t in tensors.items() if n.startswith("head.")})
    state = optimizer.state_dict()
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            slots.setdefault(int(index), {})[key] = value
    state["state"] = slots
    optimizer.load_state_dict(state)
    schedule.last_epoch = int(meta["schedule"])
    schedule._last_lr = [g["lr"] for g in optimizer.param_groups]  # noqa: SLF001 - as LRScheduler.step leaves it
    factors = [fn(schedule.last_epoch) for fn in schedule.lr_lambdas]
    for group, base, factor in zip(optimizer.param_groups, schedule.base_lrs, factors, strict=True):
        group["lr"] = base * factor
    return int(meta["epoch"]), list(meta["history"])
