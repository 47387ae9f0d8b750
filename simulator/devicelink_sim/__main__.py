"""``python -m devicelink_sim`` is ``devicelink-sim``."""

from devicelink_sim.cli import main

raise SystemExit(main())
