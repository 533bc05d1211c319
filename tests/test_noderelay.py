"""The relay envelope between nodes (sfu/noderelay.py): tags, replay window, control messages."""

from __future__ import annotations

import pytest

from sfu.noderelay import (EDGE_TO_HOME, HOME_TO_EDGE, REPLAY_WINDOW, ReplayWindow, check_node_message, link_key,
                           seal, unseal, unseal_head)
from sfu.relay import RelayError, decode_datagram, encode_datagram, encode_entry

KEY = link_key(b"cluster secret", "0" * 32)


def test_a_sealed_datagram_opens_with_its_link_key_only():
    inner = encode_datagram([encode_entry(3, 100, 9000, 1, 96, 0x1234, b"payload")])
    data = seal(KEY, 7, 42, inner)
    assert unseal_head(data) == (7, 42)
    assert decode_datagram(unseal(KEY, data))[0].payload == b"payload"
    with pytest.raises(RelayError, match="does not verify"):
        unseal(link_key(b"cluster secret", "1" * 32), data)
    for i in (0, 5, len(data) // 2, len(data) - 1):  # any flipped bit, header, body or tag
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises(RelayError):
            unseal_head(bytes(tampered))
            unseal(KEY, bytes(tampered))
    with pytest.raises(RelayError, match="not a Stoa relay datagram"):
        unseal_head(b"\x80" + data[1:])


def test_the_replay_window_takes_each_counter_once_and_reordering_within_it():
    w = ReplayWindow()
    assert [w.accept(c) for c in (1, 3, 2, 3, 1)] == [True, True, True, False, False]
    assert w.accept(REPLAY_WINDOW + 10)
    assert not w.accept(5), "older than the window"
    assert w.accept(REPLAY_WINDOW + 9) and not w.accept(REPLAY_WINDOW + 9)


def test_control_messages_between_nodes_are_checked_by_direction():
    check_node_message({"type": "hello", "link": 1, "nonce": "ab" * 16}, HOME_TO_EDGE)
    check_node_message({"type": "broadcast", "tracks": {"video": 2}}, HOME_TO_EDGE)
    check_node_message({"type": "nack", "stream": 2, "seqs": [1, 2]}, EDGE_TO_HOME)
    with pytest.raises(RelayError, match="unexpected control message 'hello'"):
        check_node_message({"type": "hello", "link": 1, "nonce": "ab" * 16}, EDGE_TO_HOME)
    with pytest.raises(RelayError, match="nonce"):
        check_node_message({"type": "hello", "link": 1, "nonce": "short"}, HOME_TO_EDGE)
    with pytest.raises(RelayError, match="tracks"):
        check_node_message({"type": "broadcast", "tracks": {"screen": 2}}, HOME_TO_EDGE)


async def test_the_endpoint_counts_each_dropped_datagram_under_its_reason():
    from sfu.noderelay import open_endpoint

    class Edge:
        key, window, packets = KEY, ReplayWindow(), []

        def on_packets(self, packets, arrival):
            self.packets.extend(packets)

    endpoint = await open_endpoint("127.0.0.1")
    try:
        edge = endpoint.inbound[7] = Edge()
        inner = encode_datagram([encode_entry(3, 100, 9000, 1, 96, 0x1234, b"payload")])
        good = seal(KEY, 7, 1, inner)
        endpoint.datagram_received(good, ("127.0.0.1", 1), 0.0)
        endpoint.datagram_received(good, ("127.0.0.1", 1), 0.0)  # again: a replay
        endpoint.datagram_received(seal(KEY, 8, 1, inner), ("127.0.0.1", 1), 0.0)  # before its hello
        endpoint.datagram_received(seal(link_key(b"other", "0" * 32), 7, 2, inner), ("127.0.0.1", 1), 0.0)
        endpoint.datagram_received(seal(KEY, 7, 3, b"\x01"), ("127.0.0.1", 1), 0.0)
        endpoint.datagram_received(b"\x80junk", ("127.0.0.1", 1), 0.0)
        assert [p.payload for p in edge.packets] == [b"payload"]
        assert endpoint.rejected == {"unknown_link": 1, "bad_tag": 1, "replay": 1, "malformed": 2}
    finally:
        endpoint.close()
