"""Every aiortc/aioice/pylibsrtp private the media path touches, named in one place.

aiortc (pinned ``1.16.*``) has no public hook for encoded frames, RTP
packets or the sockets under a peer connection, so the SFU reaches into
name-mangled attributes and underscore methods.  Each one is listed here,
grouped by the object that owns it, and ``missing()`` reports the ones an
installed aiortc lacks: tests/test_aiortc_private.py runs it against real
objects, so an upgrade fails in one place, with the names, instead of the
SFU silently decoding, dropping or mis-sending media.

Modules that use a private import its name from here; nothing else in the
project spells a mangled name.
"""

from __future__ import annotations

from typing import Any

import aioice.ice
import aiortc.jitterbuffer
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender

# --- RTCRtpReceiver (the server's publisher side) ---------------------------------------------
_R = "_RTCRtpReceiver__"
RECEIVER_DECODER_QUEUE = _R + "decoder_queue"     # (codec, JitterFrame) -> decoder thread; the frame tap
RECEIVER_STARTED = _R + "started"                 # tap before receive() starts the thread
RECEIVER_JITTER_BUFFER = _R + "jitter_buffer"     # swapped for EagerJitterBuffer
RECEIVER_RTX_SSRC = _R + "rtx_ssrc"               # RTX SSRC -> media SSRC (ssrc-group:FID)
RECEIVER_CODECS = _R + "codecs"                   # payload type -> negotiated codec (RTX unwrap)
RECEIVER_HANDLE_RTP = "_handle_rtp_packet"        # called per packet after SRTP unprotect + parse
RECEIVER_HANDLE_RTCP = "_handle_rtcp_packet"      # publisher's sender reports (lip-sync mapping)
RECEIVER_SEND_PLI = "_send_rtcp_pli"              # keyframe request upstream
RECEIVER_SEND_NACK = "_send_rtcp_nack"            # loss repair upstream
RECEIVER_ENABLED = "_enabled"                     # a disabled receiver drops what arrives
# Frame timestamps leave the receiver relative to its first frame's RTP timestamp; the
# mapper's origin turns a sender report's RTP timestamp into that scale (recorder sync).
RECEIVER_TIMESTAMP_MAPPER = _R + "timestamp_mapper"
TIMESTAMP_MAPPER_ORIGIN = "_origin"               # RTP timestamp of frame 0 (less 2^32 per wrap)
RECEIVER_ATTRS = (RECEIVER_ENABLED, RECEIVER_TIMESTAMP_MAPPER, RECEIVER_DECODER_QUEUE, RECEIVER_STARTED, RECEIVER_JITTER_BUFFER, RECEIVER_RTX_SSRC,
                  RECEIVER_CODECS, RECEIVER_HANDLE_RTP, RECEIVER_HANDLE_RTCP, RECEIVER_SEND_PLI,
                  RECEIVER_SEND_NACK)

# --- RTCRtpSender (the server's subscriber side) ----------------------------------------------
_S = "_RTCRtpSender__"
SENDER_ENCODER = _S + "encoder"                   # Packer instead of an encoder (frame path)
SENDER_TRACK = _S + "track"
SENDER_MID = _S + "mid"
SENDER_EXTENSIONS_MAP = _S + "rtp_header_extensions_map"   # negotiated header extension ids
SENDER_RTX_PAYLOAD_TYPE = _S + "rtx_payload_type"
SENDER_RTX_SEQUENCE = _S + "rtx_sequence_number"
SENDER_RTP_TASK = _S + "rtp_task"                 # tests restart a publisher's RTP loop
SENDER_RTP_STARTED = _S + "rtp_started"           # stop() waits on both events
SENDER_RTP_EXITED = _S + "rtp_exited"
SENDER_RTP_HISTORY = _S + "rtp_history"           # aiortc's NACK history (frame path)
# What aiortc's own RTCP loop puts in each sender report.
SENDER_NTP_TIMESTAMP = _S + "ntp_timestamp"
SENDER_RTP_TIMESTAMP = _S + "rtp_timestamp"
SENDER_OCTET_COUNT = _S + "octet_count"
SENDER_PACKET_COUNT = _S + "packet_count"
SENDER_RUN_RTP = "_run_rtp"                       # replaced per sender: lean loop / packet path
SENDER_RUN_RTCP = "_run_rtcp"                     # replaced per sender on the packet path (lean reports)
SENDER_RTCP_STARTED = _S + "rtcp_started"         # stop() waits on both events
SENDER_RTCP_EXITED = _S + "rtcp_exited"
SENDER_CNAME = _S + "cname"                       # SDES CNAME in every report
SENDER_RETRANSMIT = "_retransmit"                 # replaced per sender on the packet path
SENDER_SEND_KEYFRAME = "_send_keyframe"           # viewer PLI/FIR -> ask the publisher
SENDER_HANDLE_RTCP = "_handle_rtcp_packet"        # replaced per sender on the packet path
SENDER_RTX_SSRC = "_rtx_ssrc"
SENDER_SSRC = "_ssrc"
SENDER_ENABLED = "_enabled"                       # the frame path's loop skips frames while disabled
SENDER_ATTRS = (SENDER_ENABLED, SENDER_ENCODER, SENDER_TRACK, SENDER_MID, SENDER_EXTENSIONS_MAP, SENDER_RTX_PAYLOAD_TYPE,
                SENDER_RTX_SEQUENCE, SENDER_RTP_TASK, SENDER_RTP_STARTED, SENDER_RTP_EXITED, SENDER_RTP_HISTORY,
                SENDER_NTP_TIMESTAMP, SENDER_RTP_TIMESTAMP, SENDER_OCTET_COUNT, SENDER_PACKET_COUNT,
                SENDER_RUN_RTP, SENDER_RETRANSMIT, SENDER_SEND_KEYFRAME, SENDER_HANDLE_RTCP, SENDER_RTX_SSRC, SENDER_SSRC,
                SENDER_RUN_RTCP, SENDER_RTCP_STARTED, SENDER_RTCP_EXITED, SENDER_CNAME)

