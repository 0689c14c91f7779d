// Host page: go live with camera and microphone, stop, mute, share the viewer
// link, see and moderate who watches. The host is whoever opened the page:
// ?token=... (from `odsmedia token --role host`, moved out of the address bar
// at once) or the signed-in room owner's session.
//
// What goes out is a list of *sources* (SOURCES below: each one gives tracks
// and names itself in the publish message's mid -> source map), so another
// source, such as a screen share, is one more entry.
//
// The page keeps itself live: if signaling drops (network blip, server
// restart) it rejoins with backoff and, while the host wants to be live,
// publishes again with the same camera stream.
"use strict";

(function () {
  const slug = ODS.roomSlug();
  ODS.setChatRoom(slug);
  const token = ODS.pageToken(slug);
  const $ = (id) => document.getElementById(id);

  // name -> how to get its MediaStream and what its tracks are called. Tracks of every started source are published together.
  const SOURCES = {
    camera: {
      label: "camera and microphone",
      names: {video: "camera", audio: "microphone"},   // publication source per track kind
      start: () => navigator.mediaDevices.getUserMedia({video: {width: 1280, height: 720}, audio: true}),
    },
  };

  const state = {signaling: null, pc: null, streams: new Map(), transport: null, publications: [],
                 iceServers: [], icePolicy: "all", recoveries: 0, me: null, muted: {audio: false, video: false}, modMuted: {audio: false, video: false},
                 wantLive: false, publishing: false, people: null};
  window.odsHost = state;            // for tests and debugging

  function status(text) { $("status").textContent = text; }

  function setLive(live) {
    $("live-badge").hidden = !live;
    document.body.dataset.live = live ? "1" : "0";
  }

  function controls() {
    const hasPub = (kind) => state.publications.some((p) => p.kind === kind);
    $("golive").disabled = state.wantLive || !state.me || state.me.role !== "host";
    $("stop").disabled = !state.wantLive;
    $("mute-audio").disabled = !hasPub("audio");
    $("mute-video").disabled = !hasPub("video");
    const off = (kind) => state.muted[kind] || state.modMuted[kind];
    $("mute-audio").textContent = off("audio") ? "Unmute microphone" : "Mute microphone";
    $("mute-video").textContent = off("video") ? "Turn camera on" : "Turn camera off";
    $("mute-audio").setAttribute("aria-pressed", off("audio") ? "true" : "false");
    $("mute-video").setAttribute("aria-pressed", off("video") ? "true" : "false");
    const camOff = state.wantLive && off("video");
    $("preview-camera-off").hidden = !camOff;
    $("preview-camera-off").textContent = state.modMuted.video ? "Camera off (muted by a moderator)" : "Camera off";
    $("preview-mic-off").hidden = !(state.wantLive && off("audio"));
  }

  async function startSources() {
    for (const [name, source] of Object.entries(SOURCES)) {
      if (state.streams.has(name)) continue;
      status("Starting " + source.label + "…");
      state.streams.set(name, await source.start());
    }
    $("preview").srcObject = state.streams.get("camera") || null;
  }

  function stopSources() {
    for (const stream of state.streams.values()) stream.getTracks().forEach((t) => t.stop());
    state.streams.clear();
    $("preview").srcObject = null;
  }

  function closePeer() {
    state.transport = null;
    state.publications = [];
    if (state.pc) state.pc.close();
    state.pc = null;
  }

  // One publish of every started source on a fresh peer connection.
  async function publish() {
    if (state.publishing) return;
    state.publishing = true;
    const signaling = state.signaling;
    try {
      closePeer();
      const pc = new RTCPeerConnection({iceServers: state.iceServers, iceTransportPolicy: state.icePolicy});
      state.pc = pc;
      const transceivers = [];
      for (const [name, stream] of state.streams) {
        for (const track of stream.getTracks()) {
          const t = pc.addTransceiver(track, {direction: "sendonly", streams: [stream]});
          transceivers.push([t, SOURCES[name].names[track.kind]]);
          if (track.kind === "video" && RTCRtpSender.getCapabilities && t.setCodecPreferences) {
            // H.264 first: the server forwards it as is and records it without transcoding.
            const codecs = RTCRtpSender.getCapabilities("video").codecs;
            const rank = (c) => (/h264/i.test(c.mimeType) && /packetization-mode=1/.test(c.sdpFmtpLine || "") ? 0 : /vp8/i.test(c.mimeType) ? 1 : 2);
            t.setCodecPreferences([...codecs].sort((a, b) => rank(a) - rank(b)));
          }
        }
      }
      pc.addEventListener("connectionstatechange", () => {
        if (state.pc !== pc) return;
        document.body.dataset.connection = pc.connectionState;
        if (pc.connectionState === "connected") { status("You are live."); setLive(true); }
      });
      // The media path died (network change, server gone) while signaling lives on: end
      // the old publications and publish the same sources again on a fresh connection.
      ODS.onIceLost(pc, () => {
        if (state.pc !== pc) return;
        setLive(false);
        if (!state.wantLive || !signaling.connected) return;   // the rejoin publishes again
        state.recoveries += 1;
        status("Media connection lost; going live again…");
        if (state.transport) signaling.request({type: "unpublish", transport: state.transport}).catch(() => {});
        publish();
      });
      await pc.setLocalDescription(await pc.createOffer());
      await ODS.gatheringComplete(pc);
      const sources = {};
      for (const [t, name] of transceivers) if (t.mid != null) sources[t.mid] = name;
      status("Connecting…");
      const reply = await signaling.request({type: "publish", sdp: pc.localDescription.sdp, sources});
      if (state.pc !== pc) return;
      state.transport = reply.transport;
      state.publications = reply.publications;
      await pc.setRemoteDescription({type: "answer", sdp: reply.sdp});
      // A self-mute outlives a reconnect: tell the new publications.
      state.modMuted = {audio: false, video: false};
      for (const kind of ["audio", "video"]) {
        const pub = state.publications.find((p) => p.kind === kind);
        if (pub && state.muted[kind]) await signaling.request({type: "mute", publication: pub.id}).catch(() => {});
      }
    } catch (err) {
      if (err instanceof ODS.ApiFailure && [401, 402, 403].includes(err.status)) {
        ODS.showRefusal("refusal", err);
        await stop();
      } else if (!signaling.connected) {
        status("Connection lost; reconnecting…");  // the rejoin publishes again
      } else {
        status("Could not go live: " + err.message);
        await stop();
      }
    } finally {
      state.publishing = false;
      controls();
    }
  }

  async function goLive() {
    state.wantLive = true;
    controls();
    try {
      await startSources();
    } catch (err) {
      state.wantLive = false;
      status("Could not start the camera: " + err.message);
      controls();
      return;
    }
    await publish();
  }

  async function stop() {
    state.wantLive = false;
    if (state.transport && state.signaling && state.signaling.connected) {
      try { await state.signaling.request({type: "unpublish", transport: state.transport}); } catch (_) { /* gone already */ }
    }
    closePeer();
    stopSources();
    state.muted = {audio: false, video: false};
    state.modMuted = {audio: false, video: false};
    setLive(false);
    document.body.dataset.connection = "closed";
    status(state.me && state.me.role === "host" ? "Not live. Press Go live to start." : "");
    controls();
  }

  async function toggleMute(kind) {
    const pub = state.publications.find((p) => p.kind === kind);
    if (!pub) return;
    if (state.modMuted[kind]) {
      status("A moderator muted this; only a moderator can unmute it.");
      return;
    }
    const mute = !state.muted[kind];
    try {
      await state.signaling.request({type: mute ? "mute" : "unmute", publication: pub.id});
      state.muted[kind] = mute;
      controls();
    } catch (err) {
      status(err.code === "muted_by_moderator" ? "A moderator muted this; only a moderator can unmute it." : err.message);
    }
  }

  function onTrackMuted(m, muted) {
    state.people.muted(m.publication, muted, m.by);
    const own = state.publications.find((p) => p.id === m.publication);
    if (!own) return;
    const what = own.kind === "audio" ? "microphone" : "camera";
    if (m.by === "moderator") {
      state.modMuted[own.kind] = muted;
      status(muted ? "A moderator turned your " + what + " off." : "A moderator turned your " + what + " back on.");
    }
    controls();
  }

  async function joined(reply) {
    state.me = reply.participant;
    state.iceServers = reply.ice_servers || state.iceServers;
    state.icePolicy = reply.ice_transport_policy || "all";
    state.people.reset(reply);
    document.body.dataset.ready = "1";
    if (reply.participant.role !== "host") {
      ODS.showRefusal("refusal", {status: 403, code: "not_a_publisher",
        message: "Only a host can go live here. Open this page with your host token (?token=...) or sign in as the room's host."});
      status("");
      controls();
      return;
    }
    $("refusal").hidden = true;
    if (state.wantLive) {
      status("Reconnected; going live again…");
      await publish();
    } else {
      status("Ready. Press Go live to start.");
    }
    controls();
  }

  function connect() {
    const signaling = new ODS.Signaling(slug);
    state.signaling = signaling;
    signaling
      .on("joined", joined)
      .on("state", (text) => { status(text); setLive(false); document.body.dataset.connection = "reconnecting"; })
      .on("refused", (err) => { ODS.forgetToken(slug, err); ODS.showRefusal("refusal", err); status(""); })
      .on("participant_joined", (m) => state.people.add(m.participant))
      .on("participant_left", (m) => state.people.remove(m.participant))
      .on("track_published", (m) => state.people.published(m.publication))
      .on("track_unpublished", (m) => state.people.unpublished(m.publication))
      .on("track_muted", (m) => onTrackMuted(m, true))
      .on("track_unmuted", (m) => onTrackMuted(m, false))
      .on("kicked", (m) => { status("You were removed from the room. " + (m.reason || "")); state.wantLive = false; stop(); })
      .on("error", (m) => { if (m.code === "server_shutdown") status("The server is restarting; reconnecting…"); })
      .on("close", () => { closePeer(); setLive(false); controls(); });
    signaling.start(() => ({type: "join", token, name: ODS.guestName()}));
  }

  async function share() {
    const link = $("share-link").value;
    try {
      await navigator.clipboard.writeText(link);
      $("share-status").textContent = "Viewer link copied.";
    } catch (_) {
      $("share-link").select();
      $("share-status").textContent = "Press Ctrl+C (or ⌘C) to copy the selected link.";
    }
  }

  async function main() {
    if (!slug) return;
    $("share-link").value = location.origin + "/rooms/" + slug;
    // On a phone the chat comes right after the video; the people list opens on demand.
    if (window.matchMedia("(max-width: 800px)").matches) $("people-panel").open = false;
    state.people = new ODS.PeopleList($("people"), {
      status, hideSelf: true,
      onChange: (people) => {
        const n = people.viewers();
        $("viewer-count").textContent = n === 1 ? "1 watching" : n + " watching";
      },
    });
    const info = await ODS.loadRoom(slug);
    if (!info) {
      document.querySelector("section.stage").hidden = true;
      const chat = $("chat");
      chat.dataset.stopped = "1";
      if (chat.odsChat) chat.odsChat.stop();
      chat.hidden = true;
      return;
    }
    state.iceServers = info.ice_servers || [];
    $("chat").addEventListener("ods-chat-you", () => state.people.render());
    connect();
  }

  $("golive").addEventListener("click", goLive);
  $("stop").addEventListener("click", stop);
  $("mute-audio").addEventListener("click", () => toggleMute("audio"));
  $("mute-video").addEventListener("click", () => toggleMute("video"));
  $("share").addEventListener("click", share);
  main();
})();
