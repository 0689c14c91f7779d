"""Relay pipe benchmark: what one pipe costs against one viewer, and what one relay adds to latency.

Synthetic 720p-like stream (1200-byte VP8-shaped payloads, every packet a
keyframe start so nothing waits for one) pushed straight into a
publication's ``PacketFanout.on_packet`` -- the call the publisher's
receiver tap makes -- so only the forwarding code is measured, the same
code a node runs.

CPU (``time.process_time`` of each process, user+system):

* origin, base: the fan-out with no subscriber, N packets in a tight loop;
* origin, 10 viewers: ten viewer ``Downstream`` s (SRTP-protected with
  ``direct_protect`` as a real viewer is, written to a UDP socket nobody
  reads); per viewer = (10 viewers - base) / 10;
* pipe, sending end: one ``PipeSource`` (plain, then SRTP) instead of the
  viewers; = pipe - base;
* pipe, receiving end: the datagrams a PipeSource made, handed to a
  ``PipeSink`` one by one (unprotect, parse, the relay fan-out's input);
  pipe = sending end + receiving end, in viewers;
* relay process: a separate process with a ``PipeSink`` and one viewer,
  receiving a stream paced at ``--rate``: its CPU over the run / packets,
  the event loop's wakeup and recvfrom per datagram included.

Latency (paced run, both ends' CLOCK_MONOTONIC): origin ``on_packet``
entry -> the copy leaving for a viewer.  Direct: a viewer on the origin.
Through one relay: a viewer on the relay process (its fan-out fed by the
pipe).  Added = relay minus direct, p50/p99.

    .venv/bin/python bench/relay_pipe.py [--packets 20000] [--rate 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiortc.rtp import HeaderExtensionsMap  # noqa: E402
from aiortc import RTCRtpHeaderExtensionParameters, RTCRtpParameters  # noqa: E402
from pylibsrtp import Policy, Session  # noqa: E402

from odsmedia.media.forwarder import Downstream, PacketFanout  # noqa: E402
from odsmedia.media.pipe import PipeCrypto, PipeSink, PipeSource, new_keys  # noqa: E402
from odsmedia.media.srtp import direct_protect  # noqa: E402

PAYLOAD = 1200
SSRC = 0x1234


def payload(stamp_ns: int) -> bytes:
    # VP8 descriptor S=1 partition 0, key frame (P bit 0), then the send time.
    return b"\x10\x00" + stamp_ns.to_bytes(8, "big") + bytes(PAYLOAD - 10)


def viewer_ext_map() -> HeaderExtensionsMap:
    ext = HeaderExtensionsMap()
    ext.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid")]))
    return ext


def viewer(fanout: PacketFanout, sock: socket.socket, dest, on_send=None) -> Downstream:
    d = Downstream(fanout)
    d.configure(ssrc=os.getpid() & 0xFFFF, rtx_ssrc=0, pt=96, rtx_pt=97, ext_map=viewer_ext_map(), mid="0")
    session = Session(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    send = sock.sendto
    if on_send is not None:
        def send(data, addr, _send=sock.sendto):   # noqa: F811
            on_send()
            _send(data, addr)
    d.connect(direct_protect(session), send, dest)
    fanout.add(d)
    return d


def fanout_with_viewer(on_send) -> tuple[PacketFanout, list[socket.socket]]:
    """A publication's fan-out with one viewer whose every copy calls ``on_send`` as it leaves."""
    fanout = PacketFanout("video", "VP8", 90000)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink, dest = discard_socket()
    viewer(fanout, sender, dest, on_send=on_send)
    return fanout, [sender, sink]


def discard_socket() -> tuple[socket.socket, tuple[str, int]]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)      # overflows: the kernel drops, cheaply
    return sink, sink.getsockname()


