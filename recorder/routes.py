"""Replay: episode listings, playlists and segments, behind the room's entry gate.

GET    /rooms/{slug}/episodes        JSON list, newest first, paged (?limit=, ?before=); a browser
                                     asking for HTML gets the replay page
GET    /episodes/{id}                JSON metadata
GET    /episodes/{id}/index.m3u8     the first rendition's HLS media playlist (EVENT while live, VOD
                                     with ENDLIST after), built from the segment rows, so any node
                                     answers it
GET    /episodes/{id}/master.m3u8    the multivariant playlist: the main rendition (screen, else the
                                     first) with every video source declared as an alternative
GET    /episodes/{id}/{rendition}.m3u8  another rendition's media playlist (screen.m3u8, camera-2.m3u8)
GET    /episodes/{id}/{segment}      init sections and segments, with Range, ETag, immutable caching;
                                     with a bucket (storage.backend = s3): a redirect to a short-lived
                                     presigned URL, or the bytes proxied (storage.serve = proxy)
GET    /episodes/{id}/live.m3u8      LL-HLS while live (parts, blocking reload ?_HLS_msn=&_HLS_part=,
                                     delta updates ?_HLS_skip=YES), answered by the recording node
                                     from memory; once the episode is no longer live, the VOD playlist
GET    /episodes/{id}/{part}         a part (NNNNN-P.I.m4s) of a recent segment, from memory
DELETE /episodes/{id}                host or moderator of the room: rows and files go

Every request passes ``Gate.admit(request, room, Entry.REPLAY)``; the playlists, parts and
segments resolve their access through ``origin.HlsOrigin`` instead (a public room needs no
identity, a ``?token=`` URL token stands for the gate's admission; docs/recording.md "Behind a
CDN"), which also decides what a shared cache may keep.  A live playlist or part asked of a node
that does not record the episode is a 307 to the node that does (``rooms.placement``).  A segment
name must match the naming pattern *and* be one of the episode's own rows;
the storage key is built from the stored row, never from request text.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from typing import AsyncIterator

from aiohttp import web

from odsmedia.chat import store as chat_store
from odsmedia.config import ConfigError
from odsmedia.errors import INT64_MAX, ApiError, json_response, path_id, query_int
from odsmedia.gate import Entry
from odsmedia.keys import CONFIG, DB, GATE
from odsmedia.rooms.sfu import SFU

from . import episodes, finalize, metrics
from .episodes import Episode, Rendition, main_rendition
from .playlist import CONTENT_TYPE as PLAYLIST_TYPE
from .playlist import Playlist, PlaylistEntry, VideoRendition, render_multivariant
from .llhls import BlockingRequest, PlaylistRequestError, PlaylistTimeout
from .origin import Cors, HlsOrigin, LiveEpisodes, MediaAccess
from .purge import Purger
from .recorder import RECORDER, Recorder, local_node_id
from .storage import MissingObject, Storage, StorageError, open_stores
from .urltoken import UrlTokens, derive_key

PART_PATTERN = r"[0-9]{5,9}-[0-9]{1,6}\.[0-9]{1,4}\.m4s"
# A rendition other than the first: its playlist is NAME.m3u8 and its files are prefixed "NAME.".
RENDITION_PATTERN = r"(?:camera|screen)(?:-[0-9]{1,3})?"
SEGMENT_PATTERN = (r"(?:" + RENDITION_PATTERN + r"\.)?(?:[0-9]{5,9}-[0-9]{1,6}\.m4s|init-[0-9]{1,6}\.mp4)")
# ASCII digits only (\d would take any script's digits).
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$", re.ASCII)
# A position of more digits than this is past the end of any file; int() of thousands
# of digits would raise, so such numbers are never converted.
_POSITION_DIGITS = 18


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _POSITION_DIGITS else 10**_POSITION_DIGITS


# Longest wait at shutdown for recordings still uploading (stop grace is 15 s).
UPLOAD_SHUTDOWN_GRACE = 10.0
# Seconds a presigned segment URL lives; 0: segments are served by this node (local or proxy).
PRESIGN_SECONDS: web.AppKey[int] = web.AppKey("presign_seconds", int)
PURGER: web.AppKey[Purger] = web.AppKey("episode_purger", Purger)
HLS_ORIGIN: web.AppKey[HlsOrigin] = web.AppKey("hls_origin", HlsOrigin)


def recorder_of(app: web.Application) -> Recorder:
    return app[RECORDER]


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` -> (start, end exclusive); None for the whole body.

    One range only (players never ask for more); a malformed header is ignored
    as RFC 9110 allows, an unsatisfiable one is a 416.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":
        length = _position(last)
        if length == 0:
            raise _unsatisfiable(size)
        return max(0, size - length), size
    start = _position(first)
    end = size if last == "" else min(size, _position(last) + 1)
    if start >= size or end <= start:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> ApiError:
    err = ApiError(416, "range_not_satisfiable", "the requested range is outside the segment")
    err.headers["Content-Range"] = f"bytes */{size}"
    return err


def _episode_id(request: web.Request) -> int:
    return path_id(request, "episode_id", "episode_not_found", "no such episode")


async def _admitted_episode(request: web.Request) -> tuple[Episode, object]:
    episode = await episodes.get(request.app[DB], _episode_id(request))
    if episode is None:
        raise ApiError(404, "episode_not_found", "no such episode")
    admission = await request.app[GATE].admit(request, episode.room_slug, Entry.REPLAY)
    return episode, admission


def _not_modified(request: web.Request, etag: str) -> bool:
    tags = request.headers.get("If-None-Match", "")
    return bool(tags) and (tags.strip() == "*" or etag in [t.strip() for t in tags.split(",")])


async def list_episodes(request: web.Request) -> web.StreamResponse:
    accept = request.headers.get("Accept", "")
    if "text/html" in accept and "application/json" not in accept:
        # The page and the API share this URL; browsers navigating get the page.
        from web.pages import page_handler

        return await page_handler("replay.html")(request)
    admission = await request.app[GATE].admit(request, request.match_info["slug"], Entry.REPLAY)
    limit = _int_param(request, "limit", 50, 1, 100)
    before = None
    if "before" in request.query:
        cursor = await episodes.get(request.app[DB], _int_param(request, "before", 0, 1, INT64_MAX))
        if cursor is None or cursor.room_id != admission.room.id:
            raise ApiError(400, "invalid_cursor", "before must be the id of an episode of this room")
        before = (cursor.started_at, cursor.id)
    items = await episodes.for_room(request.app[DB], admission.room.id, limit=limit + 1, before=before)
    page = items[:limit]
    origin = request.app[HLS_ORIGIN]
    return json_response({
        "room": admission.room.public(),
        "episodes": [origin.listed(e, admission.room) for e in page],
        # The next page: ?before=<this id> (null on the last page).
        "next_before": page[-1].id if len(items) > limit else None,
    }, headers={"Cache-Control": "no-cache"})


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    return query_int(request, name, default, low=low, high=high)


async def get_episode(request: web.Request) -> web.Response:
    episode, admission = await _admitted_episode(request)
    body = episode.summary()
    # Highlights are the episode's chapters: marks on the replay timeline, in time order.
    highlights = await chat_store.episode_highlights(request.app[DB], episode.id)
    body.update(
        room=episode.room_slug,
        playlist=f"/episodes/{episode.id}/index.m3u8",
        master=f"/episodes/{episode.id}/master.m3u8",
        renditions=await _renditions(request, episode),
        can_delete=admission.is_moderator,
        chapters=[{"id": h.id, "offset": h.wire()["offset"], "title": h.text or f"Highlight by {h.author_name}",
                   "name": h.author_name} for h in highlights if h.offset is not None],
    )
    return json_response(body, headers={"Cache-Control": "no-cache"})


async def _renditions(request: web.Request, episode: Episode) -> list[dict]:
    """The episode's video sources for players: which is the screen, which the camera, their
    playlists, and where each starts on the episode's clock (``offset``: seconds after the
    first rendition's start, which is started_at, the zero of chat and chapter offsets)."""
    db = request.app[DB]
    listed = await episodes.renditions(db, episode.id)
    stats = await episodes.rendition_stats(db, episode.id)
    listed = [r for r in listed if r.rendition in stats]
    main = main_rendition(listed, stats)
    zero = stats[""].start if "" in stats else min((s.start for s in stats.values()), default=0.0)
    return [{
        "name": r.label, "source": r.source, "main": r is main,
        "video_codec": r.video_codec, "audio_codec": r.audio_codec, "width": r.width, "height": r.height,
        "playlist": f"/episodes/{episode.id}/{r.playlist}",
        "offset": round(stats[r.rendition].start - zero, 3),
    } for r in listed]


