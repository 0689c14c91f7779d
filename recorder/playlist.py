"""HLS media playlists (RFC 8216) for one episode.

While the session is live the playlist is an EVENT playlist that only grows;
when it ends it becomes a VOD playlist with EXT-X-ENDLIST.  fMP4 segments
reference their initialization section with EXT-X-MAP; a new section (the
publisher reconnected with other parameters) starts with
EXT-X-DISCONTINUITY so players reset their decoders there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CONTENT_TYPE = "application/vnd.apple.mpegurl"
ENDLIST = "#EXT-X-ENDLIST"


@dataclass(frozen=True, slots=True)
class PlaylistEntry:
    name: str
    duration: float
    init: str | None = None        # EXT-X-MAP URI: the segment's initialization section
    discontinuity: bool = False


@dataclass(slots=True)
class Playlist:
    target: float
    entries: list[PlaylistEntry] = field(default_factory=list)
    ended: bool = False

    def add(self, entry: PlaylistEntry) -> None:
        self.entries.append(entry)

    @property
    def target_duration(self) -> int:
        # Every EXTINF rounded to the nearest integer must be <= the target
        # duration; a publisher that ignores keyframe requests makes longer segments.
        longest = max((round(e.duration) for e in self.entries), default=0)
        return max(1, math.ceil(self.target - 1e-6), longest)

    def render(self) -> str:
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:7",
            f"#EXT-X-TARGETDURATION:{self.target_duration}",
            "#EXT-X-MEDIA-SEQUENCE:0",
            f"#EXT-X-PLAYLIST-TYPE:{'VOD' if self.ended else 'EVENT'}",
            "#EXT-X-INDEPENDENT-SEGMENTS",
        ]
        current_map = None
        for index, entry in enumerate(self.entries):
            if entry.discontinuity and index:
                lines.append("#EXT-X-DISCONTINUITY")
            if entry.init is not None and entry.init != current_map:
                lines.append(f'#EXT-X-MAP:URI="{entry.init}"')
                current_map = entry.init
            lines.append(f"#EXTINF:{entry.duration:.6f},")
            lines.append(entry.name)
        if self.ended:
            lines.append(ENDLIST)
        return "\n".join(lines) + "\n"



@dataclass(frozen=True, slots=True)
class VideoRendition:
    """One video source of an episode, as a multivariant playlist declares it."""

    name: str               # NAME: screen, camera, camera-2
    uri: str                # its media playlist
    codecs: str             # "avc1.42e01f,opus" ('' when unknown: CODECS is left out)
    width: int
    height: int
    peak_bps: int
    average_bps: int


def render_multivariant(main: VideoRendition, others: list[VideoRendition]) -> str:
    """The episode's multivariant playlist: one variant stream, the main rendition (the screen,
    with the audio muxed in), and every video source as an alternative VIDEO rendition of it
    (RFC 8216 4.3.4.1, the "camera angles" form): a player that knows no alternatives plays
    the main one, one that does can offer the others by NAME."""
    group = "sources"
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    lines.append(f'#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="{group}",NAME="{main.name}",DEFAULT=YES,AUTOSELECT=YES')
    for other in others:
        lines.append(f'#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="{group}",NAME="{other.name}",DEFAULT=NO,AUTOSELECT=NO,'
                     f'URI="{other.uri}"')
    # BANDWIDTH covers whichever rendition of the group a player picks.
    peak = max([main.peak_bps] + [o.peak_bps for o in others])
    attributes = [f"BANDWIDTH={max(1, peak)}", f"AVERAGE-BANDWIDTH={max(1, main.average_bps)}"]
    if main.codecs:
        attributes.append(f'CODECS="{main.codecs}"')
    if main.width and main.height:
        attributes.append(f"RESOLUTION={main.width}x{main.height}")
    if others:
        attributes.append(f'VIDEO="{group}"')
    lines.append("#EXT-X-STREAM-INF:" + ",".join(attributes))
    lines.append(main.uri)
    return "\n".join(lines) + "\n"
