"""aiohttp routes that speak to media clients: WebSocket signaling, WHIP, WHEP."""