def _playlist_response(request: web.Request, access: MediaAccess, text: str) -> web.Response:
    # A token URL's playlist carries that token on; one admitted by cookie does not (a VOD
    # playlist is loaded once, and a token in it would expire under a long replay).
    body = (access.carry_token(text) if access.shared else text).encode()
    etag = '"' + hashlib.sha1(body).hexdigest()[:20] + '"'
    headers = {"ETag": etag, "Cache-Control": access.revalidated(), "X-Content-Type-Options": "nosniff"}
    if _not_modified(request, etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers={**headers, "Content-Type": PLAYLIST_TYPE})


async def get_master(request: web.Request) -> web.Response:
    access = await request.app[HLS_ORIGIN].admit(request)
    episode = access.episode
    db = request.app[DB]
    stats = await episodes.rendition_stats(db, episode.id)
    if not stats:
        raise ApiError(404, "playlist_not_ready", "the episode has no segment yet")
    # Episodes recorded before renditions have segments but no rendition rows: one variant.
    listed = [r for r in await episodes.renditions(db, episode.id) if r.rendition in stats] or [
        Rendition(rendition="", label="camera", source="camera")]

    def declared(r: Rendition) -> VideoRendition:
        codecs = ",".join(c for c in (r.video_codec, r.audio_codec) if c) if r.video_codec else ""
        s = stats.get(r.rendition)
        return VideoRendition(name=r.label, uri=r.playlist, codecs=codecs, width=r.width, height=r.height,
                              peak_bps=s.peak_bps if s else 1, average_bps=s.average_bps if s else 1)

    main = main_rendition(listed, stats)
    assert main is not None
    body = render_multivariant(declared(main), [declared(r) for r in listed if r is not main])
    return _playlist_response(request, access, body)


