"""Classroom logic: session model (sessions, admission, presence, moderation), attendance, tutoring, webhooks,
and the interactive features (classroom/interactive). Transport-agnostic: no HTTP or WebSocket here."""
