// ODS Media chat: mounts into <section id="chat" data-room="SLUG"> on the viewer,
// host and replay pages.
//
//   data-room     room slug (pages set it via ODS.setChatRoom; the "SLUG"
//                 placeholder or nothing means: take it from /rooms/{slug}/...)
//   data-mode     "live" (default) or "replay"
//   data-episode  episode id (replay mode; default: from /episodes/{id}/watch)
//   data-video    CSS selector of the <video> replay syncs to (default "video")
//   data-video-offset  seconds of episode time before that video's zero (replay of an
//                 episode whose main rendition, the screen, started after the recording)
//   data-token    optional bearer token sent in the join message; by default the
//                 page's own token (ODS.pageToken: the ?token= that opened the page),
//                 so chat and signaling share one identity; without a token the
//                 socket relies on the session/anonymous cookies
//
// root.odsChat.request(message) sends a command and resolves with its ack (the
// people list uses it to moderate); "ods-chat-you" fires on the root when the
// server tells this client who it is (a join, a promotion).
//
// Text stays text: every string from the server is put in the page with
// textContent, never parsed as HTML.
(function () {
  "use strict";

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function button(label, title, onClick) {
    const b = el("button", "chat-btn", label);
    b.type = "button";
    if (title) b.title = title;
    // A symbol alone ("▲", "✓") is no name for a screen reader: use the title.
    if (title && label.length <= 2) b.setAttribute("aria-label", title);
    b.addEventListener("click", onClick);
    return b;
  }

  function clock(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const mm = String(m).padStart(2, "0"), ss = String(r).padStart(2, "0");
    return h ? h + ":" + mm + ":" + ss : m + ":" + ss;
  }

  const ROLE_BADGE = { host: "Host", moderator: "Mod" };

  function timeOfDay(iso) {
    const d = new Date(iso);
    return isNaN(d) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  // "You are timed out until 4:34 PM." from the ISO time the server sends (its own text has no time).
  function timedOut(until) {
    const at = until ? timeOfDay(until) : "";
    return "You are timed out" + (at ? " until " + at : "") + ".";
  }

  function renderItem(item, actions, live) {
    const li = el("li", "chat-item chat-" + item.kind);
    li.dataset.id = String(item.id);
    li.dataset.author = item.author;
    if (item.answered) li.classList.add("chat-is-answered");
    const meta = el("div", "chat-meta");
    meta.appendChild(el("span", "chat-name", item.name));
    if (ROLE_BADGE[item.role]) {
      const b = el("span", "badge badge-" + item.role, ROLE_BADGE[item.role]);
      b.title = item.role;
      meta.appendChild(b);
    }
    if (item.kind === "question") meta.appendChild(el("span", "chat-kind-label", "Question"));
    if (item.kind === "highlight") meta.appendChild(el("span", "chat-badge", "Highlight"));
    if (live && item.created_at) {
      const t = el("time", "chat-time", timeOfDay(item.created_at));
      t.dateTime = item.created_at;
      meta.appendChild(t);
    } else if (item.offset !== null && item.offset !== undefined) {
      meta.appendChild(el("span", "chat-offset", clock(item.offset)));
    }
    if (item.kind === "question") {
      meta.appendChild(el("span", "chat-votes", "▲ " + item.votes));
      if (item.answered) meta.appendChild(el("span", "chat-answered", "answered"));
    }
    li.appendChild(meta);
    li.appendChild(el("div", "chat-text", item.text));
    if (actions) {
      const bar = el("div", "chat-actions");
      for (const a of actions) bar.appendChild(a);
      li.appendChild(bar);
    }
    return li;
  }

  // ---------------------------------------------------------------- live chat

  function LiveChat(root) {
    this.root = root;
    this.room = root.dataset.room;
    this.token = root.dataset.token || (window.ODS && window.ODS.pageToken ? window.ODS.pageToken(this.room) || "" : "");
    this.items = new Map();
    this.lastSeq = null;
    this.you = null;
    this.settings = {};
    this.refs = 0;
    this.retry = 0;
    this.stopped = false;
    this.build();
    this.connect();
  }

  LiveChat.prototype.build = function () {
    const root = this.root;
    root.classList.add("chat");
    root.replaceChildren();
    const tabs = el("div", "chat-tabs");
    tabs.setAttribute("role", "tablist");
    tabs.setAttribute("aria-label", "Chat views");
    this.filter = "all";
    for (const [key, label] of [["all", "Chat"], ["question", "Questions"], ["highlight", "Highlights"]]) {
      const tab = button(label, "", () => { this.filter = key; this.renderAll(); });
      tab.dataset.filter = key;
      tab.setAttribute("role", "tab");
      tabs.appendChild(tab);
    }
    // Arrow keys move between tabs (the WAI-ARIA tabs pattern); Tab leaves the tab list.
    tabs.addEventListener("keydown", (e) => {
      if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
      const all = Array.from(tabs.children);
      const next = all[(all.indexOf(document.activeElement) + (e.key === "ArrowRight" ? 1 : all.length - 1)) % all.length];
      if (next) { next.focus(); next.click(); e.preventDefault(); }
    });
    this.modBar = el("div", "chat-modbar");
    this.modBar.hidden = true;
    const slow = el("select", "chat-slow");
    for (const s of [0, 5, 10, 30, 60, 120]) {
      const o = el("option", "", s ? "slow mode " + s + " s" : "slow mode off");
      o.value = String(s);
      slow.appendChild(o);
    }
    slow.setAttribute("aria-label", "Slow mode");
    slow.addEventListener("change", () => this.send({ type: "slow_mode", seconds: Number(slow.value) }));
    this.slowSelect = slow;
    this.modBar.appendChild(slow);
    this.modBar.appendChild(button("Clear chat", "Delete every item", () => {
      if (window.confirm("Clear the whole chat?")) this.send({ type: "clear" });
    }));
    this.modBar.appendChild(button("Sanctions", "Running timeouts and bans", () => this.showSanctions()));
    this.sanctionList = el("ul", "chat-sanctions");
    this.sanctionList.hidden = true;
    this.list = el("ol", "chat-list");
    this.list.setAttribute("aria-live", "polite");
    this.emptyNote = el("p", "chat-empty muted");
    this.emptyNote.hidden = true;
    this.status = el("div", "chat-status");
    this.status.setAttribute("role", "status");
    const form = el("form", "chat-form");
    this.kind = el("select", "chat-kind");
    this.kind.setAttribute("aria-label", "Post as");
    for (const [value, label] of [["message", "Message"], ["question", "Question"], ["highlight", "Highlight"]]) {
      const o = el("option", "", label);
      o.value = value;
      this.kind.appendChild(o);
    }
    this.input = el("textarea", "chat-input");
    this.input.rows = 2;
    this.input.placeholder = "Say something";
    this.input.setAttribute("aria-label", "Chat message");
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
    });
    const send = el("button", "chat-send", "Send");
    send.type = "submit";
    this.nameButton = button("Name", "Choose the name others see", () => this.askName());
    this.nameButton.hidden = true;
    form.append(this.kind, this.input, send, this.nameButton);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = this.input.value;
      if (!text.trim() && this.kind.value !== "highlight") return;
      // Cleared on the ack only if it still holds what was sent: text typed meanwhile stays.
      this.send({ type: "post", kind: this.kind.value, text: text }, () => {
        if (this.input.value === text) this.input.value = "";
      });
    });
    this.form = form;
    root.append(tabs, this.modBar, this.sanctionList, this.list, this.emptyNote, this.status, form);
  };

  LiveChat.prototype.connect = function () {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(proto + "//" + location.host + "/rooms/" + encodeURIComponent(this.room) + "/chat");
    this.ws = ws;
    this.pending = new Map();
    this.root.dataset.state = "connecting";
    ws.addEventListener("open", () => {
      const join = { type: "join" };
      if (this.token) join.token = this.token;
      const name = this.savedName();
      if (name) join.name = name;
      this.root.dataset.state = "joining";
      if (this.lastSeq !== null) join.after = this.lastSeq;
      ws.send(JSON.stringify(join));
    });
    ws.addEventListener("message", (e) => {
      let event;
      try { event = JSON.parse(e.data); } catch (err) { return; }
      this.onEvent(event);
    });
    ws.addEventListener("close", (e) => {
      this.root.dataset.state = "closed";
      if (e.code === 4003 || (e.code >= 4400 && e.code < 4500)) {
        this.stopped = true;  // refused, kicked or banned: reconnecting would not help
        if (!this.status.textContent) this.showError(e.reason || "disconnected");
        this.form.hidden = true;
        return;
      }
      if (this.stopped) return;
      const delay = Math.min(5000, 250 * Math.pow(2, this.retry++)) * (0.5 + Math.random() / 2);
      this.status.textContent = e.code === 4000 ? "" : "Chat connection lost; reconnecting…";
      this.timer = setTimeout(() => this.connect(), e.code === 4000 ? 0 : delay);
      if (!this.onOnline) {
        // Back on the network: reconnect now instead of waiting out the backoff.
        this.onOnline = () => {
          if (this.stopped || !this.timer || (this.ws && this.ws.readyState !== WebSocket.CLOSED)) return;
          clearTimeout(this.timer);
          this.connect();
        };
        window.addEventListener("online", this.onOnline);
      }
    });
  };

  LiveChat.prototype.savedName = function () {
    if (window.ODS && window.ODS.guestName) return window.ODS.guestName() || "";
    try { return window.localStorage.getItem("ods_chat_name") || ""; } catch (err) { return ""; }
  };

  // Guests (no account name) may pick a display name; it applies from the next
  // join of chat and (through "ods-rename") of the page's signaling.
  LiveChat.prototype.askName = function () {
    const name = (window.prompt("Your name in chat (1-40 characters)", this.savedName()) || "").trim();
    if (!name || name.length > 40) return;
    try { window.localStorage.setItem("ods_chat_name", name); } catch (err) { return; }
    if (this.ws) this.ws.close(4000, "rename");
    this.root.dispatchEvent(new CustomEvent("ods-rename", { detail: { name: name } }));
  };

  // Stops for good (the page was refused entry to the room).
  LiveChat.prototype.stop = function () {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close();
  };

  // A command that resolves with its ack or rejects with the server's error.
  LiveChat.prototype.request = function (message) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) { reject(new Error("chat is not connected")); return; }
      const ref = "c" + (++this.refs);
      this.pending.set(ref, resolve);
      this.failures = this.failures || new Map();
      this.failures.set(ref, reject);
      this.ws.send(JSON.stringify(Object.assign({ ref: ref }, message)));
    });
  };

  // Moderators: list running timeouts and bans, each with a button that lifts it.
  LiveChat.prototype.showSanctions = function () {
    if (!this.sanctionList.hidden) { this.sanctionList.hidden = true; return; }
    this.send({ type: "sanctions" }, (ack) => {
      this.sanctionList.replaceChildren(...ack.sanctions.map((x) => {
        const li = el("li", "chat-sanction");
        li.dataset.target = x.target;
        const what = x.sanction === "ban" ? "banned" : "timed out until " + new Date(x.until).toLocaleTimeString();
        const name = el("span", "chat-name", x.name || x.target);
        name.title = x.target;
        li.append(name, el("span", "", " " + what + (x.reason ? " (" + x.reason + ")" : "") + " "));
        li.appendChild(button(x.sanction === "ban" ? "Unban" : "End timeout", "", () => {
          this.send({ type: x.sanction === "ban" ? "unban" : "end_timeout", target: x.target }, () => li.remove());
        }));
        return li;
      }));
      if (!ack.sanctions.length) this.sanctionList.appendChild(el("li", "chat-sanction", "No timeouts or bans."));
      this.sanctionList.hidden = false;
    });
  };

  LiveChat.prototype.send = function (message, onAck) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) { this.showError("not connected"); return; }
    const ref = "c" + (++this.refs);
    if (onAck) this.pending.set(ref, onAck);
    this.ws.send(JSON.stringify(Object.assign({ ref: ref }, message)));
  };

  LiveChat.prototype.showError = function (text) {
    this.status.textContent = text;
    this.status.classList.add("chat-error");
  };

  LiveChat.prototype.onEvent = function (event) {
    switch (event.type) {
      case "welcome":
        this.retry = 0;
        this.you = event.you;
        this.settings = event.settings;
        if (this.lastSeq === null || event.reset) this.items.clear();
        for (const id of event.deleted) this.items.delete(id);
        for (const item of event.items) this.items.set(item.id, item);
        this.lastSeq = event.cursor;
        this.status.textContent = "";
        this.status.classList.remove("chat-error");
        this.applyYou();
        this.renderAll();
        this.root.dataset.state = "connected";
        break;
      case "item":
        this.lastSeq = Math.max(this.lastSeq || 0, event.seq);
        this.items.set(event.item.id, event.item);
        this.renderOne(event.item);
        break;
      case "deleted":
        this.lastSeq = Math.max(this.lastSeq || 0, event.seq);
        for (const id of event.ids) {
          this.items.delete(id);
          const li = this.list.querySelector('li[data-id="' + Number(id) + '"]');
          if (li) li.remove();
        }
        this.updateTabs();
        break;
      case "settings":
        this.settings.slow_mode = event.slow_mode;
        this.applyYou();
        break;
      case "you":
        this.you = event;
        this.applyYou();
        this.renderAll();
        break;
      case "sanction":
        if (this.you && event.target === this.you.subject) this.showError(timedOut(event.until));
        break;
      case "sanction_lifted":
        if (this.you && event.target === this.you.subject && event.sanction === "timeout") {
          this.status.textContent = "";
          this.status.classList.remove("chat-error");
        }
        break;
      case "kicked":
      case "banned":
        if (this.you && event.target === this.you.subject) { this.stopped = true; this.showError(event.message); }
        break;
      case "ack": {
        const done = this.pending.get(event.ref);
        this.pending.delete(event.ref);
        if (this.failures) this.failures.delete(event.ref);
        if (done) done(event);
        this.status.textContent = "";
        this.status.classList.remove("chat-error");
        break;
      }
      case "error":
        this.pending.delete(event.ref);
        if (this.failures && this.failures.has(event.ref)) {
          const fail = this.failures.get(event.ref);
          this.failures.delete(event.ref);
          fail(new Error(event.message || event.error));
        }
        if (event.error === "timed_out") { this.showError(timedOut(event.until)); break; }
        this.showError(event.message + (event.retry_after ? " (retry in " + event.retry_after + " s)" : ""));
        break;
    }
  };

  LiveChat.prototype.isModerator = function () {
    return !!this.you && (this.you.role === "host" || this.you.role === "moderator");
  };

  LiveChat.prototype.applyYou = function () {
    const mod = this.isModerator();
    this.modBar.hidden = !mod;
    this.slowSelect.value = String(this.settings.slow_mode || 0);
    this.form.hidden = !(this.you && this.you.can_post);
    this.nameButton.hidden = !(this.you && /^v:/.test(this.you.subject));
    this.root.dataset.role = this.you ? this.you.role : "";
    this.root.dispatchEvent(new CustomEvent("ods-chat-you", { detail: this.you }));
  };

  LiveChat.prototype.actionsFor = function (item) {
    const acts = [];
    const you = this.you;
    if (!you) return acts;
    if (item.kind === "question" && you.can_post) acts.push(button("▲", "Upvote", () => this.send({ type: "upvote", id: item.id })));
    if (item.kind === "question" && this.isModerator() && !item.answered) {
      acts.push(button("✓", "Mark answered", () => this.send({ type: "answer", id: item.id })));
    }
    if (this.isModerator() || item.author === you.subject) {
      acts.push(button("Delete", "Delete this item", () => this.send({ type: "delete", id: item.id })));
    }
    if (this.isModerator() && item.author !== you.subject) {
      const t = item.author;
      const rank = { viewer: 0, moderator: 1, host: 2 };
      if ((rank[item.role] || 0) < rank[you.role]) {
        acts.push(button("Timeout", "Time out for 10 minutes", () => this.send({ type: "timeout", target: t, minutes: 10 })));
        acts.push(button("Ban", "Ban from the room", () => this.send({ type: "ban", target: t })));
        acts.push(button("Kick", "Remove from the room", () => this.send({ type: "kick", target: t })));
      }
      if (item.role === "host") {
        // Only hosts publish: a moderator may silence a host's open mic or camera (one source
        // each: the camera's mute leaves their screen alone; the people list has every source).
        acts.push(button("Mute mic", "Stop their microphone", () => this.send({ type: "mute", target: t, source: "microphone" })));
        acts.push(button("Mute cam", "Stop their camera", () => this.send({ type: "mute", target: t, source: "camera" })));
      }
      if (you.role === "host" && t.startsWith("a:")) {
        acts.push(button("Make mod", "Promote to moderator", () => this.send({ type: "promote", target: t })));
        acts.push(button("Remove mod", "Demote to viewer", () => this.send({ type: "demote", target: t })));
      }
    }
    return acts;
  };

  LiveChat.prototype.visible = function (item) {
    return this.filter === "all" || item.kind === this.filter;
  };

  LiveChat.prototype.renderAll = function () {
    let items = Array.from(this.items.values()).filter((i) => this.visible(i));
    if (this.filter === "question") items.sort((a, b) => (a.answered - b.answered) || (b.votes - a.votes) || (a.id - b.id));
    else items.sort((a, b) => a.id - b.id);
    this.list.replaceChildren(...items.map((i) => renderItem(i, this.actionsFor(i), true)));
    const empty = { all: "No messages yet. Say hello!", question: "No questions yet.", highlight: "No highlights yet." };
    this.emptyNote.textContent = empty[this.filter];
    this.emptyNote.hidden = items.length > 0;
    this.updateTabs();
    this.list.scrollTop = this.list.scrollHeight;
  };

  // The selected tab (aria-selected) and the count of open questions.
  LiveChat.prototype.updateTabs = function () {
    const open = Array.from(this.items.values()).filter((i) => i.kind === "question" && !i.answered).length;
    for (const tab of this.root.querySelectorAll(".chat-tabs button")) {
      const selected = tab.dataset.filter === this.filter;
      tab.classList.toggle("active", selected);
      tab.setAttribute("aria-selected", selected ? "true" : "false");
      tab.tabIndex = selected ? 0 : -1;
      if (tab.dataset.filter === "question") tab.textContent = open ? "Questions (" + open + ")" : "Questions";
    }
  };

  LiveChat.prototype.renderOne = function (item) {
    this.updateTabs();
    const old = this.list.querySelector('li[data-id="' + Number(item.id) + '"]');
    if (!this.visible(item)) { if (old) old.remove(); return; }
    if (this.filter === "question" || (old === null && this.list.lastElementChild &&
        Number(this.list.lastElementChild.dataset.id) > item.id)) { this.renderAll(); return; }
    const li = renderItem(item, this.actionsFor(item), true);
    this.emptyNote.hidden = true;
    if (old) old.replaceWith(li);
    else {
      const atBottom = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
      this.list.appendChild(li);
      if (atBottom) this.list.scrollTop = this.list.scrollHeight;
    }
  };

  // ---------------------------------------------------------------- replay

  function ReplayChat(root) {
    this.root = root;
    this.episode = root.dataset.episode;
    this.video = document.querySelector(root.dataset.video || "video");
    this.items = [];
    this.shown = -1;
    root.classList.add("chat", "chat-replay");
    root.replaceChildren();
    this.jumps = el("ol", "chat-highlights");
    this.list = el("ol", "chat-list");
    this.status = el("div", "chat-status");
    root.append(el("h3", "chat-heading", "Highlights"), this.jumps, el("h3", "chat-heading", "Chat"), this.list, this.status);
    this.load().catch((err) => { this.status.textContent = String(err.message || err); });
  }

  ReplayChat.prototype.load = async function () {
    let from = 0;
    for (let page = 0; page < 50; page++) {
      const resp = await fetch("/episodes/" + encodeURIComponent(this.episode) + "/chat?from=" + from, { credentials: "same-origin" });
      const body = await resp.json();
      if (!resp.ok) throw new Error(body.message || body.error || "could not load chat");
      if (page === 0) this.renderHighlights(body.highlights);
      // A page boundary can fall inside equal offsets: skip ids already loaded.
      const seen = new Set(this.items.map((i) => i.id));
      for (const item of body.items) if (!seen.has(item.id)) this.items.push(item);
      if (!body.truncated) break;
      from = body.next_from;
    }
    this.root.dataset.state = "loaded";
    if (this.video) {
      for (const name of ["timeupdate", "seeked", "loadedmetadata"]) this.video.addEventListener(name, () => this.sync());
    }
    this.sync();
  };

  ReplayChat.prototype.renderHighlights = function (highlights) {
    this.jumps.replaceChildren(...highlights.map((h) => {
      const li = el("li", "chat-jump");
      li.dataset.offset = String(h.offset);
      li.appendChild(button(clock(h.offset), "Jump to this moment", () => {
        if (this.video) { this.video.currentTime = Math.max(0, h.offset - this.videoOffset()); this.sync(); }
      }));
      li.appendChild(el("span", "chat-text", h.note || "(highlight)"));
      li.appendChild(el("span", "chat-name", h.name));
      return li;
    }));
  };

  ReplayChat.prototype.videoOffset = function () {
    return Number(this.root.dataset.videoOffset) || 0;
  };

  // Shows the items posted up to the video's current time (on the episode's clock).
  ReplayChat.prototype.sync = function () {
    const t = this.video ? this.video.currentTime + this.videoOffset() : Infinity;
    let n = 0;
    while (n < this.items.length && this.items[n].offset <= t) n++;
    if (n === this.shown) return;
    this.shown = n;
    this.list.replaceChildren(...this.items.slice(Math.max(0, n - 200), n).map((i) => renderItem(i, null)));
    this.list.scrollTop = this.list.scrollHeight;
    this.root.dataset.shown = String(n);
  };

  const SLUG = /^[a-z0-9][a-z0-9-]{0,62}$/;

  function mount() {
    const root = document.querySelector("section#chat");
    if (!root || root.dataset.mounted || root.dataset.stopped) return;
    if (root.dataset.mode === "replay") {
      if (!/^\d{1,18}$/.test(root.dataset.episode || "")) {
        const m = location.pathname.match(/^\/episodes\/(\d{1,18})\//);
        if (!m) return;
        root.dataset.episode = m[1];
      }
      root.dataset.mounted = "1";
      root.odsChat = new ReplayChat(root);
      return;
    }
    if (!SLUG.test(root.dataset.room || "") || root.dataset.room === "SLUG") {
      // The page did not fill in its room (the placeholder): take it from the URL.
      const m = location.pathname.match(/^\/rooms\/([a-z0-9][a-z0-9-]{0,62})(\/|$)/);
      if (!m) return;
      root.dataset.room = m[1];
    }
    root.dataset.mounted = "1";
    root.odsChat = new LiveChat(root);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mount);
  else mount();
})();
