"""``python -m medloop`` runs the CLI."""

from medloop.cli import main

main()
