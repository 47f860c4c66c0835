"""`unireplknet reparam` (not implemented yet)."""

from __future__ import annotations

import argparse

from unireplknet.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reparam", help="reparam (not implemented yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise UserError("'reparam' is not implemented yet")
