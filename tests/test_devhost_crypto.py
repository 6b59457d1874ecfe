"""Keyring: authenticated encryption, blind indexes, key file safety, rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from smartpush_devhost.crypto import (
    ACTIVE,
    RETIRED,
    DecryptionError,
    KeyFile,
    KeyFileError,
    Keyring,
    MasterKey,
    load_keyring,
)
from smartpush_devhost.host import DevHost
from hookspecs.interfaces import NewContact


def _keyring() -> Keyring:
    return Keyring([MasterKey(os.urandom(32))])


def test_round_trip_and_aad_binding():
    kr = _keyring()
    blob = kr.encrypt("héllo".encode(), b"contact:s:u1")
    assert kr.decrypt(blob, b"contact:s:u1").decode() == "héllo"
    assert b"h\xc3\xa9llo" not in blob
    with pytest.raises(DecryptionError):
        kr.decrypt(blob, b"contact:s:u2")  # blob moved to another row
    assert kr.encrypt(b"x", b"a") != kr.encrypt(b"x", b"a")  # random nonce


def test_tampering_is_detected():
    kr = _keyring()
    blob = bytearray(kr.encrypt(b"secret value", b"aad"))
    for position in (len(blob) - 1, 20, 5):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(DecryptionError):
            kr.decrypt(bytes(tampered), b"aad")
    with pytest.raises(DecryptionError):
        kr.decrypt(b"garbage", b"aad")


def test_blind_index_is_keyed_and_separated_by_kind():
    kr1, kr2 = _keyring(), _keyring()
    assert kr1.blind_index("email", "a@b.co") == kr1.blind_index("email", "a@b.co")
    assert kr1.blind_index("email", "a@b.co") != kr2.blind_index("email", "a@b.co")
    assert kr1.blind_index("email", "x") != kr1.blind_index("phone", "x")


def _reference_index_key(material: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"smartpush/blind-index/v1").derive(material)


def _reference_blind_index(material: bytes, kind: str, value: str) -> str:
    """The blind index as first defined: one-shot HMAC-SHA256 under the HKDF index key."""
    return hmac.digest(_reference_index_key(material), kind.encode() + b"\x00" + value.encode(), "sha256")[:16].hex()


def test_blind_index_bytes_equal_the_one_shot_hmac():
    # the precomputed keyed state must not change a single stored index value
    material = bytes(range(32))
    key = MasterKey(material)
    values = ["", "a@b.co", "person.1@shop.example", "+4915112345001", "ünïcødé@例え.jp", "x" * 300]
    for kind in ("email", "phone", "other"):
        for value in values:
            expected = _reference_blind_index(material, kind, value)
            assert key.blind_index(kind, value) == expected
            assert key.blind_index(kind, value) == expected  # the keyed state is reused, not consumed
    pinned = hmac.new(_reference_index_key(material), b"email\x00a@b.co", hashlib.sha256).hexdigest()[:32]
    assert key.blind_index("email", "a@b.co") == pinned
    assert Keyring([key]).lookup_indexes("email", "a@b.co") == [pinned]


def test_blind_index_is_thread_safe():
    material = os.urandom(32)
    key = MasterKey(material)
    values = [f"user{i}@shop.example" for i in range(2000)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda v: key.blind_index("email", v), values))
    assert got == [_reference_blind_index(material, "email", v) for v in values]


def test_reprs_hold_no_key_material():
    material = os.urandom(32)
    kr = Keyring([MasterKey(material)])
    text = repr(kr) + repr(kr.active)
    for form in (material.hex(), base64.b64encode(material).decode()):
        assert form not in text


def test_key_file_created_0600_and_reused(tmp_path):
    kr1 = load_keyring(tmp_path, env={})
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kr2 = load_keyring(tmp_path, env={})
    assert kr1.active_id == kr2.active_id
    assert kr2.decrypt(kr1.encrypt(b"x", b""), b"") == b"x"


def test_key_file_with_loose_permissions_is_refused(tmp_path):
    load_keyring(tmp_path, env={})
    path = tmp_path / "master.key"
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keyring(tmp_path, env={})


def test_env_master_key(tmp_path):
    old, new = os.urandom(32), os.urandom(32)
    env = {"SMARTPUSH_MASTER_KEY": base64.b64encode(old).decode()}
    blob = load_keyring(tmp_path, env=env).encrypt(b"x")
    env2 = {"SMARTPUSH_MASTER_KEY": f"{base64.b64encode(new).decode()},{base64.b64encode(old).decode()}"}
    kr = load_keyring(tmp_path, env=env2)
    assert kr.decrypt(blob) == b"x"
    assert kr.active_id != Keyring.key_id_of(blob)
    assert not (tmp_path / "master.key").exists()
    with pytest.raises(KeyFileError):
        load_keyring(tmp_path, env={"SMARTPUSH_MASTER_KEY": "bm90IDMyIGJ5dGVz"})


def test_rotation_keeps_data_readable_and_searchable(tmp_path, db_url, store_ids):
    env = {}
    host = DevHost(db_url, tmp_path / "home", env=env)
    a, b = store_ids(2)
    people = [NewContact(email=f"P{i}@Example.com", phone=f"+3361234{i:04d}", name=f"N{i}", properties={"kla_i": i})
              for i in range(1203)]
    with host.storage.transaction() as tx:
        uids = host.contacts(a).create_many(tx, people)
        # the same uids in another store (uids are unique per store): both are re-encrypted
        other = host.contacts(b).create_many(tx, people[:3], uids=uids[:3])
        host.contacts(a).add_tags(tx, [(uids[0], "vip")])
    host.context(a).secrets.put("api_key", "pk_123")
    old_id = host.keyring.active_id

    report = host.rotate_keys(batch_size=250)

    assert report.contacts_reencrypted >= 1206 and report.secrets_reencrypted >= 1
    assert report.retired_key_ids == [old_id] and report.new_key_id != old_id
    # a fresh process reading the key file sees the same thing
    fresh = DevHost(db_url, tmp_path / "home", env=env)
    statuses = {k.key_id: k.status for k in fresh.keyring.keys()}
    assert statuses == {report.new_key_id: ACTIVE, old_id: RETIRED}
    for h in (host, fresh):
        with h.storage.transaction() as tx:
            got = h.contacts(a).get_many(tx, uids)
            assert [got[u].email for u in uids] == [p.email for p in people]
            assert got[uids[7]].properties == {"kla_i": 7}
            assert h.contacts(a).find_by_emails(tx, ["p5@example.com"])["p5@example.com"] == [uids[5]]
            assert h.contacts(a).find_by_phones(tx, ["+33612340009"])["+33612340009"] == [uids[9]]
            assert h.contacts(b).find_by_emails(tx, ["p1@example.com"])["p1@example.com"] == [other[1]] == [uids[1]]
            assert h.contacts(b).get_many(tx, other)[other[2]].email == "P2@Example.com"
            assert h.contacts(a).tags_of(tx, [uids[0]]) == {uids[0]: {"vip"}}
        assert h.context(a).secrets.get("api_key") == "pk_123"
    assert stat.S_IMODE((tmp_path / "home" / "master.key").stat().st_mode) == 0o600


def test_lookups_work_mid_rotation(tmp_path, db_url, store_ids):
    """Rows still under the previous key are found while a rotation is under way."""
    (store,) = store_ids(1)
    host = DevHost(db_url, tmp_path, env={})
    with host.storage.transaction() as tx:
        (uid,) = host.contacts(store).create_many(tx, [NewContact(email="mid@x.io")])
    keyfile = KeyFile(tmp_path / "master.key")
    keys = keyfile.load()
    keys[0].status = "previous"
    keyfile.write([MasterKey(os.urandom(32)), *keys])
    host.keyring.reload()
    with host.storage.transaction() as tx:
        assert host.contacts(store).find_by_emails(tx, ["MID@x.io"])["MID@x.io"] == [uid]
