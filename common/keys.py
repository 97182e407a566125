"""CurveZMQ keys without ceremony: every process finds or makes its own, under the
data folder, and the cluster's allowlist is a folder of public keys.

Layout (under ``<data_dir>/keys``, mode 0700; the file system is the trust
boundary on one host, the network never is)::

    broker.key            the broker's public key (zmq.auth certificate format), 0600
    broker.key_secret     its secret key, 0600
    server-N.key          server N's public key, 0600
    server-N.key_secret   its secret key, 0600
    allowed/              the allowlist, mode 0700: one public key per admitted
      server-N.key        server, named by its id (the key's id is its file name)

Public files are 0600 too: nobody but the cluster's owner needs them on this host
(a server on another host gets a key by ``run_all.py admit``, a remote client by
``SOCIAL_BROKER_KEY``). Every file is written to a temporary file in the same folder
and then linked (a key: create-exclusive, so of two processes starting at once one
writes the key and the other reads it; never half a key) or renamed into place (an
admission replaces the one before it). Nothing here is committed: ``data/`` is not.
"""
from __future__ import annotations

import os
import re
import threading

import zmq

from common.paths import joined

BROKER = "broker"
CLUSTER_DOMAIN = "cluster"
"""ZAP domain of the ironhouse sockets: only allowlisted keys get in."""
CLIENTS_DOMAIN = "clients"
"""ZAP domain of the stonehouse socket (the broker's frontend): any client key."""
ANYONE = "client"
"""The User-Id of a connection whose key is not in the allowlist (the frontend's users)."""
BROKER_KEY_ENV = "SOCIAL_BROKER_KEY"
Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
"""A CURVE key in Z85: 40 characters of the Z85 alphabet (32 bytes)."""
REFUSED = "refused"
_ID_NAME = re.compile(r"^server-([1-9][0-9]?)\.key$")


class KeyProblem(ValueError):
    """A key that cannot be used: malformed, missing, unreadable."""


class NoBrokerKey(KeyProblem):
    """The broker's public key is not (yet) in the data folder: it makes it at start."""


def server_name(server_id: int) -> str:
    return f"server-{server_id}"


def dealer_identity(server_id: int) -> bytes:
    """The identity of a server's DEALER to the broker: ``server-N.<64 random bits>``, new
    for each connection. The broker takes it only with server N's key; unguessable, so no
    other member of the cluster can take it over (ROUTER_HANDOVER hands an identity to
    whichever connection names it last)."""
    import secrets               # here, as tempfile below: a user's command needs neither
    return f"{server_name(server_id)}.{secrets.token_hex(8)}".encode()


def key_dir(data_dir: str | os.PathLike) -> Path:
    from pathlib import Path     # here: a user's command spells its one key path by joined()
    return Path(data_dir) / "keys"


def allowed_dir(data_dir: str | os.PathLike) -> Path:
    return key_dir(data_dir) / "allowed"


def ensure_folders(data_dir: str | os.PathLike) -> Path:
    """``keys/`` and ``keys/allowed/``, created owner-only (and tightened if we own them)."""
    folder = key_dir(data_dir)
    for path in (folder, folder / "allowed"):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            if path.stat().st_mode & 0o077:
                path.chmod(0o700)
        except PermissionError:
            pass                   # not ours: the files in it are still 0600
    return folder


