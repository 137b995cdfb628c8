"""Drives on disk: recording, reading, summarising, repairing and replaying MCAP files.

A recording is a chunked, compressed, indexed MCAP file of wire-encoded messages (`framing`).
`writer` writes one, `reader` reads one (with the `mcap` package's reader; a damaged file goes to
the damage scanner in `_scan`), `summary` is what ``fusion info`` prints, `recover` rewrites the
complete chunks of a damaged file, `recorder` writes what subscribers receive, `player`
publishes a recording again (real time, faster, lock-step), `faults` injects sensor faults into
a replay, and `cli` holds the ``fusion info / play / record / recover`` sub-commands.
"""
