"""application/trickle-ice-sdpfrag (RFC 8840 section 9), as WHIP and WHEP PATCH carry it (RFC 9725 4.3).

A fragment is SDP lines: optional session-level `a=ice-ufrag`, `a=ice-pwd`, `a=ice-options`, `a=group`, then
`m=` lines each followed by `a=mid`, ICE credentials, `a=candidate` and `a=end-of-candidates`. Unknown
attributes are ignored (RFC 8840); anything that is not an SDP line, or ICE values outside their grammar
(RFC 8839 5.4: ice-char 4-256 for the ufrag, 22-256 for the password), is malformed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CONTENT_TYPE = "application/trickle-ice-sdpfrag"
_LINE = re.compile(r"^([a-z])=(.*)$")
_UFRAG = re.compile(r"^[A-Za-z0-9+/]{4,256}$")
_PWD = re.compile(r"^[A-Za-z0-9+/]{22,256}$")
_ALLOWED_TYPES = {"a", "m", "c"}


class SdpFragError(ValueError):
    """The fragment is malformed; the message names the line."""


@dataclass
class SdpFrag:
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    # (mid of the m= section it follows, or None; the attribute value "candidate:...")
    candidates: list[tuple[str | None, str]] = field(default_factory=list)
    end_of_candidates: bool = False
    mids: list[str] = field(default_factory=list)


def parse(text: str) -> SdpFrag:
    frag = SdpFrag()
    mid: str | None = None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if not any(line.strip() for line in lines):
        raise SdpFragError("the fragment is empty")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise SdpFragError(f"line {number} is not an SDP line (type=value): {line[:60]!r}")
        kind, value = m.groups()
        if kind not in _ALLOWED_TYPES:
            raise SdpFragError(f"line {number}: {kind}= does not belong in a trickle-ice-sdpfrag")
        if kind == "m":
            if len(value.split()) < 3:
                raise SdpFragError(f"line {number}: malformed m= line {value[:60]!r}")
            mid = None
            continue
        if kind != "a":
            continue
        name, _, arg = value.partition(":")
        if name == "mid":
            # Lenient: some clients send a=mid without its m= line; the mid alone still names the section.
            if not arg:
                raise SdpFragError(f"line {number}: a=mid needs a value")
            mid = arg
            frag.mids.append(arg)
        elif name == "ice-ufrag":
            if not _UFRAG.match(arg):
                raise SdpFragError(f"line {number}: ice-ufrag must be 4-256 characters of A-Z a-z 0-9 + /")
            if frag.ice_ufrag not in (None, arg):
                raise SdpFragError(f"line {number}: a second, different ice-ufrag")
            frag.ice_ufrag = arg
        elif name == "ice-pwd":
            if not _PWD.match(arg):
                raise SdpFragError(f"line {number}: ice-pwd must be 22-256 characters of A-Z a-z 0-9 + /")
            if frag.ice_pwd not in (None, arg):
                raise SdpFragError(f"line {number}: a second, different ice-pwd")
            frag.ice_pwd = arg
        elif name == "candidate":
            _check_candidate(number, arg)
            frag.candidates.append((mid, value))
        elif name == "end-of-candidates":
            frag.end_of_candidates = True
    if (frag.ice_ufrag is None) != (frag.ice_pwd is None):
        raise SdpFragError("ice-ufrag and ice-pwd come together")
    return frag


def _check_candidate(number: int, arg: str) -> None:
    """RFC 8839 5.1: foundation component transport priority address port "typ" type ..."""
    fields = arg.split()
    if (len(fields) < 8 or not fields[1].isdigit() or not fields[3].isdigit() or not fields[5].isdigit()
            or fields[6] != "typ"):
        raise SdpFragError(f"line {number}: malformed candidate {arg[:80]!r}")


def build(ice_ufrag: str, ice_pwd: str, candidates: list[str], *, end_of_candidates: bool = True) -> str:
    """The server's fragment after an ICE restart (as in RFC 9725 4.3.3's example): its new credentials
    and its candidates (`candidates` are attribute values, "candidate:...")."""
    lines = [f"a=ice-ufrag:{ice_ufrag}", f"a=ice-pwd:{ice_pwd}", *(f"a={c}" for c in candidates)]
    if end_of_candidates:
        lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"
