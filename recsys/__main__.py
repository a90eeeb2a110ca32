"""`python -m recsys` runs the CLI."""

from recsys.cli.main import main

main()
