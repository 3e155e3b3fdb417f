"""`python -m multimodal ...` (and `torchrun -m multimodal train ...`): the `multimodal` command."""

import sys

from multimodal.cli import main

if __name__ == "__main__":
    sys.exit(main())
