"""``python -m enginehost`` runs the CLI."""

from enginehost.cli import main

main()
