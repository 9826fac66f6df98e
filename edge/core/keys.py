"""Device and back-office keys, at-rest storage keys, and sealing to an X25519 public key.

Device keys: X25519 (receives watchlist bundles) and Ed25519 (signs alerts and audit records).
Back-office keys: Ed25519 (signs watchlists and commands) and X25519 (receives sealed alerts).
Private keys and storage keys are files readable by the owner only (0600 in a 0700 directory);
a private file that the group or others can read is refused rather than used, because a key that
may already have leaked must be replaced, not trusted.

Sealing (`seal`/`unseal`) is ECIES-style: an ephemeral X25519 key agreement, HKDF-SHA256 over the
shared secret bound to both public keys and a purpose label, then AES-256-GCM. All primitives come
from `cryptography`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.core.errors import InputError

# File names inside a device keys directory.
DEVICE_X25519 = "device_x25519.pem"
DEVICE_ED25519 = "device_ed25519.pem"
DEVICE_X25519_PUB = "device_x25519.pub.pem"
DEVICE_ED25519_PUB = "device_ed25519.pub.pem"
# File names inside a back-office keys directory.
BACKOFFICE_ED25519 = "backoffice_ed25519.pem"  # signs watchlist bundles and device commands
BACKOFFICE_X25519 = "backoffice_x25519.pem"  # receives sealed alerts
BACKOFFICE_ED25519_PUB = "backoffice_ed25519.pub.pem"
BACKOFFICE_X25519_PUB = "backoffice_x25519.pub.pem"

STORAGE_KEY_BYTES = 32
SEAL_VERSION = 1
_SEAL_HEADER = 1 + 32 + 12  # version, ephemeral public key, nonce
SEAL_OVERHEAD = _SEAL_HEADER + 16  # + GCM tag

PublicKey = Ed25519PublicKey | X25519PublicKey


class CryptoError(InputError):
    """Data that fails authentication or decryption: tampered, truncated, or meant for another key."""


# --------------------------------------------------------------------------- file helpers


def ensure_private_dir(path: Path) -> None:
    """Create `path` as 0700 (parents as needed); tighten it when we own it and it is looser."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.getuid():
        path.chmod(0o700)


def fsync_dir(path: Path) -> None:
    """Make a rename or create in `path` durable (a crash after return cannot undo it)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, gid: int | None = None) -> None:
    """Replace `path` with `data`, complete or not at all: temp file, fsync, rename, fsync dir.

    A crash at any point leaves either the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # exact, whatever the umask
        if gid is not None:
            os.fchown(fd, -1, gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_private_file(path: Path, data: bytes) -> None:
    """Create a new 0600 file, complete or not at all; never overwrites an existing one.

    The bytes go to a temporary file first and are hard-linked into place: the link fails if the
    name exists (so a key is generated exactly once, even by two processes at the same time), and
    a crash can never leave a half-written key under the real name.
    """
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        _write_exclusive(tmp, data)
        try:
            os.link(tmp, path)  # FileExistsError when someone else's key is already there
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links (vfat): exclusive create in place
            _write_exclusive(path, data)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _write_exclusive(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have narrowed it further, never widened; be exact
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def check_private_file(path: Path) -> None:
    """Refuse a secret that the group or others can read (or that is missing)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise InputError(f"{path}: key file not found") from None
    if mode & 0o077:
        raise InputError(
            f"{path}: private key has permissions {oct(mode)}; it must be 0600 (chmod 600), "
            "and a key others could read should be regenerated"
        )


def _read_private(path: Path) -> bytes:
    check_private_file(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read key ({e.strerror})") from None


# --------------------------------------------------------------------------- key encoding


def raw_public_bytes(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: PublicKey) -> str:
    """Short stable identifier: first 16 hex digits of sha256 of the raw 32-byte public key."""
    return hashlib.sha256(raw_public_bytes(key)).hexdigest()[:16]


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _private_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private_ed25519(path: Path) -> Ed25519PrivateKey:
    key = _load_private(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: expected an Ed25519 private key, found {type(key).__name__}")
    return key


def _load_private_x25519(path: Path) -> X25519PrivateKey:
    key = _load_private(path)
    if not isinstance(key, X25519PrivateKey):
        raise InputError(f"{path}: expected an X25519 private key, found {type(key).__name__}")
    return key


def _load_private(path: Path) -> object:
    data = _read_private(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: not a PEM private key ({e})") from None
    except Exception as e:  # unsupported algorithm and the like: still one line naming the file
        raise InputError(f"{path}: cannot load private key ({type(e).__name__})") from None


def load_public_key(path: str | Path) -> PublicKey:
    """An Ed25519 or X25519 public key from a PEM file (a private key PEM is accepted too)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: public key file not found") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read public key ({e.strerror})") from None
    key: object
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        if b"PRIVATE KEY" not in data:
            raise InputError(f"{p}: not a PEM public key") from None
        # A private key given where a public one is wanted: derive the public half, but still
        # refuse a private file that is readable by others.
        key = _load_private(p)
        if isinstance(key, Ed25519PrivateKey | X25519PrivateKey):
            key = key.public_key()
    except Exception as e:
        raise InputError(f"{p}: cannot load public key ({type(e).__name__})") from None
    if not isinstance(key, Ed25519PublicKey | X25519PublicKey):
        raise InputError(f"{p}: expected an Ed25519 or X25519 key, found {type(key).__name__}")
    return key


def load_ed25519_public(path: str | Path) -> Ed25519PublicKey:
    key = load_public_key(path)
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path}: expected an Ed25519 public key (signing), found an X25519 key")
    return key


