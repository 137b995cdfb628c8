"""Security: CurveZMQ keys and handshakes, loopback-only binding, and size limits on the wire."""

from __future__ import annotations

import logging
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
import zmq.auth

from fusion import cli
from fusion.errors import ConfigError, EncodeError
from fusion.runtime import security, transport
from fusion.runtime.security import CurveConfig
from fusion.runtime.transport import Publisher, Subscriber
from fusion.wire import codec
from fusion.wire.messages import EgoMotion, RadarScan, empty_points

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ego(seq: int) -> EgoMotion:
    return EgoMotion(
        speed_mps=10.0, yaw_rate_rps=0.0, seq=seq, capture_ns=time.monotonic_ns(), sensor_id="ego"
    )


def make_host(folder: Path, name: str = "127.0.0.1", identity: str = "id") -> CurveConfig:
    """A host's key folder (`fusion keys`), its key pair named `identity`."""
    assert cli.main(["keys", str(folder), "--id", identity, "--host", name]) == 0
    return CurveConfig(folder, identity)


def authorize(host: CurveConfig, *peers: CurveConfig, name: str = "127.0.0.1") -> None:
    """`host` trusts each of `peers` (reached at `name`)."""
    for peer in peers:
        line = security.line_for(peer.public_file, name)
        assert cli.main(["keys", str(host.keys_dir), "--authorize", line]) == 0


def exchange(pub: Publisher, sub: Subscriber, count: int = 20) -> int:
    """Send `count` messages over ~1 s (so handshakes can finish); how many arrived."""
    got = 0
    for i in range(count):
        pub.send(ego(i))
        got += sub.recv(50) is not None
    return got


@pytest.fixture
def hosts(tmp_path: Path) -> tuple[CurveConfig, CurveConfig]:
    """Two hosts that trust each other: a publisher's and a subscriber's."""
    a, b = make_host(tmp_path / "a"), make_host(tmp_path / "b")
    authorize(a, b)
    authorize(b, a)
    return a, b


@pytest.fixture
def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def test_fusion_keys_makes_one_private_key_pair_per_host(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    host = make_host(tmp_path / "car1", name="car1.local")
    printed = capsys.readouterr().out
    public, secret = zmq.auth.load_certificate(host.secret_file)
    assert len(public) == 40 and len(secret) == 40
    assert zmq.auth.load_certificate(host.public_file) == (public, None)
    assert stat.S_IMODE(host.secret_file.stat().st_mode) == 0o600
    assert f"{public.decode()} car1.local" in printed  # the line its peers add
    assert sorted(p.name for p in host.keys_dir.iterdir()) == [
        "authorized_keys",
        "id.key",
        "id.key_secret",
    ]
    with pytest.raises(ConfigError, match="exists"):
        security.write_keypair(host.keys_dir, "id")
    peer = make_host(tmp_path / "car2", name="car2.local")
    authorize(host, peer, name="car2.local")
    keys = security.parse_authorized_keys(host.authorized_keys.read_text(), "test")
    assert list(keys.values()) == [("car2.local",)]
    assert cli.main(["keys", str(host.keys_dir), "--revoke", "car2.local"]) == 0
    assert security.parse_authorized_keys(host.authorized_keys.read_text(), "test") == {}
    assert cli.main(["keys", str(host.keys_dir), "--revoke", "car2.local"]) == 2
    assert cli.main(["keys", str(host.keys_dir), "--authorize", "notakey car3"]) == 2


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    host = make_host(tmp_path / "h")
    host.secret_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        security.load_keypair(host.secret_file)
    with pytest.raises(ConfigError, match="fusion keys"):
        security.load_keypair(host.keys_dir / "nobody.key_secret")
    host.secret_file.chmod(0o600)
    host.secret_file.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="cannot read"):
        security.load_keypair(host.secret_file)
    public_only = host.public_file.rename(host.keys_dir / "x.key_secret")
    public_only.chmod(0o600)
    with pytest.raises(ConfigError, match="holds no secret key"):
        security.load_keypair(public_only)