async def get_playlist(request: web.Request) -> web.Response:
    access = await request.app[HLS_ORIGIN].admit(request)
    return await _rows_playlist(request, access, request.match_info.get("rendition", ""))


async def _rows_playlist(request: web.Request, access: MediaAccess, rendition: str = "") -> web.Response:
    episode = access.episode
    db = request.app[DB]
    if rendition and not any(r.rendition == rendition for r in await episodes.renditions(db, episode.id)):
        raise ApiError(404, "rendition_not_found", "the episode has no such rendition")
    rows = await episodes.segments(db, episode.id, rendition)
    if not rows:
        raise ApiError(404, "playlist_not_ready", "the episode has no segment yet")
    # The rows are the listing (a row exists only once its segment is stored), so
    # every node serves the same playlist; an episode no longer live always ends.
    playlist = Playlist(recorder_of(request.app).segment_seconds, ended=episode.status != "live")
    for row in rows:
        playlist.add(PlaylistEntry(row.name, row.duration, row.init_name, row.discontinuity))
    return _playlist_response(request, access, playlist.render())


def _live_recording(request: web.Request, episode: Episode):
    """This node's recording of ``episode`` with a live LL-HLS playlist, or None."""
    recording = recorder_of(request.app).recordings.get(episode.room_slug)
    if recording is None or recording.episode_id != episode.id or recording.live is None:
        return None
    return recording


async def _recording_node(request: web.Request, episode: Episode) -> str | None:
    """The public URL of the other node hosting ``episode``'s room now; None when no other does."""
    sfu = request.app.get(SFU)
    placement = sfu.placement if sfu is not None else None
    owner = await placement.owner(episode.room_slug) if placement is not None else None
    if owner is None or not owner[1] or owner[0] == placement.node_id:
        return None
    return owner[1]


def _redirect_to(node_url: str, request: web.Request) -> web.Response:
    # Same path and query: the token and the delivery directives go along.
    return web.Response(status=307, headers={
        "Location": node_url.rstrip("/") + request.path_qs,
        # The room may move when its node goes: a cache must ask again.
        "Cache-Control": "no-store",
    })


async def _to_recording_node(request: web.Request, episode: Episode) -> web.Response:
    """A live episode recorded elsewhere: 307 to the node that holds its parts."""
    node_url = await _recording_node(request, episode)
    if node_url is None:
        raise ApiError(404, "live_playlist_not_here", "no node records this episode now")
    return _redirect_to(node_url, request)


