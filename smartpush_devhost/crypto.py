"""Master keys, authenticated encryption and blind indexes.

* Encryption: AES-256-GCM with a random 96-bit nonce. A ciphertext is
  ``0x01 | key id (4 bytes) | nonce (12) | ciphertext+tag``; the key id lets several
  master keys coexist during rotation. Callers pass associated data naming the row
  (``contact:<store>:<uid>``) so a blob copied onto another row or store fails to
  decrypt instead of silently leaking.
* Blind index: HMAC-SHA256 (truncated to 128 bits) under a key derived with HKDF from
  the master key, distinct from the encryption key, so equality lookups on emails and
  phones never need decryption and an index value reveals nothing without the key.
* Master keys come from ``SMARTPUSH_MASTER_KEY`` (base64 of 32 bytes; a comma
  separated list puts the active key first and older keys after it) or from a key
  file (default ``<data dir>/master.key``) created on first use with mode 0600.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

ENV_MASTER_KEY = "SMARTPUSH_MASTER_KEY"
ENV_KEY_FILE = "SMARTPUSH_KEY_FILE"
KEY_FILE_NAME = "master.key"
KEY_FILE_FORMAT = "smartpush-keyring/1"

_VERSION = b"\x01"
_KEY_ID_LEN = 4
_NONCE_LEN = 12
_HEADER_LEN = 1 + _KEY_ID_LEN + _NONCE_LEN

ACTIVE, PREVIOUS, RETIRED = "active", "previous", "retired"


class CryptoError(Exception):
    """Base class of key and ciphertext errors (messages never hold key material)."""


class DecryptionError(CryptoError):
    """A ciphertext was tampered with, moved to another row, or its key is unknown."""


class KeyFileError(CryptoError):
    """The master key file is missing, malformed or has unsafe permissions."""


def _hkdf(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


@dataclass(eq=False)
class MasterKey:
    """One master key and the keys derived from it. ``repr`` shows the id only."""

    material: bytes = field(repr=False)
    status: str = ACTIVE
    created: str = ""
    key_id: str = field(init=False)
    _aead: AESGCM = field(init=False, repr=False)
    _index_key: bytes = field(init=False, repr=False)
    _index_macs: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.material) != 32:
            raise KeyFileError("a master key must be 32 bytes")
        self.key_id = _hkdf(self.material, b"smartpush/key-id/v1")[:_KEY_ID_LEN].hex()
        self._aead = AESGCM(_hkdf(self.material, b"smartpush/encryption/v1"))
        self._index_key = _hkdf(self.material, b"smartpush/blind-index/v1")
        self._index_macs = {}  # kind -> HMAC already keyed and fed "<kind>\0"

    def __repr__(self) -> str:
        return f"MasterKey(id={self.key_id!r}, status={self.status!r})"

    def blind_index(self, kind: str, value: str) -> str:
        """HMAC-SHA256 of ``<kind>\\0<value>`` under the index key, first 128 bits in hex."""
        # Copying a keyed state skips the key setup that even the one-shot hmac.digest
        # pays per call (about half its cost); the bytes are the same.
        mac = self._index_macs.get(kind)
        if mac is None:
            mac = self._index_macs[kind] = hmac.new(self._index_key, kind.encode() + b"\x00", "sha256")
        mac = mac.copy()
        mac.update(value.encode())
        return mac.digest()[:16].hex()


def generate_key_material() -> bytes:
    """32 fresh random bytes for a new master key."""
    return os.urandom(32)


class Keyring:
    """The set of master keys: one active (encrypts, indexes), others decrypt only.

    :param keys: the keys; exactly one must have status ``active``.
    :param reload: optional callable returning fresh keys, used once when a
        ciphertext names an unknown key (another process rotated keys meanwhile).
    """

    def __init__(self, keys: list[MasterKey], *, source: str = "memory", reload=None):
        self._lock = threading.Lock()
        self.source = source
        self._reload = reload
        self._set_keys(keys)

    def _set_keys(self, keys: list[MasterKey]) -> None:
        active = [k for k in keys if k.status == ACTIVE]
        if len(active) != 1:
            raise KeyFileError(f"a keyring needs exactly one active key, found {len(active)}")
        self._keys = {k.key_id: k for k in keys}
        self._active = active[0]

    def __repr__(self) -> str:
        return f"Keyring(active={self._active.key_id!r}, keys={len(self._keys)}, source={self.source!r})"

    # ------------------------------------------------------------------ keys
    @property
    def active(self) -> MasterKey:
        """The key that encrypts and indexes new data."""
        return self._active

    @property
    def active_id(self) -> str:
        return self._active.key_id

    def keys(self) -> list[MasterKey]:
        """Every key, active first."""
        return sorted(self._keys.values(), key=lambda k: (k.status != ACTIVE, k.status != PREVIOUS))

    def _key(self, key_id: str) -> MasterKey:
        key = self._keys.get(key_id)
        if key is None and self._reload is not None:
            with self._lock:
                try:
                    self._set_keys(self._reload())
                except CryptoError:
                    raise
                key = self._keys.get(key_id)
        if key is None:
            raise DecryptionError(f"ciphertext uses unknown master key {key_id}")
        return key

    def reload(self) -> None:
        """Re-read the keys from their source (after another process rotated them)."""
        if self._reload is not None:
            with self._lock:
                self._set_keys(self._reload())

    # ------------------------------------------------------------ encryption
    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt under the active key; ``aad`` must be given again to decrypt."""
        key = self._active
        nonce = os.urandom(_NONCE_LEN)
        return _VERSION + bytes.fromhex(key.key_id) + nonce + key._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Decrypt and authenticate; raises :class:`DecryptionError` on any mismatch."""
        blob = bytes(blob)
        if len(blob) < _HEADER_LEN + 16 or blob[:1] != _VERSION:
            raise DecryptionError("not a SmartPush ciphertext")
        key = self._key(blob[1 : 1 + _KEY_ID_LEN].hex())
        nonce = blob[1 + _KEY_ID_LEN : _HEADER_LEN]
        try:
            return key._aead.decrypt(nonce, blob[_HEADER_LEN:], aad)
        except InvalidTag:
            raise DecryptionError("ciphertext failed authentication (tampered or moved)") from None

    @staticmethod
    def key_id_of(blob: bytes) -> str:
        """The id of the key a ciphertext was made with."""
        return bytes(blob[1 : 1 + _KEY_ID_LEN]).hex()

    # ----------------------------------------------------------- blind index
    def blind_index(self, kind: str, value: str) -> str:
        """The active key's blind index of ``value`` (already normalized by the caller)."""
        return self._active.blind_index(kind, value)

    def lookup_indexes(self, kind: str, value: str) -> list[str]:
        """Index values to search for ``value``: active key and not-yet-retired keys.

        During a rotation some rows still carry the previous key's index; searching
        under both keeps lookups exact until the rotation finishes.
        """
        return [k.blind_index(kind, value) for k in self._keys.values() if k.status in (ACTIVE, PREVIOUS)]


