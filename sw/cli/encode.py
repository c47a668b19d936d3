"""``python -m sw encode``: a model file to a container."""

import numpy as np

from sw.codec.container import (
    CodedTensor,
    MappedTensor,
    RawTensor,
    estimated_section_size,
    write_container,
)
from sw.io.tensors import load_tensors
from sw.params import CodecParams, add_params_arguments, params_from


def add_arguments(parser):
    parser.add_argument("input", metavar="IN")
    parser.add_argument("-o", "--output", metavar="OUT", required=True)
    add_params_arguments(parser)


def tensor_for(name: str, array: np.ndarray, params: CodecParams = CodecParams()):
    """The section for one tensor.

    Integers in one window of at most 256 values that fits int16 are CODED (what the hardware
    decodes). Other integer tensors of at most 256 distinct values are MAPPED through a value
    table when that is smaller than storing them raw (a handful of values can cost more in
    their table than raw). Anything else is RAW.
    """
    if array.dtype.kind in "iu":
        try:
            return CodedTensor.from_integers(name, array)
        except ValueError:
            pass
    raw = _raw(name, array)
    if array.dtype.kind in "iu":
        try:
            mapped = MappedTensor.from_array(name, array)
        except ValueError:   # more than 256 distinct values
            return raw
        if estimated_section_size(mapped, params) < estimated_section_size(raw, params):
            return mapped
    return raw


def _raw(name: str, array: np.ndarray) -> RawTensor:
    try:
        return RawTensor(name, array)
    except ValueError as error:   # a dtype with no RAW code: say which tensor
        raise ValueError(f"tensor {name!r}: {error}") from None


def run(args) -> int:
    params = params_from(args)
    tensors = [tensor_for(name, array, params)
               for name, array in load_tensors(args.input).items()]
    data = write_container(tensors, params)
    with open(args.output, "wb") as file:
        file.write(data)
    coded = [t for t in tensors if isinstance(t, CodedTensor)]
    mapped = [t for t in tensors if isinstance(t, MappedTensor)]
    weights = sum(t.symbols.size for t in coded + mapped)
    through = f", {len(mapped)} of them through a value table" if mapped else ""
    print(f"{args.output}: {len(data)} bytes, {len(coded) + len(mapped)} coded tensors "
          f"({weights} values{through}), {len(tensors) - len(coded) - len(mapped)} raw")
    return 0
