"""``python -m torchstreamer``: the command line (see :mod:`torchstreamer.cli`)."""

from torchstreamer.cli import main

raise SystemExit(main())