# ---------------------------------------------------------------- key sources
def _keys_from_env(value: str) -> list[MasterKey]:
    keys = []
    for i, part in enumerate(p.strip() for p in value.split(",") if p.strip()):
        try:
            material = base64.b64decode(part, validate=True)
        except ValueError:
            raise KeyFileError(f"{ENV_MASTER_KEY}: entry {i + 1} is not valid base64") from None
        if len(material) != 32:
            raise KeyFileError(f"{ENV_MASTER_KEY}: entry {i + 1} must decode to 32 bytes")
        keys.append(MasterKey(material, status=ACTIVE if i == 0 else PREVIOUS))
    if not keys:
        raise KeyFileError(f"{ENV_MASTER_KEY} is empty")
    return keys


class KeyFile:
    """The JSON master key file: created atomically with mode 0600, rewritten atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"KeyFile({str(self.path)!r})"

    def exists(self) -> bool:
        return self.path.exists()

    def check_permissions(self) -> None:
        """Refuse a key file that group or others can read or write."""
        st = self.path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"master key file {self.path} is accessible by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {self.path}"
            )

    def load(self) -> list[MasterKey]:
        """Read the keys, checking permissions first."""
        self.check_permissions()
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("format") != KEY_FILE_FORMAT:
                raise ValueError("format")
            return [
                MasterKey(base64.b64decode(e["material"]), status=e["status"], created=e.get("created", ""))
                for e in doc["keys"]
            ]
        except (ValueError, KeyError, TypeError):
            raise KeyFileError(f"master key file {self.path} is malformed") from None

    def _serialize(self, keys: list[MasterKey]) -> bytes:
        doc = {
            "format": KEY_FILE_FORMAT,
            "keys": [
                {
                    "id": k.key_id,
                    "status": k.status,
                    "created": k.created,
                    "material": base64.b64encode(k.material).decode(),
                }
                for k in keys
            ],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    def _write_temp(self, keys: list[MasterKey]) -> Path:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        # O_EXCL + 0600 at creation: the key is never on disk with wider permissions
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, self._serialize(keys))
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def create(self) -> bool:
        """Create the file with one new active key; ``False`` if it already existed.

        ``os.link`` of a complete temp file makes creation atomic: two processes
        starting at once end up sharing whichever key was linked first.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = MasterKey(generate_key_material(), status=ACTIVE, created=_now())
        tmp = self._write_temp([key])
        try:
            os.link(tmp, self.path)
            created = True
        except FileExistsError:
            created = False
        finally:
            tmp.unlink(missing_ok=True)
        if created:
            log.info("created master key file %s", self.path)
        return created

    def write(self, keys: list[MasterKey]) -> None:
        """Replace the file's keys atomically (rename over the old file)."""
        tmp = self._write_temp(keys)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def key_file_path(data_dir: str | os.PathLike, env: Mapping[str, str] | None = None) -> Path:
    """Where the key file lives: ``SMARTPUSH_KEY_FILE`` or ``<data dir>/master.key``."""
    env = os.environ if env is None else env
    return Path(env.get(ENV_KEY_FILE) or Path(data_dir) / KEY_FILE_NAME)


def load_keyring(data_dir: str | os.PathLike, env: Mapping[str, str] | None = None) -> Keyring:
    """The host keyring: from ``SMARTPUSH_MASTER_KEY`` if set, else the key file
    (created on first use)."""
    env = os.environ if env is None else env
    if env.get(ENV_MASTER_KEY):
        value = env[ENV_MASTER_KEY]
        return Keyring(_keys_from_env(value), source="env")
    keyfile = KeyFile(key_file_path(data_dir, env))
    if not keyfile.exists():
        keyfile.create()
    return Keyring(keyfile.load(), source="file", reload=keyfile.load)
