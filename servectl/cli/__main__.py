"""``python -m servectl.cli``: the ``servectl`` command (for a checkout without the console script on PATH)."""
from servectl.cli.app import main

main()
