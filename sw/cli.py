"""``python -m sw``: the command line of the software side.

Each command lives in a module exposing ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``verify`` does not
pay for importing torch.
"""

import argparse
import importlib
import os
import sys

from .container import ContainerError

__all__ = ["COMMANDS", "UsageError", "main"]

#: command name -> module implementing it
COMMANDS = {
    "encode": "sw.commands.encode",
    "decode": "sw.commands.decode",
    "inspect": "sw.commands.inspect",
    "verify": "sw.commands.verify",
    "train": "sw.train",
    "compress": "sw.compress",
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
    for name, module_name in COMMANDS.items():
        if name == chosen:
            module = importlib.import_module(module_name)
            command = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(command)
            command.set_defaults(run=module.run)
        else:
            subparsers.add_parser(name, add_help=False)
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
