"""One UDP port per node: every server peer connection shares one socket.

aioice binds a new ephemeral UDP socket per peer connection, so an operator
would have to open a whole port range.  With ``media.udp_port`` set, the
node binds that one port on each ICE host address, and the host candidate
of every server peer connection is that socket.  Incoming datagrams are
demultiplexed below aioice:

1. a STUN request names the connection in its USERNAME (``<local ufrag>:
   <remote ufrag>``, RFC 8445 section 7.2.2); the remote address it came
   from is then bound to that connection;
2. everything else (STUN responses, DTLS, SRTP/SRTCP) goes by remote
   address: the address a connectivity check arrived from or was sent to.

Only the server's own connections are muxed (``serving()`` marks the code
that gathers their candidates): aiortc clients in the same process (tests,
the recorder) keep ephemeral ports.  ``media.udp_port = 0`` keeps aioice's
ephemeral ports for the server too.

The aioice internals this relies on are named in media.aiortc_private
(ICE_CONNECTION_ATTRS, ICE_CONNECTION_PROTOCOLS, ICE_STUN_PROTOCOL_ATTRS and
ICE_MODULE_ATTRS), where tests/test_aiortc_private.py checks each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from typing import Any, Iterator

import aioice.ice
import aioice.stun

from .aiortc_private import ICE_CONNECTION_PROTOCOLS

log = logging.getLogger("odsmedia.media.udpmux")

SOCKET_BUFFER = 8 * 1024 * 1024   # the kernel caps it at net.core.rmem_max / wmem_max

_original_get_component_candidates = aioice.ice.Connection.get_component_candidates
_serving: contextvars.ContextVar[bool] = contextvars.ContextVar("odsmedia_udpmux_serving", default=False)


class _MuxTransport(asyncio.DatagramTransport):
    """What one connection's StunProtocol sees: sends through the shared socket."""

    def __init__(self, mux: "UdpMux", protocol: aioice.ice.StunProtocol) -> None:
        super().__init__()
        self._mux = mux
        self._protocol = protocol
        self._closed = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closed or self._mux.transport is None:
            return
        if data[0] < 4:
            # A STUN check: its response comes back from that address.  (Media packets
            # go only where checks went first, so the hot path skips this.)
            self._mux.bind_address((addr[0], addr[1]), self._protocol)
        self._mux.transport.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._mux.sockname
        return default  # no "socket": the shared one is not the connection's to tune

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mux.detach(self._protocol)
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


class UdpMux(asyncio.DatagramProtocol):
    """The node's one UDP socket on one address, shared by its peer connections."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.sockname: tuple[str, int] = ("", 0)
        self.by_ufrag: dict[str, aioice.ice.StunProtocol] = {}
        self.by_address: dict[tuple[str, int], aioice.ice.StunProtocol] = {}
        self._addresses_of: dict[int, set[tuple[str, int]]] = {}
        self.dropped = 0

    # --- asyncio protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Every connection of the node shares this socket's buffers: a burst of
            # many peers must not overflow them (aioice gives one connection 1 MiB).
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        name = transport.get_extra_info("sockname")
        self.sockname = (name[0], name[1])

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        addr = (addr[0], addr[1])
        target = None
        # First byte 0-3 is STUN (RFC 7983); DTLS and SRTP never start so.
        if data and data[0] < 4:
            target = self._by_username(data, addr)
        if target is None:
            target = self.by_address.get(addr)
        if target is None:
            self.dropped += 1
            return
        target.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp mux socket error: %s", exc)

    # --- routing ------------------------------------------------------------------------

    def _by_username(self, data: bytes, addr: tuple[str, int]) -> aioice.ice.StunProtocol | None:
        try:
            message = aioice.stun.parse_message(data)
        except ValueError:
            return None
        username = message.attributes.get("USERNAME")
        if message.message_class != aioice.stun.Class.REQUEST or not isinstance(username, str):
            return None
        target = self.by_ufrag.get(username.split(":", 1)[0])
        if target is not None:
            self.bind_address(addr, target)
        return target

    def bind_address(self, addr: tuple[str, int], protocol: aioice.ice.StunProtocol) -> None:
        # First come keeps an address: a later check naming another ufrag from the
        # same address still reaches its own connection by USERNAME.
        if addr not in self.by_address:
            self.by_address[addr] = protocol
            self._addresses_of.setdefault(id(protocol), set()).add(addr)

    def attach(self, protocol: aioice.ice.StunProtocol, ufrag: str) -> None:
        self.by_ufrag[ufrag] = protocol
        protocol.connection_made(_MuxTransport(self, protocol))

    def detach(self, protocol: aioice.ice.StunProtocol) -> None:
        for ufrag in [u for u, p in self.by_ufrag.items() if p is protocol]:
            del self.by_ufrag[ufrag]
        for addr in self._addresses_of.pop(id(protocol), ()):
            if self.by_address.get(addr) is protocol:
                del self.by_address[addr]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class UdpMuxSet:
    """One UdpMux per ICE host address, all on the same port."""

    def __init__(self, muxes: dict[str, UdpMux]) -> None:
        self.muxes = muxes

    @classmethod
    async def open(cls, addresses: list[str], port: int) -> "UdpMuxSet":
        loop = asyncio.get_running_loop()
        muxes: dict[str, UdpMux] = {}
        try:
            for address in addresses:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                _, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=(address, port), family=family)
                muxes[address] = mux
        except BaseException:
            for mux in muxes.values():
                mux.close()
            raise
        return cls(muxes)

    def close(self) -> None:
        for mux in self.muxes.values():
            mux.close()

    @property
    def connections(self) -> int:
        return max((len(m.by_ufrag) for m in self.muxes.values()), default=0)


def socket_fd(transport: Any) -> int:
    """The file descriptor under a server connection's datagram transport (the node's shared
    socket for a muxed one), or -1 when there is none to write to directly."""
    if isinstance(transport, _MuxTransport):
        transport = transport._mux.transport
        if transport is None:
            return -1
    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        return sock.fileno() if sock is not None else -1
    except (OSError, ValueError):
        return -1


_active: UdpMuxSet | None = None


def install(muxes: UdpMuxSet | None) -> None:
    """Use ``muxes`` for every server peer connection of this process (None: ephemeral ports)."""
    global _active
    _active = muxes
    aioice.ice.Connection.get_component_candidates = _get_component_candidates  # type: ignore[method-assign]


def active() -> UdpMuxSet | None:
    return _active


@contextlib.contextmanager
def serving() -> Iterator[None]:
    """Candidates gathered inside this block (the server's own peer connections) use the mux."""
    token = _serving.set(True)
    try:
        yield
    finally:
        _serving.reset(token)


async def _get_component_candidates(self: aioice.ice.Connection, component: int, addresses: list[str],
                                    timeout: int = 5) -> list[aioice.ice.Candidate]:
    muxes = _active
    if muxes is None or not _serving.get():
        return await _original_get_component_candidates(self, component, addresses, timeout)
    candidates = []
    # The node's addresses are those it bound at start, whatever the process policy says now.
    for mux in muxes.muxes.values():
        if mux.transport is None:
            continue
        protocol = aioice.ice.StunProtocol(self)
        mux.attach(protocol, self.local_username)
        host, port = mux.sockname
        protocol.local_candidate = aioice.ice.Candidate(
            foundation=aioice.ice.candidate_foundation("host", "udp", host), component=component,
            transport="udp", priority=aioice.ice.candidate_priority(component, "host"),
            host=host, port=port, type="host")
        getattr(self, ICE_CONNECTION_PROTOCOLS).append(protocol)
        candidates.append(protocol.local_candidate)
    return candidates
