"""CurveZMQ encryption and authentication for ``tcp://`` endpoints, and ``fusion keys``.

On one host nodes talk over ``ipc://`` sockets in a folder only their user can open (mode 0700,
see `fusion.wire.services.ipc_dir`), so they need no keys. Across hosts, ``tcp://`` traffic can be
encrypted and authenticated with CurveZMQ, the way SSH does it: every host (or every node, for
finer grain) has its own key pair, and its secret key never leaves it. Set ``FUSION_CURVE_DIR``
(or pass ``--curve-keys DIR`` to any node) to the host's folder made by ``fusion keys DIR``:

- ``id.key`` / ``id.key_secret``: this host's key pair (``FUSION_CURVE_ID=NAME`` picks
  ``NAME.key_secret`` instead, one pair per node). The secret file is written with mode 0600
  and refused when group or others can read it, as ssh does; it is never copied anywhere.
- ``authorized_keys``: one line per trusted peer, ``<public key> <name> [<name>...]``, the line
  ``fusion keys`` prints on that peer (a line starting with ``#`` is a comment). It decides both
  directions: a peer connecting to one of this host's binding sockets (a publisher, as a rule)
  is accepted only if its key is listed (the ZAP handler reads the file again on every
  handshake); and a socket of this host connecting to ``tcp://HOST:PORT`` proves the far end by
  the key listed under the name ``HOST:PORT`` or ``HOST`` (a connection to a host that is not
  listed is refused before it is made).

Revoking a peer is deleting its line (``fusion keys DIR --revoke NAME``): it can no longer
connect, and binding sockets that notice a key gone (`AuthorizedKeys.revision`, checked about
once a second) drop all their connections, so a revoked peer that was connected is cut off while
every other peer reconnects and proves itself again. Since each host holds only its own secret,
a revoked host cannot pose as another. The key files are pyzmq certificates
(`zmq.auth.load_certificate` reads them). Handshake failures of any secured socket are counted
in its `fusion.runtime.watch.ConnectionWatch` and logged here (rate-limited), so a peer with the
wrong key shows up in the log of both ends that can see it.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import socket as pysocket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from fusion.core.ratelog import RateLimitedLog
from fusion.errors import ConfigError

log = logging.getLogger(__name__)

KEYS_DIR_ENV = "FUSION_CURVE_DIR"
IDENTITY_ENV = "FUSION_CURVE_ID"
DEFAULT_IDENTITY = "id"
AUTHORIZED_KEYS = "authorized_keys"
#: What a failed handshake of a secured socket suggests checking.
FAILURE_HINT = (
    "check that each end lists the other's public key in its authorized_keys "
    "(`fusion keys DIR --authorize LINE`)"
)
#: A binding socket looks for revoked keys at most this often.
REVOCATION_CHECK_S = 1.0

_PUBLIC_BANNER = "#   ZeroMQ CURVE public certificate made by `fusion keys` on {when}\n\n"
_SECRET_BANNER = (
    "#   ZeroMQ CURVE **secret** certificate made by `fusion keys` on {when}\n"
    "#   Do not share this file, copy it to another host or loosen its permissions (0600).\n\n"
)
_AUTHORIZED_BANNER = (
    "# Peers this host trusts, one per line: <public key> <name> [<name>...]\n"
    "# A peer listed here may connect to this host's binding sockets; a name HOST or HOST:PORT\n"
    "# is the key this host expects of the socket it connects to at tcp://HOST:PORT.\n"
)


@dataclass(frozen=True)
class CurveConfig:
    """Where a host's CurveZMQ keys are (a folder made by ``fusion keys``) and which of its key
    pairs a node uses."""

    keys_dir: Path
    identity: str = DEFAULT_IDENTITY

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys_dir", Path(self.keys_dir))

    @classmethod
    def from_env(cls) -> CurveConfig | None:
        """The config named by ``FUSION_CURVE_DIR`` (and ``FUSION_CURVE_ID``), or None."""
        folder = os.environ.get(KEYS_DIR_ENV)
        if not folder:
            return None
        return cls(Path(folder), os.environ.get(IDENTITY_ENV) or DEFAULT_IDENTITY)

    @property
    def secret_file(self) -> Path:
        return self.keys_dir / f"{self.identity}.key_secret"

    @property
    def public_file(self) -> Path:
        return self.keys_dir / f"{self.identity}.key"

    @property
    def authorized_keys(self) -> Path:
        return self.keys_dir / AUTHORIZED_KEYS


# -- key files -----------------------------------------------------------------------------


def write_keypair(folder: Path | str, name: str) -> tuple[Path, Path]:
    """Make a key pair: ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600).

    Refuses to overwrite existing files (a replaced key locks this host out of every peer)."""
    folder = Path(folder)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name")
    folder.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public_file, secret_file):
        if path.exists():
            raise ConfigError(f"{path} exists; delete it first to replace the key pair")
    public, secret = zmq.curve_keypair()
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    curve = f'curve\n    public-key = "{public.decode()}"\n'
    _write_private(
        secret_file,
        _SECRET_BANNER.format(when=when) + curve + f'    secret-key = "{secret.decode()}"\n',
    )
    public_file.write_text(_PUBLIC_BANNER.format(when=when) + curve)
    public_file.chmod(0o644)
    return public_file, secret_file


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def load_public_key(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read CurveZMQ public key {path}: {exc}; make keys with `fusion keys DIR`"
        ) from exc
    return public


def load_keypair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file that only its owner can read."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(
            f"cannot read CurveZMQ secret key {path}: {exc}; make keys with `fusion keys DIR`"
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}`"
        )
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CurveZMQ secret key {path}: {exc}") from exc
    if secret is None:
        raise ConfigError(f"{path} holds no secret key; it must be a .key_secret file")
    return public, secret


# -- authorised keys ---------------------------------------------------------------------


def parse_authorized_keys(text: str, source: str) -> dict[bytes, tuple[str, ...]]:
    """Public key (z85) -> its names, from the text of an authorized_keys file. Raises
    `ConfigError` naming the line for anything that is not ``<40-character key> <name>...``."""
    keys: dict[bytes, tuple[str, ...]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):  # z85 keys may hold '#': whole lines only
            continue
        key = fields[0].encode()
        try:
            valid = len(key) == 40 and len(z85.decode(key)) == 32
        except (ValueError, KeyError, IndexError, TypeError):
            valid = False
        if not valid or len(fields) < 2:
            raise ConfigError(
                f"{source} line {number} must be '<40-character public key> <name>...', "
                f"got {line.strip()[:80]!r}"
            )
        keys[key] = tuple(fields[1:])
    return keys


class AuthorizedKeys:
    """One authorized_keys file: the ZAP callback for binding sockets, the server keys of
    connecting ones, and a `revision` that goes up whenever a key disappears from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.refused = 0
        self.revision = 0
        self._log = RateLimitedLog(log)
        self._lock = threading.Lock()
        self._mtime_ns = -1
        self._keys: dict[bytes, tuple[str, ...]] = {}
        self.refresh(strict=True)

    def refresh(self, *, strict: bool = False) -> dict[bytes, tuple[str, ...]]:
        """The keys, read again if the file changed. A file that became unreadable or malformed
        trusts nobody (logged) unless `strict`, where it raises `ConfigError`."""
        with self._lock:
            try:
                mtime_ns = self.path.stat().st_mtime_ns
                if mtime_ns == self._mtime_ns:
                    return self._keys
                keys = parse_authorized_keys(self.path.read_text(), str(self.path))
            except (OSError, ConfigError) as exc:
                if strict:
                    raise ConfigError(
                        f"cannot read {self.path}: {exc}; make it with `fusion keys DIR`"
                    ) from exc
                log.warning(
                    "%s is unusable (%s); trusting no peer until it is fixed", self.path, exc
                )
                mtime_ns, keys = -1, {}
            if set(self._keys) - set(keys):
                self.revision += 1
            self._mtime_ns, self._keys = mtime_ns, keys
            return keys

    def callback(self, _domain: str, client_key: bytes) -> bool:
        allowed = client_key in self.refresh()
        if not allowed:
            self.refused += 1
            self._log.warning(
                "refused",
                f"refused a CurveZMQ client with public key "
                f"{client_key.decode(errors='replace')}: not in {self.path}",
            )
        return allowed

    def server_key(self, endpoint: str) -> bytes:
        """The key listed for the host of ``tcp://HOST:PORT`` (under ``HOST:PORT`` or ``HOST``)."""
        address = endpoint[len("tcp://") :]
        host = address.rpartition(":")[0].strip("[]")
        keys = self.refresh()
        for name in (address, host):
            for key, names in keys.items():
                if name in names:
                    return key
        raise ConfigError(
            f"no key for {address} in {self.path}: add the line `fusion keys` printed on that "
            f"host, named {host} (`fusion keys DIR --authorize 'KEY {host}'`)"
        )


