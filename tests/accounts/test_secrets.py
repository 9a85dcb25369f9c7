"""Stored-secret decryption (CONTRACT §4), including values made by Node.js's crypto."""

from __future__ import annotations

import json
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from rebreak_idle.accounts.secrets import (
    BadEncoding,
    BadIVLength,
    BadKey,
    BadTagLength,
    DecryptionFailed,
    MalformedSecret,
    SecretError,
    decrypt_secret,
    encrypt_secret,
)

ENCRYPTION_KEY = "0123456789abcdef0123456789abcdefEXTRA"
KEY = ENCRYPTION_KEY.encode("utf-8")[:32]

# Made once with Node.js 20: crypto.createCipheriv("aes-256-gcm", key, iv) with the key above.
NODE_VALUES = [
    ("hunter2", "8b194a022b13879e446403db:cb47bfa57d807366c65f9724866d3915:4caf5da5f4e8f5"),
    ("pä$$wörd ✓",
     "0e881688dfc2154b0fea0642:b3ffb7a1782c24467a7b1229e07604d6:9e5f47299f8a629d37763633c35d"),
    ("ya29.token-with-16-byte-iv",
     "15899200c1ae6928303ca2a2d8d553c2:c6035598c13dc1330b840d9ecf4ef821:"
     "d9daac2f94bd2649d1d6d2da4596522ee1560c42aeef5107b021"),
    ("", "8702d2bcf20c9a0d72074c2f:2651ba7fc145adc26342dd65a05f9122:"),
]

NODE_SCRIPT = r"""
const c = require("crypto");
const key = Buffer.from(process.argv[1], "utf8").subarray(0, 32);
const out = [];
for (const [pt, ivlen] of JSON.parse(process.argv[2])) {
  const iv = c.randomBytes(ivlen);
  const ci = c.createCipheriv("aes-256-gcm", key, iv);
  const ct = Buffer.concat([ci.update(pt, "utf8"), ci.final()]);
  out.push([pt, iv.toString("hex") + ":" + ci.getAuthTag().toString("hex") + ":" +
            ct.toString("hex")]);
}
console.log(JSON.stringify(out));
"""


def _flip(hexstr: str, index: int = 0) -> str:
    digit = "0" if hexstr[index] != "0" else "1"
    return hexstr[:index] + digit + hexstr[index + 1:]


class NodeCompatibilityTests(SynchronousTestCase):
    def test_fixed_node_values_decrypt(self) -> None:
        for plaintext, stored in NODE_VALUES:
            self.assertEqual(decrypt_secret(stored, KEY), plaintext)

    def test_fresh_node_values_decrypt(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise self.skipTest("node is not on PATH; the fixed Node values still ran")
        cases = [["s3cret", 12], ["ünïcødé token", 12], ["sixteen-byte iv", 16], ["x" * 500, 12]]
        out = subprocess.run(
            [node, "-e", NODE_SCRIPT, ENCRYPTION_KEY, json.dumps(cases)],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout
        produced = json.loads(out)
        self.assertEqual(len(produced), len(cases))
        for plaintext, stored in produced:
            self.assertEqual(decrypt_secret(stored, KEY), plaintext)


class RoundTripTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        for text in ["a", "pässwörd", "ya29." + "t" * 2000]:
            self.assertEqual(decrypt_secret(encrypt_secret(text, KEY), KEY), text)

    def test_round_trip_with_16_byte_iv(self) -> None:
        stored = encrypt_secret("abc", KEY, iv=b"\x01" * 16)
        self.assertEqual(decrypt_secret(stored, KEY), "abc")


class FailureTests(SynchronousTestCase):
    plaintext = "hunter2"
    stored = NODE_VALUES[0][1]

    def assertClean(self, error: SecretError) -> None:
        """No key material, no plaintext, no ciphertext in the message."""
        message = str(error)
        _iv, tag, ct = self.stored.split(":")
        for forbidden in (self.plaintext, ENCRYPTION_KEY[:32], KEY.hex(), tag, ct):
            self.assertNotIn(forbidden, message)

    def assertFails(self, value: str, kind: type[SecretError], key: bytes = KEY) -> None:
        with self.assertRaises(kind) as cm:
            decrypt_secret(value, key)
        self.assertIsInstance(cm.exception, SecretError)
        self.assertClean(cm.exception)

    def test_tampered_tag(self) -> None:
        iv, tag, ct = self.stored.split(":")
        self.assertFails(f"{iv}:{_flip(tag)}:{ct}", DecryptionFailed)

    def test_tampered_ciphertext(self) -> None:
        iv, tag, ct = self.stored.split(":")
        self.assertFails(f"{iv}:{tag}:{_flip(ct, 3)}", DecryptionFailed)

    def test_tampered_iv(self) -> None:
        iv, tag, ct = self.stored.split(":")
        self.assertFails(f"{_flip(iv)}:{tag}:{ct}", DecryptionFailed)

    def test_wrong_key(self) -> None:
        self.assertFails(self.stored, DecryptionFailed, key=b"k" * 32)

    def test_wrong_number_of_parts(self) -> None:
        iv, tag, ct = self.stored.split(":")
        for value in (f"{iv}:{tag}", f"{iv}:{tag}:{ct}:00", "plain-text-password"):
            self.assertFails(value, MalformedSecret)

    def test_empty_or_null(self) -> None:
        self.assertFails("", MalformedSecret)
        with self.assertRaises(MalformedSecret):
            decrypt_secret(None, KEY)

    def test_non_hex(self) -> None:
        iv, tag, ct = self.stored.split(":")
        self.assertFails(f"{iv}:{tag}:zz{ct}", BadEncoding)
        self.assertFails(f"xyz:{tag}:{ct}", BadEncoding)

    def test_wrong_iv_length(self) -> None:
        iv, tag, ct = self.stored.split(":")
        with self.assertRaises(BadIVLength) as cm:
            decrypt_secret(f"{iv[:-2]}:{tag}:{ct}", KEY)
        self.assertIn("11", str(cm.exception))

    def test_wrong_tag_length(self) -> None:
        iv, tag, ct = self.stored.split(":")
        self.assertFails(f"{iv}:{tag[:-2]}:{ct}", BadTagLength)

    def test_key_must_be_32_bytes(self) -> None:
        self.assertFails(self.stored, BadKey, key=b"short")

    def test_messages_are_distinct(self) -> None:
        iv, tag, ct = self.stored.split(":")
        values = [f"{iv}:{_flip(tag)}:{ct}", "a:b", f"{iv}:{tag}:zz", f"00:{tag}:{ct}",
                  f"{iv}:00:{ct}"]
        messages = set()
        for value in values:
            with self.assertRaises(SecretError) as cm:
                decrypt_secret(value, KEY)
            messages.add(str(cm.exception))
        self.assertEqual(len(messages), len(values))
