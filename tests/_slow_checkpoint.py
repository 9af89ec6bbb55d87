"""Run the longrl CLI with one checkpoint's publish delayed, so a test can SIGKILL the run in the
middle of that checkpoint's write (its files are in ``.tmp-step_N``, ``COMPLETE`` is not yet
written). The delay is patched in here, test-side; the library has no hook for it.

    python tests/_slow_checkpoint.py SECONDS STEP train rl key=value ...
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

LAUNCHER = str(Path(__file__).resolve())


def command(seconds: float, step: int, *cli_args: str) -> list[str]:
    """The argv of a ``longrl`` run whose checkpoint ``step`` waits ``seconds`` before it is published."""
    return [sys.executable, LAUNCHER, str(seconds), str(step), *cli_args]


def main(argv: list[str]) -> int:
    from longrl.cli import main as longrl_main
    from longrl.infra.checkpoint import Checkpointer

    seconds, step = float(argv[0]), int(argv[1])
    publish = Checkpointer._publish

    def slow_publish(self, tmp: Path, final: Path, saved_step: int) -> None:
        if saved_step == step:
            time.sleep(seconds)
        publish(self, tmp, final, saved_step)

    Checkpointer._publish = slow_publish  # type: ignore[method-assign]
    return longrl_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
