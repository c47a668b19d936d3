"""Loading and saving named tensors: .npz, .safetensors and torch state dicts.

Every error a user can cause with a file (missing, a directory, not the format its suffix says,
a dtype a container cannot hold) is raised as :class:`OSError` or :class:`ValueError` with a
one-line message naming the file, which ``python -m sw`` prints without a traceback.
"""

import json
import struct
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["load_tensors", "save_tensors", "save_npz", "save_safetensors", "checked_input",
           "OUTPUT_SUFFIXES"]

TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}
#: What :func:`save_tensors` writes, by suffix.
OUTPUT_SUFFIXES = (".npz", ".safetensors")

#: safetensors dtypes that numpy (and so a RAW section) can hold as they are; ``BF16`` is
#: widened to float32 losslessly through torch. Any other (float8 ``F8_E4M3``/``F8_E5M2``,
#: ``F8_E8M0``, 4- and 6-bit floats, complex) is refused by name: a container's RAW dtypes
#: (docs/FORMAT.md) have no code for them, and storing their bytes as uint8 would come back as
#: another dtype.
_SAFETENSORS_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "F16", "U32", "I32", "F32", "U64",
                       "I64", "F64", "BF16"}


def checked_input(path) -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is a readable regular file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Path

    Raises
    ------
    IsADirectoryError
        When ``path`` is a directory (saying "no such file" there misleads).
    FileNotFoundError
        When nothing is there.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory, not a file", str(path))
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    return path


def load_tensors(path) -> dict:
    """Named numpy arrays from a ``.npz``, ``.safetensors`` or torch (``.pt`` ...) file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict of str to numpy.ndarray
        In the file's order.

    Raises
    ------
    OSError
        The file is missing or a directory.
    ValueError
        The file is not what its suffix says, or holds something that is not a tensor or a
        tensor of a dtype a container cannot store; the message is one line.
    """
    path = checked_input(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".safetensors":
        return _load_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return _load_torch(path)
    raise ValueError(f"{path}: unknown model format {suffix!r} "
                     f"(expected .npz, .safetensors or one of {', '.join(sorted(TORCH_SUFFIXES))})")


def _load_npz(path: Path) -> dict:
    # Read the members directly rather than through np.load's NpzFile: its key lookup also
    # tries ``key + ".npy"``, so tensors named "a" and "a.npy" would read the same member.
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                name = member[:-4] if member.endswith(".npy") else member
                with archive.open(member) as file:
                    arrays[name] = np.lib.format.read_array(file, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({_first_line(error)})") from None
    return arrays


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (8-byte length, then JSON), without its data."""
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a readable .safetensors file (shorter than 8 bytes)")
        length, = struct.unpack("<Q", head)
        # The format caps the header at 100 MB; a larger length is not a safetensors file.
        if length > 100_000_000:
            raise ValueError(f"{path}: not a readable .safetensors file "
                             f"(header length {length})")
        text = file.read(length)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable .safetensors file (header: {error})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a readable .safetensors file (header is not an object)")
    return header


def _load_safetensors(path: Path) -> dict:
    header = _safetensors_header(path)
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        dtype = entry.get("dtype")
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, which a container "
                             f"cannot store (raw sections hold bool, 8-64-bit integers, float16, "
                             f"float32, float64; bfloat16 is widened to float32)")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        if any(isinstance(e, dict) and e.get("dtype") == "BF16" for e in header.values()):
            # numpy has no bfloat16: go through torch, which widens it to float32 losslessly.
            from safetensors.torch import load_file as load_torch
            arrays = _torch_to_numpy(load_torch(str(path)), path)
        else:
            arrays = load_file(str(path))
    except (SafetensorError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a readable .safetensors file ({_first_line(error)})") \
            from None
    # safetensors returns its tensors in no particular order; keep the file's.
    order = [name for name in header if name != "__metadata__"]
    return {name: arrays[name] for name in order if name in arrays}


def _load_torch(path: Path) -> dict:
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # noqa: BLE001
        # The unpickler meets arbitrary bytes here and fails in many ways (a text file gives a
        # KeyError, others UnpicklingError, EOFError, RuntimeError, BadZipFile ...); each
        # means the same to the user: this is not a state dict.
        raise ValueError(f"{path}: not a readable torch state dict "
                         f"({type(error).__name__}: {_first_line(error)})") from None
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
        try:
            arrays[str(name)] = value.numpy()
        except TypeError:   # float8 and other dtypes numpy has no type for
            raise ValueError(f"{path}: tensor {name!r} has dtype "
                             f"{str(value.dtype).removeprefix('torch.')}, which a container "
                             f"cannot store") from None
    return arrays


def save_npz(path, tensors: dict) -> None:
    """Write ``tensors`` as an uncompressed ``.npz`` that :func:`numpy.load` reads.

    Parameters
    ----------
    path : str or Path
    tensors : dict of str to numpy.ndarray
        Any names: each is stored as the member ``name + ".npy"``, as :func:`numpy.savez`
        does. ``np.savez(path, **tensors)`` itself cannot be used: a tensor named ``file``
        collides with its first parameter and one named ``allow_pickle`` is taken as its
        keyword and silently dropped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in tensors.items():
            # force_zip64: members may pass 4 GiB, and the size is not known before writing.
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def save_safetensors(path, tensors: dict) -> None:
    """Write ``tensors`` as ``.safetensors`` (any names; dtypes as numpy holds them).

    Parameters
    ----------
    path : str or Path
    tensors : dict of str to numpy.ndarray
    """
    from safetensors.numpy import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    save_file({name: np.asarray(array).copy(order="C") for name, array in tensors.items()},
              str(path))


def save_tensors(path, tensors: dict) -> None:
    """Write ``tensors`` in the format ``path``'s suffix names (:data:`OUTPUT_SUFFIXES`).

    Raises
    ------
    ValueError
        For any other suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        save_npz(path, tensors)
    elif suffix == ".safetensors":
        save_safetensors(path, tensors)
    else:
        raise ValueError(f"output must end in {' or '.join(OUTPUT_SUFFIXES)}: {path}")
