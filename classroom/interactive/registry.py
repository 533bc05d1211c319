"""RoomRegistry: one InteractiveRoom per session, created on first use, kept on the Application."""

from __future__ import annotations

import asyncio
from typing import Any

from classroom.interactive.room import InteractiveRoom, RoomOptions
from shared.clock import SYSTEM_CLOCK, Clock


class RoomRegistry:
    def __init__(self, store: Any, *, clock: Clock = SYSTEM_CLOCK, options: RoomOptions | None = None):
        self.store = store
        self.clock = clock
        self.options = options
        self.rooms: dict[str, InteractiveRoom] = {}
        self._lock = asyncio.Lock()

    async def get(self, session_id: str, room_name: str, features: dict | None = None) -> InteractiveRoom:
        async with self._lock:
            room = self.rooms.get(session_id)
            if room is None or room.closed:
                room = InteractiveRoom(self.store, session_id, room_name, features or {}, self.clock,
                                       options=self.options)
                self.rooms[session_id] = room
            return room

    async def close_room(self, session_id: str) -> None:
        async with self._lock:
            room = self.rooms.pop(session_id, None)
        if room is not None:
            await room.close()

    async def close(self) -> None:
        async with self._lock:
            rooms, self.rooms = list(self.rooms.values()), {}
        await asyncio.gather(*(room.close() for room in rooms))