_authenticators: dict[int, tuple[ThreadAuthenticator, set[str]]] = {}
_files: dict[str, AuthorizedKeys] = {}
_auth_lock = threading.Lock()


def keys_file(path: Path) -> AuthorizedKeys:
    """The one `AuthorizedKeys` of `path` in this process."""
    name = str(path.resolve())
    with _auth_lock:
        if name not in _files:
            _files[name] = AuthorizedKeys(path)
        return _files[name]


def authorized_keys(context: zmq.Context, path: Path) -> tuple[str, AuthorizedKeys]:
    """The ZAP domain (one per file) whose handler checks peer keys against `path`; the handler
    thread starts once per context."""
    keys = keys_file(path)
    domain = str(path.resolve())
    with _auth_lock:
        if id(context) not in _authenticators:
            auth = ThreadAuthenticator(
                context, log=logging.getLogger("fusion.runtime.security.zap")
            )
            auth.start()
            _authenticators[id(context)] = (auth, set())
        auth, domains = _authenticators[id(context)]
        if domain not in domains:
            domains.add(domain)
            auth.configure_curve_callback(domain=domain, credentials_provider=keys)
        return domain, keys


class RevocationWatch:
    """For a binding socket: whether a key was revoked since it last bound (checked at most
    every `REVOCATION_CHECK_S`); the socket then drops every connection and binds again."""

    def __init__(self, keys: AuthorizedKeys) -> None:
        self.keys = keys
        self._revision = keys.revision
        self._next_check_s = time.monotonic() + REVOCATION_CHECK_S

    def revoked(self) -> bool:
        now_s = time.monotonic()
        if now_s < self._next_check_s:
            return False
        self._next_check_s = now_s + REVOCATION_CHECK_S
        self.keys.refresh()
        if self.keys.revision == self._revision:
            return False
        self._revision = self.keys.revision
        return True


