"""DTLS with a peer whose certificate is RSA (GStreamer's webrtcbin, many hardware encoders), in both
DTLS roles: Stoa as the DTLS client (it answers `a=setup:active` to actpass) and as the server (the
peer offers `a=setup:active`)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sfu.aiortc_seam import use_dtls_certificate
from signaling.room import ROOMS
from tests.media import CounterVideoTrack, ToneAudioTrack
from tests.peers import apply_answer, make_offer
from tests.test_whip_whep import (ROOM, SDP, WhepViewer, WhipPublisher, assert_counters_healthy, http,  # noqa: F401
                                  token, wait_no_peers, wait_until)


@pytest.fixture(scope="module")
def rsa_identity():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gstreamer-like")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    return key, cert


class RsaWhepViewer(WhepViewer):
    """A WHEP viewer with an RSA certificate that can insist on being the DTLS client."""

    def __init__(self, *args, identity, setup: str = "actpass"):
        super().__init__(*args)
        use_dtls_certificate(self.pc, *identity)
        self.setup = setup

    async def start(self) -> "RsaWhepViewer":
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        offer = (await make_offer(self.pc)).replace("a=setup:actpass", f"a=setup:{self.setup}")
        async with self.http.post(self.url, data=offer, headers={
                "Content-Type": SDP, "Authorization": f"Bearer {self.token}"}) as resp:
            body = await resp.text()
            assert resp.status == 201, f"WHEP POST answered {resp.status}: {body}"
            self.location = resp.headers["Location"]
        self.answer = body
        await apply_answer(self.pc, body)
        return self


async def test_rsa_publisher_over_whip_and_rsa_viewers_over_whep_in_both_dtls_roles(stoa_server, http, rsa_identity):
    pub = WhipPublisher(http, stoa_server.base, ROOM, token(stoa_server, "gst", "instructor"))
    use_dtls_certificate(pub.pc, *rsa_identity)
    await pub.publish(CounterVideoTrack(), ToneAudioTrack())
    assert "a=setup:active" in pub.answer, "Stoa is the DTLS client of the RSA publisher"
    assert {line.split()[0] for line in pub.answer.splitlines() if line.startswith("a=fingerprint:")} == \
        {"a=fingerprint:sha-256"}, "one SHA-256 fingerprint, as browsers send (libdatachannel needs it)"

    as_client = await RsaWhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "v1", "viewer"),
                                    identity=rsa_identity).start()
    as_server = await RsaWhepViewer(http, stoa_server.base, ROOM, token(stoa_server, "v2", "viewer"),
                                    identity=rsa_identity, setup="active").start()
    assert "a=setup:active" in as_client.answer
    assert "a=setup:passive" in as_server.answer, "Stoa is the DTLS server of this viewer"
    for viewer in (as_client, as_server):
        await wait_until(lambda: {"video", "audio"} <= set(viewer.collectors), 10, "both tracks")
        await viewer.video.wait_frames(30, timeout=15)
        await viewer.audio.wait_frames(25, timeout=10)
        assert_counters_healthy(viewer.video.counters)
    assert pub.pc.connectionState == "connected"
    room = stoa_server.app[ROOMS].rooms[ROOM]
    assert set(room.participants) == {"gst", "v1", "v2"}
    for viewer in (as_client, as_server):
        assert await viewer.stop() == 200
    assert await pub.stop() == 200
    await wait_no_peers(stoa_server)
