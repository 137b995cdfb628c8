"""CurveZMQ encryption and authentication for ``tcp://`` endpoints, and ``fusion keys``.

On one host nodes talk over ``ipc://`` sockets in a folder only their user can open (mode 0700,
see `fusion.wire.services.ipc_dir`), so they need no keys. Across hosts, ``tcp://`` traffic can be
encrypted and authenticated with CurveZMQ: set ``FUSION_CURVE_DIR`` (or pass ``--curve-keys
DIR`` to any node) to a folder made by ``fusion keys DIR``:

- ``server.key`` / ``server.key_secret``: the key pair of every binding socket (a publisher, as
  a rule). A connecting socket refuses a server that cannot prove it holds this secret.
- ``client.key`` / ``client.key_secret``: the key pair of connecting sockets (subscribers);
  ``FUSION_CURVE_CLIENT=NAME`` picks ``NAME.key_secret`` instead, for one key pair per host.
- ``authorized/*.key``: the public keys a server accepts. A client whose key is not there is
  refused and the refusal is logged with its key; the folder is read again on every
  handshake, so deleting a key file revokes that client without restarting anything.

Secret files are written with mode 0600 and refused when group or others can read them, as ssh
does. The files are pyzmq certificates (`zmq.auth.load_certificate` reads them). Handshake
failures of any secured socket are counted in its `fusion.runtime.watch.ConnectionWatch` and
logged here (rate-limited), so a peer with the wrong key shows up in the log of both ends that
can see it.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from fusion.errors import ConfigError

log = logging.getLogger(__name__)

KEYS_DIR_ENV = "FUSION_CURVE_DIR"
CLIENT_NAME_ENV = "FUSION_CURVE_CLIENT"
SERVER_NAME = "server"
DEFAULT_CLIENT_NAME = "client"
AUTHORIZED_DIR = "authorized"
#: What a failed handshake of a secured socket suggests checking.
FAILURE_HINT = "check that both ends use keys from the same `fusion keys` folder"
_PUBLIC_BANNER = "#   ZeroMQ CURVE public certificate made by `fusion keys` on {when}\n\n"
_SECRET_BANNER = (
    "#   ZeroMQ CURVE **secret** certificate made by `fusion keys` on {when}\n"
    "#   Do not share this file or loosen its permissions (0600).\n\n"
)


@dataclass(frozen=True)
class CurveConfig:
    """Where a node's CurveZMQ keys are (a folder made by ``fusion keys``)."""

    keys_dir: Path
    client_name: str = DEFAULT_CLIENT_NAME

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys_dir", Path(self.keys_dir))

    @classmethod
    def from_env(cls) -> CurveConfig | None:
        """The config named by ``FUSION_CURVE_DIR`` (and ``FUSION_CURVE_CLIENT``), or None."""
        folder = os.environ.get(KEYS_DIR_ENV)
        if not folder:
            return None
        return cls(Path(folder), os.environ.get(CLIENT_NAME_ENV) or DEFAULT_CLIENT_NAME)

    @property
    def server_secret_file(self) -> Path:
        return self.keys_dir / f"{SERVER_NAME}.key_secret"

    @property
    def server_public_file(self) -> Path:
        return self.keys_dir / f"{SERVER_NAME}.key"

    @property
    def client_secret_file(self) -> Path:
        return self.keys_dir / f"{self.client_name}.key_secret"

    @property
    def authorized_dir(self) -> Path:
        return self.keys_dir / AUTHORIZED_DIR


# -- key files -----------------------------------------------------------------------------


def write_keypair(folder: Path | str, name: str) -> tuple[Path, Path]:
    """Make a key pair: ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600).

    Refuses to overwrite existing files (a replaced server key locks every client out)."""
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


# -- sockets -------------------------------------------------------------------------------


class _AuthorizedKeys:
    """The ZAP callback: a client is allowed when its public key is in the folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.refused = 0

    def callback(self, _domain: str, client_key: bytes) -> bool:
        try:
            allowed = client_key in zmq.auth.load_certificates(self.folder)
        except OSError:
            allowed = False
        if not allowed:
            self.refused += 1
            log.warning(
                "refused a CurveZMQ client with public key %s: not in %s",
                client_key.decode(errors="replace"),
                self.folder,
            )
        return allowed


_authenticators: dict[int, tuple[ThreadAuthenticator, dict[str, _AuthorizedKeys]]] = {}
_auth_lock = threading.Lock()


def authorized_keys(context: zmq.Context, folder: Path) -> tuple[str, _AuthorizedKeys]:
    """The ZAP domain (one per folder) whose handler checks client keys against `folder`;
    the handler thread starts once per context."""
    if not folder.is_dir():
        raise ConfigError(
            f"no authorised client keys at {folder}; make them with "
            "`fusion keys DIR`, then copy each client's .key file there"
        )
    domain = str(folder.resolve())
    with _auth_lock:
        if id(context) not in _authenticators:
            auth = ThreadAuthenticator(
                context, log=logging.getLogger("fusion.runtime.security.zap")
            )
            auth.start()
            _authenticators[id(context)] = (auth, {})
        auth, checkers = _authenticators[id(context)]
        if domain not in checkers:
            checkers[domain] = _AuthorizedKeys(folder)
            auth.configure_curve_callback(domain=domain, credentials_provider=checkers[domain])
        return domain, checkers[domain]


def secure_socket(
    socket: zmq.Socket, endpoint: str, *, server: bool, curve: CurveConfig | None
) -> bool:
    """Make `socket` a CurveZMQ server (binding side) or client before it binds or connects.

    Only ``tcp://`` endpoints are secured (``ipc://`` sockets sit in a private folder). Returns
    whether it was secured."""
    if curve is None or not endpoint.startswith("tcp://"):
        return False
    if server:
        public, secret = load_keypair(curve.server_secret_file)
        domain, _ = authorized_keys(socket.context, curve.authorized_dir)
        socket.zap_domain = domain.encode()
        socket.curve_server = True
    else:
        public, secret = load_keypair(curve.client_secret_file)
        socket.curve_serverkey = load_public_key(curve.server_public_file)
    socket.curve_publickey = public
    socket.curve_secretkey = secret
    return True


class CurveKeysAction(argparse.Action):
    """``--curve-keys DIR``: the same as ``FUSION_CURVE_DIR=DIR`` (child processes inherit it)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        os.environ[KEYS_DIR_ENV] = str(values)
        setattr(namespace, self.dest, values)


# -- fusion keys ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder for the key files (created if missing)")
    parser.add_argument(
        "--client",
        action="append",
        default=None,
        metavar="NAME",
        help="make the client key pair NAME (repeatable; default: one named 'client'); "
        "its public key is authorised",
    )
    parser.add_argument(
        "--no-server", action="store_true", help="make client keys only (the server exists)"
    )


def run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    made = []
    if not args.no_server:
        made += write_keypair(folder, SERVER_NAME)
    authorized = folder / AUTHORIZED_DIR
    authorized.mkdir(parents=True, exist_ok=True)
    for name in args.client or [DEFAULT_CLIENT_NAME]:
        public_file, secret_file = write_keypair(folder, name)
        copy = authorized / public_file.name
        copy.write_bytes(public_file.read_bytes())
        made += [public_file, secret_file, copy]
    for path in made:
        print(path)
    print(
        f"copy {folder} to every host; set {KEYS_DIR_ENV}={folder} (or --curve-keys) for each "
        f"node. Keep the .key_secret files private; revoke a client by deleting its key from "
        f"{authorized}."
    )
    return 0
