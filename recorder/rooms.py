"""What the recorder needs from the rooms of the running server, and nothing more.

signaling.room.Room and RoomManager implement these; stoa/app.py hands the RoomManager to
recorder.service.recordings_ctx. The recorder never sees participants, sockets or the room protocol.
"""

from __future__ import annotations

from typing import Callable, Protocol

from sfu.uptrack import UpTrack

# ("published" | "unpublished", track)
TrackListener = Callable[[str, UpTrack], None]
Unwatch = Callable[[], None]


class RecordedRoom(Protocol):
    name: str

    def tracks(self) -> list[UpTrack]: ...

    def is_empty(self) -> bool: ...

    def display_name(self, identity: str) -> str | None:
        """The name the participant `identity` goes by in this room; None when it is not here."""

    def watch_tracks(self, listener: TrackListener) -> Unwatch:
        """Call `listener` for every track published or unpublished from now on, until unwatched."""

    def watch_empty(self, listener: Callable[[], None]) -> Unwatch:
        """Call `listener` when the last participant has left (or the room is closed), until unwatched."""

    async def broadcast(self, message: dict) -> None:
        """Send a room-protocol message to everyone in the room."""


class RoomDirectory(Protocol):
    def find(self, name: str) -> RecordedRoom | None: ...

    def watch_rooms(self, listener: Callable[[RecordedRoom], None]) -> None:
        """Call `listener` with every room created from now on."""
