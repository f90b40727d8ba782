"""`python -m podbay.cli` runs the command line."""

from podbay.cli.main import main

main()
