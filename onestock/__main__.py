"""``python -m onestock`` runs the command line."""

from onestock.cli import main

main()
