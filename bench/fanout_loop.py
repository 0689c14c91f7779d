"""The packet path's per-subscriber loop alone: compiled vs pure Python, same process.

One PacketFanout with N subscribers (real AES-GCM SRTP sessions, the cipher
aiortc and Chromium negotiate; real non-blocking UDP sockets to N loopback
destinations drained by a child process, as bench/native/sendfloor.c does),
fed 1100-byte H.264 packets as fast as a timer allows at the clip's rate.
Modes alternate in rounds in the same process: ``native`` (media/_fanout.c),
``python`` (the fallback loop), ``send-only`` (one socket.sendto per copy
of an already protected packet, nothing else: the Python floor).  The
figure is this thread's CPU time per copy, so the drain process and other
load on the machine do not count; the 1-minute load average is printed.

    .venv/bin/python bench/fanout_loop.py [--viewers 20] [--packets 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiortc import RTCRtpHeaderExtensionParameters, RTCRtpParameters  # noqa: E402
from aiortc.rtp import HeaderExtensionsMap  # noqa: E402
from pylibsrtp import Policy, Session  # noqa: E402

from odsmedia.media import native  # noqa: E402
from odsmedia.media.forwarder import Downstream, PacketFanout  # noqa: E402
from odsmedia.media.srtp import direct_protect  # noqa: E402

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


def drain(ports: list[int], seconds: float) -> int:
    """A child process that owns the destinations and empties them."""
    socks = []
    for _ in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        socks.append(s)
    ports[:] = [s.getsockname()[1] for s in socks]
    pid = os.fork()
    if pid == 0:
        import selectors

        sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for key, _ in sel.select(0.2):
                try:
                    while True:
                        key.fileobj.recv(2048)
                except BlockingIOError:
                    pass
        os._exit(0)
    for s in socks:
        s.close()
    return pid


def build(mode: str, ports: list[int], sender: socket.socket) -> PacketFanout:
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=1, uri=MID_URI)]))
    fanout = PacketFanout("video", "H264", 90000)
    for i, port in enumerate(ports):
        d = Downstream(fanout)
        d.configure(ssrc=1000 + i, rtx_ssrc=2000 + i, pt=102, rtx_pt=103, ext_map=extensions, mid="0")
        session = Session(Policy(key=os.urandom(28), ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                 srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
        d.connect(direct_protect(session), sender.sendto, ("127.0.0.1", port),
                  srtp_session=session if mode == "native" else None,
                  fd=sender.fileno() if mode == "native" else -1)
        fanout.add(d)
    return fanout


async def run_mode(mode: str, ports: list[int], packets: int, pps: int) -> float:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    payload = bytes([0x7C, 0x85]) + os.urandom(1098)            # an FU-A start of an IDR: opens the gate
    interval = 1 / pps
    copies = 0
    if mode == "send-only":
        protected = os.urandom(1100 + 12 + 8 + 16)
        addrs = [("127.0.0.1", p) for p in ports]
        started = time.thread_time()
        for k in range(packets):
            for addr in addrs:
                try:
                    sender.sendto(protected, addr)
                except BlockingIOError:
                    pass
            copies += len(addrs)
            if k % 20 == 19:
                await asyncio.sleep(interval * 20)
        cpu = time.thread_time() - started
    else:
        fanout = build(mode, ports, sender)
        fanout.on_packet(7, 0, 0, 0, payload, None)             # everyone resumes here
        started = time.thread_time()
        for k in range(1, packets + 1):
            fanout.on_packet(7, k & 0xFFFF, (k // 8) * 3000, int(k % 8 == 0), payload, None)
            copies += len(ports)
            if k % 20 == 0:
                await asyncio.sleep(interval * 20)
        cpu = time.thread_time() - started
        errors = sum(d.native.counts()[3] for d in fanout.downstreams if d.native is not None)
        if errors:
            print(f"{mode}: {errors} copies refused by the socket or SRTP", file=sys.stderr)
        fanout.end()
    sender.close()
    return cpu / copies * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--packets", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pps", type=int, default=232)
    args = parser.parse_args()
    if not (1 <= args.viewers <= 200 and 1 <= args.packets <= 100_000 and 1 <= args.rounds <= 10):
        parser.error("at most 200 viewers, 100000 packets, 10 rounds")
    modes = ["native", "python", "send-only"] if native.available else ["python", "send-only"]
    if not native.available:
        print("the compiled loop is not built (pip install -e . with a C compiler): python only", file=sys.stderr)
    ports = [0] * args.viewers
    budget = args.rounds * len(modes) * (args.packets / args.pps + 5) + 10
    child = drain(ports, budget)
    results: dict[str, list[float]] = {m: [] for m in modes}
    loads = [os.getloadavg()[0]]
    try:
        for r in range(args.rounds):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                results[mode].append(await run_mode(mode, ports, args.packets, args.pps))
                loads.append(os.getloadavg()[0])
    finally:
        os.kill(child, 15)
        os.waitpid(child, 0)
    print(f"{args.viewers} subscribers, {args.packets} packets x {args.rounds} rounds, "
          f"load average {min(loads):.2f}-{max(loads):.2f}\n")
    print("| loop | us of CPU per copy (median) | per round |")
    print("|---|---|---|")
    for mode in modes:
        print(f"| {mode} | {statistics.median(results[mode]):.2f} | "
              + ", ".join(f"{v:.2f}" for v in results[mode]) + " |")


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 900))
