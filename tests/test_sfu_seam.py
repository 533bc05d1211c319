"""The aiortc seam: version and shape checks, and its behaviour with real peers."""

from __future__ import annotations

import pytest

import sfu.aiortc_seam as seam
from sfu.aiortc_seam import SeamError, check_compatibility, restrict_ice_gathering
from tests.peers import client_pc


def test_installed_aiortc_is_the_one_the_seam_knows():
    check_compatibility()


def test_a_different_aiortc_version_fails_loudly(monkeypatch):
    monkeypatch.setattr(seam, "SUPPORTED_AIORTC", "0.0.1")
    with pytest.raises(SeamError, match="aiortc .* was written for 0.0.1"):
        check_compatibility()


def test_a_missing_internal_fails_loudly(monkeypatch):
    from aiortc import RTCRtpReceiver
    monkeypatch.delattr(RTCRtpReceiver, "_send_rtcp_pli")
    with pytest.raises(SeamError, match="RTCRtpReceiver lacks _send_rtcp_pli"):
        check_compatibility()


async def test_gathering_can_be_limited_to_loopback():
    pc = client_pc()
    pc.createDataChannel("x")
    offer = await pc.createOffer()
    restrict_ice_gathering(pc, ["127.0.0.1"])
    await pc.setLocalDescription(offer)
    candidates = [l for l in pc.localDescription.sdp.splitlines() if l.startswith("a=candidate")]
    assert candidates and all(" 127.0.0.1 " in c for c in candidates)
    await pc.close()


def test_no_ice_servers_by_default():
    from sfu.peer import IceSettings
    from stoa.config import load_settings
    assert load_settings(environ={"STOA_DEV": "1"}).ice_servers == []
    assert IceSettings().rtc_servers() == []
    servers = IceSettings(servers=["turn:turn.example.org"], username="u", credential="c").rtc_servers()
    assert servers[0].urls == "turn:turn.example.org" and servers[0].username == "u"
