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
    if (failure.status === 401) title = "Sign in to enter this room.";
    else if (failure.status === 402) title = "This room is for subscribers.";
    else if (failure.status === 403) title = "You are not allowed in here.";
    else if (failure.status === 404) title = "This room does not exist.";
    else title = "Something went wrong.";
    box.append(el("strong", {}, title), " ", el("span", {}, failure.message || ""));
    if (failure.status === 401) {
      box.append(" ", el("a", {href: "/signin?next=" + here}, "Sign in"));
    } else if (failure.status === 402) {
      const plans = (failure.plans || []).join(", ");
      if (plans) box.append(" ", el("span", {}, "Plans: " + plans + "."));
      box.append(" ", el("a", {href: "/plans?next=" + here}, "See plans"));
    }
  }

  function roomSlug() {
    const m = location.pathname.match(/^\/rooms\/([a-z0-9][a-z0-9-]{0,62})/);
    return m ? m[1] : "";
  }

  // Signaling over /rooms/{slug}/ws: request() resolves with the reply that
  // carries the same ref, or rejects with an ApiFailure-like error.
  class Signaling {
    constructor(slug) {
      this.slug = slug;
      this.handlers = {};
      this.pending = new Map();
      this.nextRef = 1;
      this.ws = null;
    }
    on(type, handler) { this.handlers[type] = handler; return this; }
    open() {
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      this.ws = new WebSocket(`${proto}//${location.host}/rooms/${this.slug}/ws`);
      this.ws.addEventListener("message", (e) => this.dispatch(JSON.parse(e.data)));
      this.ws.addEventListener("close", (e) => {
        for (const {reject} of this.pending.values()) reject(new ApiFailure(0, {error: "closed", message: "connection closed"}));
        this.pending.clear();
        if (this.handlers.close) this.handlers.close(e);
      });
      return new Promise((resolve, reject) => {
        this.ws.addEventListener("open", resolve, {once: true});
        this.ws.addEventListener("error", () => reject(new ApiFailure(0, {error: "unreachable", message: "cannot reach the server"})), {once: true});
      });
    }
    dispatch(msg) {
      if (msg.ref != null && this.pending.has(msg.ref)) {
        const {resolve, reject} = this.pending.get(msg.ref);
        this.pending.delete(msg.ref);
        if (msg.type === "error") reject(new ApiFailure(msg.status, {error: msg.code, message: msg.message, plans: msg.plans}));
        else resolve(msg);
        return;
      }
      const handler = this.handlers[msg.type];
      if (handler) handler(msg);
    }
    request(msg) {
      const ref = this.nextRef++;
      return new Promise((resolve, reject) => {
        this.pending.set(ref, {resolve, reject});
        this.ws.send(JSON.stringify({...msg, ref}));
      });
    }
    close() { if (this.ws) this.ws.close(); }
  }

  // The server does not need trickle ICE: send complete SDP, bounded wait.
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

  window.ODS = {ApiFailure, fetchJSON, api, csrfToken, loadRoom, escapeHTML, el, showRefusal, roomSlug, Signaling, gatheringComplete,
                setChatRoom};
})();
