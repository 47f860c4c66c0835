"""`unireplknet info`: the variant table (params, GMACs) — paper Tables 4 and 5; ``--task NAME``: that task's
model table (e.g. Table 7's segmenters)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from unireplknet.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="variant table: params and GMACs (Tables 4–5)")
    p.add_argument("--model", action="append", help="only this variant (repeatable); default: all")
    p.add_argument("--resolution", type=int, default=None,
                   help="input size for GMACs (default: Table 5's, 224 or 384 for B/L/XL)")
    p.add_argument("--reparam-check", action="store_true",
                   help="also build each variant and report the float64 re-parameterization error")
    p.add_argument("--task", metavar="NAME", help="the model table of a task instead (e.g. segmentation: Table 7)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of dict rows: one column per key; floats with 2 decimals, sizes as H×W."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "×".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    table = [list(rows[0])] + [[cell(row.get(k)) for k in rows[0]] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in table)


def run(args: argparse.Namespace) -> int:
    from unireplknet.analysis.complexity import format_table, variant_table
    from unireplknet.models import VARIANTS

    if args.task is not None:
        from unireplknet.tasks import get_task

        if args.model or args.resolution is not None or args.reparam_check:
            raise UserError("--task prints the task's own table; drop --model, --resolution and --reparam-check")
        task_rows = get_task(args.task).complexity_table()
        if not task_rows:
            raise UserError(f"the {args.task} task has no model table; run `unireplknet info` for the variants")
        print(json.dumps(task_rows, indent=1) if args.json else format_rows(task_rows))
        return 0

    for name in args.model or []:
        if name not in VARIANTS:
            raise UserError(f"unknown model {name!r}; choose from {', '.join(VARIANTS)}")
    if args.resolution is not None and (args.resolution < 32 or args.resolution % 32):
        raise UserError(f"--resolution must be a positive multiple of 32, got {args.resolution}")
    rows = variant_table(args.model, args.resolution, reparam_check=args.reparam_check)
    print(json.dumps([r.as_dict() for r in rows], indent=1) if args.json else format_table(rows))
    return 0
