"""JSEP answer rules that aiortc 1.16's createAnswer does not follow, applied to its answer text.

aiortc answers every offered m-line with port 9 and puts every mid in its BUNDLE group. When a browser
stops a transceiver, its next offer keeps that m-line rejected (port 0) and out of its BUNDLE group
(RFC 8829 §5.2.2); an answer must reject it too (§5.3.1) and may only bundle mids the offer bundled
(RFC 8843 §7.3). Chromium refuses anything else ("A BUNDLE group in answer contains a MID='2' that was
not in the offered group"; with every m-line rejected: "A BUNDLE group was added in the answer that did
not exist in the offer"). `conform_answer` fixes exactly that on the SDP text, so the stock answer and
its transports stay aiortc's. A pure function on text, tested byte for byte in tests/test_sfu_jsep.py.
"""

from __future__ import annotations

import re

_PORT = re.compile(r"^(m=\S+ )(\d+)( .*)$")
_DIRECTIONS = ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")


def _sections(sdp: str) -> tuple[str, list[str], list[list[str]]]:
    """(line ending, session lines, media sections as lists of lines) of an SDP text."""
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    if lines and lines[-1] == "":
        lines.pop()
    session: list[str] = []
    media: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return eol, session, media


def _port(section: list[str]) -> int:
    match = _PORT.match(section[0])
    return int(match.group(2)) if match else -1


def _mid(section: list[str]) -> str | None:
    return next((line[6:] for line in section if line.startswith("a=mid:")), None)


def _bundle(session: list[str]) -> list[str] | None:
    line = next((line for line in session if line.startswith("a=group:BUNDLE")), None)
    return None if line is None else line.split()[1:]


def conform_answer(offer_sdp: str, answer_sdp: str) -> str:
    """The answer with every m-line the offer rejected rejected too (port 0, inactive, no candidates),
    and a BUNDLE group holding only mids the offer bundled and the answer accepts (none: no group)."""
    _, offer_session, offer_media = _sections(offer_sdp)
    eol, session, media = _sections(answer_sdp)
    rejected: set[int] = {i for i, section in enumerate(offer_media) if _port(section) == 0}
    for i in rejected & set(range(len(media))):
        section = media[i]
        section[0] = _PORT.sub(r"\g<1>0\g<3>", section[0])
        kept = [line for line in section[1:] if not line.startswith(("a=candidate:", "a=end-of-candidates"))
                and line not in _DIRECTIONS]
        media[i] = [section[0], *kept, "a=inactive"]
    offered = _bundle(offer_session) or []
    accepted = {_mid(section) for i, section in enumerate(media) if i not in rejected}
    items = [mid for mid in offered if mid in accepted]
    out_session = []
    for line in session:
        if line.startswith("a=group:BUNDLE"):
            if items:
                out_session.append("a=group:BUNDLE " + " ".join(items))
            continue
        out_session.append(line)
    lines = out_session + [line for section in media for line in section]
    return eol.join(lines) + eol


def rejected_mids(sdp: str) -> set[str]:
    """The mids of the m-lines a description rejects (port 0)."""
    _, _, media = _sections(sdp)
    return {mid for section in media if _port(section) == 0 and (mid := _mid(section)) is not None}