# --- RTCDtlsTransport -------------------------------------------------------------------------
_D = "_RTCDtlsTransport__"
DTLS_TX_SRTP = "_tx_srtp"                         # pylibsrtp.Session, set once DTLS is connected
DTLS_STATE = "_state"
DTLS_TX_BYTES = _D + "tx_bytes"                   # getStats' transport counters
DTLS_TX_PACKETS = _D + "tx_packets"
DTLS_RX_SRTP = "_rx_srtp"                         # its receive session: subscribers' SRTCP unprotected on arrival
DTLS_ATTRS = (DTLS_TX_SRTP, DTLS_RX_SRTP, DTLS_STATE, DTLS_TX_BYTES, DTLS_TX_PACKETS)

# --- RTCIceTransport -> aioice Connection -----------------------------------------------------
ICE_CONNECTION = "_connection"                    # RTCIceTransport -> aioice.Connection
ICE_NOMINATED = "_nominated"                      # component -> CandidatePair (socket + remote address)
ICE_MODULE_ATTRS = ("get_host_addresses", "validate_remote_candidate", "StunProtocol",
                    # consent freshness timing, set from ice.consent_timeout (media.ice)
                    "CONSENT_INTERVAL", "CONSENT_FAILURES",
                    # host candidates on the node's one UDP port (media.udpmux)
                    "Candidate", "candidate_foundation", "candidate_priority")
# aioice.Connection: the mux replaces where host sockets are made, routes by the local ufrag,
# and adds its per-connection protocol to the sockets close() closes (an instance list).
ICE_CONNECTION_ATTRS = ("get_component_candidates", "local_username")
# Where StunProtocol hands a non-STUN datagram (-> the receive queue); media.feedback goes first.
ICE_DATA_RECEIVED = "data_received"
ICE_CONNECTION_PROTOCOLS = "_protocols"
# aioice.StunProtocol: the mux hands it datagrams and a transport of its own.
ICE_STUN_PROTOCOL_ATTRS = ("connection_made", "connection_lost", "datagram_received")

# --- pylibsrtp (under aiortc) ------------------------------------------------------------------
SRTP_SESSION_HANDLE = "_srtp"                     # Session -> srtp_t* (cffi), for the direct protect call
SRTP_BINDING_ATTRS = ("ffi", "lib")               # pylibsrtp._binding: lib.srtp_protect

# --- module level -----------------------------------------------------------------------------
JITTER_BUFFER_ATTRS = ("_remove_frame", "remove")                 # EagerJitterBuffer overrides/calls
JITTER_BUFFER_INSTANCE = ("_packets", "_origin", "_capacity", "_is_video")
SENDER_MODULE_ATTRS = ("RTP_HISTORY_SIZE", "random_sequence_number")


def missing(obj: Any, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not hasattr(obj, n)]


def missing_module_level() -> list[str]:
    import pylibsrtp
    import pylibsrtp._binding

    out = [f"aioice.ice.{n}" for n in missing(aioice.ice, ICE_MODULE_ATTRS)]
    out += [f"aioice.ice.Connection.{n}" for n in missing(aioice.ice.Connection, ICE_CONNECTION_ATTRS + (ICE_DATA_RECEIVED,))]
    if not hasattr(aioice.ice.Connection(ice_controlling=False), ICE_CONNECTION_PROTOCOLS):
        out.append(f"aioice.ice.Connection.{ICE_CONNECTION_PROTOCOLS}")
    out += [f"aioice.ice.StunProtocol.{n}" for n in missing(aioice.ice.StunProtocol, ICE_STUN_PROTOCOL_ATTRS)]
    out += [f"pylibsrtp._binding.{n}" for n in missing(pylibsrtp._binding, SRTP_BINDING_ATTRS)]
    if not hasattr(pylibsrtp._binding.lib, "srtp_protect"):
        out.append("pylibsrtp._binding.lib.srtp_protect")
    if not hasattr(pylibsrtp.Session(), SRTP_SESSION_HANDLE):
        out.append(f"pylibsrtp.Session.{SRTP_SESSION_HANDLE}")
    out += [f"aiortc.rtcrtpsender.{n}" for n in missing(aiortc.rtcrtpsender, SENDER_MODULE_ATTRS)]
    out += [f"JitterBuffer.{n}" for n in missing(aiortc.jitterbuffer.JitterBuffer, JITTER_BUFFER_ATTRS)]
    if not hasattr(aiortc.rtcrtpreceiver.TimestampMapper(), TIMESTAMP_MAPPER_ORIGIN):
        out.append(f"aiortc.rtcrtpreceiver.TimestampMapper.{TIMESTAMP_MAPPER_ORIGIN}")
    return out


def require(obj: Any, names: tuple[str, ...], what: str) -> None:
    """Raise, naming the attributes, when ``obj`` lacks any of ``names``."""
    gone = missing(obj, names)
    if gone:
        raise RuntimeError(f"aiortc's {what} changed: {', '.join(gone)} gone (aiortc 1.16.* expected)")
