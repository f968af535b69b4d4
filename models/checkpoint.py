"""Reading local checkpoint files (``--weights``, ``--text-weights``) with one clear error for a bad one.

Checkpoints are never downloaded: a user passes a file, and a wrong file (a directory, a truncated
download, a text file, a checkpoint of something else) must be named with the format expected, not
surface as whichever of torch's or safetensors' many exception types its bytes happen to trigger.
Both readers raise ``FileNotFoundError`` for a missing file and ``ValueError`` for an unreadable one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMATS = ("a torch.save file (.pth / .pt / .bin: a state dict, or one under 'model' or 'state_dict') "
                      "or a .safetensors file")


def _require_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a {what} file; expected {CHECKPOINT_FORMATS}")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path} (nothing is downloaded; pass a local file)")


def _unreadable(path: Path, what: str, err: BaseException) -> ValueError:
    detail = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:160]  # torch's first sentence says it
    return ValueError(f"{path} is not a readable {what} ({type(err).__name__}: {detail}); expected {CHECKPOINT_FORMATS}")


def load_checkpoint(path: str | Path, what: str, *, mmap: bool = False) -> Mapping[str, Any]:
    """The top-level mapping of the checkpoint at ``path`` (tensors, or a wrapper dict holding them).

    A ``.safetensors`` file is read with safetensors, anything else with ``torch.load(weights_only=True)``
    (``mmap`` maps a zip-format file's tensors instead of reading them). ``what`` names the file in
    errors (e.g. "Prov-GigaPath slide-encoder checkpoint").
    """
    path = Path(path)
    _require_file(path, what)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises IndexError, EOFError, UnpicklingError, RuntimeError... for a foreign file
        raise _unreadable(path, what, err) from err
    if not isinstance(loaded, Mapping) or not loaded:
        raise ValueError(f"{path} holds {'an empty mapping' if isinstance(loaded, Mapping) else type(loaded).__name__}, "
                         f"not a {what}; expected {CHECKPOINT_FORMATS}")
    return loaded


def check_checkpoint(path: str | Path, what: str) -> None:
    """Raise as :func:`load_checkpoint` would, without reading the tensors where the format allows:
    a safetensors file's header, a zip-format torch file memory-mapped (a legacy torch file is read)."""
    path = Path(path)
    _require_file(path, what)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                names = list(handle.keys())
        except Exception as err:  # safetensors' errors are one Rust-side type per failure, not a Python hierarchy
            raise _unreadable(path, what, err) from err
        if not names:
            raise ValueError(f"{path} holds no tensor, not a {what}; expected {CHECKPOINT_FORMATS}")
        return
    with open(path, "rb") as f:
        zip_format = f.read(4) == b"PK\x03\x04"
    load_checkpoint(path, what, mmap=zip_format)


def load_state_strictly(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path,
                        what: str) -> None:
    """``module.load_state_dict(state, strict=True)``, with a mismatch (tensor names or shapes) raised as a
    ``ValueError`` naming the file: the checkpoint is readable but of another model or configuration."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: not a {what} of this configuration: {len(missing)} tensors missing "
                         f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:  # same names, other shapes: another width or depth
        detail = " ".join(str(err).split())[:300]
        raise ValueError(f"{path}: not a {what} of this configuration ({detail})") from err
