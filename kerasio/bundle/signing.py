"""Signed bundles: the manifest's exact bytes, signed with OpenSSF ``model-signing`` (an elliptic-curve key, offline).

The manifest records the sha256 of every artifact and reference file, and
every load checks the bytes it loads against those hashes. So a signature over
the manifest covers everything kerasio loads: a forger who rewrites an artifact
must rewrite the manifest, and then the signature fails. The signature is a
Sigstore bundle (``kerasio.json.sig``, DSSE over an in-toto statement) that
``model_signing verify key`` checks too. A new export replaces the manifest, so
it must be signed again.
"""
from __future__ import annotations

from pathlib import Path

from kerasio.bundle.fsutil import bundle_lock, confined, private_dir, sha256_file, write_text_atomic
from kerasio.bundle.layout import MANIFEST_NAME, SIGNATURE_NAME
from kerasio.bundle.manifest import manifest_bytes, parse_manifest
from kerasio.errors import InputError, SignatureError

__all__ = ["sign", "check_signature", "SIGNATURE_NAME"]

MAX_SIGNATURE_BYTES = 1 << 20  # a Sigstore bundle over one manifest is about 3 KB


def _model_signing():
    try:
        import model_signing
    except ImportError as exc:
        raise InputError(f"signing needs OpenSSF model-signing: pip install 'kerasio[signing]'. Received: {exc}") \
            from None
    return model_signing


def _key(path: str | Path, what: str) -> Path:
    key = Path(path)
    if not key.is_file():
        raise InputError(f"{key}: no such {what} file. Pass a PEM file (openssl ecparam -genkey -name prime256v1). "
                         f"Received: {key}")
    return key


def sign(bundle: str | Path, private_key: str | Path, *, password: str | None = None) -> Path:
    """Sign ``bundle``'s manifest with an elliptic-curve private key; return the signature's path.

    Example:
        >>> kerasio.sign("saved_models/seed", "keys/private.pem")  # doctest: +SKIP
        PosixPath('saved_models/seed/kerasio.json.sig')
    """

    bundle, key = Path(bundle), _key(private_key, "private key")
    model_signing = _model_signing()
    with bundle_lock(bundle), private_dir("kerasio-sign-") as tmp:  # no export swaps the manifest meanwhile
        data = manifest_bytes(bundle)
        manifest = parse_manifest(data, bundle / MANIFEST_NAME)  # never sign what kerasio would refuse to read
        for art in manifest.artifacts:  # ... nor an artifact changed since export: the signature would vouch for it
            art.check(bundle)
        manifest.reference_arrays(bundle)  # the reference files' hashes, checked as they are read
        manifest.reference_one_row(bundle)
        manifest.reference_sweep(bundle)
        copy = tmp / MANIFEST_NAME
        copy.write_bytes(data)
        try:
            model_signing.signing.Config().use_elliptic_key_signer(private_key=key, password=password).sign(
                copy, tmp / SIGNATURE_NAME)
        except Exception as exc:  # an unreadable, encrypted or non-EC key
            raise InputError(f"{key}: cannot sign with this key: {_first_line(exc)}. Pass an unencrypted (or "
                             f"--password) elliptic-curve private key in PEM. Received: {type(exc).__name__}") from None
        target = bundle / SIGNATURE_NAME
        write_text_atomic(target, (tmp / SIGNATURE_NAME).read_text(encoding="utf-8"))
    return target


def check_signature(bundle: Path, data: bytes, public_key: str | Path) -> None:
    """Raise :class:`SignatureError` unless ``data`` (the manifest bytes about to be used) carry a valid signature."""

    key = _key(public_key, "public key")
    try:
        sig = confined(bundle, SIGNATURE_NAME, "the signature")
    except Exception:
        raise SignatureError(
            f"{bundle}: has no signature ({SIGNATURE_NAME}), but a public key was given; nothing was loaded. Sign "
            f"it with `kerasio sign {bundle} --key PRIVATE.pem`, or drop --public-key. Received: {key}") from None
    size = sig.stat().st_size
    if size > MAX_SIGNATURE_BYTES:
        raise SignatureError(
            f"{sig}: is {size:,} bytes; a kerasio signature is a few kilobytes, so this is not one. Nothing was "
            f"loaded. Re-sign the bundle with `kerasio sign`. Received: {size:,} bytes")
    model_signing = _model_signing()
    with private_dir("kerasio-sig-") as tmp:
        copy = tmp / MANIFEST_NAME  # the very bytes the caller goes on to parse: no check-then-reopen
        copy.write_bytes(data)
        sig_copy = tmp / SIGNATURE_NAME
        sha256_file(sig, copy_to=sig_copy)  # O_NOFOLLOW, regular files only
        try:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key).verify(copy, sig_copy)
        except Exception as exc:
            raise SignatureError(
                f"{bundle / MANIFEST_NAME}: its signature {SIGNATURE_NAME} does not verify with {key}: "
                f"{_first_line(exc)}. The manifest changed after signing (a new export must be signed again), or "
                f"it was signed with another key; nothing was loaded. Re-sign it or pass the signer's public key. "
                f"Received: {type(exc).__name__}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(": [", 1)[0][:200]  # model-signing appends long digest dumps
