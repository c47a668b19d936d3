"""``python -m sw encode``: a model file to a container."""

import numpy as np

from ..container import CodedTensor, RawTensor, write_container
from ..tensorio import load_tensors
from . import add_params_arguments, params_from


def add_arguments(parser):
    parser.add_argument("input", metavar="IN")
    parser.add_argument("-o", "--output", metavar="OUT", required=True)
    add_params_arguments(parser)


def tensor_for(name: str, array: np.ndarray):
    """A coded tensor for integers that fit one (at most 256 values in int16), else a raw one."""
    if array.dtype.kind in "iu":
        try:
            return CodedTensor.from_integers(name, array)
        except ValueError:
            pass
    try:
        return RawTensor(name, array)
    except ValueError as error:   # a dtype with no RAW code: say which tensor
        raise ValueError(f"tensor {name!r}: {error}") from None


def run(args) -> int:
    tensors = [tensor_for(name, array) for name, array in load_tensors(args.input).items()]
    data = write_container(tensors, params_from(args))
    with open(args.output, "wb") as file:
        file.write(data)
    coded = [t for t in tensors if isinstance(t, CodedTensor)]
    weights = sum(t.symbols.size for t in coded)
    print(f"{args.output}: {len(data)} bytes, {len(coded)} coded tensors ({weights} values), "
          f"{len(tensors) - len(coded)} raw")
    return 0
