// Viewer page (also the moderator's page): join the room with the identity
// that opened the page, watch every publication (including ones that appear
// later), see who is live and who is here, and keep doing so across network
// blips and server restarts: signaling rejoins with backoff and every
// publication is subscribed again, without a reload.
//
// Live coding layout (docs/live-coding.md): a host's screen share is its own
// figure and takes the stage; every camera (the host's, a co-host's) becomes
// a picture-in-picture labelled with its publisher's name that can be
// dragged, hidden or swapped with the screen.  Fullscreen shows the screen
// alone.  With no screen, two cameras sit side by side and one fills the stage.
"use strict";

(function () {
  const slug = ODS.roomSlug();
  ODS.setChatRoom(slug);
  const token = ODS.pageToken(slug);
  const $ = (id) => document.getElementById(id);
  const state = {signaling: null, iceServers: [], icePolicy: "all", recoveries: 0, publications: new Map(), transports: new Map(),
                 figures: new Map(), pendingIds: new Set(), timer: null, me: null, people: null, audible: false,
                 large: null, pipHidden: false};
  window.odsViewer = state;          // for tests and debugging

  function status(text) { $("status").textContent = text; }

  // Sum of decoded video frames across every transport (the browser tests read this).
  state.framesDecoded = async function () {
    let total = 0;
    for (const {pc} of state.transports.values()) {
      const stats = await pc.getStats();
      stats.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") total += s.framesDecoded || 0; });
    }
    return total;
  };

  // Decoded video frames per publication source ({camera: n, screen: m}); the browser tests read this.
  state.framesBySource = async function () {
    const out = {};
    for (const {pc, byMid} of state.transports.values()) {
      const stats = await pc.getStats();
      stats.forEach((s) => {
        if (s.type !== "inbound-rtp" || s.kind !== "video") return;
        const pub = state.publications.get(byMid.get(s.mid));
        const source = pub ? pub.source : "unknown";
        out[source] = (out[source] || 0) + (s.framesDecoded || 0);
      });
    }
    return out;
  };

  const isScreen = (pub) => pub.source === "screen" || pub.source === "screen-audio";
  // Figures are keyed by participant (camera and microphone) or "screen:" + participant.
  const figureKey = (pub) => (isScreen(pub) ? "screen:" + pub.participant : pub.participant);

  // Which figure holds the stage: the one the viewer chose (state.large), else a screen,
  // else (no screen) none: cameras share the stage side by side.
  function largeKey(screens) {
    if (state.large && state.figures.has(state.large) && screens.length) return state.large;
    return screens.length ? screens[0][0] : null;
  }

  function layout() {
    const screens = [...state.figures.entries()].filter(([key]) => key.startsWith("screen:"));
    const cameras = [...state.figures.entries()].filter(([key]) => !key.startsWith("screen:"));
    const hasScreen = screens.length > 0;
    const large = largeKey(screens);
    const videos = $("videos");
    videos.classList.toggle("has-screen", hasScreen);
    videos.dataset.cameras = String(cameras.length);
    $("layout-controls").hidden = !(hasScreen && cameras.length);
    let slot = 0;
    for (const [key, fig] of state.figures) {
      const pip = hasScreen && key !== large;
      fig.figure.classList.toggle("pip", pip);
      fig.figure.classList.toggle("large", hasScreen && key === large);
      // PiPs stack up the right edge until the viewer drags one elsewhere.
      if (pip) fig.figure.style.setProperty("--pip-slot", String(slot++));
      else fig.figure.style.left = fig.figure.style.top = fig.figure.style.right = fig.figure.style.bottom = "";
      fig.figure.classList.toggle("pip-hidden", pip && (state.pipHidden || fig.hidden));
      fig.swap.hidden = fig.hide.hidden = !pip;
    }
    // The large one first, so it sets the stage's size; without a screen, in join order.
    const first = hasScreen ? state.figures.get(large) : null;
    if (first && first.figure !== videos.firstChild) videos.prepend(first.figure);
    const anyHidden = state.pipHidden || [...state.figures.values()].some((f) => f.hidden);
    $("hide-pip").textContent = anyHidden ? "Show picture-in-picture" : "Hide picture-in-picture";
    $("hide-pip").setAttribute("aria-pressed", anyHidden ? "true" : "false");
  }

  // Put a picture-in-picture on the stage and the stage's figure into the corner.
  function swapWith(key) {
    state.large = key;
    layout();
  }

  function publishers() {
    return new Set([...state.publications.values()].map((p) => p.participant));
  }

  function render() {
    const live = publishers();
    $("offline").hidden = live.size > 0;
    $("live-badge").hidden = live.size === 0;
    $("player-controls").hidden = state.figures.size === 0;
    document.body.dataset.live = live.size > 0 ? "1" : "0";
    for (const [key, fig] of state.figures) updateFigure(key, fig);
    layout();
    if (!live.size && state.signaling && state.signaling.connected) status("");
  }

  function updateFigure(key, fig) {
    const screen = key.startsWith("screen:");
    const participantId = screen ? key.slice(7) : key;
    const p = state.people && state.people.people.get(participantId);
    fig.caption.textContent = (p ? p.name : "") + (screen ? " · screen" : "");
    fig.swap.setAttribute("aria-label", "Show " + (p ? p.name : "this") + (screen ? "'s screen" : "'s camera") + " large");
    fig.hide.setAttribute("aria-label", "Hide " + (p ? p.name : "this") + (screen ? "'s screen" : "'s camera"));
    const pubs = [...state.publications.values()].filter((x) => x.participant === participantId && isScreen(x) === screen);
    const video = pubs.find((x) => x.kind === "video");
    const audio = pubs.find((x) => x.kind === "audio");
    const camOff = !video || !!video.muted;
    fig.figure.dataset.cameraOff = camOff ? "1" : "0";
    fig.camOff.hidden = !camOff;
    const off = screen ? "Screen off" : "Camera off";
    // Who turned it off is its own element: a small picture-in-picture has room for "Camera off" only.
    if (video && video.muted_by === "moderator") fig.camOff.replaceChildren(off, " ", ODS.el("span", {class: "why"}, "(muted by a moderator)"));
    else fig.camOff.textContent = off;
    fig.micOff.hidden = !(audio && audio.muted);
  }

  function figureFor(key) {
    const screen = key.startsWith("screen:");
    const participantId = screen ? key.slice(7) : key;
    let fig = state.figures.get(key);
    if (!fig) {
      const video = ODS.el("video", {autoplay: "", playsinline: ""});
      video.muted = !state.audible;     // autoplay policy: start muted, offer Unmute
      video.volume = Number($("volume").value);
      const stream = new MediaStream();
      video.srcObject = stream;
      const p = state.people && state.people.people.get(participantId);
      video.setAttribute("aria-label", (screen ? "Shared screen of " : "Live video of ") + (p ? p.name : "the host"));
      const camOff = ODS.el("div", {class: "camera-off", role: "status"}, "Camera off");
      camOff.hidden = true;
      const micOff = ODS.el("div", {class: "mic-off"}, "Mic muted");
      micOff.hidden = true;
      const caption = ODS.el("figcaption");
      // A picture-in-picture's own controls: swap it with the stage, or hide it.
      const swap = ODS.el("button", {type: "button", class: "pip-button pip-swap", title: "Show this large"}, "⇄");
      const hide = ODS.el("button", {type: "button", class: "pip-button pip-hide", title: "Hide this picture-in-picture"}, "×");
      const figure = ODS.el("figure", screen ? {"data-screen": participantId, class: "screen"} : {"data-participant": participantId});
      figure.append(video, camOff, micOff, caption, swap, hide);
      if (screen) $("videos").prepend(figure); else $("videos").append(figure);
      ODS.draggablePip(figure, $("videos"));
      fig = {figure, video, stream, caption, camOff, micOff, swap, hide, hidden: false};
      swap.addEventListener("click", () => swapWith(key));
      hide.addEventListener("click", () => { fig.hidden = true; layout(); });
      for (const b of [swap, hide]) b.addEventListener("pointerdown", (e) => e.stopPropagation());
      state.figures.set(key, fig);
    }
    render();
    return fig;
  }

  function dropFigure(participantId) {
    const fig = state.figures.get(participantId);
    if (!fig) return;
    fig.stream.getTracks().forEach((t) => fig.stream.removeTrack(t));
    fig.figure.remove();
    state.figures.delete(participantId);
  }

  // Publications appearing together (audio + video of one go-live) share one transport.
  function queueSubscribe(ids) {
    if (state.mode === "low-latency") return;      // the HLS player shows everything
    ids.forEach((id) => state.pendingIds.add(id));
    clearTimeout(state.timer);
    state.timer = setTimeout(flushSubscribe, 150);
  }

  async function flushSubscribe() {
    const ids = [...state.pendingIds].filter((id) => state.publications.has(id));
    state.pendingIds.clear();
    if (!ids.length) return;
    const signaling = state.signaling;
    if (typeof window.RTCPeerConnection !== "function") { startHls("WebRTC is not available in this browser"); return; }
    try {
      status("Starting playback…");
      const offer = await signaling.request({type: "subscribe", publications: ids});
      const pc = new RTCPeerConnection({iceServers: state.iceServers, iceTransportPolicy: state.icePolicy});
      const byMid = new Map(offer.publications.map((p) => [p.mid, p.publication]));
      const entry = {pc, byMid, publications: offer.publications.map((p) => p.publication)};
      state.transports.set(offer.transport, entry);
      pc.addEventListener("track", (e) => {
        const pubId = byMid.get(e.transceiver.mid);
        const pub = state.publications.get(pubId);
        if (!pub) return;
        const fig = figureFor(figureKey(pub));
        fig.stream.addTrack(e.track);
        fig.video.play().catch(() => {});
      });
      pc.addEventListener("connectionstatechange", () => {
        document.body.dataset.connection = pc.connectionState;
        if (pc.connectionState === "connected") status(state.audible ? "Watching live." : "Watching live (sound off: press Unmute).");
      });
      // The media path died (network change, NAT rebinding) while signaling lives on:
      // release the old transport and subscribe again from wherever this browser is now.
      ODS.onIceLost(pc, () => {
        if (!state.transports.has(offer.transport)) return;
        endTransport(offer.transport);
        if (state.signaling !== signaling || !signaling.connected) return;   // the rejoin subscribes again
        state.recoveries += 1;
        status("Reconnecting…");
        signaling.request({type: "unsubscribe", transport: offer.transport}).catch(() => { /* gone already */ });
        queueSubscribe(entry.publications);
      });
      await pc.setRemoteDescription({type: "offer", sdp: offer.sdp});
      await pc.setLocalDescription(await pc.createAnswer());
      await ODS.gatheringComplete(pc);
      await signaling.request({type: "answer", transport: offer.transport, sdp: pc.localDescription.sdp});
      // UDP blocked (corporate, school networks): no connection within a few seconds.
      setTimeout(() => {
        if (state.transports.get(offer.transport) === entry && pc.connectionState !== "connected") {
          startHls("WebRTC could not connect");
        }
      }, WEBRTC_CONNECT_SECONDS * 1000);
    } catch (err) {
      if (err.code === "webrtc_viewer_cap") { startHls("the room's real-time seats are full"); return; }
      if (signaling.connected) status("Could not start playback: " + err.message);
    }
  }

  // --- Low-latency HLS: the fallback when WebRTC cannot be used -------------------------------
  const WEBRTC_CONNECT_SECONDS = 5;

  function setMode(mode) {
    state.mode = mode;
    document.body.dataset.mode = mode;
    $("mode").textContent = mode;
    $("switch-mode").textContent = mode === "real-time" ? "Switch to low-latency HLS" : "Switch to real-time";
  }

  async function startHls(why) {
    if (state.mode === "low-latency") return;
    setMode("low-latency");
    // WebRTC goes; the publications stay known, so switching back subscribes again.
    for (const id of [...state.transports.keys()]) endTransport(id);
    for (const id of [...state.figures.keys()]) dropFigure(id);
    state.pendingIds.clear();
    state.hlsWhy = why;
    state.hlsAttempts = 0;
    playHls();
  }

  // No live stream yet (the host has not started, or its recording is still opening), or the
  // player gave up: look again after a growing pause, as the real-time path rejoins, for as
  // long as the page stays in low-latency mode.
  function retryHls(message) {
    clearTimeout(state.hlsRetry);
    dropHlsPlayer();
    const wait = Math.min(10, 2 ** Math.min(state.hlsAttempts++, 4));
    status(`${message} Trying again in ${wait} s…`);
    state.hlsRetry = setTimeout(() => { if (state.mode === "low-latency") playHls(); }, wait * 1000);
  }

  function dropHlsPlayer() {
    if (state.hls) { state.hls.destroy(); state.hls = null; }
    const video = $("hls-video");
    if (video) video.remove();
  }

  async function playHls() {
    status("Low-latency mode (" + state.hlsWhy + "): finding the live stream…");
    let live = null;
    try {
      const body = await ODS.fetchJSON(`/rooms/${slug}/episodes?limit=1`, {headers: listingHeaders()});
      live = (body.episodes || []).find((e) => e.status === "live");
    } catch (e) { /* looked for again below */ }
    if (state.mode !== "low-latency") return;
    if (!live) { retryHls("Low-latency mode: the live stream is not available yet."); return; }
    // A gated room's playlist URL carries a short-lived token (so a CDN can serve it without
    // our cookie); hls.js puts the newest token on every request and the page renews it.
    const url = live.live_playlist || `/episodes/${live.id}/live.m3u8`;
    state.hlsToken = new URL(url, location.href).searchParams.get("token");
    if (state.hlsToken) renewHlsToken(live.token_expires);
    const video = ODS.el("video", {id: "hls-video", playsinline: "", autoplay: "", muted: ""});
    video.muted = !state.audible;
    $("videos").replaceChildren(video);
    $("offline").hidden = true;
    // Said once the picture moves: half a second of media time past where the player put it
    // (hls.js seeks to the live edge first, and a seek alone does not play).
    let from = null;
    const moving = () => {
      if (from === null) from = video.currentTime;
      if (video.currentTime < from + 0.5) return;
      video.removeEventListener("timeupdate", moving);
      state.hlsAttempts = 0;
      status("Watching in low-latency mode (a few seconds behind).");
    };
    video.addEventListener("timeupdate", moving);
    if (video.canPlayType("application/vnd.apple.mpegurl") && !window.MediaSource) {
      // Native HLS cannot swap tokens: the same-origin URL, admitted by the cookie each time.
      video.addEventListener("error", () => { if ($("hls-video") === video) retryHls("Playback failed."); });
      video.src = `/episodes/${live.id}/live.m3u8`;
      state.hlsPlayer = "native";
    } else {
      await ODS.loadHlsJs();
      if (!window.Hls || !window.Hls.isSupported()) { status("This browser can play neither WebRTC nor HLS."); return; }
      if (state.mode !== "low-latency" || $("hls-video") !== video) return;
      // No worker: the page's CSP allows no blob: scripts.
      const hls = new window.Hls({lowLatencyMode: true, enableWorker: false, xhrSetup: withHlsToken});
      let mediaRecovered = false;
      hls.on(window.Hls.Events.ERROR, (_e, data) => {
        if (!data.fatal || state.hls !== hls) return;
        // A decoding hiccup is recovered in place once; anything else starts over.
        if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR && !mediaRecovered) {
          mediaRecovered = true;
          hls.recoverMediaError();
          return;
        }
        retryHls("Playback failed (" + data.details + ").");
      });
      hls.loadSource(url);
      hls.attachMedia(video);
      state.hls = hls;
      state.hlsPlayer = "hls.js";
    }
    video.play().catch(() => {});
    status("Low-latency mode: loading the live stream…");
  }

  // The listing is admitted like the page: its ?token= (kept for the tab), else the cookies.
  function listingHeaders() {
    const headers = {Accept: "application/json"};
    if (token) headers.Authorization = "Bearer " + token;
    return headers;
  }

  function withHlsToken(xhr, requested) {
    if (!state.hlsToken) return;
    const target = new URL(requested, location.href);
    target.searchParams.set("token", state.hlsToken);
    xhr.open("GET", target.href, true);
  }

  // Fetches a new token (the listing, admitted by the cookie) halfway through the old one's life.
  function renewHlsToken(expires) {
    clearTimeout(state.hlsRenewal);
    const wait = Math.max(5, (expires - Date.now() / 1000) / 2);
    state.hlsRenewal = setTimeout(async () => {
      if (state.mode !== "low-latency") return;
      try {
        const body = await ODS.fetchJSON(`/rooms/${slug}/episodes?limit=1`, {headers: listingHeaders()});
        const live = (body.episodes || []).find((e) => e.status === "live" && e.live_playlist);
        if (!live) return;
        state.hlsToken = new URL(live.live_playlist, location.href).searchParams.get("token");
        if (state.hlsToken) renewHlsToken(live.token_expires);
      } catch (e) { renewHlsToken(Date.now() / 1000 + 20); }
    }, wait * 1000);
  }

  function stopHls() {
    clearTimeout(state.hlsRenewal);
    clearTimeout(state.hlsRetry);
    state.hlsToken = null;
    dropHlsPlayer();
    setMode("real-time");
    queueSubscribe([...state.publications.keys()]);
  }

  function endTransport(id) {
    const entry = state.transports.get(id);
    if (!entry) return;
    state.transports.delete(id);
    entry.pc.close();
  }

  function endAll() {
    for (const id of [...state.transports.keys()]) endTransport(id);
    for (const id of [...state.figures.keys()]) dropFigure(id);
    state.publications.clear();
    state.pendingIds.clear();
  }

  function unpublished(pubId) {
    const pub = state.publications.get(pubId);
    state.publications.delete(pubId);
    state.people.unpublished(pubId);
    for (const [id, entry] of state.transports) {
      if (entry.publications.every((p) => !state.publications.has(p))) endTransport(id);
    }
    if (pub && ![...state.publications.values()].some((x) => figureKey(x) === figureKey(pub))) dropFigure(figureKey(pub));
    render();
    if (!publishers().size) status("The host stopped. This page plays again when they go live.");
  }

  function onMuted(m, muted) {
    const p = state.publications.get(m.publication);
    if (p) { p.muted = muted; p.muted_by = muted ? m.by : null; }
    state.people.muted(m.publication, muted, m.by);
    render();
  }

  function joined(reply) {
    endAll();      // a rejoin starts clean: the old transports died with the old socket
    state.me = reply.participant;
    state.iceServers = reply.ice_servers || state.iceServers;
    state.icePolicy = reply.ice_transport_policy || "all";
    reply.publications.forEach((p) => state.publications.set(p.id, p));
    state.people.reset(reply);
    render();
    document.body.dataset.ready = "1";
    if (reply.publications.length) queueSubscribe(reply.publications.map((p) => p.id));
    else status("Connected. Waiting for the host to go live.");
  }

  function connect() {
    const signaling = new ODS.Signaling(slug);
    state.signaling = signaling;
    signaling
      .on("joined", joined)
      .on("state", (text) => { status(text); document.body.dataset.connection = "reconnecting"; })
      .on("refused", (err) => { ODS.forgetToken(slug, err); ODS.showRefusal("refusal", err); status(""); stopChat(); })
      .on("participant_joined", (m) => { state.people.add(m.participant); render(); })
      .on("participant_left", (m) => { state.people.remove(m.participant); render(); })
      .on("role", (m) => state.people.role(m.participant, m.role))
      .on("track_published", (m) => {
        state.publications.set(m.publication.id, m.publication);
        state.people.published(m.publication);
        render();
        queueSubscribe([m.publication.id]);
      })
      .on("track_unpublished", (m) => unpublished(m.publication))
      .on("track_muted", (m) => onMuted(m, true))
      .on("track_unmuted", (m) => onMuted(m, false))
      .on("kicked", (m) => {
        endAll();
        ODS.showRefusal("refusal", {status: 403, code: m.banned ? "banned" : "kicked",
          message: (m.banned ? "A moderator banned you from this room." : "A moderator removed you from this room.") +
                   (m.reason ? " Reason: " + m.reason : "")});
        stopChat();
      })
      .on("error", (m) => { if (m.code === "server_shutdown") status("The server is restarting; reconnecting…"); })
      .on("close", () => {
        if (!signaling.stopped) { endAll(); render(); }
      });
    signaling.start(() => ({type: "join", token, name: ODS.guestName()}));
  }

  // Refused or removed: nothing here will play, so nothing says it will.
  function stopChat() {
    document.querySelector("section.stage").hidden = true;
    // Out of the room: a count from before would go stale in the header.
    $("viewer-count").textContent = "";
    $("live-badge").hidden = true;
    const chat = $("chat");
    chat.dataset.stopped = "1";
    if (chat.odsChat) chat.odsChat.stop();
    chat.hidden = true;
  }

  async function main() {
    if (!slug) return;
    $("episodes-link").href = "/rooms/" + slug + "/episodes";
    // On a phone the chat comes right after the video; the people list opens on demand.
    if (window.matchMedia("(max-width: 800px)").matches) $("people-panel").open = false;
    state.people = new ODS.PeopleList($("people"), {
      status,
      onChange: (people) => {
        const n = people.viewers();
        $("viewer-count").textContent = n === 1 ? "1 watching" : n + " watching";
        $("people-count").textContent = String(people.people.size);
      },
    });
    const info = await ODS.loadRoom(slug);
    if (!info) { stopChat(); return; }
    state.iceServers = info.ice_servers || [];
    setMode("real-time");
    $("switch-mode").addEventListener("click", () => {
      if (state.mode === "real-time") startHls("chosen"); else stopHls();
    });
    connect();
    $("chat").addEventListener("ods-chat-you", () => state.people.render());
    $("chat").addEventListener("ods-rename", () => { state.signaling.close(); connect(); });
  }

  // Player controls: sound, volume, picture-in-picture, fullscreen.
  function firstVideo() {
    const fig = [...state.figures.values()].find((f) => !f.figure.classList.contains("pip")) || state.figures.values().next().value;
    return fig ? fig.video : null;
  }
  // Cycle the stage: screen -> first camera -> second camera -> ... -> screen.
  $("swap").addEventListener("click", () => {
    const keys = [...state.figures.keys()];
    const screens = keys.filter((k) => k.startsWith("screen:"));
    const order = [...screens.slice(0, 1), ...keys.filter((k) => !k.startsWith("screen:"))];
    const at = order.indexOf(largeKey(screens.map((k) => [k])));
    swapWith(order[(at + 1) % order.length]);
  });
  $("hide-pip").addEventListener("click", () => {
    const anyHidden = state.pipHidden || [...state.figures.values()].some((f) => f.hidden);
    for (const fig of state.figures.values()) fig.hidden = false;
    state.pipHidden = !anyHidden;
    layout();
  });
  $("unmute").addEventListener("click", () => {
    state.audible = !state.audible;
    for (const fig of state.figures.values()) { fig.video.muted = !state.audible; fig.video.play().catch(() => {}); }
    $("unmute").textContent = state.audible ? "Mute sound" : "Unmute";
    $("unmute").setAttribute("aria-pressed", state.audible ? "true" : "false");
    if (state.transports.size) status(state.audible ? "Watching live." : "Watching live (sound off: press Unmute).");
  });
  $("volume").addEventListener("input", () => {
    for (const fig of state.figures.values()) fig.video.volume = Number($("volume").value);
  });
  $("pip").addEventListener("click", () => {
    const video = firstVideo();
    if (!video || !document.pictureInPictureEnabled) { status("Picture-in-picture is not available in this browser."); return; }
    (document.pictureInPictureElement ? document.exitPictureInPicture() : video.requestPictureInPicture()).catch((e) => status(e.message));
  });
  $("fullscreen").addEventListener("click", () => {
    // A shared screen goes fullscreen alone; otherwise the whole stage.
    const screen = [...state.figures.entries()].find(([key]) => key.startsWith("screen:"));
    const stage = screen ? screen[1].video : $("videos");
    if (document.fullscreenElement) document.exitFullscreen();
    else if (stage.requestFullscreen) stage.requestFullscreen().catch((e) => status(e.message));
  });
  main();
})();
