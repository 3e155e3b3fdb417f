"""`python -m multimodal ...` (and `torchrun -m multimodal train ...`): the `multimodal` command."""

import os
import sys

from multimodal.cli import main

if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A rank of a torchrun job has destroyed its process group by now. Leave without the interpreter's and
        # C++'s static teardown, where a communication thread object destroyed at exit can abort (SIGABRT) a rank
        # whose work is done, turning a finished run into a failed one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
