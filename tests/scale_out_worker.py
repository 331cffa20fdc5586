"""One process of the scale-out test: `lafr restore ARGS` with a LafrPipeline on tiny seeded
random models (tests/cli_fixtures.py), built identically in every process, so the outputs
depend only on which items a process takes. Run it directly (one process) or under torchrun /
with RANK and WORLD_SIZE set."""

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from cli_fixtures import tiny_pipeline  # noqa: E402
from lafr_core.__main__ import build_parser  # noqa: E402
from lafr_core.restore_cli import Restorer, main  # noqa: E402

if __name__ == "__main__":
    weights, pipe = tiny_pipeline()
    sys.exit(main(build_parser().parse_args(["restore", *sys.argv[1:]]), restorer=Restorer.lafr(weights, pipe.host_model())))
