"""Node processes and the sockets between them.

`transport` publishes and subscribes over ZeroMQ (latest-only and queued delivery, counters for
what was skipped, lost or rejected), `security` adds CurveZMQ to ``tcp://`` endpoints, `node`
holds what every node process shares (arguments, input health, shutdown, stats line), `lockstep`
takes a lock-step replay's messages in the order the player sent them, `launch`
checks and starts a YAML graph of nodes and supervises it, and `testing` ships fake sockets so
node logic is tested without them. It knows messages and topics (`fusion.wire`), nothing of
fusion or models.
"""
