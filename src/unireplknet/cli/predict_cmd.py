"""`unireplknet predict` (not implemented yet)."""

from __future__ import annotations

import argparse

from unireplknet.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict (not implemented yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise UserError("'predict' is not implemented yet")
