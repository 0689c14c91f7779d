// People in the room (host and viewer pages): one name and role badge per
// participant, what they publish (mic/camera, muted or not), and for the host
// and moderators the controls that act on that person. Moderation goes over
// the page's chat socket: the chat protocol's commands take the person's
// subject, which reaches both their chat (timeout, ban) and their media
// (mute, kick) on whichever node holds the room.
"use strict";

(function () {
  const RANK = {viewer: 0, moderator: 1, host: 2};
  const ROLE_LABEL = {host: "Host", moderator: "Mod", viewer: ""};
  const SOURCE_LABEL = {camera: "camera", microphone: "mic", screen: "screen", "screen-audio": "screen audio"};

  function badge(role) {
    const label = ROLE_LABEL[role] || "";
    if (!label) return null;
    return ODS.el("span", {class: "badge badge-" + role, title: role}, label);
  }

  // The chat panel mounted on this page, for moderation commands.
  function chat() {
    const root = document.querySelector("section#chat");
    return root && root.odsChat;
  }

  class PeopleList {
    // list: <ul>; options.status(text) reports outcomes; options.hideSelf.
    constructor(list, options = {}) {
      this.list = list;
      this.options = options;
      this.people = new Map();
      this.publications = new Map();
      this.me = null;
    }

    reset(joined) {
      this.me = joined.participant;
      this.people = new Map(joined.participants.map((p) => [p.id, p]));
      this.publications = new Map((joined.publications || []).map((p) => [p.id, p]));
      this.render();
    }

    add(p) { this.people.set(p.id, p); this.render(); }
    // A promotion or demotion, announced to the whole room.
    role(id, role) {
      const p = this.people.get(id);
      if (p) p.role = role;
      if (this.me && this.me.id === id) this.me.role = role;
      this.render();
    }
    remove(id) { this.people.delete(id); this.render(); }
    published(pub) { this.publications.set(pub.id, pub); this.render(); }
    unpublished(id) { this.publications.delete(id); this.render(); }
    muted(id, muted, by) {
      const pub = this.publications.get(id);
      if (pub) { pub.muted = muted; pub.muted_by = muted ? by : null; }
      this.render();
    }

    viewers() {
      let n = 0;
      for (const p of this.people.values()) if (p.role === "viewer") n++;
      return n;
    }

    myRole() {
      const c = chat();
      // The chat socket knows a promotion the signaling join predates.
      return (c && c.you && c.you.role) || (this.me && this.me.role) || "viewer";
    }

    command(message, done) {
      const c = chat();
      const say = this.options.status || (() => {});
      if (!c) { say("Chat is not connected; moderation needs it."); return; }
      c.request(message).then((ack) => {
        say(done);
        if (ack.role) {
          // A promotion reaches the person's own sockets; this list shows it at once.
          for (const p of this.people.values()) if (p.subject === ack.target) p.role = ack.role;
          this.render();
        }
      }, (err) => { say("Could not do that: " + err.message); });
    }

    // A person's publications in a fixed order: camera, mic, screen, screen audio.
    sourcesOf(p) {
      const order = Object.keys(SOURCE_LABEL);
      return [...this.publications.values()].filter((pub) => pub.participant === p.id)
        .sort((a, b) => order.indexOf(a.source) - order.indexOf(b.source));
    }

    actionsFor(p) {
      const mine = this.myRole();
      if (RANK[mine] < RANK.moderator || !this.me || p.subject === this.me.subject || !p.subject) return [];
      const acts = [];
      const button = (label, title, message, done) => {
        const b = ODS.el("button", {type: "button", class: "small", title: title + " " + p.name,
                                    "aria-label": label + ": " + p.name}, label);
        b.addEventListener("click", () => this.command({...message, target: p.subject}, done));
        acts.push(b);
      };
      // One button per source: muting someone's camera leaves their shared screen alone.
      for (const pub of this.sourcesOf(p)) {
        const what = SOURCE_LABEL[pub.source] || pub.source;
        if (pub.muted && pub.muted_by === "moderator") button("Unmute " + what, "Let them use their " + what + " again:", {type: "unmute", source: pub.source}, p.name + "'s " + what + " is back on.");
        else button("Mute " + what, "Stop the " + what + " of", {type: "mute", source: pub.source}, p.name + "'s " + what + " is muted.");
      }
      if (RANK[p.role] < RANK[mine]) {
        button("Timeout", "Time out for 10 minutes:", {type: "timeout", minutes: 10}, p.name + " is timed out for 10 minutes.");
        button("Kick", "Remove from the room:", {type: "kick"}, p.name + " was removed.");
        button("Ban", "Ban from the room:", {type: "ban"}, p.name + " is banned.");
      }
      if (mine === "host" && p.subject.startsWith("a:")) {
        if (p.role === "viewer") button("Make mod", "Make a moderator:", {type: "promote"}, p.name + " is a moderator.");
        if (p.role === "moderator") button("Remove mod", "Make a viewer again:", {type: "demote"}, p.name + " is a viewer again.");
      }
      return acts;
    }

    render() {
      const ordered = [...this.people.values()].sort((a, b) => (RANK[b.role] - RANK[a.role]) || a.name.localeCompare(b.name));
      const items = [];
      for (const p of ordered) {
        if (this.options.hideSelf && this.me && p.id === this.me.id) continue;
        const li = ODS.el("li", {"data-id": p.id, "data-subject": p.subject || "", "data-role": p.role});
        const name = ODS.el("span", {class: "person-name"}, p.name);
        li.append(name);
        const b = badge(p.role);
        if (b) li.append(" ", b);
        if (this.me && p.id === this.me.id) li.append(" ", ODS.el("span", {class: "muted"}, "(you)"));
        for (const pub of this.sourcesOf(p)) {
          const what = SOURCE_LABEL[pub.source] || pub.source;
          const label = what + (pub.muted ? (pub.kind === "audio" ? " muted" : " off") : " on");
          li.append(" ", ODS.el("span", {class: "media-state" + (pub.muted ? " off" : ""), "data-kind": pub.kind}, label));
        }
        const acts = this.actionsFor(p);
        if (acts.length) {
          const bar = ODS.el("span", {class: "person-actions"});
          bar.append(...acts);
          li.append(bar);
        }
        items.push(li);
      }
      this.list.replaceChildren(...items);
      if (!items.length) this.list.append(ODS.el("li", {class: "muted"}, "Nobody else yet."));
      if (this.options.onChange) this.options.onChange(this);
    }
  }

  ODS.PeopleList = PeopleList;
  ODS.roleBadge = badge;
})();
