"""Which stages a command runs, and which ignore the cache: `--force`, `--only`, `--from`, `--until`.

Shared by the command line (`pipeline.run`) and the Python API (`pipeline.api.run`), which take the
same choices under the same names. It imports no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.errors import UserError
from pipeline.registry import STAGE_NAMES


@dataclass(frozen=True)
class Selection:
    """Which stages run: `first..last` (earlier ones must be cached), and which ignore the cache."""

    first: str = STAGE_NAMES[0]
    last: str = STAGE_NAMES[-1]
    force: frozenset[str] = frozenset()

    def position(self, stage: str) -> str:
        """`before`, `inside` or `after` the selected range."""
        index = STAGE_NAMES.index(stage)
        if index < STAGE_NAMES.index(self.first):
            return "before"
        return "after" if index > STAGE_NAMES.index(self.last) else "inside"


def select_stages(force: str | None = None, only: str | None = None, first: str | None = None,
                  until: str | None = None) -> Selection:
    """The Selection that `--force [STAGE|all]`, `--only STAGE`, `--from STAGE` and `--until STAGE` ask for.

    Args:
        force: `all`, one stage's name, or None.
        only: run just this stage; earlier ones must be cached.
        first: rerun this stage and every later one (`--from`).
        until: stop after this stage.

    Raises:
        UserError: a combination that has no meaning, or a range out of pipeline order.
    """
    if only and until:
        raise UserError(f"--only {only} runs one stage, so --until {until} has no meaning with it; "
                        "use --from and --until for a range")
    start = only or first or STAGE_NAMES[0]
    last = only or until or STAGE_NAMES[-1]
    if STAGE_NAMES.index(last) < STAGE_NAMES.index(start):
        raise UserError(f"--until {last} comes before --from {start}; pick a range in pipeline order: "
                        f"{' -> '.join(STAGE_NAMES)}")
    forced = set(STAGE_NAMES if force == "all" else [force] if force else [])
    if only or first:  # asking for a stage by name means running it
        forced |= set(STAGE_NAMES[STAGE_NAMES.index(start): STAGE_NAMES.index(last) + 1])
    return Selection(start, last, frozenset(forced))
