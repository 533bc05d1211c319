"""Simulcast in the SDP (RFC 8853, RFC 8851): which sections a publisher offers in layers, and the
answer lines that make a browser send them. Pure functions on text, tested in tests/test_sfu_simulcast.py.

A browser that publishes with `sendEncodings` offers, per section, `a=rid:<id> send` for each encoding
and `a=simulcast:send q;h;f`. aiortc parses neither and answers without them, and Chromium then sends
only its first encoding. The answer needs the rid header extensions (the seam's `enable_simulcast`),
`a=rid:<id> recv` for each layer and `a=simulcast:recv <ids>`; `with_simulcast` adds the last two to
aiortc's answer text.
"""

from __future__ import annotations

# The room page's rids, low to high (scaleResolutionDownBy 4, 2, 1). Other rids keep the offer's order,
# which RFC 8853 leaves to the sender; browsers list them as the page gave them.
RID_ORDER = {"q": 0, "h": 1, "f": 2}


def _media_sections(sdp: str) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    return sections


def offered_layers(offer_sdp: str) -> dict[str, list[str]]:
    """{mid: rids low to high} of the video sections an offer sends in simulcast (two rids or more)."""
    out: dict[str, list[str]] = {}
    for section in _media_sections(offer_sdp):
        head = section[0].split()
        if not section[0].startswith("m=video") or len(head) < 2 or head[1] == "0":
            continue
        mid = next((line[6:].strip() for line in section if line.startswith("a=mid:")), None)
        sending = {line[6:].split()[0] for line in section
                   if line.startswith("a=rid:") and len(line[6:].split()) > 1 and line[6:].split()[1] == "send"}
        spec = next((line[len("a=simulcast:"):].split() for line in section if line.startswith("a=simulcast:")), [])
        if mid is None or len(spec) < 2 or spec[0] != "send":
            continue
        # "q;h;f", alternatives "a,b" (the first is taken), "~x" paused at the start (still a layer)
        rids = [alt.split(",")[0].lstrip("~") for alt in spec[1].split(";")]
        rids = [r for r in rids if r in sending]
        if len(rids) >= 2:
            out[mid] = sorted(rids, key=lambda r: RID_ORDER.get(r, len(RID_ORDER) + rids.index(r)))
    return out


def with_simulcast(answer_sdp: str, layers: dict[str, list[str]]) -> str:
    """The answer with `a=rid:<id> recv` and `a=simulcast:recv ...` in each section of `layers` (by mid),
    in the order the offer listed them is not needed: RFC 8853 lets the answerer order them."""
    if not layers:
        return answer_sdp
    eol = "\r\n" if "\r\n" in answer_sdp else "\n"
    lines = answer_sdp.split(eol)
    trailing = lines and lines[-1] == ""
    if trailing:
        lines.pop()
    out: list[str] = []
    pending: list[str] = []
    for line in lines:
        if line.startswith("m="):
            out.extend(pending)
            pending = []
        out.append(line)
        if line.startswith("a=mid:") and line[6:].strip() in layers:
            rids = layers[line[6:].strip()]
            pending = [f"a=rid:{rid} recv" for rid in rids] + ["a=simulcast:recv " + ";".join(rids)]
    out.extend(pending)
    return eol.join(out) + (eol if trailing else "")
