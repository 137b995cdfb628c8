"""What travels between nodes: message types, their wire encoding and the topic registry.

`messages` defines the dataclasses and their fixed array dtypes, `codec` turns a message into
ZeroMQ frames and back (one `DecodeError` for any malformed input; `docs/wire-format.md` is the
contract for other languages), and `services` is the one table of topics. Nothing here opens a
socket; everything above this floor speaks in these types.
"""
