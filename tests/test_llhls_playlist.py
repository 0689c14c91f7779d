"""The live LL-HLS playlist: tags, blocking reload, delta updates, 400 rules."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from recorder.llhls import (
    BlockingRequest, LivePlaylist, PlaylistRequestError, PlaylistTimeout, part_name,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def feed(playlist: LivePlaylist, segments: int, parts_per_segment: int = 4, part: float = 1.0,
         open_parts: int = 0) -> None:
    """``segments`` closed segments of whole parts, then ``open_parts`` of the next one."""
    start = 0.0
    for msn in range(1, segments + 2):
        count = parts_per_segment if msn <= segments else open_parts
        if count == 0:
            break
        for index in range(count):
            playlist.add_part(
                msn=msn, segment_uri=f"{msn:05d}-0.m4s", part_uri=part_name(msn, 0, index),
                duration=part, independent=index == 0, init="init-0.mp4", discontinuity=False,
                program_date_time=T0 + timedelta(seconds=start))
        if msn <= segments:
            playlist.close_segment(msn, parts_per_segment * part)
            start += parts_per_segment * part


def test_live_playlist_lists_parts_hint_and_server_control():
    playlist = LivePlaylist(target=4.0, part_target=1.0)
    feed(playlist, segments=2, open_parts=2)
    assert playlist.render() == "\n".join([
        "#EXTM3U",
        "#EXT-X-VERSION:9",
        "#EXT-X-TARGETDURATION:4",
        "#EXT-X-MEDIA-SEQUENCE:1",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=24.0,PART-HOLD-BACK=3.000",
        "#EXT-X-PART-INF:PART-TARGET=1.000",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MAP:URI="init-0.mp4"',
        "#EXT-X-PROGRAM-DATE-TIME:2026-01-02T03:04:05.000Z",
        '#EXT-X-PART:DURATION=1.00000,URI="00001-0.0.m4s",INDEPENDENT=YES',
        '#EXT-X-PART:DURATION=1.00000,URI="00001-0.1.m4s"',
        '#EXT-X-PART:DURATION=1.00000,URI="00001-0.2.m4s"',
        '#EXT-X-PART:DURATION=1.00000,URI="00001-0.3.m4s"',
        "#EXTINF:4.000000,",
        "00001-0.m4s",
        "#EXT-X-PROGRAM-DATE-TIME:2026-01-02T03:04:09.000Z",
        '#EXT-X-PART:DURATION=1.00000,URI="00002-0.0.m4s",INDEPENDENT=YES',
        '#EXT-X-PART:DURATION=1.00000,URI="00002-0.1.m4s"',
        '#EXT-X-PART:DURATION=1.00000,URI="00002-0.2.m4s"',
        '#EXT-X-PART:DURATION=1.00000,URI="00002-0.3.m4s"',
        "#EXTINF:4.000000,",
        "00002-0.m4s",
        "#EXT-X-PROGRAM-DATE-TIME:2026-01-02T03:04:13.000Z",
        '#EXT-X-PART:DURATION=1.00000,URI="00003-0.0.m4s",INDEPENDENT=YES',
        '#EXT-X-PART:DURATION=1.00000,URI="00003-0.1.m4s"',
        '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="00003-0.2.m4s"',
    ]) + "\n"


def test_ended_playlist_is_the_vod_playlist_without_parts():
    playlist = LivePlaylist(target=4.0, part_target=1.0)
    feed(playlist, segments=2, open_parts=1)
    playlist.end()
    text = playlist.render()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in text
    assert text.endswith("00003-0.m4s\n#EXT-X-ENDLIST\n")
    assert "#EXT-X-PART" not in text and "PRELOAD-HINT" not in text and "SERVER-CONTROL" not in text
    assert [l for l in text.splitlines() if l.startswith("#EXTINF")] == [
        "#EXTINF:4.000000,", "#EXTINF:4.000000,", "#EXTINF:1.000000,"]


def test_delta_update_skips_old_segments_and_stays_consistent():
    playlist = LivePlaylist(target=4.0, part_target=1.0)
    feed(playlist, segments=10, open_parts=1)          # 41 s of media, skip boundary 24 s
    full = playlist.render().splitlines()
    delta = playlist.render(skip=True).splitlines()
    assert "#EXT-X-SKIP:SKIPPED-SEGMENTS=4" in delta
    # The delta lists exactly the full playlist's last segments, from 00005 on.
    uris = [l for l in delta if l.endswith(".m4s") and not l.startswith("#")]
    assert uris == [f"{msn:05d}-0.m4s" for msn in range(5, 11)]
    assert [l for l in full if l.endswith(".m4s") and not l.startswith("#")][4:] == uris
    # Media sequence is unchanged; the init section is still declared before the first listed segment.
    assert "#EXT-X-MEDIA-SEQUENCE:1" in delta
    assert delta.index('#EXT-X-MAP:URI="init-0.mp4"') < delta.index("00005-0.m4s")
    # Skipped duration is left out; what remains is at least CAN-SKIP-UNTIL long (24 s).
    remaining = sum(float(l[8:-1]) for l in delta if l.startswith("#EXTINF:")) + 1.0
    assert remaining >= 24.0
    # A short playlist has nothing to skip.
    short = LivePlaylist(target=4.0, part_target=1.0)
    feed(short, segments=3)
    assert "#EXT-X-SKIP" not in short.render(skip=True)


async def test_blocking_reload_answers_when_the_part_is_added():
    playlist = LivePlaylist(target=4.0, part_target=1.0)
    feed(playlist, segments=1, open_parts=1)
    waiter = asyncio.create_task(playlist.wait_for(2, 1))
    await asyncio.sleep(0)
    assert not waiter.done()
    playlist.add_part(msn=2, segment_uri="00002-0.m4s", part_uri=part_name(2, 0, 1), duration=1.0,
                      independent=False, init="init-0.mp4", discontinuity=False, program_date_time=T0)
    await asyncio.wait_for(waiter, 1.0)
    # Already satisfied: returns without waiting; a whole segment waits for its close.
    await asyncio.wait_for(playlist.wait_for(1, None), 0.1)
    segment_waiter = asyncio.create_task(playlist.wait_for(2, None))
    await asyncio.sleep(0)
    assert not segment_waiter.done()
    playlist.close_segment(2, 2.0)
    await asyncio.wait_for(segment_waiter, 1.0)


async def test_blocking_reload_times_out_and_end_releases_waiters():
    playlist = LivePlaylist(target=4.0, part_target=1.0)
    feed(playlist, segments=1)
    with pytest.raises(PlaylistTimeout):
        await playlist.wait_for(2, 0, timeout=0.05)
    waiter = asyncio.create_task(playlist.wait_for(2, 3))
    await asyncio.sleep(0)
    playlist.end()
    await asyncio.wait_for(waiter, 1.0)


@pytest.mark.parametrize("query, reason", [
    ({"_HLS_part": "1"}, "hls_part_without_msn"),
    ({"_HLS_msn": "x"}, "bad_hls_msn"),
    ({"_HLS_msn": "-1"}, "bad_hls_msn"),
    ({"_HLS_msn": "+2"}, "bad_hls_msn"),
    ({"_HLS_msn": "2", "_HLS_part": "1.0"}, "bad_hls_part"),
    ({"_HLS_msn": "99999999999"}, "bad_hls_msn"),
    ({"_HLS_msn": "5"}, "hls_msn_too_far_ahead"),          # last is 2: limit is 2 + 2
    ({"_HLS_msn": "3", "_HLS_part": "4"}, "hls_part_too_far_ahead"),   # next segment: 3 + 1 > 3
    ({"_HLS_msn": "2", "_HLS_part": "5"}, "hls_part_too_far_ahead"),   # last part is 0
    ({"_HLS_skip": "NO"}, "bad_hls_skip"),
])
def test_bad_hls_parameters_are_rejected(query, reason):
    playlist = LivePlaylist(target=4.0, part_target=1.0)
    feed(playlist, segments=1, open_parts=1)
    with pytest.raises(PlaylistRequestError) as caught:
        BlockingRequest.parse(query, playlist)
    assert caught.value.reason == reason


def test_good_hls_parameters_parse():
    playlist = LivePlaylist(target=4.0, part_target=1.0)
    feed(playlist, segments=1, open_parts=1)
    assert BlockingRequest.parse({"_HLS_msn": "4"}, playlist) == BlockingRequest(4, None, False)
    assert BlockingRequest.parse({"_HLS_msn": "2", "_HLS_part": "4", "_HLS_skip": "YES"},
                                 playlist) == BlockingRequest(2, 4, True)
    assert BlockingRequest.parse({}, playlist) == BlockingRequest(None, None, False)