def push(fanout: PacketFanout, n: int, seq0: int = 0) -> float:
    start = time.process_time()
    on_packet = fanout.on_packet
    for i in range(n):
        seq = (seq0 + i) & 0xFFFF
        on_packet(SSRC, seq, i * 3000 & 0xFFFFFFFF, 1, payload(0), None)
    return time.process_time() - start


async def cpu_round(n: int, relay_cmd: list[str]) -> dict:
    out: dict = {}
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink, dest = discard_socket()
    fanout = PacketFanout("video", "VP8", 90000)
    push(fanout, 1000)
    out["base"] = push(fanout, n, 1000)
    views = [viewer(fanout, sender, dest) for _ in range(10)]
    push(fanout, 1000, 1000 + n)
    out["ten_viewers"] = push(fanout, n, 2000 + n)
    for d in views:
        d.disconnect()
    for srtp in (False, True):
        keys = new_keys() if srtp else None
        pipe = PipeSource(fanout, 96, remote=dest, request_keyframe=lambda reason: None,
                          crypto=PipeCrypto(*keys) if keys else PipeCrypto(None, None))
        await pipe.open("127.0.0.1")
        push(fanout, 1000, 3000 + 2 * n)
        out["pipe_srtp" if srtp else "pipe_plain"] = push(fanout, n, 4000 + 2 * n)
        pipe.close()
    # The receiving end's own work per packet (SRTP unprotect, header parse, the relay fan-out's
    # input), no socket: datagrams made by a real PipeSource, handed to PipeSink one by one.
    for srtp in (False, True):
        keys = new_keys() if srtp else None
        captured: list[bytes] = []
        made = PipeSource(fanout, 96, remote=dest, request_keyframe=lambda reason: None,
                          crypto=PipeCrypto(*keys) if keys else PipeCrypto(None, None))
        made.downstream.connect(made.crypto.protect, lambda data, addr: captured.append(bytes(data)), dest)
        fanout.add(made.downstream)
        push(fanout, n, 5000 + 3 * n)
        made.downstream.disconnect()
        relay_fanout = PacketFanout("video", "VP8", 90000)
        receiver = PipeSink(relay_fanout, crypto=PipeCrypto(keys[1], keys[0]) if keys else PipeCrypto(None, None))
        receiver.connect(dest)
        handle = receiver._datagram
        start = time.process_time()
        for data in captured:
            handle(data, dest)
        out["recv_srtp" if srtp else "recv_plain"] = time.process_time() - start
        assert receiver.stats.packets == len(captured) == n
    sink.close()
    sender.close()
    return out


