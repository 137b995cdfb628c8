"""Drives on disk: recording, reading, summarising, repairing and replaying MCAP files.

A recording is a chunked, compressed, indexed MCAP file of wire-encoded messages (`framing`).
`writer` writes one, `reader` reads one (its index when that checks against the file, else by
walking it; chunks are read by `_scan`, which bounds what any chunk can cost and reads past
damage), `summary` is what ``fusion info`` prints, `recover` rewrites every intact chunk of a
damaged file, `recorder` writes what subscribers receive, `player`
publishes a recording again (real time, faster, lock-step), `faults` injects sensor faults into
a replay, and `cli` holds the ``fusion info / play / record / recover`` sub-commands.
"""
