"""The interactive layer: chat, Q&A, polls, whiteboard, quizzes, hands and reactions, transport-agnostic.

See docs/interactive.md.
"""

from classroom.interactive.envelope import ERROR_CODES, Envelope, ProtocolError, parse_message
from classroom.interactive.queries import board_png, chat_history
from classroom.interactive.quiz import QuizBankError, import_bank
from classroom.interactive.registry import RoomRegistry
from classroom.interactive.room import InteractiveRoom, RoomOptions
from classroom.interactive.whiteboard import render_png

__all__ = ["ERROR_CODES", "Envelope", "InteractiveRoom", "ProtocolError", "QuizBankError", "RoomOptions",
           "RoomRegistry", "board_png", "chat_history", "import_bank", "parse_message", "render_png"]
