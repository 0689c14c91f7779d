// Home page: public rooms (live first) and, for a signed-in host, their own rooms.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  function roomItem(room, hostLinks) {
    const li = ODS.el("li", {"data-room": room.slug, "data-live": room.live ? "1" : "0"});
    li.append(ODS.el("a", {href: "/rooms/" + room.slug, class: "room-name"}, room.title || room.slug));
    if (room.live) li.append(" ", ODS.el("span", {class: "live-badge"}, "LIVE"));
    if (room.access.policy !== "public") {
      li.append(" ", ODS.el("span", {class: "muted"}, room.access.policy === "signed-in" ? "members" : "subscribers"));
    }
    const links = ODS.el("span", {class: "room-links"});
    if (hostLinks) links.append(ODS.el("a", {href: "/rooms/" + room.slug + "/host"}, "Host"), " ");
    links.append(ODS.el("a", {href: "/rooms/" + room.slug + "/episodes"}, "Episodes"));
    li.append(links);
    return li;
  }

  async function main() {
    try {
      const body = await ODS.fetchJSON("/api/rooms");
      $("rooms").replaceChildren(...body.rooms.map((r) => roomItem(r, false)));
      $("rooms-status").textContent = body.rooms.length ? "" : "No public rooms yet.";
      $("mine-section").hidden = body.mine.length === 0;
      $("mine").replaceChildren(...body.mine.map((r) => roomItem(r, true)));
      // Signed in (the session's readable CSRF cookie) or owning rooms: the way in is the account page.
      if (body.mine.length || ODS.csrfToken()) { $("account-link").textContent = "Account"; $("account-link").href = "/account"; }
    } catch (err) {
      $("rooms-status").textContent = "Could not load rooms: " + err.message;
    }
  }
  main();
})();
