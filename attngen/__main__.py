"""`python -m attngen …` is the `attngen` command."""
import sys

from attngen.cli import main

if __name__ == "__main__":
    sys.exit(main())