async def get_live_playlist(request: web.Request) -> web.Response:
    origin = request.app[HLS_ORIGIN]
    access = await origin.admit(request)
    episode = access.episode
    recording = _live_recording(request, episode)
    if recording is None:
        if episode.status == "live":
            return await _to_recording_node(request, episode)
        # The session ended: the same URL now serves the episode's VOD playlist.
        return await _rows_playlist(request, access)
    live = recording.live
    try:
        wanted = BlockingRequest.parse(request.query, live)
    except PlaylistRequestError as error:
        raise ApiError(400, error.reason, "bad LL-HLS delivery directive") from None
    origin.poll(request, access)
    if wanted.msn is not None:
        metrics.blocking_requests.inc()
        try:
            await live.wait_for(wanted.msn, wanted.part)
        except PlaylistTimeout:
            raise ApiError(503, "part_not_available", "the requested part did not appear in time") from None
        finally:
            metrics.blocking_requests.dec()
    if not live.segments:
        # A player that arrives as the session starts (the listing names the episode as soon as
        # the recording opens; its first part can wait for the sources' sender reports) gets
        # the first playlist once it lists a whole segment, as a blocking reload for it would:
        # an error, or a playlist of parts alone, is fatal to hls.js (levelEmptyError).
        try:
            await live.wait_for(live.first_msn, None)
        except PlaylistTimeout:
            raise ApiError(404, "playlist_not_ready", "the episode has no part yet") from None
    body = access.carry_token(live.render(skip=wanted.skip)).encode()
    # Blocking responses name a future state, so they may be cached longer; a plain
    # reload must go stale within a part (RFC 8216bis 6.2.5.3 / Apple's CDN guidance).
    seconds = max(1, int(6 * live.target)) if wanted.msn is not None else max(0, int(live.part_target / 2))
    headers = {
        "Cache-Control": access.playlist_cache(seconds),
        "X-Content-Type-Options": "nosniff",
        "Content-Type": PLAYLIST_TYPE,
    }
    return web.Response(body=body, headers=headers)


def _media_response(request: web.Request, data: bytes, etag: str, cache: str) -> web.Response:
    """Bytes held in memory (a part, or a closed segment still held as parts), with ETag and Range."""
    headers = {"ETag": etag, "Cache-Control": cache, "Accept-Ranges": "bytes", "X-Content-Type-Options": "nosniff"}
    if _not_modified(request, etag):
        return web.Response(status=304, headers=headers)
    wanted = parse_range(request.headers.get("Range"), len(data))
    if wanted is not None and request.headers.get("If-Range", etag) != etag:
        wanted = None
    if wanted is None:
        return web.Response(body=data, headers={**headers, "Content-Type": "video/mp4"})
    start, end = wanted
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
    return web.Response(status=206, body=data[start:end], headers={**headers, "Content-Type": "video/mp4"})


async def get_part(request: web.Request) -> web.Response:
    access = await request.app[HLS_ORIGIN].admit(request)
    episode = access.episode
    recording = _live_recording(request, episode)
    name = request.match_info["name"]
    if recording is None and episode.status == "live":
        return await _to_recording_node(request, episode)
    data = recording.part_bytes.get(name) if recording is not None else None
    if data is None:
        raise ApiError(404, "part_not_found", "no such part (parts are held only while recent)")
    return _media_response(request, data, f'"e{episode.id}-{name}-{len(data)}"', access.media_cache())