async def paced_round(n: int, rate: int, srtp: bool, relay_cmd: list[str]) -> dict:
    """Relay process receives a paced stream; latency direct and through the relay; its CPU."""
    keys = new_keys() if srtp else None
    relay = subprocess.Popen([*relay_cmd, "--child", json.dumps({"keys": keys, "n": n})],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        loop = asyncio.get_running_loop()
        ready = json.loads(await asyncio.wait_for(loop.run_in_executor(None, relay.stdout.readline), 60))
        direct: list[float] = []
        stamp = [0]
        fanout, sockets = fanout_with_viewer(lambda: direct.append(time.monotonic_ns() - stamp[0]))
        pipe = PipeSource(fanout, 96, remote=tuple(ready["addr"]), request_keyframe=lambda reason: None,
                          crypto=PipeCrypto(keys[0], keys[1]) if keys else PipeCrypto(None, None))
        local = await pipe.open("127.0.0.1")
        relay.stdin.write(json.dumps({"addr": list(local)}) + "\n")
        relay.stdin.flush()
        interval = 1 / rate
        start = time.monotonic()
        for i in range(n + 200):
            wait = start + i * interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            now = time.monotonic_ns()
            stamp[0] = now
            fanout.on_packet(SSRC, i & 0xFFFF, i * 3000 & 0xFFFFFFFF, 1, payload(now), None)
        result = json.loads(await asyncio.wait_for(loop.run_in_executor(None, relay.stdout.readline), 60))
        pipe.close()
        for sock in sockets:
            sock.close()
        direct = direct[200:]
        result["direct_p50_ms"] = statistics.median(direct) / 1e6
        result["direct_p99_ms"] = sorted(direct)[int(len(direct) * 0.99)] / 1e6
        return result
    finally:
        if relay.poll() is None:
            relay.kill()
        relay.wait(10)


async def child(spec: dict) -> None:
    """The relay end: a PipeSink into a fan-out with one viewer; reports CPU and latencies."""
    keys = spec["keys"]
    n = spec["n"]
    latencies: list[float] = []
    current = [0]
    fanout, _ = fanout_with_viewer(lambda: latencies.append(time.monotonic_ns() - current[0]))
    on_packet = fanout.on_packet

    def tapped(ssrc, seq, ts, marker, data, level):
        current[0] = int.from_bytes(data[2:10], "big")
        on_packet(ssrc, seq, ts, marker, data, level)

    fanout.on_packet = tapped          # type: ignore[method-assign]
    pipe = PipeSink(fanout, crypto=PipeCrypto(keys[1], keys[0]) if keys else PipeCrypto(None, None))
    local = await pipe.open("127.0.0.1")
    print(json.dumps({"addr": list(local)}), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    pipe.connect(tuple(json.loads(line)["addr"]))
    deadline = time.monotonic() + 120
    while pipe.stats.packets < 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    cpu0, got0 = time.process_time(), pipe.stats.packets
    while pipe.stats.packets < n + 200 and time.monotonic() < deadline \
            and time.monotonic() - pipe.last_packet < 2:
        await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu0
    got = pipe.stats.packets - got0
    lat = latencies[200:]
    print(json.dumps({"relay_cpu_us_per_packet": cpu / max(1, got) * 1e6, "received": got,
                      "lost": pipe.stats.lost,
                      "relay_p50_ms": statistics.median(lat) / 1e6,
                      "relay_p99_ms": sorted(lat)[int(len(lat) * 0.99)] / 1e6}), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        await child(json.loads(args.child))
        return
    cmd = [sys.executable, str(Path(__file__).resolve())]
    rows = []
    for r in range(args.rounds):
        load = os.getloadavg()[0]
        cpu = await cpu_round(args.packets, cmd)
        per = {k: v / args.packets * 1e6 for k, v in cpu.items()}
        viewer_us = (per["ten_viewers"] - per["base"]) / 10
        paced = {srtp: await paced_round(min(args.packets, args.rate * 10), args.rate, srtp, cmd)
                 for srtp in (False, True)}
        row = {"round": r + 1, "load": round(load, 1), "viewer_us": viewer_us,
               "pipe_send_plain_us": per["pipe_plain"] - per["base"],
               "pipe_send_srtp_us": per["pipe_srtp"] - per["base"]}
        for srtp, result in paced.items():
            tag = "srtp" if srtp else "plain"
            row[f"pipe_recv_{tag}_us"] = per[f"recv_{tag}"]
            row[f"pipe_{tag}_viewers"] = (row[f"pipe_send_{tag}_us"] + per[f"recv_{tag}"]) / viewer_us
            # The relay process's whole CPU per packet in the paced run: the receive above plus one
            # event-loop wakeup and recvfrom per datagram, plus its one viewer's copy.
            row[f"relay_process_{tag}_us"] = result["relay_cpu_us_per_packet"]
            row[f"added_p50_{tag}_ms"] = result["relay_p50_ms"] - result["direct_p50_ms"]
            row[f"added_p99_{tag}_ms"] = result["relay_p99_ms"] - result["direct_p99_ms"]
            row[f"lost_{tag}"] = result["lost"]
        row["load_end"] = round(os.getloadavg()[0], 1)
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    print("medians:", json.dumps({k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]
                                  if k != "round"}))


if __name__ == "__main__":
    asyncio.run(main())
