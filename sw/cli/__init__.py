"""``python -m sw``: the command line of the software side.

Each command lives in a module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs, so ``verify`` does not pay for importing
torch.
"""

import argparse
import importlib
import os
import sys

from sw.codec.container import ContainerError

__all__ = ["COMMANDS", "UsageError", "main"]

#: command name -> (module implementing it, one-line summary)
COMMANDS = {
    "encode": ("sw.cli.encode", "code a model's integer tensors losslessly (.npz, "
               ".safetensors or torch state dict); other tensors are stored raw"),
    "decode": ("sw.cli.decode", "decode a container to .npz: integers exactly, or floats "
               "with --dequantize"),
    "inspect": ("sw.cli.inspect", "per section: shape, levels, entropy, coded bits/weight "
                "and overhead; then totals"),
    "verify": ("sw.cli.verify", "decode a container completely and make every check; "
               "exit status 0 only if it is sound"),
    "infer": ("sw.cli.infer", "run a container's integer program on images (default: the "
              "450 held-out digits) and print its accuracy"),
    "train": ("sw.quant.train", "train a model with zero-point quantization to a bits/weight "
              "target and export its container"),
    "compress": ("sw.quant.compress", "post-training quantization of any model to a bits/weight "
                 "budget"),
    "board": ("sw.board", "iCEBreaker flash image, and the UART lines the board must print"),
}


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sw",
        description="subbit: compress neural-network weights below one bit per weight.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only the chosen command's module is imported (torch is slow to import).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, summary) in COMMANDS.items():
        command = subparsers.add_parser(name, help=summary, description=summary)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, ContainerError, ValueError, OSError) as error:
        if os.environ.get("SUBBIT_DEBUG"):
            raise
        message = error.strerror + f": {error.filename}" \
            if isinstance(error, OSError) and error.filename else str(error)
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
