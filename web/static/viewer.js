// Viewer page: join the room, watch every publication (including ones that
// appear later), see who is live and who is here.
"use strict";

(function () {
  const slug = ODS.roomSlug();
  ODS.setChatRoom(slug);
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || undefined;
  const $ = (id) => document.getElementById(id);
  const state = {signaling: null, iceServers: [], people: new Map(), publications: new Map(),
                 transports: new Map(), figures: new Map(), pendingIds: new Set(), timer: null, me: null};
  window.odsViewer = state;          // for tests and debugging

  function status(text) { $("status").textContent = text; }

  // Sum of decoded video frames across every transport (the browser test reads this).
  state.framesDecoded = async function () {
    let total = 0;
    for (const {pc} of state.transports.values()) {
      const stats = await pc.getStats();
      stats.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") total += s.framesDecoded || 0; });
    }
    return total;
  };

  function render() {
    const people = $("people");
    people.replaceChildren();
    for (const p of state.people.values()) {
      const li = ODS.el("li", {"data-id": p.id}, p.name);
      li.append(ODS.el("span", {class: "role"}, p.role));
      people.append(li);
    }
    const live = $("live");
    live.replaceChildren();
    const publishers = new Set([...state.publications.values()].map((p) => p.participant));
    for (const id of publishers) {
      const p = state.people.get(id);
      live.append(ODS.el("li", {}, p ? p.name : "Publisher"));
    }
    $("offline").hidden = publishers.size > 0;
    $("live-badge").hidden = publishers.size === 0;
  }

  function figureFor(participantId) {
    let fig = state.figures.get(participantId);
    if (!fig) {
      const video = ODS.el("video", {autoplay: "", playsinline: ""});
      video.muted = true;            // autoplay policy: start muted, offer an Unmute button
      const stream = new MediaStream();
      video.srcObject = stream;
      const caption = ODS.el("figcaption");
      const figure = ODS.el("figure", {"data-participant": participantId});
      figure.append(video, caption);
      $("videos").append(figure);
      fig = {figure, video, stream, caption};
      state.figures.set(participantId, fig);
      $("unmute").hidden = false;
    }
    const p = state.people.get(participantId);
    fig.caption.textContent = p ? p.name : "";
    return fig;
  }

  function dropFigureIfEmpty(participantId) {
    const fig = state.figures.get(participantId);
    if (fig && fig.stream.getTracks().length === 0) {
      fig.figure.remove();
      state.figures.delete(participantId);
    }
  }

  // Publications appearing together (audio + video of one go-live) share one transport.
  function queueSubscribe(ids) {
    ids.forEach((id) => state.pendingIds.add(id));
    clearTimeout(state.timer);
    state.timer = setTimeout(flushSubscribe, 150);
  }

  async function flushSubscribe() {
    const ids = [...state.pendingIds].filter((id) => state.publications.has(id));
    state.pendingIds.clear();
    if (!ids.length) return;
    try {
      const offer = await state.signaling.request({type: "subscribe", publications: ids});
      const pc = new RTCPeerConnection({iceServers: state.iceServers});
      const byMid = new Map(offer.publications.map((p) => [p.mid, p.publication]));
      const entry = {pc, publications: offer.publications.map((p) => p.publication)};
      state.transports.set(offer.transport, entry);
      pc.addEventListener("track", (e) => {
        const pubId = byMid.get(e.transceiver.mid);
        const pub = state.publications.get(pubId);
        if (!pub) return;
        const fig = figureFor(pub.participant);
        fig.stream.addTrack(e.track);
        e.track.addEventListener("ended", () => { fig.stream.removeTrack(e.track); dropFigureIfEmpty(pub.participant); });
        fig.video.play().catch(() => {});
      });
      pc.addEventListener("connectionstatechange", () => {
        document.body.dataset.connection = pc.connectionState;
        if (pc.connectionState === "connected") status("Watching.");
        if (["failed", "closed"].includes(pc.connectionState)) endTransport(offer.transport);
      });
      await pc.setRemoteDescription({type: "offer", sdp: offer.sdp});
      await pc.setLocalDescription(await pc.createAnswer());
      await ODS.gatheringComplete(pc);
      await state.signaling.request({type: "answer", transport: offer.transport, sdp: pc.localDescription.sdp});
    } catch (err) {
      status("Could not start playback: " + err.message);
    }
  }

  function endTransport(id) {
    const entry = state.transports.get(id);
    if (!entry) return;
    state.transports.delete(id);
    entry.pc.close();
  }

  function unpublished(pubId) {
    const pub = state.publications.get(pubId);
    state.publications.delete(pubId);
    for (const [id, entry] of state.transports) {
      if (entry.publications.every((p) => !state.publications.has(p))) endTransport(id);
    }
    if (pub) {
      const fig = state.figures.get(pub.participant);
      const owned = [...state.publications.values()].some((p) => p.participant === pub.participant);
      if (fig && !owned) { fig.stream.getTracks().forEach((t) => fig.stream.removeTrack(t)); dropFigureIfEmpty(pub.participant); }
    }
    render();
  }

  async function main() {
    if (!slug) return;
    const info = await ODS.loadRoom(slug);
    if (!info) return;
    state.iceServers = info.ice_servers || [];
    const signaling = new ODS.Signaling(slug);
    state.signaling = signaling;
    signaling
      .on("participant_joined", (m) => { state.people.set(m.participant.id, m.participant); render(); })
      .on("participant_left", (m) => { state.people.delete(m.participant); render(); })
      .on("track_published", (m) => { state.publications.set(m.publication.id, m.publication); render(); queueSubscribe([m.publication.id]); })
      .on("track_unpublished", (m) => unpublished(m.publication))
      .on("track_muted", (m) => { const p = state.publications.get(m.publication); if (p) p.muted = true; })
      .on("track_unmuted", (m) => { const p = state.publications.get(m.publication); if (p) p.muted = false; })
      .on("kicked", (m) => { status("You were removed from the room. " + (m.reason || "")); })
      .on("close", () => status("Disconnected. Reload to rejoin."));
    try {
      await signaling.open();
      const joined = await signaling.request({type: "join", token, name: params.get("name") || undefined});
      state.me = joined.participant;
      state.iceServers = joined.ice_servers || state.iceServers;
      joined.participants.forEach((p) => state.people.set(p.id, p));
      joined.publications.forEach((p) => state.publications.set(p.id, p));
      render();
      document.body.dataset.ready = "1";
      if (joined.publications.length) queueSubscribe(joined.publications.map((p) => p.id));
    } catch (err) {
      ODS.showRefusal("refusal", err);
      status("");
    }
  }

  $("unmute").addEventListener("click", () => {
    for (const fig of state.figures.values()) { fig.video.muted = false; fig.video.play().catch(() => {}); }
    $("unmute").hidden = true;
  });
  main();
})();
