"""`unireplknet info`: the variant table (params, GMACs) — paper Tables 4 and 5."""

from __future__ import annotations

import argparse
import json

from unireplknet.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="variant table: params and GMACs (Tables 4–5)")
    p.add_argument("--model", action="append", help="only this variant (repeatable); default: all")
    p.add_argument("--resolution", type=int, default=None,
                   help="input size for GMACs (default: Table 5's, 224 or 384 for B/L/XL)")
    p.add_argument("--reparam-check", action="store_true",
                   help="also build each variant and report the float64 re-parameterization error")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unireplknet.analysis.complexity import format_table, variant_table
    from unireplknet.models import VARIANTS

    for name in args.model or []:
        if name not in VARIANTS:
            raise UserError(f"unknown model {name!r}; choose from {', '.join(VARIANTS)}")
    if args.resolution is not None and (args.resolution < 32 or args.resolution % 32):
        raise UserError(f"--resolution must be a positive multiple of 32, got {args.resolution}")
    rows = variant_table(args.model, args.resolution, reparam_check=args.reparam_check)
    print(json.dumps([r.as_dict() for r in rows], indent=1) if args.json else format_table(rows))
    return 0
