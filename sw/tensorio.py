"""Loading and saving named tensors: .npz, .safetensors and torch state dicts."""

import zipfile
from pathlib import Path

import numpy as np

__all__ = ["load_tensors", "save_npz"]

TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}


def load_tensors(path) -> dict:
    """Named numpy arrays from ``path``; raises ``ValueError`` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (zipfile.BadZipFile, ValueError, EOFError) as error:
            raise ValueError(f"{path}: not a readable .npz file ({error})") from None
    if suffix == ".safetensors":
        return _load_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return _load_torch(path)
    raise ValueError(f"{path}: unknown model format {suffix!r} "
                     f"(expected .npz, .safetensors or one of {', '.join(sorted(TORCH_SUFFIXES))})")


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, TypeError, ValueError) as error:
        # numpy has no bfloat16: go through torch, which widens it to float32 losslessly.
        if "bf16" in str(error).lower() or "bfloat16" in str(error).lower():
            from safetensors.torch import load_file as load_torch
            return _torch_to_numpy(load_torch(str(path)), path)
        raise ValueError(f"{path}: not a readable .safetensors file ({error})") from None


def _load_torch(path: Path) -> dict:
    import pickle

    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable torch state dict "
                         f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") \
            from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return _torch_to_numpy(state, path)


def _torch_to_numpy(state: dict, path: Path) -> dict:
    import torch
    arrays = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        arrays[str(name)] = value.numpy()
    return arrays


def save_npz(path, tensors: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **tensors)
