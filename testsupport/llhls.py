"""An LL-HLS client for tests and benchmarks: follows a live playlist the way a player does.

It asks for the part the last response's EXT-X-PRELOAD-HINT names (blocking
playlist reload), fetches every listed part once, in playlist order, with the
init section its segment maps, and decodes each segment's parts with PyAV
(``testsupport.synthetic.read_segment``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

import aiohttp

from .synthetic import DecodedSegment, read_segment

_LINE = re.compile(r'^#EXT-X-(MAP|PART|PRELOAD-HINT):(.*)$', re.M)
_URI = re.compile(r'URI="([^"]+)"')
_NAME = re.compile(r"([0-9]+)-[0-9]+\.([0-9]+)\.m4s")


@dataclass
class ReceivedPart:
    msn: int
    index: int
    init: str
    data: bytes
    received_at: float         # time.monotonic() when its bytes arrived


@dataclass
class LlHlsClient:
    session: aiohttp.ClientSession
    playlist_url: str          # absolute, may carry a query (a URL token)
    parts: list[ReceivedPart] = field(default_factory=list)
    inits: dict[str, bytes] = field(default_factory=dict)
    reloads: int = 0
    ended: bool = False

    async def _get(self, url: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        async with self.session.get(url, params=params) as response:
            return response.status, await response.read()

    async def follow(self, *, enough: int, deadline: float) -> None:
        """Receive parts until ``enough`` of them arrived, the playlist ended, or the publisher
        stopped (a blocking reload answered 503); AssertionError past ``deadline`` (monotonic)."""
        msn, part = 1, 0
        have: set[tuple[int, int]] = set()
        while len(self.parts) < enough:
            assert time.monotonic() < deadline, f"only {len(self.parts)} parts before the deadline"
            status, body = await self._get(self.playlist_url, {"_HLS_msn": str(msn), "_HLS_part": str(part)})
            self.reloads += 1
            if status == 503:
                if not self.parts:
                    continue                 # the first part is late (sources wait for sender reports): ask again
                return                       # nothing more is coming
            assert status == 200, (status, body[:200])
            text = body.decode()
            current_map = None
            hint = None
            for kind, attrs in _LINE.findall(text):
                uri = _URI.search(attrs).group(1)
                if kind == "MAP":
                    current_map = uri
                    continue
                named = _NAME.search(uri)
                position = int(named.group(1)), int(named.group(2))
                if kind == "PRELOAD-HINT":
                    hint = position
                    continue
                if position in have:
                    continue
                assert not self.parts or position > (self.parts[-1].msn, self.parts[-1].index), position
                url = urljoin(self.playlist_url, uri)
                init_name = current_map.split("?")[0]
                if init_name not in self.inits:
                    init_status, init = await self._get(urljoin(self.playlist_url, current_map))
                    assert init_status == 200, init_status
                    self.inits[init_name] = init
                part_status, data = await self._get(url)
                assert part_status == 200, (part_status, uri)
                have.add(position)
                self.parts.append(ReceivedPart(*position, init_name, data, time.monotonic()))
            if "#EXT-X-ENDLIST" in text:
                self.ended = True
                return
            assert hint is not None, "a live playlist names the next part"
            msn, part = hint

    def segments(self) -> list[tuple[int, DecodedSegment]]:
        """(msn, decoded) of each segment received, its parts joined (a segment is its parts)."""
        grouped: dict[int, list[ReceivedPart]] = {}
        for received in self.parts:
            grouped.setdefault(received.msn, []).append(received)
        out = []
        for msn, parts in sorted(grouped.items()):
            out.append((msn, read_segment(self.inits[parts[0].init], b"".join(p.data for p in parts))))
        return out
