"""A fuzzer for the recording reader: damaged and hostile MCAP files, and what `fusion` does.

Each case is made from a small valid recording by one kind of harm (`KINDS`): random byte
mutations, truncations, sparse holes of gigabytes (in the middle, at the end, or all but the
magic), huge declared lengths and sizes, footers that lie, chunks that decompress to gigabytes
(zstd of zeros, lz4 without a size, millions of tiny valid messages), floods of metadata
records, and summaries whose indexes
name unknown channels or point at the wrong places. `check` runs, in a fresh process per file,
``fusion info``, ``fusion info --verify``, ``fusion recover`` and a full read of the messages,
and reports what each did: exit status, CPU seconds, peak resident memory, and whether anything
but a one-line `FusionError` came out.

    .venv/bin/python -m tests.recording_fuzz --cases 300 --seed 1     # what `make fuzz` runs

The figure it holds (docs/reliability.md): any damaged or hostile recording, ``fusion info``
answers within 5 s of CPU and 512 MB, and nothing but `FusionError` is ever raised.
`tests/test_recording_fuzz.py` runs every kind once in `make test`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import lz4.frame
import numpy as np
import zstandard
from mcap.data_stream import ReadDataStream, RecordBuilder
from mcap.opcode import Opcode
from mcap.records import Channel, ChunkIndex, MetadataIndex

REPO = Path(__file__).resolve().parents[1]
MAGIC = b"\x89MCAP0\r\n"
GiB = 1 << 30
MiB = 1 << 20
#: The figure: `fusion info` on any of these files, at most this CPU time and memory.
MAX_INFO_CPU_S = 5.0
MAX_RSS_MB = 512.0

_RECORD = struct.Struct("<BQ")
_FOOTER = struct.Struct("<BQQQI")


# -- a valid recording and its layout -----------------------------------------------------------


def base_recording(path: Path, seconds: float = 1.0) -> bytes:
    """A small valid drive (camera, radar, ego motion, calibration, detections), 4 KiB chunks."""
    from fusion.logs.writer import RecordingWriter
    from fusion.wire.messages import (
        DETECTION_DTYPE,
        RADAR_POINT_DTYPE,
        Calibration,
        CameraFrame,
        Detections,
        EgoMotion,
        RadarScan,
    )

    rng = np.random.default_rng(0)
    ms = 1_000_000
    with RecordingWriter(path, chunk_size=4096) as writer:
        calib = Calibration(sensor_to_ref=np.eye(4), intrinsics=np.eye(3), distortion=np.zeros(5))
        writer.write("calibration", calib, log_time_ns=0)
        for i in range(int(seconds * 20)):
            t = i * 50 * ms
            image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            writer.write("camera", CameraFrame(image=image, seq=i, capture_ns=t), t + 3 * ms)
            writer.write("ego_motion", EgoMotion(seq=i, capture_ns=t, speed_mps=10.0), t + ms)
            points = np.zeros(int(rng.integers(1, 30)), RADAR_POINT_DTYPE)
            writer.write("radar", RadarScan(points=points, seq=i, capture_ns=t), t + 2 * ms)
            dets = Detections(
                objects=np.zeros(2, DETECTION_DTYPE), seq=i, source_seqs={"camera": i}
            )
            writer.write("detections", dets, t + 20 * ms)
    return path.read_bytes()


def records(data: bytes, start: int = 8, end: int | None = None) -> list[tuple[int, int, int]]:
    """(offset, opcode, whole length) of each record from `start` to `end` (a valid file)."""
    out, pos, end = [], start, len(data) - 8 if end is None else end
    while pos + _RECORD.size <= end:
        opcode, length = _RECORD.unpack_from(data, pos)
        out.append((pos, opcode, _RECORD.size + length))
        pos += _RECORD.size + length
    return out


def summary_start(data: bytes) -> int:
    return _FOOTER.unpack_from(data, len(data) - 8 - _FOOTER.size)[2]


def chunk_offsets(data: bytes) -> list[tuple[int, int]]:
    return [(o, n) for o, op, n in records(data, 8, summary_start(data)) if op == Opcode.CHUNK]


def with_summary(data: bytes, edit: Callable[[int, bytes], bytes | None], crc: bool) -> bytes:
    """`data` with each summary record passed through ``edit(opcode, record bytes)`` (None drops
    it), a new footer (with a CRC, or 0 = none) and the closing magic."""
    start = summary_start(data)
    out = bytearray(data[:start])
    for offset, opcode, length in records(data, start, len(data) - 8 - _FOOTER.size):
        edited = edit(opcode, data[offset : offset + length])
        if edited is not None:
            out += edited
    footer_head = _FOOTER.pack(Opcode.FOOTER, 20, start, 0, 0)[:-4]
    value = zlib.crc32(footer_head, zlib.crc32(bytes(out[start:]))) if crc else 0
    return bytes(out) + footer_head + struct.pack("<I", value) + MAGIC


def _rewrite(record_bytes: bytes, read, change) -> bytes:
    record = read(ReadDataStream(io.BytesIO(record_bytes[_RECORD.size :])))
    change(record)
    builder = RecordBuilder()
    record.write(builder)
    return builder.end()


def chunk_record(payload: bytes, size: int, compression: str, crc: int = 0, t: int = 0) -> bytes:
    """A chunk record holding `payload` (already compressed), declaring `size` bytes."""
    body = struct.pack("<QQQI", t, t, size, crc)
    name = compression.encode()
    body += struct.pack("<I", len(name)) + name + struct.pack("<Q", len(payload)) + payload
    return _RECORD.pack(Opcode.CHUNK, len(body)) + body


def message_record(channel_id: int, log_ns: int, data: bytes = b"") -> bytes:
    body = struct.pack("<HIQQ", channel_id, 0, log_ns, log_ns) + data
    return _RECORD.pack(Opcode.MESSAGE, len(body)) + body


def head_with_channel(data: bytes) -> tuple[bytes, int]:
    """The valid file up to and including its first chunk (which registers a channel), and the
    id of that channel."""
    offset, length = chunk_offsets(data)[0]
    plain = (
        zstandard.ZstdDecompressor()
        .decompressobj()
        .decompress(data[offset + 9 + 28 + 4 + 4 + 8 : offset + length])
    )
    (channel,) = [
        Channel.read(ReadDataStream(io.BytesIO(plain[o + 9 : o + n])))
        for o, op, n in records(plain, 0, len(plain))
        if op == Opcode.CHANNEL
    ][:1]
    return data[: offset + length], channel.id


# -- kinds of harm ------------------------------------------------------------------------------


def mutate(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def truncate(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    return data[: rng.randrange(8, len(data))]


def huge_length(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    """A chunk (or any record) declaring a huge record length, uncompressed or payload size."""
    out = bytearray(data)
    offset, _ = rng.choice(chunk_offsets(data))
    field, value = rng.choice(
        [
            (1, 2**63 - 1),  # record length
            (1, len(data) * 4),
            (1 + 8 + 16, 2**40),  # uncompressed size
            (1 + 8 + 16, 200 * MiB),
            (1 + 8 + 28 + 4 + 4, 2**62),  # records length (zstd: 4-byte name)
        ]
    )
    struct.pack_into("<Q", out, offset + field, value)
    return bytes(out)


def lying_footer(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    out = bytearray(data)
    where = len(data) - 8 - _FOOTER.size + 9
    struct.pack_into("<Q", out, where, rng.choice((8, 9, 2**63, len(data) - 40, 1)))
    if rng.random() < 0.5:
        struct.pack_into("<I", out, where + 16, 0)  # no CRC: the lie is not caught by it
    return bytes(out)


def zstd_bomb(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    """Chunks of zstd zeros declaring their true size (100 MiB each), no summary."""
    head, _ = head_with_channel(data)
    zeros = zstandard.ZstdCompressor(level=3).compress(bytes(100 * MiB))
    crc = zlib.crc32(bytes(100 * MiB)) if rng.random() < 0.5 else 0
    return head + chunk_record(zeros, 100 * MiB, "zstd", crc) * rng.choice((5, 20))


def zstd_bomb_huge(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    """One small zstd frame that claims (and would fill) 4 GiB."""
    head, _ = head_with_channel(data)
    cctx = zstandard.ZstdCompressor(level=1)
    chunks = cctx.compressobj()
    payload = b"".join(chunks.compress(bytes(64 * MiB)) for _ in range(4)) + chunks.flush()
    return head + chunk_record(payload, 4 * GiB, "zstd")


def lz4_bomb(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    """An lz4 frame without a content size that inflates far beyond what the chunk declares."""
    head, _ = head_with_channel(data)
    payload = lz4.frame.compress(bytes(256 * MiB), store_size=False)
    return head + chunk_record(payload, rng.choice((1 * MiB, 64 * MiB)), "lz4")


def tiny_messages(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    """Chunks of millions of tiny but well-formed messages on a known channel."""
    head, channel = head_with_channel(data)
    count = 100_000
    plain = b"".join(message_record(channel, 10**9 + i) for i in range(count))
    payload = zstandard.ZstdCompressor(level=3).compress(plain)
    return head + chunk_record(payload, len(plain), "zstd", t=10**9) * rng.choice((10, 40))


def definitions_flood(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    """Hundreds of thousands of tiny metadata (or channel) records: the tables stay bounded."""
    head, _ = head_with_channel(data)
    records = []
    for i in range(200_000):
        name = f"m{i}".encode()
        body = struct.pack("<I", len(name)) + name + struct.pack("<I", 0)  # an empty map
        records.append(_RECORD.pack(Opcode.METADATA, len(body)) + body)
    return head + b"".join(records) + data[len(head) :]


def hole_middle(rng: random.Random, data: bytes, folder: Path) -> Path:
    """A sparse hole of gigabytes inserted at a record boundary (or anywhere)."""
    spans = chunk_offsets(data)
    cut = rng.choice([o for o, _ in spans] + [rng.randrange(8, len(data))])
    return sparse(folder, [(0, data[:cut]), (cut + rng.choice((1, 8)) * GiB, data[cut:])])


def hole_end(rng: random.Random, data: bytes, folder: Path) -> Path:
    return sparse(folder, [(0, data)], size=len(data) + rng.choice((1, 16)) * GiB)


def hole_only(rng: random.Random, data: bytes, folder: Path) -> Path:
    return sparse(folder, [(0, data[:8])], size=rng.choice((4, 64)) * GiB)


def sparse(folder: Path, parts: list[tuple[int, bytes]], size: int | None = None) -> Path:
    path = folder / "case.mcap"
    with open(path, "wb") as f:
        for offset, part in parts:
            f.seek(offset)
            f.write(part)
        if size is not None:
            f.truncate(size)
    return path


def index_unknown_channel(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    """A summary (CRC and all) whose chunk index names a channel that does not exist."""

    def edit(opcode: int, raw: bytes) -> bytes:
        if opcode != Opcode.CHUNK_INDEX:
            return raw

        def change(index: ChunkIndex) -> None:
            offsets = dict(index.message_index_offsets)
            if offsets:
                _, offset = offsets.popitem()
                offsets[rng.choice((999, 65535))] = offset
            index.message_index_offsets = offsets

        return _rewrite(raw, ChunkIndex.read, change)

    return with_summary(data, edit, crc=True)


def index_misplaced(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    """Chunk, message or metadata indexes that point at the wrong place or claim huge sizes."""
    size = len(data)
    which = rng.choice(("chunk_offset", "chunk_length", "message_index", "uncompressed", "meta"))

    def edit(opcode: int, raw: bytes) -> bytes:
        if opcode == Opcode.CHUNK_INDEX and which != "meta":

            def change(index: ChunkIndex) -> None:
                if which == "chunk_offset":
                    index.chunk_start_offset = rng.choice((8, rng.randrange(size), 2**62))
                elif which == "chunk_length":
                    index.chunk_length = rng.choice((1, 2**40, size))
                elif which == "uncompressed":
                    index.uncompressed_size = 2**40
                else:
                    index.message_index_offsets = {
                        cid: rng.randrange(8, size) for cid in index.message_index_offsets
                    }

            return _rewrite(raw, ChunkIndex.read, change)
        if opcode == Opcode.METADATA_INDEX and which == "meta":

            def change_meta(index: MetadataIndex) -> None:
                index.length = 2**40

            return _rewrite(raw, MetadataIndex.read, change_meta)
        return raw

    return with_summary(data, edit, crc=rng.random() < 0.5)


def channel_encoding(rng: random.Random, data: bytes, _dir: Path) -> bytes:
    """A summary whose channels say another message encoding (and schema ids that do not exist)."""

    def edit(opcode: int, raw: bytes) -> bytes:
        if opcode != Opcode.CHANNEL:
            return raw

        def change(channel: Channel) -> None:
            if rng.random() < 0.5:
                channel.message_encoding = "ros1"
            else:
                channel.schema_id = 4242

        return _rewrite(raw, Channel.read, change)

    return with_summary(data, edit, crc=True)


KINDS: dict[str, Callable[[random.Random, bytes, Path], bytes | Path]] = {
    "mutate": mutate,
    "truncate": truncate,
    "huge_length": huge_length,
    "lying_footer": lying_footer,
    "zstd_bomb": zstd_bomb,
    "zstd_bomb_huge": zstd_bomb_huge,
    "lz4_bomb": lz4_bomb,
    "tiny_messages": tiny_messages,
    "definitions_flood": definitions_flood,
    "hole_middle": hole_middle,
    "hole_end": hole_end,
    "hole_only": hole_only,
    "index_unknown_channel": index_unknown_channel,
    "index_misplaced": index_misplaced,
    "channel_encoding": channel_encoding,
}


def make_case(kind: str, seed: int, base: bytes, folder: Path) -> Path:
    """Write the case `kind` made with `seed` into `folder`; its path."""
    made = KINDS[kind](random.Random(seed), base, folder)
    if isinstance(made, Path):
        return made
    path = folder / "case.mcap"
    path.write_bytes(made)
    return path


# -- what fusion makes of them ------------------------------------------------------------------


def _run_checks(path: Path) -> dict:
    """In this process: ``fusion info``, ``info --verify``, ``recover`` and a full read; what
    each did. Only `FusionError` may come out of the library."""
    from fusion.cli import main as fusion_main
    from fusion.errors import FusionError
    from fusion.logs.reader import RecordingReader

    result: dict = {}
    for name, argv in (
        ("info", ["info", str(path)]),
        ("verify", ["info", "--verify", str(path)]),
        ("recover", ["recover", str(path), str(path.with_suffix(".fixed.mcap"))]),
    ):
        with contextlib.suppress(FileNotFoundError):
            path.with_suffix(".fixed.mcap").unlink()
        stderr = io.StringIO()
        t0 = time.process_time()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            code = fusion_main(argv)
        result[name] = {
            "exit": code,
            "cpu_s": time.process_time() - t0,
            "stderr_lines": [line for line in stderr.getvalue().splitlines() if "error" in line],
        }
    read = {"messages": 0, "error": ""}
    t0 = time.process_time()
    try:
        with RecordingReader(path) as reader:
            for rec in reader.messages():
                with contextlib.suppress(FusionError):
                    rec.decode()
                read["messages"] += 1
    except FusionError as exc:
        read["error"] = type(exc).__name__
    read["cpu_s"] = time.process_time() - t0
    result["read"] = read
    result["max_rss_mb"] = peak_rss_mb()
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: of its own image; ``ru_maxrss`` would also
    count the parent it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check(path: Path, timeout_s: float = 120.0) -> dict:
    """`_run_checks` on `path` in a fresh process (so its memory is its own); adds
    ``traceback`` (any uncaught exception) and ``crashed``."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.recording_fuzz", "--check", str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    except subprocess.TimeoutExpired:
        return {"crashed": True, "traceback": False, "stderr_tail": f"timed out ({timeout_s} s)"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines and proc.returncode == 0 else {}
    result["crashed"] = proc.returncode != 0 or not lines
    result["traceback"] = "Traceback" in proc.stderr
    result["stderr_tail"] = proc.stderr[-2000:]
    return result


def problems(result: dict) -> list[str]:
    """What `result` breaks of the figure, one line each (empty when it holds)."""
    found = []
    if result["crashed"] or result["traceback"]:
        found.append(f"crashed or raised a traceback: {result['stderr_tail']}")
        return found
    for name in ("info", "verify", "recover"):
        r = result[name]
        if r["exit"] not in (0, 2):
            found.append(f"{name} exited {r['exit']}")
        if r["exit"] == 2 and len(r["stderr_lines"]) != 1:
            found.append(f"{name} failed without exactly one error line: {r['stderr_lines']}")
    if result["info"]["cpu_s"] > MAX_INFO_CPU_S:
        found.append(f"fusion info took {result['info']['cpu_s']:.1f} s of CPU")
    if result["max_rss_mb"] > MAX_RSS_MB:
        found.append(f"peak memory {result['max_rss_mb']:.0f} MB")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", metavar="FILE", help="(internal) check one file, print JSON")
    parser.add_argument("--cases", type=int, default=len(KINDS), help="number of cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    args = parser.parse_args(argv)
    if args.check:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(_run_checks(Path(args.check))))
        return 0
    kinds = args.kinds.split(",")
    worst: dict[str, dict] = {}
    failures = 0
    with tempfile.TemporaryDirectory(prefix="recfuzz-") as tmp:
        base = base_recording(Path(tmp) / "base.mcap")
        for i in range(args.cases):
            kind = kinds[i % len(kinds)]
            folder = Path(tmp) / f"case{i}"
            folder.mkdir()
            path = make_case(kind, args.seed * 1_000_003 + i, base, folder)
            result = check(path)
            found = problems(result)
            failures += bool(found)
            w = worst.setdefault(kind, {"cases": 0, "info_cpu_s": 0.0, "max_rss_mb": 0.0})
            w["cases"] += 1
            if not result["crashed"]:
                w["info_cpu_s"] = max(w["info_cpu_s"], result["info"]["cpu_s"])
                w["max_rss_mb"] = max(w["max_rss_mb"], result["max_rss_mb"])
            for line in found:
                print(f"case {i} ({kind}, seed {args.seed}): {line}", flush=True)
            for child in folder.iterdir():
                child.unlink()
            folder.rmdir()
    print(f"{args.cases} cases, {failures} failing; worst per kind:")
    for kind, w in worst.items():
        print(
            f"  {kind:<22} {w['cases']:>4} cases  fusion info <= {w['info_cpu_s']:.2f} s CPU  "
            f"peak {w['max_rss_mb']:.0f} MB"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
