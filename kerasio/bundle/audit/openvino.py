"""OpenVINO IR (``model.xml`` + ``model.bin``), audited with the standard library before the runtime opens it.

What the runtime would execute is the XML's graph, and what it reads is the
``.bin`` next to it, at the offsets the XML gives. So, in a directory of exactly
one ``.xml`` and its ``.bin`` (regular files, no links):

* the XML is at most :data:`MAX_XML_BYTES`, has no DTD or entity declarations
  (no entity expansion, nothing fetched), and is an IR ``<net>`` of version 10 or 11
  with at most :data:`MAX_LAYERS` layers;
* every layer is an op of a standard opset (``version="opset1"`` ... ``opsetN``):
  a custom op needs an extension library loaded into the runtime, which kerasio
  never does, and is refused here by name;
* every constant's bytes lie inside the ``.bin`` (``offset + size``), and its
  ``size`` is exactly its shape times its element type: the runtime maps the
  ``.bin`` and would read past it, or allocate what no byte fills, otherwise;
* no attribute names a file or a URL outside the IR.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from kerasio.errors import ArtifactError, UnsafeArtifactError

__all__ = ["audit_openvino", "ir_files", "MAX_XML_BYTES", "MAX_LAYERS"]

MAX_XML_BYTES = 64 << 20  # a real IR's XML is a few MB (its weights are in the .bin); parsed, 10x this
MAX_LAYERS = 200_000
_OPSET = re.compile(r"opset\d{1,2}")
_ITEM = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "u64": 8, "u32": 4,
         "u16": 2, "u8": 1, "boolean": 1, "f8e4m3": 1, "f8e5m2": 1}
_PACKED = {"u4": 4, "i4": 4, "u1": 1, "nf4": 4}  # bits per element
_PATHLIKE = re.compile(r"(^|[\s=])(/|\.\./|[A-Za-z]:\\|file:|https?:)")


def ir_files(path: Path) -> tuple[Path, Path]:
    """The IR's ``.xml`` and ``.bin`` in the directory ``path``; ArtifactError unless there is exactly one pair."""
    if not path.is_dir():
        raise ArtifactError(f"{path}: an OpenVINO artifact is a directory holding model.xml and model.bin. "
                            f"Received: {path}")
    xmls = sorted(p for p in path.iterdir() if p.suffix == ".xml")
    if len(xmls) != 1:
        raise ArtifactError(f"{path}: an OpenVINO artifact holds exactly one .xml and its .bin; re-export it. "
                            f"Received: {[p.name for p in xmls]}")
    return xmls[0], xmls[0].with_suffix(".bin")


def audit_openvino(path: Path) -> None:
    """Refuse an IR the runtime should not open (see the module's doc); the directory ``path`` holds it."""
    xml, binary = ir_files(path)
    for part in (xml, binary):
        if part.is_symlink() or not part.is_file():
            raise UnsafeArtifactError(f"{part}: an OpenVINO IR's files must be regular files inside the artifact "
                                      f"(no links, nothing missing); re-export it. Received: {part.name}")
    size = xml.stat().st_size
    if size > MAX_XML_BYTES:
        raise UnsafeArtifactError(f"{xml}: {size:,} bytes of IR XML, over the {MAX_XML_BYTES:,} kerasio reads; the "
                                  f"graph of a real model is far smaller. Received: {size:,} bytes")
    data = xml.read_bytes()
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise UnsafeArtifactError(f"{xml}: the IR declares a DTD or entities, which an OpenVINO IR never needs and "
                                  "which can expand without bound or name outside files. Received: <!DOCTYPE/ENTITY")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ArtifactError(f"{xml}: not a readable OpenVINO IR; re-export it. Received: {exc}") from None
    if root.tag != "net" or root.get("version") not in ("10", "11"):
        raise ArtifactError(f"{xml}: not an OpenVINO IR (version 10 or 11 <net>); re-export it. "
                            f"Received: <{root.tag} version={root.get('version')!r}>")
    layers = root.findall("./layers/layer")
    if len(layers) > MAX_LAYERS:
        raise UnsafeArtifactError(f"{xml}: {len(layers):,} layers, over the {MAX_LAYERS:,} kerasio audits. "
                                  f"Received: {len(layers):,}")
    held = binary.stat().st_size
    for layer in layers:
        kind, version, name = layer.get("type", ""), layer.get("version", ""), layer.get("name", "")
        if not _OPSET.fullmatch(version):
            raise UnsafeArtifactError(
                f"{xml}: layer {name!r} is a {kind!r} op of {version!r}, not of a standard opset: a custom op runs "
                "an extension library, which kerasio never loads. Re-export the model with standard ops. "
                f"Received: type={kind!r}, version={version!r}")
        for element in layer.iter():
            for key, value in element.attrib.items():
                if key not in ("name", "names") and _PATHLIKE.search(value):
                    raise UnsafeArtifactError(f"{xml}: layer {name!r} attribute {key}={value[:80]!r} names a file "
                                              "or URL outside the IR. Received: a path")
        if kind == "Const":
            _check_constant(xml, layer, held)


def _check_constant(xml: Path, layer: ET.Element, held: int) -> None:
    data = layer.find("data")
    name = layer.get("name", "")
    if data is None:
        raise ArtifactError(f"{xml}: constant {name!r} has no <data>; re-export it. Received: no data")
    try:
        offset, size = int(data.get("offset", "-1")), int(data.get("size", "-1"))
        dims = [int(d) for d in data.get("shape", "").replace(" ", "").split(",") if d]
    except ValueError:
        raise ArtifactError(f"{xml}: constant {name!r} has an unreadable offset, size or shape; re-export it. "
                            f"Received: {dict(data.attrib)}") from None
    kind = data.get("element_type", "")
    count = 1
    for d in dims:
        count *= d
    want = count * _ITEM[kind] if kind in _ITEM else (count * _PACKED[kind] + 7) // 8 if kind in _PACKED else None
    if offset < 0 or size < 0 or offset + size > held or (want is not None and size != want) or min(dims, default=1) < 0:
        raise UnsafeArtifactError(
            f"{xml}: constant {name!r} ({kind}{dims}) claims bytes {offset:,} to {offset + size:,} of a {held:,}-byte "
            f".bin{f' and {want:,} bytes for its shape' if want is not None and size != want else ''}: the runtime "
            f"would read past the weights or allocate what they do not hold. Received: offset={offset}, size={size}")