def check_key(text: str | bytes) -> bytes:
    """A Z85 public key as bytes (40 characters); KeyProblem otherwise."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise KeyProblem("a key must be 40 Z85 characters") from None
    text = text.strip()
    if not Z85_KEY.fullmatch(text):
        raise KeyProblem(f"not a CURVE public key (40 Z85 characters): {text[:50]!r}")
    return text.encode("ascii")


def _certificate(public: bytes, secret: bytes | None = None) -> str:
    lines = ["#   ZeroMQ CURVE " + ("**Secret** Certificate" if secret else "Public Certificate"),
             "#   written by the social network (common/keys.py)", "", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write_temp(folder: Path, text: str) -> Path:
    import tempfile
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".key")   # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    from pathlib import Path
    return Path(tmp)


def _create_exclusive(path: Path, text: str) -> bool:
    """Write ``path`` whole or not at all; False if it already exists (someone else won)."""
    tmp = _write_temp(path.parent, text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _replace(path: Path, text: str) -> None:
    tmp = _write_temp(path.parent, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_certificate(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    """(public, secret or None) of a certificate file, read as pyzmq's
    ``zmq.auth.certs.load_certificate`` reads it; importing that module would load
    all of ``zmq.auth`` (and ``logging``) into every user's command.
    OSError if it cannot be read, ValueError if it holds no public key."""
    found: dict[bytes, bytes] = {}
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            for name in (b"public-key", b"secret-key"):
                if line.startswith(name) and b"=" in line and name not in found:
                    found[name] = line.split(b"=", 1)[1].strip(b" \t'\"")
    if not found.get(b"public-key"):
        raise ValueError(f"No public key found in {path}")
    return found[b"public-key"], found.get(b"secret-key")


def load_public(path: str | os.PathLike) -> bytes:
    """The public key of a certificate file (zmq.auth format)."""
    try:
        public, _ = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyProblem(f"{path}: {exc}") from None
    return check_key(public)


def keypair(data_dir: str | os.PathLike, name: str, create: bool = True) -> tuple[bytes, bytes]:
    """(public, secret) of ``name`` (``broker``, ``server-N``), made if missing."""
    folder = ensure_folders(data_dir) if create else key_dir(data_dir)
    secret_path = folder / f"{name}.key_secret"
    if not secret_path.exists():
        if not create:
            raise KeyProblem(f"no key {secret_path}")
        public, secret = zmq.curve_keypair()
        _create_exclusive(secret_path, _certificate(public, secret))   # or another's
    try:
        public, secret = load_certificate(secret_path)
    except (OSError, ValueError) as exc:
        raise KeyProblem(f"{secret_path}: {exc}") from None
    if secret is None:
        raise KeyProblem(f"{secret_path} holds no secret key")
    public_path = folder / f"{name}.key"
    if not public_path.exists():
        _create_exclusive(public_path, _certificate(public))
    return check_key(public), check_key(secret)


def broker_public_key(data_dir: str | os.PathLike) -> bytes:
    """The broker's public key: ``SOCIAL_BROKER_KEY`` (a remote broker), else the data folder's."""
    env = os.environ.get(BROKER_KEY_ENV)
    if env:
        try:
            return check_key(env)
        except KeyProblem as exc:
            raise KeyProblem(f"{BROKER_KEY_ENV}: {exc}") from None
    path = joined(data_dir, "keys", f"{BROKER}.key")   # as key_dir spells it
    if not os.path.exists(path):
        raise NoBrokerKey(f"no broker key: {path} is missing (start the broker on this data "
                        f"folder, or set {BROKER_KEY_ENV} to a remote broker's public key)")
    return load_public(path)


def cluster_broker_key(data_dir: str | os.PathLike) -> bytes:
    """The broker's public key for the processes of a cluster on this host (servers, and
    the tools that start a cluster): ``SOCIAL_BROKER_KEY``, else the data folder's, made
    if missing (whoever starts first makes it; the broker loads the same file)."""
    if os.environ.get(BROKER_KEY_ENV):
        return broker_public_key(data_dir)
    return keypair(data_dir, BROKER)[0]


def parse_key_argument(value: str) -> bytes:
    """``admit``'s argument: a public key in Z85, or a certificate file holding one."""
    if Z85_KEY.fullmatch(value.strip()):
        return check_key(value)
    if os.path.isfile(value):
        return load_public(value)
    raise KeyProblem(f"{value[:50]!r} is neither a CURVE public key (40 Z85 characters) "
                    f"nor a key file")


def admit(data_dir: str | os.PathLike, server_id: int, public: bytes) -> Path:
    """Put server ``server_id``'s public key in the allowlist (replacing its old one)."""
    check_key(public)
    path = ensure_folders(data_dir) / "allowed" / f"{server_name(server_id)}.key"
    _replace(path, _certificate(public))
    return path


def admit_self(data_dir: str | os.PathLike, server_id: int, public: bytes) -> str | None:
    """A server on this host admits itself; what went wrong, or None. Another key
    already admitted for its id is never replaced here (``run_all.py admit`` does)."""
    path = allowed_dir(data_dir) / f"{server_name(server_id)}.key"
    try:
        if not path.exists() and _create_exclusive(path, _certificate(public)):
            return None
        if load_public(path) == public:
            return None
    except (OSError, KeyProblem) as exc:
        return f"cannot admit myself to {path}: {exc}"
    return (f"{path} holds another key for {server_name(server_id)}: mine is not admitted "
            f"(python run_all.py admit {server_id} {public.decode()})")


