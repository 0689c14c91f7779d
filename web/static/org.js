// Organization admin page: seats in use, members added and removed by e-mail.
"use strict";

const {api} = window.ODS;

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function showError(e) {
  const box = document.getElementById("error");
  box.textContent = e.message;
  box.hidden = false;
}

const orgId = (location.pathname.match(/^\/orgs\/(\d+)/) || [])[1];

function render(org) {
  document.getElementById("org").hidden = false;
  document.getElementById("org-name").textContent = org.name;
  document.getElementById("seats").textContent = `${org.used} of ${org.seats} seats in use.`;
  const sub = org.subscription;
  document.getElementById("plan").textContent = sub ? `Plan ${sub.plan} · ${sub.status}` : "No subscription yet.";
  const body = document.getElementById("members");
  body.replaceChildren();
  for (const m of org.members) {
    const row = el("tr");
    row.append(el("td", m.email), el("td", m.role), el("td", m.has_account ? "yes" : "not yet"));
    const cell = el("td");
    const remove = el("button", "Remove", {type: "button"});
    remove.addEventListener("click", async () => {
      try {
        await api("DELETE", `/api/orgs/${orgId}/members/${encodeURIComponent(m.email)}`);
        render(await api("GET", `/api/orgs/${orgId}`));
      } catch (e) { showError(e); }
    });
    cell.append(remove);
    row.append(cell);
    body.append(row);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  try {
    render(await api("GET", `/api/orgs/${orgId}`));
  } catch (e) {
    if (e.status === 401) { location.assign(`/signin?next=/orgs/${orgId}`); return; }
    showError(e);
    return;
  }
  document.getElementById("add-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    document.getElementById("error").hidden = true;
    try {
      render(await api("POST", `/api/orgs/${orgId}/members`, {email: document.getElementById("member-email").value}));
      document.getElementById("member-email").value = "";
    } catch (e) { showError(e); }
  });
  document.getElementById("portal").addEventListener("click", async () => {
    try { const {url} = await api("POST", "/billing/portal", {org_id: Number(orgId)}); location.assign(url); }
    catch (e) { showError(e); }
  });
});
