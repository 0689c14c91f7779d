// Replay page. Two URLs share it:
//   /rooms/{slug}/episodes    the room's episodes, newest first
//   /episodes/{id}/watch      one episode: native HLS where the browser has it,
//                             hls.js (vendored) over Media Source Extensions otherwise;
//                             ?player=hlsjs forces the fallback.
//   ?t=SECONDS starts the episode at that moment (search results link there).
// An episode with a screen share and a camera plays like the live page: the main
// rendition (the screen, with the audio) large, the camera a picture-in-picture
// that follows the main player's clock, and every further camera (a co-host's)
// another picture-in-picture above it (docs/recording.md, "Replay layout").
// Runs before chat.js (script order): it tells the chat section which episode
// it replays, or removes it on the list page.
"use strict";

(function () {
  const {fetchJSON, el, showRefusal} = window.ODS;
  const watch = location.pathname.match(/^\/episodes\/(\d{1,18})\/watch\/?$/);
  const chat = document.getElementById("chat");

  function duration(seconds) {
    const s = Math.round(seconds || 0);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(r).padStart(2, "0");
  }

  function when(iso) {
    const d = new Date(iso);
    return isNaN(d) ? "" : d.toLocaleString();
  }

  function badge(status) {
    const b = el("span", {class: "status-badge", "data-status": status}, status);
    return b;
  }

  async function listPage(slug) {
    if (chat) chat.remove();
    const section = document.getElementById("episodes");
    section.hidden = false;
    document.getElementById("live-link").href = `/rooms/${slug}`;
    const list = document.getElementById("episode-list");
    const more = document.getElementById("more");
    let before = null;
    async function page() {
      const query = before ? `?before=${before}` : "";
      const body = await fetchJSON(`/rooms/${slug}/episodes${query}`, {headers: {Accept: "application/json"}});
      document.getElementById("room-title").textContent = body.room.title || slug;
      document.title = `Episodes · ${body.room.title || slug} · ODS Media`;
      list.append(...body.episodes.map((episode) => {
        const li = el("li", {"data-episode": String(episode.id)});
        li.append(el("a", {href: `/episodes/${episode.id}/watch`}, episode.title || `Episode ${episode.id}`),
                  el("span", {class: "when"}, when(episode.started_at)),
                  el("span", {class: "length"}, duration(episode.duration)),
                  badge(episode.status));
        return li;
      }));
      before = body.next_before;
      more.hidden = !before;
      document.getElementById("empty").hidden = list.children.length > 0;
    }
    more.addEventListener("click", () => page().catch((failure) => showRefusal("refusal", failure)));
    // Chat search: each hit opens its episode at the moment it was posted.
    document.getElementById("search").addEventListener("submit", async (e) => {
      e.preventDefault();
      const q = document.getElementById("search-q").value.trim();
      const results = document.getElementById("search-results");
      results.hidden = false;
      try {
        const body = await fetchJSON(`/rooms/${slug}/chat/search?q=${encodeURIComponent(q)}`);
        const hits = body.items.filter((i) => i.episode);
        results.replaceChildren(...hits.map((item) => {
          const li = el("li", {"data-item": String(item.id)});
          const at = Math.max(0, Math.floor(item.offset || 0));
          li.append(el("a", {href: `/episodes/${item.episode}/watch?t=${at}`}, duration(at)),
                    el("strong", {}, item.name), el("span", {}, item.text));
          return li;
        }));
        if (!hits.length) results.append(el("li", {class: "muted"}, `Nothing in past sessions matches “${q}”.`));
      } catch (failure) {
        results.replaceChildren(el("li", {class: "error"}, "Search failed: " + failure.message));
      }
    });
    try {
      await page();
    } catch (failure) {
      showRefusal("refusal", failure);
      return;
    }
    section.dataset.state = "loaded";
  }

  async function attach(video, url, report = true) {
    const forceHlsJs = new URLSearchParams(location.search).get("player") === "hlsjs";
    if (!forceHlsJs && video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = url;
      return "native";
    }
    await window.ODS.loadHlsJs();
    if (window.Hls && window.Hls.isSupported()) {
      // No worker: the page's CSP allows no blob: scripts.
      const hls = new window.Hls({enableWorker: false});
      hls.on(window.Hls.Events.ERROR, (_event, data) => {
        if (data.fatal && report) document.getElementById("status").textContent = "Playback failed: " + data.details;
      });
      hls.loadSource(url);
      hls.attachMedia(video);
      return "hls.js";
    }
    return "";
  }

  // First-party audience counting (docs/privacy.md): when this play started, the seconds
  // watched, and which 10 s stretches of the episode it reached, so the host sees where
  // people stop. Nothing is sent for people with Do Not Track or Global Privacy Control.
  function countAudience(video, id) {
    if (navigator.globalPrivacyControl || navigator.doNotTrack === "1") return;
    const BUCKET = 10;
    const reached = new Set();
    let fresh = [], seconds = 0, playing = false, playSent = false, last = null;
    function send() {
      if (!playing || (playSent && !fresh.length && seconds < 0.5)) return;
      const body = {episode: Number(id), seconds: Math.min(60, Math.round(seconds * 10) / 10),
                    buckets: fresh.splice(0, 12)};
      if (!playSent) body.play = playSent = true;
      seconds = 0;
      fetch("/api/analytics/replay", {
        method: "POST", keepalive: true, credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": window.ODS.csrfToken()},
        body: JSON.stringify(body),
      }).catch(() => {});
    }
    video.addEventListener("playing", () => { playing = true; last = video.currentTime; });
    video.addEventListener("seeking", () => { last = null; });
    video.addEventListener("timeupdate", () => {
      const now = video.currentTime;
      if (video.paused || video.seeking) { last = now; return; }
      const bucket = Math.floor(now / BUCKET);
      if (!reached.has(bucket)) { reached.add(bucket); fresh.push(bucket); }
      // Only continuous playback counts as watched (a jump is a seek).
      if (last !== null && now > last && now - last < 2) seconds += now - last;
      last = now;
      if (seconds >= 10 || fresh.length >= 12) send();
    });
    video.addEventListener("pause", send);
    video.addEventListener("ended", send);
    window.addEventListener("pagehide", send);
  }

  // Highlights are chapters: marks on a timeline bar under the video and a list, each seeks there.
  function showChapters(video, episode, shift) {
    const chapters = episode.chapters || [];
    const nav = document.getElementById("chapters");
    if (!chapters.length) return;
    nav.hidden = false;
    const bar = document.getElementById("chapter-bar");
    const list = document.getElementById("chapter-list");
    const clock = (t) => `${Math.floor(t / 60)}:${String(Math.floor(t % 60)).padStart(2, "0")}`;
    const total = () => (isFinite(video.duration) && video.duration > 0 ? video.duration : episode.duration || 0);
    const marks = chapters.map((c) => {
      const go = () => { video.currentTime = Math.max(0, c.offset - shift); video.play().catch(() => {}); };
      const mark = window.ODS.el("button", {type: "button", class: "chapter-mark", title: `${clock(c.offset)} ${c.title}`,
                                             "aria-label": `Chapter at ${clock(c.offset)}: ${c.title}`});
      mark.addEventListener("click", go);
      bar.append(mark);
      const item = window.ODS.el("li");
      const button = window.ODS.el("button", {type: "button", class: "link", "data-offset": String(c.offset)}, `${clock(c.offset)} ${c.title}`);
      button.addEventListener("click", go);
      item.append(button);
      list.append(item);
      return [mark, c.offset];
    });
    const place = () => {
      const t = total();
      for (const [mark, offset] of marks) mark.style.left = t > 0 ? `${Math.max(0, Math.min(100, (100 * (offset - shift)) / t))}%` : "0";
    };
    place();
    video.addEventListener("loadedmetadata", place);
    video.addEventListener("durationchange", place);
  }

  // The picture-in-picture plays another rendition of the same session on the main player's
  // clock: its time is the main's minus its offset (where it starts relative to the main).
  // Small drift is absorbed by a playback rate 5% off; more than DRIFT_SEEK is a seek.
  const DRIFT_RATE = 0.04, DRIFT_SEEK = 0.25;
  function follow(main, pip, offset, figure) {
    function correct() {
      const t = main.currentTime - offset;
      const outside = t < 0 || (isFinite(pip.duration) && pip.duration > 0 && t > pip.duration);
      // No picture from that source at this moment (it started later, or had ended).
      figure.dataset.absent = outside ? "1" : "0";
      if (outside || main.paused || main.seeking) {
        if (!pip.paused) pip.pause();
        if (!outside && Math.abs(pip.currentTime - t) > DRIFT_RATE) pip.currentTime = t;
        return;
      }
      const drift = pip.currentTime - t;
      if (Math.abs(drift) > DRIFT_SEEK) {
        pip.currentTime = t;
        pip.playbackRate = main.playbackRate;
      } else if (Math.abs(drift) > DRIFT_RATE) {
        pip.playbackRate = main.playbackRate * (drift > 0 ? 0.95 : 1.05);
      } else {
        pip.playbackRate = main.playbackRate;
      }
      if (pip.paused) pip.play().catch(() => {});
    }
    for (const event of ["play", "pause", "seeking", "seeked", "ratechange", "timeupdate"]) {
      main.addEventListener(event, correct);
    }
    setInterval(correct, 250);
  }

  // The live viewer's layout controls, on the replay's figures: "swap" exchanges the main
  // picture with the first picture-in-picture, "hide" hides every picture-in-picture; the
  // small ones stack up the stage's right edge (live.css's --pip-slot) until dragged.
  function layOut(mainFigure, pipFigures) {
    const stage = document.getElementById("videos");
    const first = pipFigures[0];
    const state = {swapped: false, hidden: false};
    function apply() {
      stage.classList.add("has-screen");
      const large = state.swapped ? first : mainFigure;
      const small = [state.swapped ? mainFigure : first, ...pipFigures.slice(1)];
      large.classList.remove("pip", "pip-hidden");
      large.style.left = large.style.top = large.style.right = large.style.bottom = "";
      small.forEach((figure, slot) => {
        figure.classList.add("pip");
        figure.classList.toggle("pip-hidden", state.hidden);
        figure.style.setProperty("--pip-slot", String(slot));
      });
      stage.prepend(large);
      const hide = document.getElementById("hide-pip");
      hide.textContent = state.hidden ? "Show picture-in-picture" : "Hide picture-in-picture";
      hide.setAttribute("aria-pressed", String(state.hidden));
      document.getElementById("swap").setAttribute("aria-pressed", String(state.swapped));
    }
    document.getElementById("swap").addEventListener("click", () => { state.swapped = !state.swapped; apply(); });
    document.getElementById("hide-pip").addEventListener("click", () => { state.hidden = !state.hidden; apply(); });
    for (const figure of [mainFigure, ...pipFigures]) window.ODS.draggablePip(figure, stage);
    document.getElementById("layout-controls").hidden = false;
    apply();
  }

  // "camera" -> "Camera", "camera-2" (a co-host's, or a second camera) -> "Camera 2".
  function sourceLabel(rendition) {
    const [source, n] = rendition.name.split(/-(?=\d+$)/);
    const word = {camera: "Camera", screen: "Screen"}[source] || source;
    return n ? `${word} ${n}` : word;
  }

  async function watchPage(id) {
    if (chat) chat.dataset.episode = id;
    const player = document.getElementById("player");
    player.hidden = false;
    const status = document.getElementById("status");
    let episode;
    try {
      episode = await fetchJSON(`/episodes/${id}`);
    } catch (failure) {
      player.hidden = true;
      showRefusal("refusal", failure.status === 404 && failure.code === "episode_not_found"
        ? {...failure, message: "This episode does not exist (any more)."} : failure);
      return;
    }
    if (window.ODS.setChatRoom) window.ODS.setChatRoom(episode.room);
    document.getElementById("room-title").textContent = episode.room;
    // The room's title (the slug until it arrives); a refusal here changes nothing on this page.
    fetchJSON(`/api/rooms/${episode.room}`).then((room) => {
      if (room.title) document.getElementById("room-title").textContent = room.title;
    }, () => {});
    document.getElementById("episode-title").textContent = episode.title || `Episode ${episode.id}`;
    document.title = `${episode.title || "Episode"} · ODS Media`;
    const meta = document.getElementById("episode-meta");
    meta.replaceChildren(when(episode.started_at), " · ", duration(episode.duration), " ", badge(episode.status));
    document.getElementById("back").href = `/rooms/${episode.room}/episodes`;

    const video = document.getElementById("video");
    // The main rendition (the screen when one was shared) carries the audio and the controls.
    const renditions = episode.renditions || [];
    const main = renditions.find((r) => r.main);
    const how = await attach(video, main ? main.playlist : episode.playlist);
    // Episode time (chat, chapters, ?t=) is the main player's time plus where it starts.
    const shift = main ? main.offset : 0;
    if (chat) chat.dataset.videoOffset = String(shift);
    video.dataset.player = how;
    if (!how) {
      status.textContent = "This browser cannot play HLS video.";
      return;
    }
    // ?t=SECONDS (a search result, a shared moment): start there.
    const start = Number(new URLSearchParams(location.search).get("t"));
    if (start > 0 && isFinite(start)) {
      const seek = () => { video.currentTime = Math.max(0, start - shift); };
      if (video.readyState >= 1) seek(); else video.addEventListener("loadedmetadata", seek, {once: true});
    }
    countAudience(video, id);
    showChapters(video, episode, shift);
    // Every other video source plays as a picture-in-picture: the camera first (a
    // screen-and-camera session's one), then the rest (a co-host's camera-2, ...).
    const others = main ? renditions.filter((r) => !r.main) : [];
    others.sort((a, b) => (b.name === "camera") - (a.name === "camera"));
    if (others.length) {
      const mainFigure = document.getElementById("main-figure");
      mainFigure.classList.add(main.source === "screen" ? "screen" : "camera");
      mainFigure.dataset.source = main.source;
      const template = document.getElementById("pip-figure");
      const figures = [];
      for (const [i, other] of others.entries()) {
        // The page's one PiP figure is the first; each further source gets a copy of it.
        const figure = i === 0 ? template : template.cloneNode(true);
        const pip = figure.querySelector("video");
        if (i > 0) {
          figure.id = `pip-figure-${i + 1}`;
          pip.id = `pip-video-${i + 1}`;
          template.parentElement.append(figure);
        }
        figure.dataset.source = other.source;
        figure.dataset.rendition = other.name;
        const label = sourceLabel(other);
        figure.querySelector("figcaption").textContent = label;
        pip.setAttribute("aria-label", label);
        figure.hidden = false;
        await attach(pip, other.playlist, false);
        pip.muted = true;      // the main rendition carries the session's audio
        follow(video, pip, other.offset - main.offset, figure);
        figures.push(figure);
      }
      layOut(mainFigure, figures);
    }
    video.muted = true;   // muted autoplay is allowed everywhere; the controls unmute
    video.play().catch(() => { status.textContent = "Press play to start."; });

    if (episode.can_delete) {
      // The room's host reads how the session went (moderators are refused there, politely).
      const report = document.getElementById("report");
      report.href = `/episodes/${id}/report`;
      report.hidden = false;
      const button = document.getElementById("delete");
      button.hidden = false;
      button.addEventListener("click", async () => {
        if (!window.confirm("Delete this episode and its recording?")) return;
        try {
          const resp = await fetch(`/episodes/${id}`, {method: "DELETE", credentials: "same-origin"});
          if (!resp.ok) {
            const body = await resp.json().catch(() => ({}));
            throw new window.ODS.ApiFailure(resp.status, body);
          }
          location.assign(`/rooms/${episode.room}/episodes`);
        } catch (failure) {
          status.textContent = failure.message;
        }
      });
    }
  }

  if (watch) {
    watchPage(watch[1]);
  } else {
    const slug = window.ODS.roomSlug();
    if (slug) listPage(slug);
  }
})();
