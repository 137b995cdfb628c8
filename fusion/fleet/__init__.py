"""Fleet replay: many recordings through the fusion pipeline in lock-step, one Ray task each.

`replay` is a task (one recording replayed in this process, its results and a digest of its
Detections), `cluster` runs tasks on Ray with retries (`attempts` counts them), `table` and
`compare` print the results and the comparison of two models, `commits` runs two commits' code,
and `cli` is ``fusion fleet replay`` / ``fusion fleet eval``. Ray is imported only by `cluster`,
so replaying without Ray (``--no-ray``) does not load it. See docs/fleet.md.
"""
