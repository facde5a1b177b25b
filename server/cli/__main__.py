"""`python -m chatdock.server.cli`: the chatdock command."""

from .main import main

main()
