// Shared page helpers: JSON fetch with error reasons, escaping, gate
// refusals shown plainly, and the signaling socket used by the live pages.
"use strict";

(function () {
  class ApiFailure extends Error {
    constructor(status, body) {
      super((body && body.message) || `request failed (${status})`);
      this.status = status;
      this.code = (body && (body.error || body.code)) || "http_" + status;
      this.plans = (body && body.plans) || [];
      this.nodeUrl = (body && body.node_url) || "";
    }
  }

  // The double-submit CSRF token: the readable ods_csrf cookie, echoed in a header.
  function csrfToken() {
    const m = document.cookie.match(/(?:^|;\s*)ods_csrf=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  // Every state change carries the CSRF header, so a signed-in page never
  // meets csrf_failed; a 204 answers {}.
  async function fetchJSON(url, options = {}) {
    const method = (options.method || "GET").toUpperCase();
    const headers = {...(options.headers || {})};
    if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken();
    const resp = await fetch(url, {credentials: "same-origin", ...options, headers});
    const body = resp.status === 204 ? {} : await resp.json().catch(() => ({}));
    if (!resp.ok) throw new ApiFailure(resp.status, body);
    return body;
  }

  // JSON in, JSON out: api("PATCH", "/api/me", {display_name: "Ada"}).
  function api(method, url, body) {
    const options = {method};
    if (body !== undefined) {
      options.headers = {"Content-Type": "application/json"};
      options.body = JSON.stringify(body);
    }
    return fetchJSON(url, options);
  }

  function escapeHTML(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  }

  function el(tag, attrs = {}, text = "") {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text) node.textContent = text;
    return node;
  }

  // A gate refusal (401 sign in, 402 plan needed, 403 not allowed) explained
  // in `target`, with the way forward. `failure` has status, code, message, plans.
  function showRefusal(target, failure) {
    const box = typeof target === "string" ? document.getElementById(target) : target;
    if (!box) return;
    box.replaceChildren();
    box.hidden = false;
    box.dataset.status = String(failure.status || "");
    box.dataset.code = failure.code || "";
    const here = encodeURIComponent(location.pathname + location.search);
    let title;
    const plans = failure.plans || [];
    let text = el("span", {}, failure.message || "");
    if ((failure.status === 401 || failure.status === 402) && plans.length) {
      // A plan room: say what it takes (by the plans' names), not "members" or the gate's wording.
      title = "This room is for subscribers.";
      const names = el("span", {class: "plan-names"}, plans.join(" or "));
      planLabels(plans, names);
      text = el("span", {}, failure.status === 401 ? "Sign in, then subscribe to " : "Subscribe to ");
      text.append(names, " to watch.");
    } else if (failure.status === 401) title = "Sign in to enter this room.";
    else if (failure.status === 402) title = "This room is for subscribers.";
    else if (failure.status === 403) title = "You are not allowed in here.";
    else if (failure.status === 404) title = "This room does not exist.";
    else title = "Something went wrong.";
    box.append(el("strong", {}, title), " ", text);
    if (failure.status === 401) {
      box.append(" ", el("a", {href: "/signin?next=" + here}, "Sign in"));
      if (plans.length) box.append(" ", el("a", {href: "/plans?next=" + here}, "See plans"));
    } else if (failure.status === 402) {
      box.append(" ", el("a", {href: "/plans?next=" + here}, "See plans"));
    }
  }

  // The gate names plans by code ("pro"); the catalog has the names people read ("Pro").
  // Fills them in when the catalog answers; the codes stay otherwise.
  async function planLabels(codes, target) {
    try {
      const {plans} = await fetchJSON("/api/plans");
      const label = new Map(plans.map((p) => [p.code, p.label || p.code]));
      target.textContent = codes.map((c) => label.get(c) || c).join(" or ");
    } catch (_) { /* keep the codes */ }
  }

  function roomSlug() {
    const m = location.pathname.match(/^\/rooms\/([a-z0-9][a-z0-9-]{0,62})/);
    return m ? m[1] : "";
  }

  // The identity that admitted this page: a ?token= in the URL is kept for this
  // tab (sessionStorage) and taken out of the address bar, so it is not shared
  // by copying the URL, bookmarked or sent as a Referer. Signaling and chat both
  // join with it; without one they rely on the session or anonymous cookie.
  function pageToken(slug) {
    const key = "ods_token:" + slug;
    const url = new URL(location.href);
    const fromUrl = url.searchParams.get("token");
    let store = null;
    try { store = window.sessionStorage; } catch (_) { /* storage disabled */ }
    if (fromUrl) {
      if (store) store.setItem(key, fromUrl);
      url.searchParams.delete("token");
      history.replaceState(history.state, "", url.pathname + url.search + url.hash);
      return fromUrl;
    }
    return (store && store.getItem(key)) || undefined;
  }

  // A stored token the server no longer accepts (expired, revoked): forget it,
  // so a reload falls back to the page's cookies.
  function forgetToken(slug, failure) {
    if (!failure || failure.code !== "invalid_token") return;
    try { window.sessionStorage.removeItem("ods_token:" + slug); } catch (_) { /* storage disabled */ }
  }

  // The name a guest chose (?name= or the chat's Name button); accounts and
  // tokens are named by the server. One name for signaling and chat.
  function guestName() {
    const url = new URL(location.href);
    const fromUrl = url.searchParams.get("name");
    if (fromUrl) setGuestName(fromUrl);
    try { return window.localStorage.getItem("ods_chat_name") || undefined; } catch (_) { return fromUrl || undefined; }
  }

  function setGuestName(name) {
    try { window.localStorage.setItem("ods_chat_name", name); } catch (_) { /* storage disabled */ }
  }

  // Reconnect delay: 0.25 s doubling to 5 s, with jitter so a restarted server
  // is not met by every page at the same instant.
  function backoff(attempt) {
    return Math.min(5000, 250 * Math.pow(2, attempt)) * (0.5 + Math.random() / 2);
  }

  // Signaling over /rooms/{slug}/ws: request() resolves with the reply that
  // carries the same ref, or rejects with an ApiFailure-like error.
  //
  // start(makeJoin) keeps the room joined: it opens, joins, and after a drop
  // (network blip, server restart) opens and joins again with backoff.
  // Placement (docs/operations.md): a node that does not serve the room answers
  // room_on_other_node with the node_url that does; the socket follows it there
  // (the page stays where it is). When that socket drops, the next try goes
  // back to the page's own server, which places the room again (the node may
  // have died and another taken the room over). Handlers:
  // joined(reply) after every join, state(text) for the status line,
  // refused(error) when the server said no (nothing to retry), close(event).
  class Signaling {
    constructor(slug) {
      this.slug = slug;
      this.handlers = {};
      this.pending = new Map();
      this.nextRef = 1;
      this.ws = null;
      this.attempt = 0;
      this.stopped = false;
      this.joinedOnce = false;
      this.node = "";           // the node_url followed, "" for the page's own server
      this.following = false;
    }
    on(type, handler) { this.handlers[type] = handler; return this; }
    emit(type, arg) { if (this.handlers[type]) this.handlers[type](arg); }
    open() {
      const base = new URL(this.node || location.origin);
      const proto = base.protocol === "https:" ? "wss:" : "ws:";
      const ws = new WebSocket(`${proto}//${base.host}/rooms/${this.slug}/ws`);
      this.ws = ws;
      ws.addEventListener("message", (e) => this.dispatch(JSON.parse(e.data)));
      ws.addEventListener("close", (e) => {
        for (const {reject} of this.pending.values()) reject(new ApiFailure(0, {error: "closed", message: "connection closed"}));
        this.pending.clear();
        // Followed a redirect: go there next. Anything else: be placed again from the page's server.
        if (!this.following) this.node = "";
        this.following = false;
        this.emit("close", e);
        // 4001: kicked. A deliberate stop or a refusal is not retried either.
        if (this.makeJoin && !this.stopped && e.code !== 4001) this.retry();
      });
      return new Promise((resolve, reject) => {
        ws.addEventListener("open", resolve, {once: true});
        ws.addEventListener("error", () => reject(new ApiFailure(0, {error: "unreachable", message: "cannot reach the server"})), {once: true});
      });
    }
    async start(makeJoin) {
      this.makeJoin = makeJoin;
      this.stopped = false;
      try {
        await this.open();
        const joined = await this.request(makeJoin());
        this.attempt = 0;
        this.joinedOnce = true;
        this.emit("joined", joined);
      } catch (err) {
        if (err.code === "room_on_other_node" && err.nodeUrl && this.ws && this.ws.readyState === WebSocket.OPEN) {
          this.node = err.nodeUrl;
          this.following = true;
          this.ws.close();
        } else if (err.status && err.status >= 400 && err.status < 500 && err.status !== 408 && err.status !== 409) {
          this.stopped = true;
          this.emit("refused", err);
          this.close();
        } else if (this.ws && this.ws.readyState === WebSocket.OPEN) {
          // The server answered but could not take us now (starting up, room moving): retry.
          this.ws.close();
        } else if (!this.ws || this.ws.readyState === WebSocket.CLOSED) {
          // open() failed; the close handler already scheduled a retry when it ran.
        }
      }
    }
    retry() {
      if (this.retryTimer) return;
      if (!this.onOnline) {
        // Back on the network: try now instead of waiting out the backoff.
        this.onOnline = () => { if (this.retryTimer) { clearTimeout(this.retryTimer); this.retryTimer = null; this.start(this.makeJoin); } };
        window.addEventListener("online", this.onOnline);
      }
      const delay = backoff(this.attempt++);
      this.emit("state", this.joinedOnce ? "Connection lost; reconnecting…" : "Connecting…");
      this.retryTimer = setTimeout(() => { this.retryTimer = null; if (!this.stopped) this.start(this.makeJoin); }, delay);
    }
    dispatch(msg) {
      if (msg.ref != null && this.pending.has(msg.ref)) {
        const {resolve, reject} = this.pending.get(msg.ref);
        this.pending.delete(msg.ref);
        if (msg.type === "error") reject(new ApiFailure(msg.status, {error: msg.code, message: msg.message, plans: msg.plans,
                                                                     node_url: msg.node_url}));
        else resolve(msg);
        return;
      }
      const handler = this.handlers[msg.type];
      if (handler) handler(msg);
    }
    request(msg) {
      const ref = this.nextRef++;
      return new Promise((resolve, reject) => {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
          reject(new ApiFailure(0, {error: "closed", message: "not connected"}));
          return;
        }
        this.pending.set(ref, {resolve, reject});
        this.ws.send(JSON.stringify({...msg, ref}));
      });
    }
    get connected() { return !!this.ws && this.ws.readyState === WebSocket.OPEN; }
    close() { this.stopped = true; clearTimeout(this.retryTimer); this.retryTimer = null; if (this.ws) this.ws.close(); }
  }

  // The server does not need trickle ICE: send complete SDP, bounded wait.
  // Calls lost() once when a peer connection's ICE path dies: "failed" at once,
  // "disconnected" after a second without recovering (a blip heals itself; a
  // network change does not). The server does no ICE restart, so the pages
  // reconnect on a fresh peer connection from wherever they are now.
  function onIceLost(pc, lost, graceMs = 1000) {
    let timer = null;
    let fired = false;
    const fire = () => { if (!fired && pc.connectionState !== "closed") { fired = true; lost(); } };
    pc.addEventListener("iceconnectionstatechange", () => {
      clearTimeout(timer);
      if (pc.iceConnectionState === "failed") fire();
      else if (pc.iceConnectionState === "disconnected") timer = setTimeout(fire, graceMs);
    });
  }

  function gatheringComplete(pc, timeoutMs = 3000) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); pc.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      const timer = setTimeout(done, timeoutMs);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  async function roomInfo(slug) {
    return fetchJSON(`/api/rooms/${slug}`);
  }

  // A live page's first step: the room's title into #room-title, or the
  // gate's refusal into #refusal. Resolves to the room info, or null if refused.
  async function loadRoom(slug) {
    try {
      const info = await roomInfo(slug);
      const title = document.getElementById("room-title");
      if (title) title.textContent = info.title || slug;
      return info;
    } catch (err) {
      showRefusal("refusal", err);
      return null;
    }
  }

  function setChatRoom(slug) {
    const chat = document.getElementById("chat");
    if (chat) chat.dataset.room = slug;
  }

  // hls.js (vendored) is fetched only where the browser cannot play HLS itself: the live
  // viewer's low-latency mode and the replay page. Resolves either way; the caller checks
  // window.Hls and reports when HLS cannot play here.
  function loadHlsJs() {
    if (window.Hls) return Promise.resolve();
    return new Promise((resolve) => {
      const script = document.createElement("script");
      script.src = "/static/vendor/hls.light.min.js";
      script.onload = resolve;
      script.onerror = resolve;
      document.head.appendChild(script);
    });
  }

  // Drag a picture-in-picture figure (one with class "pip") anywhere over its stage: the
  // live viewer's camera over the screen, and the replay page's the same way.
  function draggablePip(figure, stage) {
    figure.addEventListener("pointerdown", (e) => {
      if (!figure.classList.contains("pip")) return;
      const area = stage.getBoundingClientRect();
      const box = figure.getBoundingClientRect();
      const dx = e.clientX - box.left, dy = e.clientY - box.top;
      figure.setPointerCapture(e.pointerId);
      const move = (ev) => {
        const x = Math.max(0, Math.min(area.width - box.width, ev.clientX - area.left - dx));
        const y = Math.max(0, Math.min(area.height - box.height, ev.clientY - area.top - dy));
        Object.assign(figure.style, {left: x + "px", top: y + "px", right: "auto", bottom: "auto"});
      };
      const up = () => { figure.removeEventListener("pointermove", move); figure.removeEventListener("pointerup", up); };
      figure.addEventListener("pointermove", move);
      figure.addEventListener("pointerup", up);
      e.preventDefault();
    });
  }

  window.ODS = {ApiFailure, fetchJSON, api, csrfToken, loadRoom, escapeHTML, el, showRefusal, roomSlug, Signaling, gatheringComplete,
                onIceLost, setChatRoom, pageToken, forgetToken, guestName, setGuestName, backoff, draggablePip, loadHlsJs};

  // A material change of the privacy policy: signed-in people see a notice on every
  // page until they acknowledge it (the acknowledgement is recorded with the version).
  async function policyNotice() {
    if (!csrfToken()) return;   // not signed in
    let body;
    try {
      body = await fetchJSON("/api/policy/notice");
    } catch (_) {
      return;
    }
    if (!body.notice) return;
    const version = body.notice.version;
    const ok = el("button", {id: "policy-ack", type: "button"}, "Got it");
    const bar = el("div", {id: "policy-notice", class: "policy-notice", role: "status"});
    bar.append("Our privacy policy changed (version " + version + "). ",
               el("a", {href: "/privacy?version=" + encodeURIComponent(version)}, "Read it"), ok);
    ok.addEventListener("click", async () => {
      ok.disabled = true;
      try {
        await api("POST", "/api/policy/acknowledge", {version});
        bar.remove();
      } catch (failure) {
        ok.disabled = false;
        bar.append(" " + failure.message);
      }
    });
    document.body.prepend(bar);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", policyNotice);
  else policyNotice();
})();
