"""Entry point of the ``unireplknet`` command: one sub-command per module in this package.

Each sub-command module defines ``add_parser(subparsers)`` (which registers its parser and sets
``func`` to its ``run(args) -> int``). A :class:`~unireplknet.errors.UserError` (or a bad argument)
ends the program with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import signal
import sys

from unireplknet.errors import UserError

SUBCOMMANDS = ("train", "eval", "predict", "reparam", "export", "bench", "info", "erf")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own code for usage errors)
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unireplknet", description="UniRepLKNet: train, evaluate and deploy large-kernel ConvNets.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"unireplknet.cli.{name}_cmd")
        module.add_parser(sub)
    return parser


def _one_line(err: BaseException) -> str:
    """An error message as one line: terminal colour codes removed, lines joined."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(err))
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: unwind like Ctrl-C, so temp files are removed and checkpoints kept


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    previous = None
    with contextlib.suppress(ValueError):  # (not the main thread: keep the default)
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except (UserError, OSError) as err:  # OSError: the environment (a full disk, a missing permission)
        message = _one_line(err) if isinstance(err, UserError) else \
            f"{err.strerror or type(err).__name__}: {err.filename or ''}".rstrip(": ")
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0, not one per process
            sys.stderr.write(f"unireplknet {args.command}: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"unireplknet {args.command}: interrupted\n")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
