"""Synthetic drives: a seeded road scenario rendered to camera frames, radar scans and truth.

`simulate` yields a drive's messages in time order; `SCENARIOS` names the drive kinds
(``city``, ``highway``, ``night``). The models and their noise figures are described in
`docs/simulator.md`; `fusion sim` (``fusion/sim/cli.py``) writes a drive to an MCAP recording.
"""

from fusion.sim.drive import simulate
from fusion.sim.scenarios import SCENARIOS, ScenarioConfig

__all__ = ["SCENARIOS", "ScenarioConfig", "simulate"]