async def get_segment(request: web.Request) -> web.Response:
    access = await request.app[HLS_ORIGIN].admit(request)
    episode = access.episode
    requested = request.match_info["name"]
    recording = _live_recording(request, episode)
    held = recording.live_segment_bytes(requested) if recording is not None else None
    if held is not None:
        # Closed, still held as parts (its row may not be written yet): the same bytes.
        return _media_response(request, held, f'"e{episode.id}-{requested}-{len(held)}"', access.media_cache())
    recorder = recorder_of(request.app)
    here = recorder.recordings.get(episode.room_slug)
    if (episode.status == "live" and recorder.uploader is None
            and (here is None or here.episode_id != episode.id)):
        # Local storage: a live episode's files are on the disk of the node recording it.
        node_url = await _recording_node(request, episode)
        if node_url is not None:
            return _redirect_to(node_url, request)
    db = request.app[DB]
    storage = recorder_of(request.app).storage
    presign = request.app[PRESIGN_SECONDS]
    is_init = requested.endswith(".mp4")
    if is_init and recording is not None and any(
            seg.init == requested for seg in recording.live.segments):
        # Listed on the live playlist before any row names it: from the writer's spool.
        try:
            body = await asyncio.to_thread(recorder_of(request.app).spool.read, f"{episode.storage_key}/{requested}")
        except StorageError:
            raise ApiError(404, "segment_not_found", "the init section is missing") from None
        return _media_response(request, body, f'"e{episode.id}-{requested}-{len(body)}"', access.media_cache())
    if is_init:
        name = await db.fetchval(
            "SELECT init_name FROM segments WHERE episode_id = $1 AND init_name = $2 LIMIT 1", episode.id, requested
        )
        size = None
        if name is not None and presign:
            return await _redirect(storage, f"{episode.storage_key}/{name}", presign)
        if name is not None:
            try:
                size = await asyncio.to_thread(storage.size, f"{episode.storage_key}/{name}")
            except StorageError:
                raise ApiError(503, "storage_unavailable", "the episode store did not answer; retry") from None
    else:
        row = await episodes.segment_by_name(db, episode.id, requested)
        name, size = (row.name, row.size_bytes) if row else (None, None)
        if name is not None and presign:
            return await _redirect(storage, f"{episode.storage_key}/{name}", presign)
    if name is None or size is None:
        raise ApiError(404, "segment_not_found", "no such segment in this episode")
    key = f"{episode.storage_key}/{name}"
    etag = f'"e{episode.id}-{name}-{size}"'
    headers = {
        "ETag": etag,
        "Cache-Control": access.media_cache(),
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
    }
    if _not_modified(request, etag):
        return web.Response(status=304, headers=headers)
    content_type = "video/mp4"
    wanted = parse_range(request.headers.get("Range"), size)
    if wanted is not None and request.headers.get("If-Range", etag) != etag:
        wanted = None
    if request.method == "HEAD":
        return web.Response(headers={**headers, "Content-Type": content_type, "Content-Length": str(size)})
    try:
        if wanted is None:
            body = await asyncio.to_thread(storage.read, key)
            return web.Response(body=body, headers={**headers, "Content-Type": content_type})
        start, end = wanted
        body = await asyncio.to_thread(storage.read, key, start, end - start)
    except MissingObject:
        raise ApiError(404, "segment_not_found", "the segment file is missing") from None
    except StorageError:
        raise ApiError(503, "storage_unavailable", "the episode store did not answer; retry") from None
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return web.Response(status=206, body=body, headers={**headers, "Content-Type": content_type})


async def _redirect(storage: Storage, key: str, seconds: int) -> web.Response:
    """To the object itself, signed for ``seconds``: the bucket (or a CDN before it) serves
    the bytes, Range and ETag included, and no node's bandwidth is spent on them."""
    try:
        url = await storage.apresign(key, seconds)
    except StorageError:
        raise ApiError(503, "storage_unavailable", "the episode store cannot sign a URL now; retry") from None
    # A cache may keep the redirect only while the URL still works.
    return web.Response(status=302, headers={
        "Location": url, "Cache-Control": f"private, max-age={max(0, seconds // 2)}",
    })


async def delete_episode(request: web.Request) -> web.Response:
    episode, admission = await _admitted_episode(request)
    if not admission.is_moderator:
        raise ApiError(403, "not_a_moderator", "only the room's host or a moderator may delete episodes")
    await remove(request.app[DB], recorder_of(request.app).storage, episode)
    return web.Response(status=204)


async def remove(db, storage: Storage, episode: Episode) -> None:
    """Delete an episode's rows, then its files (also used by the CLI); 409 while recording.

    Deleting the row queues the purge (a trigger); the files go now, and the queue
    row with them, or by the purge loop if the store refuses now."""
    removed = await episodes.delete(db, episode.id)
    if removed is None:
        return
    try:
        await asyncio.to_thread(storage.delete_prefix, removed.storage_key)
    except StorageError:
        return   # still queued: Purger retries
    await episodes.purged(db, removed.storage_key)


def make_recorder(app: web.Application) -> Recorder:
    config = app[CONFIG]
    seconds = config["recording.segment_seconds"]
    if not 0.5 <= seconds <= 60:
        raise ConfigError(f"invalid recording.segment_seconds={seconds!r}: expected 0.5 to 60 seconds")
    parts = config["recording.part_seconds"]
    if parts and not 0.2 <= parts <= 10:
        raise ConfigError(f"invalid recording.part_seconds={parts!r}: expected 0, or 0.2 to 10 seconds")
    # At least two parts per segment, whatever the segment target.
    parts = min(parts, seconds / 2)
    store, spool = open_stores(config)
    return Recorder(
        app[DB],
        store,
        spool=spool,
        upload_retry_max=config["storage.upload_retry_max"],
        node=local_node_id(config.data_dir),
        segment_seconds=seconds,
        part_seconds=parts,
        reconnect_grace=config["recording.reconnect_grace"],
        enabled=config["recording.enabled"],
        audio_codec=config["recording.audio_codec"],
    )


