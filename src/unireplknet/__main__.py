"""``python -m unireplknet`` (and ``torchrun -m unireplknet``) runs the command line."""

from unireplknet.cli.main import main

raise SystemExit(main())