def test_right_keys_deliver(hosts: tuple[CurveConfig, CurveConfig], endpoint: str) -> None:
    a, b = hosts
    with (
        Publisher("ego_motion", endpoint, curve=a) as pub,
        Subscriber("ego_motion", endpoint, curve=b) as sub,
    ):
        assert exchange(pub, sub) > 0
        assert sub.security.succeeded == 1 and sub.security.failed == 0


def test_keys_from_environment_and_node_flag(
    tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(security.KEYS_DIR_ENV, "")  # restored after the flag sets it
    import argparse

    from fusion.runtime import node

    host = make_host(tmp_path / "h")
    authorize(host, host)  # a host talking to itself over tcp
    parser = argparse.ArgumentParser()
    node.add_common_arguments(parser)
    parser.parse_args(["--curve-keys", str(host.keys_dir)])
    assert os.environ[security.KEYS_DIR_ENV] == str(host.keys_dir)
    with Publisher("ego_motion", endpoint) as pub, Subscriber("ego_motion", endpoint) as sub:
        assert pub.security is not None and sub.security is not None
        assert exchange(pub, sub) > 0


def test_ipc_is_not_curve_secured(hosts: tuple[CurveConfig, CurveConfig]) -> None:
    a, b = hosts
    with Publisher("ego_motion", curve=a) as pub, Subscriber("ego_motion", curve=b) as sub:
        assert pub.security is None and sub.security is None
        assert exchange(pub, sub) > 0


def test_subscriber_without_keys_is_refused_and_logged(
    hosts: tuple[CurveConfig, CurveConfig], endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = hosts
    with (
        caplog.at_level(logging.WARNING, logger="fusion.runtime.security"),
        Publisher("ego_motion", endpoint, curve=a) as pub,
    ):
        with Subscriber("ego_motion", endpoint) as sub:
            assert exchange(pub, sub) == 0
        assert pub.security.failed >= 1
    assert "CurveZMQ server: a handshake" in caplog.text


def test_unknown_client_key_is_refused_and_logged(
    hosts: tuple[CurveConfig, CurveConfig],
    endpoint: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, _ = hosts
    intruder = make_host(tmp_path / "intruder")
    authorize(intruder, a)  # it knows the publisher's public key, but the publisher not its
    with (
        caplog.at_level(logging.WARNING, logger="fusion.runtime.security"),
        Publisher("ego_motion", endpoint, curve=a) as pub,
        Subscriber("ego_motion", endpoint, curve=intruder) as sub,
    ):
        assert exchange(pub, sub) == 0
        assert sub.security.failed >= 1 and "AUTH" in sub.security.last_error
    public = zmq.auth.load_certificate(intruder.public_file)[0].decode()
    assert f"refused a CurveZMQ client with public key {public}" in caplog.text


def receive_for(sub: Subscriber, pub: Publisher, seconds: float, seq0: int = 0) -> int:
    """Publish every 20 ms for `seconds`; how many `sub` received."""
    got, end, seq = 0, time.monotonic() + seconds, seq0
    while time.monotonic() < end:
        pub.send(ego(seq))
        seq += 1
        while sub.recv(0) is not None:
            got += 1
        time.sleep(0.02)
    return got


def test_revoking_a_key_cuts_off_a_connected_peer_and_refuses_it_after(
    hosts: tuple[CurveConfig, CurveConfig], endpoint: str, tmp_path: Path
) -> None:
    """Deleting a peer's line takes effect without a restart: the publisher notices the key gone
    (within about a second), drops every connection, and only the peers still listed get back
    in; a new connection of the revoked peer is refused."""
    a, b = hosts
    c = make_host(tmp_path / "c")
    authorize(a, c)
    authorize(c, a)
    with (
        Publisher("ego_motion", endpoint, curve=a) as pub,
        Subscriber("ego_motion", endpoint, curve=b) as revoked,
        Subscriber("ego_motion", endpoint, curve=c) as kept,
    ):
        assert pub.wait_for_subscribers(2, timeout_s=10)
        assert receive_for(revoked, pub, 0.5) > 0 and receive_for(kept, pub, 0.5) > 0
        b_line = security.line_for(b.public_file, "127.0.0.1").split()[0]
        assert cli.main(["keys", str(a.keys_dir), "--revoke", b_line]) == 0
        receive_for(revoked, pub, 1.5)  # the publisher notices and drops every connection
        got_revoked, got_kept = 0, 0
        end = time.monotonic() + 2.0
        seq = 1000
        while time.monotonic() < end:
            pub.send(ego(seq))
            seq += 1
            got_revoked += sum(1 for _ in iter(lambda: revoked.recv(0), None))
            got_kept += sum(1 for _ in iter(lambda: kept.recv(0), None))
            time.sleep(0.02)
        assert got_revoked == 0 and got_kept > 0, (got_revoked, got_kept)
        with Subscriber("ego_motion", endpoint, curve=b) as again:
            assert exchange(pub, again) == 0


def test_publisher_with_wrong_server_key_is_refused_and_logged(
    hosts: tuple[CurveConfig, CurveConfig],
    endpoint: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, b = hosts
    rogue = make_host(tmp_path / "rogue")
    authorize(rogue, b)  # it would accept the subscriber, but it is not the host b expects
    with (
        caplog.at_level(logging.WARNING, logger="fusion.runtime.security"),
        Publisher("ego_motion", endpoint, curve=rogue) as pub,
        Subscriber("ego_motion", endpoint, curve=b) as sub,
    ):
        assert exchange(pub, sub) == 0
        assert sub.security.failed >= 1 and sub.security.succeeded == 0
    assert "CurveZMQ client: a handshake" in caplog.text


def test_missing_key_files_are_config_errors(tmp_path: Path, endpoint: str) -> None:
    with pytest.raises(ConfigError, match="fusion keys"):
        Publisher("ego_motion", endpoint, curve=CurveConfig(tmp_path))
    with pytest.raises(ConfigError, match="fusion keys"):
        Subscriber("ego_motion", endpoint, curve=CurveConfig(tmp_path))
    host = make_host(tmp_path / "lonely")
    with pytest.raises(ConfigError, match=r"no key for 127\.0\.0\.1"):
        Subscriber("ego_motion", endpoint, curve=host)  # it knows no publisher there


# -- binding -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["*", "0.0.0.0", "[::]"])
def test_binding_all_interfaces_needs_explicit_opt_in(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FUSION_ALLOW_PUBLIC_BIND", raising=False)
    url = f"tcp://{host}:{free_port()}"
    with pytest.raises(ConfigError, match="FUSION_ALLOW_PUBLIC_BIND=1"):
        Publisher("ego_motion", url)
    with pytest.raises(ConfigError, match="FUSION_ALLOW_PUBLIC_BIND=1"):
        Subscriber("ego_motion", url, bind=True)
    if host != "[::]":
        monkeypatch.setenv("FUSION_ALLOW_PUBLIC_BIND", "1")
        Publisher("ego_motion", url).close()


def test_default_endpoints_are_ipc_in_a_private_folder() -> None:
    from fusion.wire import services

    for topic in services.SERVICES:
        assert services.endpoint(topic).startswith("ipc://")
    assert stat.S_IMODE(os.stat(services.ipc_dir()).st_mode) == 0o700


# -- size limits -------------------------------------------------------------------------


def test_oversized_frame_is_refused_before_allocation(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZMQ_MAXMSGSIZE: libzmq drops the connection on the length prefix of a too-large frame,
    so the subscriber never allocates it; the next connection is served as before."""
    monkeypatch.setattr(transport, "MAX_MESSAGE_BYTES", 1 << 20)
    small = codec.encode("radar", RadarScan(points=empty_points(4), seq=0, capture_ns=1))
    huge = [b"radar", small[1], np.zeros(2 << 20, np.uint8)]
    ctx = zmq.Context.instance()
    with Subscriber("radar", endpoint, bind=True) as sub:
        for frames in (huge, small):
            with ctx.socket(zmq.PUB) as raw:
                raw.connect(endpoint)
                got = None
                for _ in range(20):  # until the subscription has reached the new peer
                    raw.send_multipart(frames)
                    if got := sub.recv(50):
                        break
            assert (got is None) == (frames is huge)
        assert sub.stats.received == 1 and sub.stats.rejected == 0


def test_oversized_frame_does_not_silence_a_connecting_subscriber(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """libzmq closes a connection that sent a frame over ZMQ_MAXMSGSIZE and never retries it;
    the subscriber notices, connects again, counts and logs it, and gets what follows."""
    monkeypatch.setattr(transport, "MAX_MESSAGE_BYTES", 1 << 20)
    small = [bytes(f) for f in codec.encode("radar", RadarScan(points=empty_points(4)))]
    huge = [b"radar", small[1], np.zeros(2 << 20, np.uint8)]
    ctx = zmq.Context.instance()
    with (
        caplog.at_level(logging.WARNING, logger="fusion.runtime.transport"),
        ctx.socket(zmq.PUB) as raw,
    ):
        raw.bind(endpoint)
        with Subscriber("radar", endpoint) as sub:

            def delivered_after_sending(frames: list) -> bool:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    raw.send_multipart(frames)
                    if sub.recv(50) is not None:
                        return True
                return False

            assert delivered_after_sending(small)
            raw.send_multipart(huge)
            assert delivered_after_sending(small), "the subscriber stayed deaf after the frame"
            assert sub.stats.reconnects == 1 and sub.stats.rejected == 0
    assert "was dropped and not retried" in caplog.text


def test_publisher_refuses_a_frame_subscribers_would_drop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "MAX_MESSAGE_BYTES", 1 << 10)
    with Publisher("radar") as pub:
        with pytest.raises(EncodeError, match="not sent"):
            pub.send(RadarScan(points=empty_points(100)))
        assert pub.sent == 0
        pub.send(RadarScan(points=empty_points(4)))


def test_seq_tables_are_bounded_and_absurd_jumps_are_not_losses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A subscriber keeps the last seq of at most MAX_TRACKED_SENDERS senders, however many
    sensor_ids arrive, and a seq jump no queue could have lost counts as a restart."""
    with Publisher("radar") as pub, Subscriber("radar") as sub:
        assert pub.wait_for_subscribers(1, timeout_s=10)
        for i in range(transport.MAX_TRACKED_SENDERS * 3):
            pub.send(RadarScan(points=empty_points(1), seq=5, sensor_id=f"s{i}"))
        pub.send(RadarScan(points=empty_points(1), seq=0, sensor_id="r"))
        pub.send(RadarScan(points=empty_points(1), seq=2**63 - 1, sensor_id="r"))
        got = 0
        while sub.recv(500) is not None:
            got += 1
        assert got == transport.MAX_TRACKED_SENDERS * 3 + 2
        assert len(sub.stats.last_seq) == transport.MAX_TRACKED_SENDERS
        assert sub.stats.senders_forgotten == transport.MAX_TRACKED_SENDERS * 2 + 1
        assert sub.stats.lost == 0 and sub.stats.restarts == 1


@pytest.mark.parametrize(
    "frames, match",
    [
        ([b"radar", b"\x81" + b"\xa1v" + b"\xcf" + b"\xff" * 8], "header"),
        ([b"x" * (codec.MAX_TOPIC_BYTES + 1), b"{}"], "topic"),
        ([b"radar", b"\x00" * (codec.MAX_HEADER_BYTES + 1)], "header"),
    ],
)
def test_codec_refuses_oversized_or_absurd_fields(frames: list[bytes], match: str) -> None:
    with pytest.raises(codec.DecodeError, match=match):
        codec.decode(frames)


@pytest.mark.parametrize("length, match", [(10**7, "limit"), (10**12, "invalid shape")])
def test_codec_refuses_shape_that_would_allocate_huge(length: int, match: str) -> None:
    """A header declaring a huge array is refused before anything is allocated for it."""
    frames = codec.encode("radar", RadarScan(points=empty_points(4), seq=0, capture_ns=1))
    header = msgpack.unpackb(bytes(frames[1]))
    header["buffers"][0][2] = [length]
    frames[1] = msgpack.packb(header)
    with pytest.raises(codec.DecodeError, match=match):
        codec.decode(frames)


# -- two hosts: network namespaces -------------------------------------------------------

PEER = textwrap.dedent(
    """
    import sys, time
    from fusion.wire.messages import EgoMotion
    from fusion.runtime.security import CurveConfig
    from fusion.runtime.transport import Publisher, Subscriber
    role, url, keys = sys.argv[1], sys.argv[2], CurveConfig(sys.argv[3])
    deadline = time.monotonic() + float(sys.argv[4])
    if role == "pub":
        pub = Publisher("ego_motion", url, curve=keys)
        seq = 0
        while time.monotonic() < deadline:
            pub.send(EgoMotion(speed_mps=1.0, yaw_rate_rps=0.0, seq=seq,
                               capture_ns=time.time_ns(), sensor_id="ego", clock="realtime"))
            seq += 1
            time.sleep(0.02)
    else:
        sub = Subscriber("ego_motion", url, curve=keys)
        got = 0
        while time.monotonic() < deadline:
            if sub.recv(100) is not None:
                got += 1
                print("got", got, "at", time.time(), flush=True)
        print("received", got, "failed", sub.security.failed, flush=True)
    """
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair: 10.213.7.1 and 10.213.7.2 (test-only)."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2 to create network namespaces")
    tag = uuid.uuid4().hex[:6]
    names = (f"fxa{tag}", f"fxb{tag}")
    try:
        _ip("netns", "add", names[0])
        _ip("netns", "add", names[1])
        _ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        err = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot create network namespaces here: {err.decode().strip() or exc}")
    try:
        devices, addresses = (f"va{tag}", f"vb{tag}"), ("10.213.7.1", "10.213.7.2")
        for ns, dev, addr in zip(names, devices, addresses, strict=True):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield names
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def run_in(ns: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", PEER, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Lines:
    """The output lines of a process, read as they come (unbuffered, with a deadline)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines, self._partial = proc, [], b""

    def _read(self, timeout_s: float) -> bool:
        """Read what is there within `timeout_s`; False at the end of the output."""
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], timeout_s)[0]:
            return True
        chunk = os.read(fd, 65536)
        *done, self._partial = (self._partial + chunk).split(b"\n")
        self.lines += [line.decode().strip() for line in done]
        return bool(chunk)

    def until(self, done, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done(self.lines):
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                return done(self.lines)
        return True

    def finish(self) -> str:
        """Kill the process; all its output."""
        self.proc.kill()
        while self._read(5.0):
            pass
        self.proc.wait(timeout=10)
        return "\n".join(self.lines)

    def times(self) -> list[float]:
        return [float(line.split()[-1]) for line in self.lines if line.startswith("got ")]


@pytest.mark.slow
def test_curve_across_two_network_namespaces(two_hosts: tuple[str, str], tmp_path: Path) -> None:
    """Hosts A (10.213.7.1, publisher) and B (10.213.7.2, subscribers), each with only its own
    secret key: the subscribers A lists receive; an intruder that knows A's public key is
    refused; revoking B in A's authorized_keys cuts B off within seconds, while another
    subscriber of host B's namespace (node c, still listed) carries on."""
    a = make_host(tmp_path / "a", name="10.213.7.1")
    b = make_host(tmp_path / "b", name="10.213.7.2")
    c = make_host(tmp_path / "c", name="10.213.7.2")
    intruder = make_host(tmp_path / "intruder", name="10.213.7.2")
    authorize(a, b, c, name="10.213.7.2")
    for host in (b, c, intruder):
        authorize(host, a, name="10.213.7.1")
    for host in (a, b, c, intruder):  # no host holds another's secret
        assert [p.name for p in host.keys_dir.glob("*.key_secret")] == ["id.key_secret"]
    url = "tcp://10.213.7.1:5552"
    pub = Lines(run_in(two_hosts[0], "pub", url, str(a.keys_dir), "40"))
    running = [pub]
    try:
        revoked = Lines(run_in(two_hosts[1], "sub", url, str(b.keys_dir), "30"))
        kept = Lines(run_in(two_hosts[1], "sub", url, str(c.keys_dir), "30"))
        bad = Lines(run_in(two_hosts[1], "sub", url, str(intruder.keys_dir), "4"))
        running += [revoked, kept, bad]
        for sub in (revoked, kept):
            assert sub.until(lambda lines: len(lines) >= 10, 30), sub.lines[-5:]
        revoked_at = time.time()
        b_key = security.line_for(b.public_file, "x").split()[0]
        assert cli.main(["keys", str(a.keys_dir), "--revoke", b_key]) == 0
        # The publisher looks for revoked keys about once a second, then every peer reconnects.
        settled = revoked_at + 3.0
        assert kept.until(lambda _: sum(t > settled for t in kept.times()) >= 20, 30), kept.lines[
            -5:
        ]
        assert revoked.until(lambda lines: any("HANDSHAKE_FAILED_AUTH" in x for x in lines), 10)
        assert bad.until(lambda lines: any(x.startswith("received") for x in lines), 20)
    finally:
        outputs = [lines.finish() for lines in running]
    pub_out, _, _, bad_out = outputs
    assert sum(t > settled for t in revoked.times()) == 0, revoked.lines[-5:]
    assert "received 0" in bad_out and "HANDSHAKE_FAILED_AUTH" in bad_out, bad_out
    assert "refused a CurveZMQ client" in pub_out, pub_out
    assert "dropping every connection" in pub_out, pub_out


@pytest.mark.slow
def test_node_flag_secures_a_real_recorder_process(
    hosts: tuple[CurveConfig, CurveConfig],
    endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--curve-keys`` on a node: the recorder records from a keyed publisher over tcp, and
    one started without keys records nothing."""
    from fusion.logs.reader import RecordingReader
    from tests import nodeproc as npc

    monkeypatch.setenv(security.KEYS_DIR_ENV, "")
    a, b = hosts
    logs, files = {}, {}
    with Publisher("ego_motion", endpoint, curve=a) as pub:
        procs = {}
        for name, extra in (("keyed", ["--curve-keys", str(b.keys_dir)]), ("keyless", [])):
            files[name], logs[name] = tmp_path / f"{name}.mcap", tmp_path / f"{name}.log"
            procs[name] = npc.start(
                "nodes.recorder",
                [
                    "-o",
                    str(files[name]),
                    "--topics",
                    "ego_motion",
                    "--endpoint",
                    f"ego_motion={endpoint}",
                    "--stats-period-s",
                    "0",
                    *extra,
                ],
                logs[name],
            )
        assert pub.wait_for_subscribers(1, npc.START_TIMEOUT_S), logs["keyed"].read_text()
        for seq in range(20):
            pub.send(ego(seq))
            time.sleep(0.02)
        time.sleep(0.5)
        for name, proc in procs.items():
            npc.stop(proc, logs[name])
        assert pub.security.failed >= 1  # the keyless recorder's attempts
    with RecordingReader(files["keyed"]) as reader:
        assert [m.decode().seq for m in reader.messages()] == list(range(20))
    with RecordingReader(files["keyless"]) as reader:
        assert list(reader.messages()) == []
