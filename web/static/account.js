// Account page: name, sign-out, API tokens, sessions, plan. Every change sends
// the CSRF token (from the readable ods_csrf cookie) in X-CSRF-Token.
"use strict";

const {api} = window.ODS;

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;   // textContent: never HTML
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function showError(e) {
  const box = document.getElementById("error");
  box.textContent = e.message;
  box.hidden = false;
}

async function loadTokens() {
  const {tokens} = await api("GET", "/api/tokens");
  const body = document.getElementById("tokens");
  body.replaceChildren();
  for (const t of tokens.filter((t) => t.active)) {
    const row = el("tr");
    row.append(el("td", t.room), el("td", t.role), el("td", t.label), el("td", new Date(t.expires_at).toLocaleString()));
    const cell = el("td");
    const revoke = el("button", "Revoke", {type: "button", "data-token": String(t.id)});
    revoke.addEventListener("click", async () => {
      try { await api("DELETE", `/api/tokens/${t.id}`); await loadTokens(); } catch (e) { showError(e); }
    });
    cell.append(revoke);
    row.append(cell);
    body.append(row);
  }
}

async function loadSessions() {
  const [{sessions}, {events}] = await Promise.all([api("GET", "/api/sessions"), api("GET", "/api/me/events")]);
  const list = document.getElementById("sessions");
  list.replaceChildren();
  for (const s of sessions) {
    const item = el("li", `${s.current ? "This device" : "Device"} · since ${new Date(s.created_at).toLocaleString()} · ${s.region}`);
    if (!s.current) {
      const revoke = el("button", "Sign out", {type: "button"});
      revoke.addEventListener("click", async () => {
        try { await api("DELETE", `/api/sessions/${s.id}`); await loadSessions(); } catch (e) { showError(e); }
      });
      item.append(" ", revoke);
    }
    list.append(item);
  }
  const log = document.getElementById("events");
  log.replaceChildren(...events.slice(0, 10).map((ev) =>
    el("li", `${new Date(ev.at).toLocaleString()} · ${ev.kind.replace("_", " ")} · ${ev.region}`)));
}

function showBilling(me) {
  const billing = me.billing;
  if (!billing) return;
  const plan = document.getElementById("plan");
  if (billing.subscription) {
    const s = billing.subscription;
    const end = s.current_period_end ? new Date(s.current_period_end).toLocaleDateString() : "";
    plan.textContent = `Plan: ${s.plan_label || s.plan} · ${s.status}` +
      (s.cancel_at_period_end ? ` · ends ${end}` : end ? ` · renews ${end}` : "");
    document.getElementById("portal").hidden = false;
  }
  const orgs = document.getElementById("orgs");
  orgs.replaceChildren();
  for (const org of billing.orgs || []) {
    const item = el("li", `Organization: ${org.name} (${org.role}) `);
    if (org.role === "admin") item.append(el("a", "Manage seats", {href: `/orgs/${org.id}`}));
    orgs.append(item);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  let me;
  try {
    me = await api("GET", "/api/me");
  } catch (e) {
    if (e.status === 401) { document.getElementById("signed-out").hidden = false; return; }
    showError(e);
    return;
  }
  document.getElementById("account").hidden = false;
  document.getElementById("email").textContent = me.email;
  const name = document.getElementById("display-name");
  name.value = me.display_name;
  showBilling(me);

  document.getElementById("delete-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("DELETE", "/api/me", {confirm_email: document.getElementById("delete-confirm").value});
      window.location.assign("/?deleted=1");
    } catch (e) { showError(e); }
  });

  document.getElementById("name-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const updated = await api("PATCH", "/api/me", {display_name: name.value});
      name.value = updated.display_name;
      document.getElementById("name-status").textContent = "Saved";
    } catch (e) { showError(e); }
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    try { await api("POST", "/auth/sign-out"); location.assign("/signin"); } catch (e) { showError(e); }
  });
  document.getElementById("portal").addEventListener("click", async () => {
    try { const {url} = await api("POST", "/billing/portal"); location.assign(url); } catch (e) { showError(e); }
  });
  document.getElementById("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const created = await api("POST", "/api/tokens", {
        room: document.getElementById("token-room").value.trim(),
        role: document.getElementById("token-role").value,
        ttl: document.getElementById("token-ttl").value.trim(),
        label: document.getElementById("token-label").value,
      });
      document.getElementById("new-token-value").textContent = created.token;
      document.getElementById("new-token").hidden = false;
      await loadTokens();
    } catch (e) { showError(e); }
  });
  try { await Promise.all([loadTokens(), loadSessions()]); } catch (e) { showError(e); }
});
