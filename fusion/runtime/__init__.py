"""Node processes and the sockets between them.

`transport` publishes and subscribes over ZeroMQ (latest-only and queued delivery, counters for
what was skipped, lost or rejected), `watch` notices connections libzmq gave up on, `security`
adds CurveZMQ to ``tcp://`` endpoints (a key pair per host, SSH-like authorised keys), `node`
holds what every node process shares (arguments, input health, shutdown, stats line),
`heartbeat` is a node's proof that its loop still runs, `lockstep` takes a lock-step replay's
messages in the order the player sent them, `launch` checks and starts a YAML graph of nodes and
supervises it (a watchdog on each heartbeat), and `testing` ships fake sockets so
node logic is tested without them. It knows messages and topics (`fusion.wire`), nothing of
fusion or models.
"""
