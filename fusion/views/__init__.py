"""Views of recordings and of a running graph in the ecosystem's viewers: Foxglove and Rerun.

The msgpack wire format stays the wire format and the primary recording; these are exports and
live views of it, in each viewer's own types (Foxglove's well-known protobuf schemas, Rerun's
archetypes). `fusion export foxglove|rerun` converts a recording, `fusion view --foxglove|--rerun`
serves the running graph, and ``fusion record --foxglove`` writes the Foxglove channels beside
the msgpack ones as it records (`fusion.logs.foxglove`).
"""