def secure_socket(
    socket: zmq.Socket, endpoint: str, *, server: bool, curve: CurveConfig | None
) -> RevocationWatch | bool:
    """Make `socket` a CurveZMQ server (binding side) or client before it binds or connects.

    Only ``tcp://`` endpoints are secured (``ipc://`` sockets sit in a private folder). Returns
    False when nothing was secured, else True for a client and the server's `RevocationWatch`."""
    if curve is None or not endpoint.startswith("tcp://"):
        return False
    public, secret = load_keypair(curve.secret_file)
    if server:
        domain, keys = authorized_keys(socket.context, curve.authorized_keys)
        socket.zap_domain = domain.encode()
        socket.curve_server = True
        secured: RevocationWatch | bool = RevocationWatch(keys)
    else:
        socket.curve_serverkey = keys_file(curve.authorized_keys).server_key(endpoint)
        secured = True
    socket.curve_publickey = public
    socket.curve_secretkey = secret
    return secured


class CurveKeysAction(argparse.Action):
    """``--curve-keys DIR``: the same as ``FUSION_CURVE_DIR=DIR`` (child processes inherit it)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        os.environ[KEYS_DIR_ENV] = str(values)
        setattr(namespace, self.dest, values)


# -- fusion keys ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="this host's key folder (created if missing)")
    parser.add_argument(
        "--id",
        default=DEFAULT_IDENTITY,
        metavar="NAME",
        help=f"the key pair NAME.key(_secret) (default {DEFAULT_IDENTITY}; one per node if wanted)",
    )
    parser.add_argument(
        "--host",
        default=None,
        help="the name peers reach this host by, for the printed line (default: host name)",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--authorize",
        metavar="LINE",
        help="add a peer's line ('<public key> <name>...', as `fusion keys` printed it there)",
    )
    action.add_argument(
        "--revoke", metavar="NAME", help="remove the lines of a peer (by name or public key)"
    )
    action.add_argument(
        "--show", action="store_true", help="print this host's line for its peers' files"
    )


def line_for(public_file: Path, host: str) -> str:
    """The authorized_keys line of the key pair whose public key is `public_file`."""
    return f"{load_public_key(public_file).decode()} {host}"


def run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    listed = folder / AUTHORIZED_KEYS
    if not listed.exists():
        listed.write_text(_AUTHORIZED_BANNER)
    host = args.host or pysocket.gethostname()
    if args.authorize:
        keys = parse_authorized_keys(args.authorize, "--authorize")
        with listed.open("a") as f:
            f.write(args.authorize.strip() + "\n")
        print(f"authorised {', '.join(' '.join(n) for n in keys.values())} in {listed}")
        return 0
    if args.revoke:
        lines = listed.read_text().splitlines(keepends=True)
        kept = [
            line
            for line in lines
            if line.lstrip().startswith("#") or args.revoke not in line.split()
        ]
        if len(kept) == len(lines):
            raise ConfigError(f"no line of {listed} names {args.revoke!r}")
        tmp = listed.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(listed)
        print(f"revoked {len(lines) - len(kept)} key(s) of {args.revoke!r} in {listed}")
        return 0
    public_file = folder / f"{args.id}.key"
    if not args.show:
        public_file, secret_file = write_keypair(folder, args.id)
        print(f"made {public_file} and {secret_file} (private: never copy it to another host)")
    print(
        f"this host's line for its peers (on each, `fusion keys DIR --authorize LINE`):\n"
        f"{line_for(public_file, host)}"
    )
    return 0