def make_origin(app: web.Application, recorder: Recorder) -> HlsOrigin:
    config = app[CONFIG]
    # Without secret.key (tests, a single dev node) tokens are this process's own.
    secret = config["secret.key"] or secrets.token_urlsafe(32)
    previous = config["hls.token_previous_key"]
    tokens = UrlTokens(derive_key(secret), lifetime=config["hls.token_seconds"],
                       previous=derive_key(previous) if previous else None)

    def recording_live(episode: Episode) -> bool:
        recording = recorder.recordings.get(episode.room_slug)
        return (recording is not None and recording.episode_id == episode.id and recording.live is not None
                and not recording.live.ended)

    origin = HlsOrigin(app[DB], app[GATE], tokens, Cors(config["hls.cors_origins"]), LiveEpisodes(recording_live),
                       trusted_proxies=config["http.trusted_proxies"])
    metrics.live_hls_viewers.set_function(origin.pollers.total)
    return origin


def setup(app: web.Application) -> None:
    async def cors(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.app.get(HLS_ORIGIN)
        if origin is not None:
            origin.cors.decorate(request, response)

    async def preflight(request: web.Request) -> web.Response:
        return await request.app[HLS_ORIGIN].cors.preflight(request)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        recorder = make_recorder(app)
        app[RECORDER] = recorder
        remote = recorder.uploader is not None
        if remote:
            fault = await asyncio.to_thread(recorder.storage.check)
            if fault is not None:
                await asyncio.to_thread(recorder.storage.close)
                raise ConfigError(f"invalid storage settings: {fault}")
        app[HLS_ORIGIN] = make_origin(app, recorder)
        app[PRESIGN_SECONDS] = (
            config["storage.presign_seconds"] if remote and config["storage.serve"] == "redirect" else 0)
        await finalize.recover(recorder.db, recorder.storage, recorder.node, recorder.segment_seconds,
                               recorder.uploader)
        if remote:
            # The bucket is shared: only this node's spool is swept; deleted episodes'
            # objects go through the purge queue.
            await finalize.sweep_spool(recorder.db, recorder.spool, recorder.node)
        else:
            await finalize.sweep_orphans(recorder.db, recorder.storage)
        purger = Purger(recorder.db, recorder.storage, retention_days=config["recording.retention_days"])
        app[PURGER] = purger
        purging = asyncio.create_task(purger.run(), name="episode-purge")
        sfu = app.get(SFU)
        if sfu is not None:
            sfu.add_observer(recorder)
        yield
        if sfu is not None:
            sfu.remove_observer(recorder)
        purging.cancel()
        # Local files are finalized in moments; uploads wait on the bucket, so they get a
        # bound (what is left is in the spool for the next start).
        await recorder.close(timeout=UPLOAD_SHUTDOWN_GRACE if remote else None)
        await asyncio.gather(purging, return_exceptions=True)
        await asyncio.to_thread(recorder.storage.close)

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(cors)
    playlists = "(live|index|master|" + RENDITION_PATTERN + ")\\.m3u8"
    app.router.add_route("OPTIONS", "/episodes/{episode_id:[0-9]+}/{name:" + playlists + "|"
                         + PART_PATTERN + "|" + SEGMENT_PATTERN + "}", preflight)
    app.router.add_get("/rooms/{slug}/episodes", list_episodes)
    app.router.add_get("/episodes/{episode_id:[0-9]+}", get_episode)
    app.router.add_delete("/episodes/{episode_id:[0-9]+}", delete_episode)
    app.router.add_get("/episodes/{episode_id:[0-9]+}/index.m3u8", get_playlist)
    app.router.add_get("/episodes/{episode_id:[0-9]+}/master.m3u8", get_master)
    app.router.add_get("/episodes/{episode_id:[0-9]+}/live.m3u8", get_live_playlist)
    app.router.add_get("/episodes/{episode_id:[0-9]+}/{rendition:" + RENDITION_PATTERN + "}.m3u8", get_playlist)
    app.router.add_get("/episodes/{episode_id:[0-9]+}/{name:" + PART_PATTERN + "}", get_part)
    app.router.add_get("/episodes/{episode_id:[0-9]+}/{name:" + SEGMENT_PATTERN + "}", get_segment)
