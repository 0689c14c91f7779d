"""aiortc integration for a passthrough SFU.

aiortc decodes everything it receives and encodes everything it sends; the
live path here does neither.  ``receiver`` taps encoded frames out of an
``RTCRtpReceiver`` before its decoder thread sees them (and completes frames
at their last packet), ``sender`` feeds encoded frames to an ``RTCRtpSender``
so it only packetizes, with a leaner RTP loop, ``codecs``
pins negotiation to one codec, ``ice`` restricts which addresses ICE uses.
The hooks touch aiortc 1.16 private attributes, every one named in
``aiortc_private``; tests/test_aiortc_private.py fails if an upgrade moves them.
"""
