// Host page: go live with camera and/or microphone, share a screen, window or
// tab (with its audio when the browser offers it), stop, mute, share the
// viewer link, see and moderate who watches. The host is whoever opened the page:
// ?token=... (from `odsmedia token --role host`, moved out of the address bar
// at once) or the signed-in room owner's session.
//
// What goes out is grouped: the "main" group (camera and microphone, each
// optional) and the "screen" group (the shared surface and its audio) are
// each one publish on their own peer connection, so a screen share starts,
// stops or switches during the broadcast without touching the camera and
// voice (docs/live-coding.md).  A switch to another screen/window replaces
// the track on the same sender (no renegotiation).
//
// Co-hosts: a host invites one with "Invite co-host" (a single-use link,
// /rooms/{slug}/host#invite=..., expiring and revocable; docs/auth.md). The
// invited person opens it, picks a name and presses "Join as co-host": the
// page exchanges the invitation for a host token of this room, keeps it for
// the tab like a ?token= and reloads, so chat and signaling both use it.
//
// The page keeps itself live: if signaling drops (network blip, server
// restart) it rejoins with backoff and, while the host wants to be live,
// publishes again with the same camera stream.
"use strict";

(function () {
  const slug = ODS.roomSlug();
  ODS.setChatRoom(slug);
  const token = ODS.pageToken(slug);
  const invitation = new URLSearchParams(location.hash.slice(1)).get("invite");
  const $ = (id) => document.getElementById(id);

  // Encoder settings for legible code (docs/live-coding.md): up to 1080p, at
  // most 30 fps, a 3 Mbit/s ceiling, and keep the resolution when bandwidth
  // drops (text stays sharp, motion gets choppier instead).
  const SCREEN = {width: 1920, height: 1080, frameRate: 30, maxBitrate: 3000000};

  // group -> how to get its MediaStream and what its tracks are called.
  const SOURCES = {
    main: {
      label: "camera and microphone",
      names: {video: "camera", audio: "microphone"},   // publication source per track kind
      start: () => {
        const video = $("src-camera").checked ? {width: 1280, height: 720} : false;
        const audio = $("src-mic").checked;
        if (!video && !audio) return Promise.resolve(new MediaStream());
        return navigator.mediaDevices.getUserMedia({video, audio});
      },
    },
    screen: {
      label: "screen share",
      names: {video: "screen", audio: "screen-audio"},
      start: async () => {
        const stream = await navigator.mediaDevices.getDisplayMedia({
          video: {width: {max: SCREEN.width}, height: {max: SCREEN.height}, frameRate: {ideal: 15, max: SCREEN.frameRate}},
          audio: true,
        });
        // "detail": the encoder favours sharp edges (text) over smooth motion.
        stream.getVideoTracks().forEach((t) => { if ("contentHint" in t) t.contentHint = "detail"; });
        return stream;
      },
    },
  };
  const canShareScreen = !!(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);

  // pc/transport/publications are the main group's; state.screen is the screen group's.
  const state = {signaling: null, pc: null, streams: new Map(), transport: null, publications: [],
                 screen: {pc: null, transport: null, publications: [], senders: [], publishing: false},
                 iceServers: [], icePolicy: "all", recoveries: 0, me: null, muted: {audio: false, video: false}, modMuted: {},
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
    const off = (kind) => state.muted[kind] || modMuted(kind);
    $("mute-audio").textContent = off("audio") ? "Unmute microphone" : "Mute microphone";
    $("mute-video").textContent = off("video") ? "Turn camera on" : "Turn camera off";
    $("mute-audio").setAttribute("aria-pressed", off("audio") ? "true" : "false");
    $("mute-video").setAttribute("aria-pressed", off("video") ? "true" : "false");
    const camOff = state.wantLive && off("video");
    $("preview-camera-off").hidden = !camOff;
    $("preview-camera-off").textContent = modMuted("video") ? "Camera off (muted by a moderator)" : "Camera off";
    $("preview-mic-off").hidden = !(state.wantLive && off("audio"));
    const sharing = state.streams.has("screen");
    $("share-screen").hidden = !canShareScreen;
    $("no-screen-share").hidden = canShareScreen;
    $("share-screen").disabled = !state.wantLive || sharing;
    $("switch-screen").disabled = !sharing;
    $("stop-screen").disabled = !sharing;
    $("src-camera").disabled = $("src-mic").disabled = state.wantLive;
    document.body.dataset.screen = sharing ? "1" : "0";
    $("cohosts").hidden = !state.me || state.me.role !== "host";
  }

  // The camera group's sources by track kind; a moderator mutes one source (camera, mic, screen).
  const MAIN_SOURCE = {video: "camera", audio: "microphone"};
  function modMuted(kind) { return !!state.modMuted[MAIN_SOURCE[kind]]; }
  function ownPublication(id) {
    return state.publications.find((p) => p.id === id) || state.screen.publications.find((p) => p.id === id);
  }
  // A moderator's mute outlives our republishing: the server says so in the publish reply.
  function learnModeration(publications) {
    for (const p of publications) state.modMuted[p.source] = p.muted_by === "moderator";
  }

  function showPreviews() {
    const main = state.streams.get("main");
    $("preview").srcObject = main && main.getVideoTracks().length ? main : null;
    // No camera picture (not live yet, or live without the camera): say so instead of a black box.
    $("preview-idle").hidden = !!(main && main.getVideoTracks().length);
    $("preview-idle").textContent = main ? "Live without the camera." : "Your camera shows here when you go live.";
    $("preview").closest("figure").hidden = !!state.streams.get("screen") && !(main && main.getVideoTracks().length);
    const screen = state.streams.get("screen");
    $("preview-screen").srcObject = screen || null;
    $("preview-screen").closest("figure").hidden = !screen;
  }

  async function startSources() {
    if (state.streams.has("main")) return;
    status("Starting " + SOURCES.main.label + "…");
    state.streams.set("main", await SOURCES.main.start());
    showPreviews();
  }

  function stopSources() {
    for (const stream of state.streams.values()) stream.getTracks().forEach((t) => t.stop());
    state.streams.clear();
    showPreviews();
  }

  function closePeer() {
    state.transport = null;
    state.publications = [];
    if (state.pc) state.pc.close();
    state.pc = null;
    closeScreenPeer();
  }

  function closeScreenPeer() {
    const g = state.screen;
    g.transport = null;
    g.publications = [];
    g.senders = [];
    if (g.pc) g.pc.close();
    g.pc = null;
  }

  // Offer every track of `stream` on a fresh peer connection and publish it;
  // resolves to {pc, reply, transceivers}. `names` maps track kind -> source.
  async function publishStream(stream, names, onState) {
    const pc = new RTCPeerConnection({iceServers: state.iceServers, iceTransportPolicy: state.icePolicy});
    const transceivers = [];
    for (const track of stream.getTracks()) {
      const screen = names.video === "screen" && track.kind === "video";
      const init = {direction: "sendonly", streams: [stream]};
      if (screen) init.sendEncodings = [{maxBitrate: SCREEN.maxBitrate, maxFramerate: SCREEN.frameRate}];
      const t = pc.addTransceiver(track, init);
      transceivers.push([t, names[track.kind]]);
      if (track.kind === "video" && RTCRtpSender.getCapabilities && t.setCodecPreferences) {
        // H.264 first: the server forwards it as is and records it without transcoding.
        const codecs = RTCRtpSender.getCapabilities("video").codecs;
        const rank = (c) => (/h264/i.test(c.mimeType) && /packetization-mode=1/.test(c.sdpFmtpLine || "") ? 0 : /vp8/i.test(c.mimeType) ? 1 : 2);
        t.setCodecPreferences([...codecs].sort((a, b) => rank(a) - rank(b)));
      }
    }
    pc.addEventListener("connectionstatechange", () => onState(pc));
    await pc.setLocalDescription(await pc.createOffer());
    await ODS.gatheringComplete(pc);
    const sources = {};
    for (const [t, name] of transceivers) if (t.mid != null) sources[t.mid] = name;
    const reply = await state.signaling.request({type: "publish", sdp: pc.localDescription.sdp, sources});
    return {pc, reply, transceivers};
  }

  // The screen group: its own publish, so it comes and goes while the camera stays live.
  async function publishScreen() {
    const g = state.screen;
    const stream = state.streams.get("screen");
    if (!stream || g.publishing || !state.signaling || !state.signaling.connected) return;
    g.publishing = true;
    try {
      closeScreenPeer();
      const {pc, reply, transceivers} = await publishStream(stream, SOURCES.screen.names, () => {});
      g.pc = pc;
      // As for the camera: a dead media path ends the old screen publications and shares again.
      ODS.onIceLost(pc, () => {
        if (g.pc !== pc || !state.streams.has("screen") || !state.signaling.connected) return;
        state.recoveries += 1;
        if (g.transport) state.signaling.request({type: "unpublish", transport: g.transport}).catch(() => {});
        publishScreen();
      });
      g.senders = transceivers.map(([t]) => t.sender);
      await pc.setRemoteDescription({type: "answer", sdp: reply.sdp});
      g.transport = reply.transport;
      g.publications = reply.publications;
      learnModeration(reply.publications);
      for (const sender of g.senders) {
        if (!sender.track || sender.track.kind !== "video") continue;
        // Keep the resolution when bandwidth drops: blurry code is worse than a lower frame rate.
        const params = sender.getParameters();
        params.degradationPreference = "maintain-resolution";
        await sender.setParameters(params).catch(() => {});
      }
      status("You are live, sharing your screen.");
    } catch (err) {
      if (state.signaling.connected) status("Could not share the screen: " + err.message);
    } finally {
      g.publishing = false;
      controls();
    }
  }

  async function shareScreen() {
    let stream;
    try {
      stream = await SOURCES.screen.start();
    } catch (err) {
      status("Screen sharing did not start: " + err.message);
      return;
    }
    state.streams.set("screen", stream);
    watchScreenEnd(stream);
    showPreviews();
    controls();
    await publishScreen();
  }

  // The browser's own "Stop sharing" ends the track: stop the share, stay live.
  function watchScreenEnd(stream) {
    stream.getVideoTracks().forEach((t) => t.addEventListener("ended", () => {
      if (state.streams.get("screen") === stream) stopScreen();
    }));
  }

  async function switchScreen() {
    const old = state.streams.get("screen");
    let stream;
    try {
      stream = await SOURCES.screen.start();
    } catch (err) {
      status("Kept the current screen: " + err.message);
      return;
    }
    const g = state.screen;
    const kinds = (s) => s.getTracks().map((t) => t.kind).sort().join();
    state.streams.set("screen", stream);
    watchScreenEnd(stream);
    if (g.pc && kinds(stream) === kinds(old)) {
      // Same kinds of tracks: swap them on the live senders, viewers keep their subscription.
      for (const sender of g.senders) {
        const track = stream.getTracks().find((t) => sender.track && t.kind === sender.track.kind);
        if (track) await sender.replaceTrack(track);
      }
    } else {
      await publishScreen();    // audio came or went: publish the new set
    }
    old.getTracks().forEach((t) => t.stop());
    showPreviews();
    status("Now sharing the new screen.");
    controls();
  }

  async function stopScreen() {
    const stream = state.streams.get("screen");
    state.streams.delete("screen");
    const g = state.screen;
    if (g.transport && state.signaling && state.signaling.connected) {
      try { await state.signaling.request({type: "unpublish", transport: g.transport}); } catch (_) { /* gone already */ }
    }
    closeScreenPeer();
    if (stream) stream.getTracks().forEach((t) => t.stop());
    showPreviews();
    if (state.wantLive) status("Screen sharing stopped; you are still live.");
    controls();
  }

  // One publish of the main group (camera and/or microphone) on a fresh peer connection.
  async function publish() {
    if (state.publishing) return;
    state.publishing = true;
    const signaling = state.signaling;
    try {
      closePeer();
      const stream = state.streams.get("main");
      if (!stream.getTracks().length) {
        // Neither camera nor microphone: live with the screen alone.
        status("You are live. Share your screen to be seen.");
        setLive(true);
        if (state.streams.has("screen")) await publishScreen();
        return;
      }
      status("Connecting…");
      const onState = (p) => {
        if (state.pc !== p) return;
        document.body.dataset.connection = p.connectionState;
        if (p.connectionState === "connected") { status("You are live."); setLive(true); }
      };
      const {pc, reply} = await publishStream(stream, SOURCES.main.names, onState);
      state.pc = pc;
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
      state.transport = reply.transport;
      state.publications = reply.publications;
      await pc.setRemoteDescription({type: "answer", sdp: reply.sdp});
      if (pc.connectionState === "connected") onState(pc);
      if (state.streams.has("screen") && !state.screen.pc) await publishScreen();
      // A self-mute outlives a reconnect: tell the new publications.
      learnModeration(reply.publications);
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
      stopSources();
      status("Could not start the camera or microphone: " + err.message);
      controls();
      return;
    }
    await publish();
  }

  async function stop() {
    state.wantLive = false;
    for (const transport of [state.screen.transport, state.transport]) {
      if (!transport || !state.signaling || !state.signaling.connected) continue;
      try { await state.signaling.request({type: "unpublish", transport}); } catch (_) { /* gone already */ }
    }
    closePeer();
    stopSources();
    state.muted = {audio: false, video: false};
    state.modMuted = {};
    setLive(false);
    document.body.dataset.connection = "closed";
    status(state.me && state.me.role === "host" ? "Not live. Press Go live to start." : "");
    controls();
  }

  async function toggleMute(kind) {
    const pub = state.publications.find((p) => p.kind === kind);
    if (!pub) return;
    if (modMuted(kind)) {
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
    const own = ownPublication(m.publication);
    if (!own) { controls(); return; }
    const what = {camera: "camera", microphone: "microphone", screen: "screen share", "screen-audio": "screen audio"}[own.source];
    if (m.by === "moderator") {
      state.modMuted[own.source] = muted;
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
    listInvitations();
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
      .on("participant_joined", (m) => {
        state.people.add(m.participant);
        if (m.participant.role === "host") listInvitations();   // perhaps a co-host we invited
      })
      .on("participant_left", (m) => state.people.remove(m.participant))
      .on("role", (m) => state.people.role(m.participant, m.role))
      .on("track_published", (m) => state.people.published(m.publication))
      .on("track_unpublished", (m) => state.people.unpublished(m.publication))
      .on("track_muted", (m) => onTrackMuted(m, true))
      .on("track_unmuted", (m) => onTrackMuted(m, false))
      .on("kicked", (m) => { status("You were removed from the room. " + (m.reason || "")); state.wantLive = false; stop(); })
      .on("error", (m) => { if (m.code === "server_shutdown") status("The server is restarting; reconnecting…"); })
      .on("close", () => { closePeer(); setLive(false); controls(); });
    signaling.start(() => ({type: "join", token, name: ODS.guestName()}));
  }

  // --- co-hosts ----------------------------------------------------------------------------------

  // The host's own credential for the invitation API: the page's token, else the session cookie.
  function asHost(method, body) {
    const options = {method, headers: token ? {Authorization: "Bearer " + token} : {}};
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return options;
  }

  async function inviteCohost() {
    $("invite-status").textContent = "";
    try {
      const made = await ODS.fetchJSON(`/api/rooms/${slug}/invitations`, asHost("POST", {}));
      state.shownInvitation = made.id;
      $("invite-link").value = made.url;
      $("invite-link").hidden = $("copy-invite").hidden = false;
      $("invite-link").previousElementSibling.hidden = false;
      $("invite-status").textContent = "Send this link to your co-host. It works once and expires " +
        new Date(made.expires_at).toLocaleString() + ".";
      await listInvitations();
    } catch (err) {
      $("invite-status").textContent = "Could not invite: " + err.message;
    }
  }

  async function copyInvite() {
    try {
      await navigator.clipboard.writeText($("invite-link").value);
      $("invite-status").textContent = "Invitation link copied.";
    } catch (_) {
      $("invite-link").select();
      $("invite-status").textContent = "Press Ctrl+C (or ⌘C) to copy the selected link.";
    }
  }

  async function listInvitations() {
    let body;
    try {
      body = await ODS.fetchJSON(`/api/rooms/${slug}/invitations`, asHost("GET"));
    } catch (_) {
      return;   // not a host (any more): nothing to show
    }
    // The link on show was used (or revoked): it invites nobody any more, so it goes.
    const shown = body.invitations.find((i) => i.id === state.shownInvitation);
    if (shown && shown.status !== "open") {
      state.shownInvitation = null;
      $("invite-link").value = "";
      $("invite-link").hidden = $("copy-invite").hidden = $("invite-link").previousElementSibling.hidden = true;
      $("invite-status").textContent = shown.cohost ? (shown.cohost.name || "Your co-host") + " joined as co-host." : "";
    }
    const items = body.invitations.filter((i) => i.status === "open" || (i.cohost && i.cohost.active)).map((i) => {
      const who = i.cohost ? (i.cohost.name || "a co-host") + " (co-host)" : "Invitation, unused";
      const li = ODS.el("li", {"data-id": String(i.id), "data-status": i.status}, who + " ");
      const revoke = ODS.el("button", {type: "button", class: "small"}, i.cohost ? "Remove co-host" : "Revoke");
      revoke.addEventListener("click", async () => {
        try {
          await ODS.fetchJSON(`/api/rooms/${slug}/invitations/${i.id}`, asHost("DELETE"));
          $("invite-status").textContent = i.cohost ? "Co-host removed." : "Invitation revoked.";
        } catch (err) {
          $("invite-status").textContent = "Could not revoke: " + err.message;
        }
        listInvitations();
      });
      li.append(revoke);
      return li;
    });
    $("invitations").replaceChildren(...items);
  }

  // Opened from an invitation link: exchange it for a host token of this room, once.
  function offerInvitation() {
    $("invitation").hidden = false;
    document.querySelector("section.stage").hidden = true;
    $("cohost-name").value = ODS.guestName() || "";
    $("accept-invite").addEventListener("click", async () => {
      const name = $("cohost-name").value.trim();
      if (!name) { $("invitation-status").textContent = "Enter your name first."; return; }
      $("accept-invite").disabled = true;
      try {
        const got = await ODS.api("POST", "/api/invitations/accept", {invitation, name});
        try { sessionStorage.setItem("ods_token:" + slug, got.token); } catch (_) { /* storage disabled */ }
        ODS.setGuestName(name);
        // Reload without the invitation: chat and signaling both join with the new token.
        location.replace(location.pathname);
      } catch (err) {
        $("accept-invite").disabled = false;
        $("invitation").dataset.code = err.code || "";
        $("invitation-status").textContent = "This invitation cannot be used: " + err.message + " (" + (err.code || "error") + ")";
      }
    });
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
        // Nothing counted before this page joins (an invitation not yet accepted): "0 watching" would be wrong.
        if (!people.me) return;
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
    if (invitation) { offerInvitation(); return; }
    connect();
  }

  $("golive").addEventListener("click", goLive);
  $("stop").addEventListener("click", stop);
  $("mute-audio").addEventListener("click", () => toggleMute("audio"));
  $("mute-video").addEventListener("click", () => toggleMute("video"));
  $("share").addEventListener("click", share);
  $("share-screen").addEventListener("click", shareScreen);
  $("switch-screen").addEventListener("click", switchScreen);
  $("stop-screen").addEventListener("click", stopScreen);
  $("invite-cohost").addEventListener("click", inviteCohost);
  $("copy-invite").addEventListener("click", copyInvite);
  controls();
  main();
})();
