"""Test and benchmark support, kept out of the shipped packages.

``counter``: the one frame-counter picture encoding (draw and read);
``peers``: aiortc peers on loopback (counter video source, signaling client,
publisher, viewer); ``synthetic``: a pre-encoded publisher session as
MediaFrames and a segment reader.  Imported by ``tests/`` (pytest puts the
repository root on ``sys.path``) and by ``bench/`` scripts.
"""
