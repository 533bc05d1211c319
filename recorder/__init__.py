"""Recording of forwarded RTP tracks: depacketize, mux without re-encoding, manifest, recovery,
composite export. See docs/recording.md."""
