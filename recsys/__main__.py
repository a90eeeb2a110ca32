"""`python -m recsys` runs the CLI."""

from recsys.cli.main.main import main

main()
