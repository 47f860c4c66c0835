"""Run the CLI in-process and capture what a user sees: (exit code, stdout, stderr stripped)."""

from __future__ import annotations

from unireplknet.cli.main import main


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err.strip()
