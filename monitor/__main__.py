"""Allows ``python -m monitor``; the CLI lives in :mod:`monitor.cli`."""

from monitor.cli import main

raise SystemExit(main())
