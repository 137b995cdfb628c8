"""Importers that turn real datasets into the project's messages and recordings.

`fusion.datasets.astyx` reads the Astyx HiRes2019 radar/camera dataset; `fusion.datasets.cli`
is the ``fusion import`` command that writes one into an MCAP recording.
"""
