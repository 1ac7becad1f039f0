"""`python -m peerage` runs the command line."""

from peerage.cli import main

raise SystemExit(main())