def load_x25519_public(path: str | Path) -> X25519PublicKey:
    key = load_public_key(path)
    if not isinstance(key, X25519PublicKey):
        raise InputError(f"{path}: expected an X25519 public key (encryption), found an Ed25519 key")
    return key


# --------------------------------------------------------------------------- key sets


class _KeyPairIds:
    """Public halves and key ids, shared by the device and back-office key sets."""

    __slots__ = ()
    x25519: X25519PrivateKey
    ed25519: Ed25519PrivateKey

    @property
    def x25519_public(self) -> X25519PublicKey:
        return self.x25519.public_key()

    @property
    def ed25519_public(self) -> Ed25519PublicKey:
        return self.ed25519.public_key()

    @property
    def x25519_id(self) -> str:
        return key_id(self.x25519_public)

    @property
    def ed25519_id(self) -> str:
        return key_id(self.ed25519_public)


@dataclass(frozen=True, slots=True)
class DeviceKeys(_KeyPairIds):
    x25519: X25519PrivateKey  # receives watchlist bundles
    ed25519: Ed25519PrivateKey  # signs alerts and audit records


@dataclass(frozen=True, slots=True)
class BackofficeKeys(_KeyPairIds):
    ed25519: Ed25519PrivateKey  # signs watchlist bundles and device commands
    x25519: X25519PrivateKey  # receives sealed alerts


def _generate_pair(
    d: Path, x_name: str, e_name: str, x_pub: str, e_pub: str
) -> tuple[X25519PrivateKey, Ed25519PrivateKey]:
    ensure_private_dir(d)
    existing = [n for n in (x_name, e_name) if (d / n).exists()]
    if existing:
        raise InputError(f"{d / existing[0]}: key already exists; refusing to overwrite a generated key")
    x, e = X25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    write_private_file(d / x_name, _private_pem(x))
    write_private_file(d / e_name, _private_pem(e))
    # atomic_write syncs the directory, which also makes the private keys' links above durable.
    atomic_write(d / x_pub, public_pem(x.public_key()), mode=0o644)
    atomic_write(d / e_pub, public_pem(e.public_key()), mode=0o644)
    return x, e


def generate_device_keys(directory: str | Path) -> DeviceKeys:
    """Create the device's key pairs once; refuses to overwrite existing keys."""
    x, e = _generate_pair(
        Path(directory), DEVICE_X25519, DEVICE_ED25519, DEVICE_X25519_PUB, DEVICE_ED25519_PUB
    )
    return DeviceKeys(x25519=x, ed25519=e)


def load_device_keys(directory: str | Path) -> DeviceKeys:
    d = Path(directory)
    return DeviceKeys(
        x25519=_load_private_x25519(d / DEVICE_X25519), ed25519=_load_private_ed25519(d / DEVICE_ED25519)
    )


def ensure_device_keys(directory: str | Path) -> tuple[DeviceKeys, bool]:
    """Load the device keys, generating them when the directory holds none; (keys, created)."""
    d = Path(directory)
    if not (d / DEVICE_X25519).exists() and not (d / DEVICE_ED25519).exists():
        return generate_device_keys(d), True
    return load_device_keys(d), False


def generate_backoffice_keys(directory: str | Path) -> BackofficeKeys:
    x, e = _generate_pair(
        Path(directory), BACKOFFICE_X25519, BACKOFFICE_ED25519, BACKOFFICE_X25519_PUB, BACKOFFICE_ED25519_PUB
    )
    return BackofficeKeys(ed25519=e, x25519=x)


