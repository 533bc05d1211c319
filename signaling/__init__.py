"""Control plane: room protocol over WebSocket, WHIP/WHEP, and access tokens."""
