"""The echo rig shared by the transport benchmarks: one sender, N echo processes, an ack channel.

The sender publishes a payload with the implementation under test (``ours``:
`fusion.runtime.transport` + `fusion.wire.codec`; ``raw pyzmq``: the same bytes as a zero-copy
multipart; ``pickle`` over zmq; ``zenoh``: Eclipse Zenoh's Python pub/sub, peer mode on loopback
with explicit listen/connect endpoints and multicast scouting off). Each echo process receives it,
turns it into a usable array (zero-copy where the implementation allows), notes its one-way latency
from the sender's monotonic stamp (one host, one clock) and answers with a one-byte ack on a
separate zmq PUSH/PULL channel, the same for every implementation, so round trips differ only in
the forward path. At the end each echo sends back its one-way latencies.

Ack protocol on the PULL socket: ``k`` per payload, ``h<index>`` per hello (the start-up
handshake, repeated until every echo has answered, so no implementation loses the first
messages to a slow joiner), then a JSON list of one-way latencies (ns) after ``stop``.

Run as an echo process: ``python -m benchmarks._echo IMPL DATA_URL ACK_URL TOPIC INDEX``.
"""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zmq

IMPLS = ("raw pyzmq", "ours", "pickle", "zenoh")
REPO = Path(__file__).resolve().parents[1]
ZENOH_KEY = "bench/{topic}"
HANDSHAKE_TIMEOUT_S = 30.0


def zenoh_config(listen: str | None = None, connect: str | None = None):
    """A Zenoh peer on loopback: explicit endpoints, no multicast scouting."""
    import zenoh

    config = zenoh.Config()
    config.insert_json5("mode", '"peer"')
    config.insert_json5("scouting/multicast/enabled", "false")
    if listen:
        config.insert_json5("listen/endpoints", json.dumps([listen]))
    if connect:
        config.insert_json5("connect/endpoints", json.dumps([connect]))
    return config


def data_url(impl: str, kind: str, ipc_dir: Path | str, name: str = "data") -> str:
    """A free endpoint for `impl` over `kind` (``ipc``: a Unix socket; ``tcp``: loopback)."""
    if kind == "ipc":
        path = f"{ipc_dir}/{name}.sock"
        return f"unixsock-stream/{path}" if impl == "zenoh" else f"ipc://{path}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp/127.0.0.1:{port}" if impl == "zenoh" else f"tcp://127.0.0.1:{port}"


def payload_array(msg) -> np.ndarray:
    return next(v for v in vars(msg).values() if isinstance(v, np.ndarray))


class Sender:
    """Sends one payload with the implementation under test."""

    def __init__(self, impl: str, url: str, topic: str, msg) -> None:
        if impl not in IMPLS:
            raise ValueError(f"unknown transport {impl!r}; one of {IMPLS}")
        self.impl, self.topic, self.msg = impl, topic, msg
        self.array = payload_array(msg)
        self.socket = self.session = None
        if impl == "ours":
            from fusion.runtime.transport import Publisher

            self.pub = Publisher(topic, url, sndhwm=1000)
            self.socket = self.pub.socket
        elif impl == "zenoh":
            import zenoh

            self.session = zenoh.open(zenoh_config(listen=url))
            self.pub = self.session.declare_publisher(
                ZENOH_KEY.format(topic=topic), congestion_control=zenoh.CongestionControl.BLOCK
            )
        else:
            self.socket = zmq.Context.instance().socket(zmq.XPUB)
            self.socket.setsockopt(zmq.SNDHWM, 1000)
            self.socket.bind(url)

    def control(self, word: bytes) -> None:
        """A hello or stop message, on the same path as the payloads."""
        if self.impl == "zenoh":
            self.pub.put(b"", attachment=word)
        else:
            self.socket.send_multipart([word, b""])

    def send(self) -> None:
        if self.impl == "ours":
            self.pub.send(self.msg)
        elif self.impl == "raw pyzmq":
            stamp = time.monotonic_ns().to_bytes(8, "little")
            self.socket.send_multipart([self.topic.encode(), stamp, self.array], copy=False)
        elif self.impl == "pickle":
            body = pickle.dumps((time.monotonic_ns(), self.array), protocol=5)
            self.socket.send_multipart([self.topic.encode(), body])
        else:  # zenoh's put takes bytes only: the array is copied once, as a user's code must
            stamp = time.monotonic_ns().to_bytes(8, "little")
            self.pub.put(self.array.tobytes(), attachment=stamp)

    def close(self) -> None:
        if self.session is not None:
            self.pub.undeclare()
            self.session.close()
        else:
            self.socket.close(linger=1000)


