"""A small read-only PyPI client: the JSON simple API (PEP 691) and wheel METADATA read by HTTP range.

PEP 658 metadata files are not offered for the big framework wheels, and the
wheels are hundreds of MB, so METADATA is read out of the remote zip: the end
of central directory and the central directory from the file's tail, then the
one member. Two or three small requests per wheel.
"""

from __future__ import annotations

import json
import re
import struct
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from email.parser import HeaderParser
from typing import Protocol

from .errors import EnvironmentFailure

SIMPLE_URL = "https://pypi.org/simple/{name}/"
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DistFile:
    filename: str
    url: str
    requires_python: str | None
    upload_time: str | None
    yanked: bool
    sha256: str | None = None


class Transport(Protocol):
    def get(self, url: str, headers: dict[str, str]) -> bytes: ...


class HttpTransport:
    def get(self, url: str, headers: dict[str, str]) -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": "envforge", **headers})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise EnvironmentFailure(f"GET {url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EnvironmentFailure(
                f"cannot reach {url}: {reason}",
                fix="check the network or proxy settings (HTTPS_PROXY); PyPI must be reachable for refresh",
            ) from None


class PyPI:
    """A simple-API client for PyPI or any PEP 503 / PEP 691 index (`simple_url` has a {name} slot)."""

    def __init__(self, transport: Transport | None = None, simple_url: str = SIMPLE_URL) -> None:
        self.transport = transport or HttpTransport()
        self.simple_url = simple_url

    def files(self, name: str) -> list[DistFile]:
        url = self.simple_url.format(name=name)
        raw = self.transport.get(url, {"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
        try:
            doc = json.loads(raw)
        except ValueError:
            return _parse_html(raw.decode("utf-8", "replace"), url)
        return [
            DistFile(
                filename=f["filename"],
                url=f["url"],
                requires_python=f.get("requires-python"),
                upload_time=f.get("upload-time"),
                yanked=bool(f.get("yanked")),
                sha256=(f.get("hashes") or {}).get("sha256"),
            )
            for f in doc.get("files", [])
        ]

    def wheel_metadata(self, url: str) -> str:
        """The METADATA text of a remote wheel, read with HTTP range requests."""
        tail = self.transport.get(url, {"Range": "bytes=-65536"})
        eocd = tail.rfind(b"PK\x05\x06")
        if eocd < 0:
            raise EnvironmentFailure(f"{url}: no zip end-of-central-directory in the last 64 KiB")
        cd_size, cd_offset = struct.unpack("<II", tail[eocd + 12: eocd + 20])
        if cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
            locator = tail.rfind(b"PK\x06\x07")
            zip64_offset = struct.unpack("<Q", tail[locator + 8: locator + 16])[0]
            record = self.transport.get(url, {"Range": f"bytes={zip64_offset}-{zip64_offset + 55}"})
            cd_size, cd_offset = struct.unpack("<QQ", record[40:56])
        directory = self.transport.get(url, {"Range": f"bytes={cd_offset}-{cd_offset + cd_size - 1}"})
        pos = 0
        while pos < len(directory) and directory[pos: pos + 4] == b"PK\x01\x02":
            method, = struct.unpack("<H", directory[pos + 10: pos + 12])
            comp_size, uncompressed = struct.unpack("<II", directory[pos + 20: pos + 28])
            name_len, extra_len, comment_len = struct.unpack("<HHH", directory[pos + 28: pos + 34])
            local_offset, = struct.unpack("<I", directory[pos + 42: pos + 46])
            name = directory[pos + 46: pos + 46 + name_len].decode("utf-8", "replace")
            extra = directory[pos + 46 + name_len: pos + 46 + name_len + extra_len]
            if local_offset == 0xFFFFFFFF or comp_size == 0xFFFFFFFF:
                comp_size, local_offset = _zip64_sizes(extra, uncompressed, comp_size, local_offset)
            if re.fullmatch(r"[^/]+\.dist-info/METADATA", name):
                blob = self.transport.get(url, {"Range": f"bytes={local_offset}-{local_offset + 30 + 1024 + comp_size}"})
                lname, lextra = struct.unpack("<HH", blob[26:30])
                data = blob[30 + lname + lextra: 30 + lname + lextra + comp_size]
                raw = zlib.decompress(data, -15) if method == 8 else data
                return raw.decode("utf-8", "replace")
            pos += 46 + name_len + extra_len + comment_len
        raise EnvironmentFailure(f"{url}: no *.dist-info/METADATA in the wheel")


_ANCHOR = re.compile(r"<a\s+([^>]*)>([^<]*)</a>", re.IGNORECASE)


def _parse_html(text: str, base: str) -> list[DistFile]:
    """A PEP 503 HTML page: one anchor per file, the sha256 in the URL fragment."""
    import html
    from urllib.parse import urljoin

    out = []
    for attrs, label in _ANCHOR.findall(text):
        href = re.search(r'href="([^"]*)"', attrs)
        if not href:
            continue
        url = urljoin(base, html.unescape(href.group(1)))
        digest = re.search(r"#sha256=([0-9a-f]{64})", url)
        rp = re.search(r'data-requires-python="([^"]*)"', attrs)
        out.append(DistFile(
            filename=html.unescape(label.strip()) or url.split("#")[0].rsplit("/", 1)[-1],
            url=url.split("#")[0],
            requires_python=html.unescape(rp.group(1)) if rp else None,
            upload_time=None,
            yanked="data-yanked" in attrs,
            sha256=digest.group(1) if digest else None,
        ))
    return out


def _zip64_sizes(extra: bytes, uncompressed: int, comp_size: int, local_offset: int) -> tuple[int, int]:
    """Zip64 extra field (0x0001): 64-bit values in this order, each present only if its 32-bit field is all ones."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack("<HH", extra[pos: pos + 4])
        if tag == 0x0001:
            values = struct.unpack(f"<{size // 8}Q", extra[pos + 4: pos + 4 + (size // 8) * 8])
            i = 0
            if uncompressed == 0xFFFFFFFF:
                i += 1
            if comp_size == 0xFFFFFFFF:
                comp_size, i = values[i], i + 1
            if local_offset == 0xFFFFFFFF:
                local_offset = values[i]
            break
        pos += 4 + size
    return comp_size, local_offset


@dataclass(frozen=True)
class Metadata:
    requires_python: str | None
    requires_dist: tuple[str, ...]
    provides_extra: tuple[str, ...]


def parse_metadata(text: str) -> Metadata:
    headers = HeaderParser().parsestr(text, headersonly=True)
    return Metadata(
        requires_python=headers.get("Requires-Python"),
        requires_dist=tuple(headers.get_all("Requires-Dist") or ()),
        provides_extra=tuple(headers.get_all("Provides-Extra") or ()),
    )


_WHEEL_RE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$")


def wheel_tags(filename: str) -> tuple[str, str, str, str] | None:
    """(version, python tag, abi tag, platform tag) of a wheel filename."""
    match = _WHEEL_RE.match(filename)
    if not match:
        return None
    return match.group("version"), match.group("py"), match.group("abi"), match.group("plat")
