"""What became of the missed picks in `aimg run --sim --task pick --out REPORT` reports.

    python scripts/pick_misses.py runs/figures/pick-closed-standard.json [MORE.json ...]

Sorts each miss by what its `first_close` and `cube` fields say (docs/training.md, "The hand
shuts at the bottom"), then, over all reports, the success rate of the closes that were low
and near enough to hold the cube, by the hand's yaw off the cube's faces and by its distance
from the cube's axis.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

LIFTED_M = 0.03  # the cube rose this much: the hand carried it
SHOVED_M = 0.01  # the cube had moved this far across the table when the hand closed
HIGH_M = 0.015  # the hand closed this far above the cube's centre: fingertips over its top


def kind_of_miss(episode: dict) -> str:
    close, cube = episode.get("first_close"), episode.get("cube")
    if close is None:
        return "never closed"
    if cube is not None and cube["peak_lift_m"] > LIFTED_M:
        if cube["final_lift_m"] < LIFTED_M:
            return "lifted, then dropped"
        return "lifted, fingers shut past it"
    if cube is not None and (cube["pushed_at_close_m"] or 0.0) > SHOVED_M:
        return "shoved before the close"
    if close["height_m"] > HIGH_M:
        return "closed above the cube's centre"
    return "closed low, not lifted"


def near_closes(episodes: list[dict]) -> list[tuple[bool, float, float]]:
    """(picked, |yaw off the faces| deg, horizontal cm) of closes at most 1 cm above the centre
    and 2.5 cm off the axis."""
    rows = []
    for e in episodes:
        close = e.get("first_close")
        if close and close["height_m"] <= 0.01 and close["horizontal_m"] <= 0.025:
            rows.append(
                (bool(e["success"]), abs(close["yaw_error_deg"]), close["horizontal_m"] * 100)
            )
    return rows


def rate_by(rows: list[tuple[bool, float, float]], column: int, edges: list[float]) -> str:
    lines = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        picked = [ok for ok, *values in rows if lo <= values[column - 1] < hi]
        share = f"{sum(picked)}/{len(picked)}" if picked else "0/0"
        lines.append(f"  {lo:g}-{hi:g}: {share}")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    if not paths:
        sys.exit(__doc__)
    every: list[dict] = []
    for path in paths:
        episodes = json.loads(Path(path).read_text())["per_episode"]
        every += episodes
        picked = sum(bool(e["success"]) for e in episodes)
        misses = Counter(kind_of_miss(e) for e in episodes if not e["success"])
        print(f"{path}: {picked}/{len(episodes)} picked; misses: {dict(misses)}")
    rows = near_closes(every)
    print(f"closes low and near ({len(rows)}), picked by the hand's yaw off the faces (deg):")
    print(rate_by(rows, 1, [0, 15, 30, 46]))
    print("... and by the distance from the cube's axis (cm):")
    print(rate_by(rows, 2, [0, 1, 1.5, 2, 2.51]))


if __name__ == "__main__":
    main(sys.argv[1:])