class EchoRig:
    """A sender and `subscribers` echo processes; use as a context manager.

    `round_trip()` sends the payload once and waits until every echo acked it; `finish()`
    stops the echoes and returns every one-way latency in ms."""

    def __init__(
        self, impl: str, kind: str, ipc_dir: Path, topic: str, msg, subscribers: int = 1
    ) -> None:
        self.impl, self.subscribers = impl, subscribers
        self.url = data_url(impl, kind, ipc_dir)
        self.ack_url = f"ipc://{ipc_dir}/ack.sock"
        self.topic, self.msg = topic, msg
        self.procs: list[subprocess.Popen] = []
        self.ack = self.sender = None
        #: seconds spent inside the sender's send call, per round trip
        self.send_s: list[float] = []

    def __enter__(self) -> EchoRig:
        self.ack = zmq.Context.instance().socket(zmq.PULL)
        self.ack.bind(self.ack_url)
        self.sender = Sender(self.impl, self.url, self.topic, self.msg)
        command = [sys.executable, "-m", "benchmarks._echo", self.impl, self.url, self.ack_url]
        self.procs = [
            subprocess.Popen([*command, self.topic, str(i)], cwd=REPO)
            for i in range(self.subscribers)
        ]
        self._handshake()
        return self

    def _handshake(self) -> None:
        answered: set[bytes] = set()
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        while len(answered) < self.subscribers:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.impl}: only {len(answered)} of {self.subscribers} echo processes "
                    f"answered in {HANDSHAKE_TIMEOUT_S:.0f} s"
                )
            self.sender.control(b"hello")
            while self.ack.poll(100):
                reply = self.ack.recv()
                if reply.startswith(b"h"):
                    answered.add(reply)
        time.sleep(0.1)  # late hello answers arrive now and are ignored by `round_trip`

    def round_trip(self) -> None:
        t0 = time.perf_counter()
        self.sender.send()
        self.send_s.append(time.perf_counter() - t0)
        acks = 0
        while acks < self.subscribers:
            acks += self.ack.recv() == b"k"

    def finish(self) -> np.ndarray:
        self.sender.control(b"stop")
        one_way_ns: list[int] = []
        reports = 0
        while reports < self.subscribers:
            if not self.ack.poll(30_000):
                raise RuntimeError(f"{self.impl}: echo processes sent no latencies after stop")
            reply = self.ack.recv()
            if reply.startswith(b"["):
                one_way_ns += json.loads(reply)
                reports += 1
        for proc in self.procs:
            if proc.wait(timeout=30) != 0:
                raise RuntimeError(f"{self.impl}: echo process exited with {proc.returncode}")
        return np.asarray(one_way_ns, dtype=float) / 1e6

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.sender is not None:
            self.sender.close()
        if self.ack is not None:
            self.ack.close(linger=0)


def _zmq_receiver(impl: str, url: str, topic: str):
    from fusion.wire import codec

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(url)

    def receive() -> tuple[bytes, int]:
        frames = sub.recv_multipart(copy=False)
        head = frames[0].bytes
        if head in (b"hello", b"stop"):
            return head, 0
        if impl == "ours":
            _, msg = codec.decode(frames)
            return b"", msg.trace["published"]
        if impl == "raw pyzmq":
            _ = frames[2].buffer  # the payload, zero-copy
            return b"", int.from_bytes(frames[1].bytes, "little")
        sent_ns, _ = pickle.loads(frames[1].bytes)
        return b"", sent_ns

    return receive


def _zenoh_receiver(url: str, topic: str):
    import zenoh

    session = zenoh.open(zenoh_config(connect=url))
    sub = session.declare_subscriber(ZENOH_KEY.format(topic=topic))

    def receive() -> tuple[bytes, int]:
        assert session is not None  # keeps the session (and so the subscriber) alive
        sample = sub.recv()
        tag = sample.attachment.to_bytes()
        if tag in (b"hello", b"stop"):
            return tag, 0
        _ = np.frombuffer(sample.payload.to_bytes(), np.uint8)  # the array a consumer needs
        return b"", int.from_bytes(tag, "little")

    return receive


def main(argv: list[str]) -> int:
    impl, url, ack_url, topic, index = argv
    receive = _zenoh_receiver(url, topic) if impl == "zenoh" else _zmq_receiver(impl, url, topic)
    ack = zmq.Context.instance().socket(zmq.PUSH)
    ack.connect(ack_url)
    one_way_ns = []
    while True:
        control, sent_ns = receive()
        now_ns = time.monotonic_ns()
        if control == b"stop":
            break
        if control == b"hello":
            ack.send(b"h" + index.encode())
            continue
        one_way_ns.append(now_ns - sent_ns)
        ack.send(b"k")
    ack.send(json.dumps(one_way_ns).encode())
    ack.close(linger=5000)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
