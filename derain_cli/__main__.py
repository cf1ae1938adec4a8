"""`python -m derain_cli` runs the command-line interface."""

from derain_cli.cli import main

main()
