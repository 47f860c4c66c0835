"""`unireplknet eval` (not implemented yet)."""

from __future__ import annotations

import argparse

from unireplknet.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="eval (not implemented yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise UserError("'eval' is not implemented yet")