class Tally:
    """Refusals counted by what was refused, so that a stranger who keeps trying costs one
    log line, not one a message: ``count`` says when to log (the first time, then every
    thousandth). Bounded: past ``limit`` different keys it starts again."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.counts: dict = {}

    def count(self, key) -> int | None:
        """How often ``key`` was refused, when that is worth a line; else None."""
        if len(self.counts) > self.limit:
            self.counts.clear()
        count = self.counts[key] = self.counts.get(key, 0) + 1
        return count if count == 1 or count % 1000 == 0 else None


class Allowlist:
    """The allowlisted public keys, by id (the file name): re-read when the folder
    changes. Safe to use from the authenticator's thread and the process's loop."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.folder = allowed_dir(data_dir)
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self.ids: dict[bytes, str] = {}            # z85 public key -> "server-N"
        self.by_id: dict[str, bytes] = {}
        self.notes: list[str] = []                 # what changed, for the loop to log
        self.refused = Tally()                     # unknown keys refused, and how often

    def refresh(self) -> bool:
        """Re-read the folder if it changed (its mtime or its names); True if it did."""
        with self._lock:
            try:
                stat = self.folder.stat()
                names = frozenset(os.listdir(self.folder))
            except OSError:
                stat, names = None, frozenset()
            signature = (stat.st_mtime_ns if stat else None, names)
            if signature == self._signature:
                return False
            first, self._signature = self._signature is None, signature
            ids, problems = {}, []
            for name in sorted(names):
                match = _ID_NAME.fullmatch(name)
                if not match:
                    continue
                try:
                    ids[load_public(self.folder / name)] = name[:-len(".key")]
                except KeyProblem as exc:
                    problems.append(str(exc))
            old = set(self.by_id)
            self.ids = ids
            self.by_id = {who: key for key, who in ids.items()}
            added, removed = sorted(set(self.by_id) - old), sorted(old - set(self.by_id))
            note = (f"allowlist {self.folder} {'read' if first else 're-read'}: {len(ids)} keys"
                    + (f", admitted {', '.join(added)}" if added else "")
                    + (f", removed {', '.join(removed)}" if removed else "")
                    + (f"; unreadable: {'; '.join(problems)}" if problems else ""))
            self.notes.append(note)
            return True

    def id_of(self, public: bytes) -> str | None:
        """``server-N`` for an allowlisted z85 key, None for any other."""
        return self.ids.get(public)

    def key_of(self, who: str) -> bytes | None:
        """The allowlisted public key of ``server-N`` (re-read once if unknown)."""
        key = self.by_id.get(who)
        if key is None and self.refresh():
            key = self.by_id.get(who)
        return key

    def take_notes(self) -> list[str]:
        with self._lock:
            notes, self.notes = self.notes, []
        return notes

    # --- zmq.auth's credentials provider -------------------------------------------------
    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: may a connection with this z85 ``key`` in on ``domain``? Any key on the
        frontend (stonehouse); on the cluster's sockets only allowlisted keys (ironhouse)."""
        if domain == CLIENTS_DOMAIN:
            return True
        if domain != CLUSTER_DOMAIN:
            return False
        self.refresh()                            # a key admitted a moment ago counts
        if key in self.ids:
            return True
        with self._lock:
            count = self.refused.count(key)
            if count:
                self.notes.append(f"{REFUSED} a CURVE connection with a key not in the allowlist "
                                  f"({key.decode(errors='replace')}, {count} so far)")
        return False


def _authenticator(context: zmq.Context, allowlist: Allowlist):
    """pyzmq's ZAP thread, naming each allowlisted connection by its id (``User-Id``).

    Its module (threads, asyncio) is imported here, not at the top: a user's client
    never authenticates anyone, and the import would cost each command ~15 ms."""
    from zmq.auth.thread import ThreadAuthenticator

    class Authenticator(ThreadAuthenticator):
        def curve_user_id(self, client_public_key: bytes) -> str:
            from zmq.utils import z85
            return allowlist.id_of(z85.encode(client_public_key)) or ANYONE

    return Authenticator(context)


class Security:
    """One process's CURVE setup: its keypair, the broker's public key, the allowlist and
    the ZAP authenticator on its context. Started before any socket binds."""

    def __init__(self, ctx: zmq.Context, data_dir: str | os.PathLike, name: str,
                 server_id: int | None = None) -> None:
        self.data_dir = data_dir
        self.name = name
        self.ctx = ctx
        self.public, self.secret = keypair(data_dir, name)
        self.broker_key = self.public if name == BROKER else cluster_broker_key(data_dir)
        self.problem = admit_self(data_dir, server_id, self.public) if server_id else None
        self.allowlist = Allowlist(data_dir)
        self.allowlist.refresh()
        self.auth = _authenticator(ctx, self.allowlist)
        self.auth.start()
        self.auth.configure_curve_callback(CLUSTER_DOMAIN, self.allowlist)
        self.auth.configure_curve_callback(CLIENTS_DOMAIN, self.allowlist)

    def serve(self, sock: zmq.Socket, domain: str = CLUSTER_DOMAIN) -> zmq.Socket:
        """Make ``sock`` a CURVE server (before it binds): ironhouse on the cluster's domain."""
        sock.zap_domain = domain.encode()
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)   # no ZAP handler: no one gets in
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        return sock

    def client(self, sock: zmq.Socket, server_key: bytes | None = None) -> zmq.Socket:
        """Make ``sock`` a CURVE client of the broker (or of ``server_key``), before it connects."""
        return client_socket(sock, self.public, self.secret, server_key or self.broker_key)

    def log_news(self, log) -> None:
        """The allowlist re-read if its folder changed; what changed (a note) and the keys
        refused (a warning) since the last call, logged by the process's loop in ``log``
        (a ProcessLog: the ZAP thread writes none)."""
        self.allowlist.refresh()
        for note in self.allowlist.take_notes():
            (log.warn if note.startswith(REFUSED) else log.note)(note)

    def peer_key(self, server_id: int) -> bytes | None:
        return self.allowlist.key_of(server_name(server_id))

    def stop(self) -> None:
        self.auth.stop()


def client_socket(sock: zmq.Socket, public: bytes, secret: bytes, server_key: bytes) -> zmq.Socket:
    """Make ``sock`` a CURVE client with this keypair that talks only to ``server_key``
    (set before it connects)."""
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_key
    return sock