def load_backoffice_keys(directory: str | Path) -> BackofficeKeys:
    d = Path(directory)
    return BackofficeKeys(
        ed25519=_load_private_ed25519(d / BACKOFFICE_ED25519),
        x25519=_load_private_x25519(d / BACKOFFICE_X25519),
    )


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file, or from a back-office keys directory."""
    p = Path(path)
    return _load_private_ed25519(p / BACKOFFICE_ED25519 if p.is_dir() else p)


# --------------------------------------------------------------------------- storage keys


def storage_key_path(directory: str | Path, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"storage key name {name!r} must be a plain file name")
    return Path(directory) / name


def storage_key(directory: str | Path, name: str) -> bytes:
    """A 32-byte AES-256 key kept in `directory/name` (0600), created on first use.

    Each purpose has its own key (e.g. `watchlist.key`, `storage.key`) so one can be destroyed
    (crypto-shredding what it protected) without touching the others.
    """
    path = storage_key_path(directory, name)
    ensure_private_dir(path.parent)
    if not path.exists():
        try:
            write_private_file(path, os.urandom(STORAGE_KEY_BYTES))
            fsync_dir(path.parent)
        except FileExistsError:
            pass  # another process created it first; use theirs
    data = _read_private(path)
    if len(data) != STORAGE_KEY_BYTES:
        raise InputError(f"{path}: storage key must be {STORAGE_KEY_BYTES} bytes, found {len(data)}")
    return data


def destroy_storage_key(directory: str | Path, name: str) -> bool:
    """Overwrite then delete a storage key; True when a key was there. Whatever it encrypted is lost."""
    path = storage_key_path(directory, name)
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        # Best effort on flash (wear levelling may keep old blocks); the unlink is what counts.
        os.write(fd, b"\0" * STORAGE_KEY_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)
    return True


# --------------------------------------------------------------------------- sealing


def _seal_key(shared: bytes, eph_pub: bytes, recipient_pub: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=info).derive(shared)


def seal(recipient: X25519PublicKey, plaintext: bytes, info: bytes, aad: bytes = b"") -> bytes:
    """Encrypt `plaintext` so that only the holder of `recipient`'s private key can read it.

    `info` names the purpose (e.g. b"lfr-edge alert v1") so a blob sealed for one use cannot be
    replayed as another; `aad` is authenticated but not encrypted. Layout:
    version (1) | ephemeral X25519 public key (32) | nonce (12) | AES-256-GCM ciphertext+tag.
    """
    eph = X25519PrivateKey.generate()
    eph_pub = raw_public_bytes(eph.public_key())
    key = _seal_key(eph.exchange(recipient), eph_pub, raw_public_bytes(recipient), info)
    nonce = os.urandom(12)
    header = bytes([SEAL_VERSION]) + eph_pub + nonce
    return header + AESGCM(key).encrypt(nonce, plaintext, header + aad)


def unseal(private: X25519PrivateKey, blob: bytes, info: bytes, aad: bytes = b"") -> bytes:
    """Inverse of `seal`; raises CryptoError when the blob is not for this key or was altered."""
    if len(blob) < SEAL_OVERHEAD:
        raise CryptoError(f"sealed data is truncated ({len(blob)} bytes, at least {SEAL_OVERHEAD} needed)")
    if blob[0] != SEAL_VERSION:
        raise CryptoError(f"sealed data has unknown version {blob[0]} (expected {SEAL_VERSION})")
    eph_pub, nonce = blob[1:33], blob[33:_SEAL_HEADER]
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError:
        # An all-zero or low-order ephemeral key gives no usable shared secret.
        raise CryptoError("sealed data carries an invalid ephemeral key") from None
    key = _seal_key(shared, eph_pub, raw_public_bytes(private.public_key()), info)
    try:
        return AESGCM(key).decrypt(nonce, blob[_SEAL_HEADER:], blob[:_SEAL_HEADER] + aad)
    except InvalidTag:
        raise CryptoError("sealed data failed authentication (altered, or sealed for another key)") from None


def encrypt_at_rest(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a random nonce: nonce (12) | ciphertext+tag."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt_at_rest(key: bytes, blob: bytes | memoryview, aad: bytes, what: str = "data") -> bytes:
    if len(blob) < 12 + 16:
        raise CryptoError(f"{what}: encrypted data is truncated")
    try:
        return AESGCM(key).decrypt(bytes(blob[:12]), blob[12:], aad)
    except InvalidTag:
        raise CryptoError(
            f"{what}: failed authentication (altered, or its storage key was replaced)"
        ) from None
