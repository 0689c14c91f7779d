"""A WebSocket client on a bare TCP socket whose reading the test controls.

aiohttp's client reads into its own queue, so it cannot play a client that stops
reading.  This one reads a frame only when asked, over a socket with a small
receive buffer, so what it does not read backs up into the server's buffers.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import orjson

CLOSE, PING = 8, 9


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sock: socket.socket) -> None:
        self.reader, self.writer, self.sock = reader, writer, sock

    @classmethod
    async def open(cls, port: int, path: str, *, rcvbuf: int = 4096) -> "RawWebSocket":
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)   # before connect: sets the window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer, sock)

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, payload: bytes, opcode: int = 1) -> None:
        """One masked frame (as a client must send); payloads under 126 bytes or up to 64 KiB."""
        mask = os.urandom(4)
        n = len(payload)
        length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        self.writer.write(bytes([0x80 | opcode]) + length + mask
                          + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_json(self, message: dict) -> None:
        self.send(orjson.dumps(message))

    async def frame(self, timeout: float = 10) -> tuple[int, bytes]:
        """The next frame from the server (unmasked, unfragmented): (opcode, payload)."""
        async def read() -> tuple[int, bytes]:
            head = await self.reader.readexactly(2)
            n = head[1] & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            return head[0] & 0x0F, await self.reader.readexactly(n)
        return await asyncio.wait_for(read(), timeout)

    def close(self, payload: bytes = b"") -> None:
        self.send(payload, opcode=CLOSE)
        self.writer.close()


def server_socket(server, client_port: int) -> socket.socket:
    """The server's end of the connection from ``client_port`` on an aiohttp test server."""
    for handler in server.runner.server.connections:
        transport = handler.transport
        if transport is not None and transport.get_extra_info("peername")[1] == client_port:
            return transport.get_extra_info("socket")
    raise LookupError(f"no server connection from port {client_port}")
