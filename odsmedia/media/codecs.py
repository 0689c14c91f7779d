"""Codec policy: which codec a publisher is answered with, and pinning
each subscriber's transceiver to exactly the publisher's codec.

aiortc answers in the offer's order filtered by the transceiver's
preferences, and those must be set before ``setRemoteDescription`` (the
transceiver with ``mid is None`` is then reused).  Answering with a single
codec per m-line makes the publisher's choice certain, so a Publication
knows its codec as soon as the answer exists.
"""

from __future__ import annotations

from aiortc import RTCRtpCodecParameters, RTCRtpTransceiver, sdp
from aiortc.codecs import CODECS, get_capabilities
from aiortc.rtcpeerconnection import find_common_codecs

# H.264 constrained baseline first (remuxes into HLS as is), then baseline, then VP8.
VIDEO_PREFERENCE = (
    ("video/H264", "42e01f"),
    ("video/H264", "42001f"),
    ("video/VP8", None),
)
AUDIO_PREFERENCE = (("audio/opus", None),)


class CodecError(ValueError):
    """The offer has no codec the SFU forwards."""


def _local(mime: str, profile: str | None) -> RTCRtpCodecParameters | None:
    for c in CODECS[mime.split("/")[0]]:
        if c.mimeType.lower() != mime.lower():
            continue
        if profile is None or c.parameters.get("profile-level-id") == profile:
            return c
    return None


def forwardable(mime: str, parameters: dict) -> RTCRtpCodecParameters | None:
    """The local codec a relay's publication uses for a codec its source node described."""
    for c in CODECS.get(mime.split("/")[0], ()):
        if c.mimeType.lower() == mime.lower() and c.parameters == parameters:
            return c
    return None


def choose(media: sdp.MediaDescription) -> RTCRtpCodecParameters:
    """The local codec to answer this offered m-line with, by preference."""
    common = find_common_codecs(CODECS[media.kind], media.rtp.codecs)
    order = VIDEO_PREFERENCE if media.kind == "video" else AUDIO_PREFERENCE
    for mime, profile in order:
        local = _local(mime, profile)
        if local is None:
            continue
        for c in common:
            if c.mimeType.lower() == mime.lower() and c.parameters == local.parameters:
                return local
    offered = sorted({c.mimeType for c in media.rtp.codecs if c.name.lower() != "rtx"})
    raise CodecError(f"no supported {media.kind} codec offered (offered: {', '.join(offered) or 'none'}; "
                     "supported: H264 packetization-mode=1, VP8, opus)")


def pin(transceiver: RTCRtpTransceiver, codec: RTCRtpCodecParameters) -> None:
    """Negotiate only ``codec`` (plus RTX for video) on this transceiver."""
    caps = get_capabilities(transceiver.kind).codecs
    wanted = next((c for c in caps if c.mimeType.lower() == codec.mimeType.lower()
                   and c.parameters == codec.parameters), None)
    if wanted is None:
        raise CodecError(f"codec {codec.mimeType} {codec.parameters} is not forwardable")
    rtx = [c for c in caps if c.name.lower() == "rtx"]
    transceiver.setCodecPreferences([wanted, *rtx])
