// Host page: camera and microphone, go live over signaling, stop, mute,
// and see who watches. The host authenticates with ?token=... (an API token
// from `odsmedia token --role host`) or, without one, with its cookies.
"use strict";

(function () {
  const slug = ODS.roomSlug();
  ODS.setChatRoom(slug);
  const token = new URLSearchParams(location.search).get("token") || undefined;
  const $ = (id) => document.getElementById(id);
  const state = {signaling: null, pc: null, stream: null, transport: null, publications: [], people: new Map(),
                 iceServers: [], me: null, muted: {audio: false, video: false}};
  window.odsHost = state;            // for tests and debugging

  function status(text) { $("status").textContent = text; }

  function renderPeople() {
    const list = $("people");
    list.replaceChildren();
    let viewers = 0;
    for (const p of state.people.values()) {
      if (state.me && p.id === state.me.id) continue;
      if (p.role === "viewer") viewers++;
      const li = ODS.el("li", {"data-id": p.id}, p.name);
      li.append(ODS.el("span", {class: "role"}, p.role));
      list.append(li);
    }
    $("viewer-count").textContent = String(viewers);
  }

  async function goLive() {
    $("golive").disabled = true;
    try {
      status("Starting camera and microphone…");
      state.stream = await navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}, audio: true});
      $("preview").srcObject = state.stream;
      const pc = new RTCPeerConnection({iceServers: state.iceServers});
      state.pc = pc;
      for (const track of state.stream.getTracks()) {
        const t = pc.addTransceiver(track, {direction: "sendonly", streams: [state.stream]});
        if (track.kind === "video" && RTCRtpSender.getCapabilities && t.setCodecPreferences) {
          // H.264 first: the server forwards it as is and records it without transcoding.
          const codecs = RTCRtpSender.getCapabilities("video").codecs;
          const rank = (c) => (/h264/i.test(c.mimeType) && /packetization-mode=1/.test(c.sdpFmtpLine || "") ? 0 : /vp8/i.test(c.mimeType) ? 1 : 2);
          t.setCodecPreferences([...codecs].sort((a, b) => rank(a) - rank(b)));
        }
      }
      pc.addEventListener("connectionstatechange", () => {
        document.body.dataset.connection = pc.connectionState;
        if (pc.connectionState === "connected") { status("You are live."); $("live-badge").hidden = false; }
        if (pc.connectionState === "failed") { status("Connection lost."); stop(); }
      });
      await pc.setLocalDescription(await pc.createOffer());
      await ODS.gatheringComplete(pc);
      status("Connecting…");
      const reply = await state.signaling.request({type: "publish", sdp: pc.localDescription.sdp});
      state.transport = reply.transport;
      state.publications = reply.publications;
      await pc.setRemoteDescription({type: "answer", sdp: reply.sdp});
      $("stop").disabled = false;
      $("mute-audio").disabled = !state.publications.some((p) => p.kind === "audio");
      $("mute-video").disabled = !state.publications.some((p) => p.kind === "video");
    } catch (err) {
      status("Could not go live: " + err.message);
      if (err instanceof ODS.ApiFailure && [401, 402, 403].includes(err.status)) ODS.showRefusal("refusal", err);
      await stop();
    }
  }

  async function stop() {
    $("stop").disabled = true;
    $("mute-audio").disabled = $("mute-video").disabled = true;
    if (state.transport && state.signaling) {
      try { await state.signaling.request({type: "unpublish", transport: state.transport}); } catch (_) { /* gone already */ }
    }
    state.transport = null;
    if (state.pc) state.pc.close();
    state.pc = null;
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    $("preview").srcObject = null;
    $("live-badge").hidden = true;
    $("golive").disabled = false;
    document.body.dataset.connection = "closed";
  }

  async function toggleMute(kind) {
    const pub = state.publications.find((p) => p.kind === kind);
    if (!pub) return;
    const mute = !state.muted[kind];
    try {
      await state.signaling.request({type: mute ? "mute" : "unmute", publication: pub.id});
      state.muted[kind] = mute;
      $(kind === "audio" ? "mute-audio" : "mute-video").textContent =
        kind === "audio" ? (mute ? "Unmute microphone" : "Mute microphone") : (mute ? "Turn camera on" : "Turn camera off");
    } catch (err) {
      status(err.code === "muted_by_moderator" ? "A moderator muted this; only a moderator can unmute it." : err.message);
    }
  }

  async function main() {
    if (!slug) return;
    const info = await ODS.loadRoom(slug);
    if (!info) return;
    state.iceServers = info.ice_servers || [];
    const signaling = new ODS.Signaling(slug);
    state.signaling = signaling;
    signaling
      .on("participant_joined", (m) => { state.people.set(m.participant.id, m.participant); renderPeople(); })
      .on("participant_left", (m) => { state.people.delete(m.participant); renderPeople(); })
      .on("track_muted", (m) => { if (m.by === "moderator") status("A moderator muted one of your tracks."); })
      .on("kicked", (m) => { status("You were removed from the room. " + (m.reason || "")); stop(); })
      .on("close", () => { if (state.pc) status("Disconnected from the room."); });
    try {
      await signaling.open();
      const joined = await signaling.request({type: "join", token});
      state.me = joined.participant;
      state.iceServers = joined.ice_servers || state.iceServers;
      for (const p of joined.participants) state.people.set(p.id, p);
      renderPeople();
      if (joined.participant.role !== "host") {
        ODS.showRefusal("refusal", {status: 403, code: "not_a_publisher",
          message: "Only a host can go live here. Open this page with your host token (?token=...) or sign in as the room's host."});
        return;
      }
      $("golive").disabled = false;
      status("Ready.");
      document.body.dataset.ready = "1";
    } catch (err) {
      ODS.showRefusal("refusal", err);
    }
  }

  $("golive").addEventListener("click", goLive);
  $("stop").addEventListener("click", stop);
  $("mute-audio").addEventListener("click", () => toggleMute("audio"));
  $("mute-video").addEventListener("click", () => toggleMute("video"));
  main();
})();
