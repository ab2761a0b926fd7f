"""`python -m monitor` is the same as the `rutter-monitor` command."""

from monitor.cli import main

raise SystemExit(main())
