"""``python -m manager.cli`` runs ``tritonctl``."""

from manager.cli import main

main()
