"""Signed bundles (OpenSSF model-signing, elliptic-curve keys, offline): checksums catch accidents, signatures
catch a forger who rewrites the manifest too."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from bundles import copy_bundle, named

import kerasio
from kerasio.bundle.fsutil import hash_artifact
from kerasio.cli import main

pytest.importorskip("model_signing", reason="CI installs the signing extra")


def _keypair(directory, name="key"):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def signed(keras_bundle, tmp_path):
    b = copy_bundle(keras_bundle, tmp_path / "b")
    private, public = _keypair(tmp_path)
    assert main(["sign", str(b), "--key", str(private)]) == 0
    return b, private, public


def test_a_signed_bundle_verifies_loads_and_predicts_with_the_public_key(signed, capsys):
    b, _private, public = signed
    assert (b / "kerasio.json.sig").is_file()
    report = kerasio.verify(b, public_key=public, in_process=True, record=False)
    assert report.ok
    loaded = kerasio.load(b, public_key=public)
    x = kerasio.read_manifest(b).reference_arrays(b)[0]["features"]
    assert list(kerasio.predict(b, x[:3], public_key=public)) == list(loaded.predict(x[:3]))
    assert main(["inspect", str(b), "--public-key", str(public)]) == 0


def test_the_signature_is_a_sigstore_bundle_that_model_signing_itself_accepts(signed):
    import model_signing

    b, _private, public = signed
    envelope = json.loads((b / "kerasio.json.sig").read_text())
    assert envelope["mediaType"].startswith("application/vnd.dev.sigstore.bundle")
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(
        b / "kerasio.json", b / "kerasio.json.sig")  # raises if not


def test_a_forger_who_rewrites_the_manifest_passes_checksums_but_not_the_signature(signed, capsys):
    """Replace model.keras and update its sha256 in the manifest: every checksum agrees, the signature does not."""
    b, _private, public = signed
    target = named(b, "keras")
    with zipfile.ZipFile(target) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members["metadata.json"] = members["metadata.json"].replace(b"{", b'{"forged": true, ', 1)
    target.unlink()
    with zipfile.ZipFile(target, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    manifest = json.loads((b / "kerasio.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["format"] == "keras")
    art["sha256"], art["size"], _ = hash_artifact(target)
    (b / "kerasio.json").write_text(json.dumps(manifest))
    kerasio.load(b)  # without a key, the forgery is consistent: checksums alone cannot catch it
    with pytest.raises(kerasio.errors.SignatureError, match=r"kerasio\.json: its signature kerasio\.json\.sig does not "
                                                     r"verify with .*key\.pub\.pem: Signature mismatch\. The manifest "
                                                     r"changed after signing"):
        kerasio.load(b, public_key=public)
    assert main(["verify", str(b), "--public-key", str(public), "--in-process"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not verify" in err[0] and "nothing was loaded" in err[0]


def test_the_wrong_key_and_a_missing_signature_are_refused(signed, tmp_path, keras_bundle):
    b, _private, _public = signed
    _other_private, other_public = _keypair(tmp_path, "other")
    with pytest.raises(kerasio.errors.SignatureError, match=r"does not verify with .*other\.pub\.pem: Key mismatch"):
        kerasio.verify(b, public_key=other_public)
    unsigned = copy_bundle(keras_bundle, tmp_path / "unsigned")
    with pytest.raises(kerasio.errors.SignatureError, match=r"has no signature \(kerasio\.json\.sig\), but a public key was "
                                                     r"given; nothing was loaded\. Sign it with `kerasio sign"):
        kerasio.load(unsigned, public_key=other_public)
    standalone = tmp_path / "standalone.keras"  # a bare file: there is no manifest whose signature could cover it
    standalone.write_bytes(named(unsigned, "keras").read_bytes())
    with pytest.raises(kerasio.errors.SignatureError, match="not listed by a signed bundle's manifest"):
        kerasio.load(standalone, public_key=other_public)


def test_a_new_export_must_be_signed_again(signed, pipeline):
    b, private, public = signed
    kerasio.export(pipeline.model, b, reference_inputs=pipeline.split.x_test[:8], formats="keras")
    with pytest.raises(kerasio.errors.SignatureError, match="The manifest changed after signing"):
        kerasio.load(b, public_key=public)
    kerasio.sign(b, private)
    assert kerasio.load(b, public_key=public).sha256 == kerasio.read_manifest(b).artifact("keras").sha256


def test_a_symlinked_signature_and_a_bad_key_file_are_errors_not_tracebacks(signed, tmp_path):
    b, private, public = signed
    real = tmp_path / "sig.json"
    real.write_bytes((b / "kerasio.json.sig").read_bytes())
    (b / "kerasio.json.sig").unlink()
    (b / "kerasio.json.sig").symlink_to(real)
    with pytest.raises(kerasio.errors.SignatureError, match="has no signature"):
        kerasio.load(b, public_key=public)
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(kerasio.errors.InputError, match=r"junk\.pem: cannot sign with this key"):
        kerasio.sign(b, tmp_path / "junk.pem")
    with pytest.raises(kerasio.errors.InputError, match=r"missing\.pem: no such private key file"):
        kerasio.sign(b, tmp_path / "missing.pem")


def test_cli_sign_then_verify_in_a_fresh_process(keras_bundle, tmp_path):
    b = copy_bundle(keras_bundle, tmp_path / "b")
    private, public = _keypair(tmp_path)
    out = subprocess.run([sys.executable, "-m", "kerasio", "sign", str(b), "--key", str(private)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "kerasio.json.sig" in out.stdout, out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "kerasio", "verify", str(b), "--public-key", str(public), "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert all(c["status"] == "PASS" for c in json.loads(out.stdout)["checks"])
    assert np.isfinite(json.loads(out.stdout)["checks"][0]["max_abs_diff"])
