// Plans page: lists the catalog and starts Stripe Checkout. Seat plans are
// bought for an organization the person administers.
"use strict";

const post = (url, body) => window.ODS.api("POST", url, body);

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function fail(e) {
  if (e.status === 401) {
    localStorage.setItem("ods.after_signin", "/plans");
    location.assign("/signin?next=/plans");
    return;
  }
  const box = document.getElementById("error");
  box.textContent = e.message;
  box.hidden = false;
}

document.addEventListener("DOMContentLoaded", async () => {
  const params = new URLSearchParams(location.search);
  if (params.get("checkout") === "canceled") {
    const notice = document.getElementById("notice");
    notice.textContent = "Checkout canceled; nothing was charged.";
    notice.hidden = false;
  }
  const [{plans, checkout}, me] = await Promise.all([
    fetch("/api/plans").then((r) => r.json()),
    fetch("/api/me", {credentials: "same-origin"}).then((r) => (r.ok ? r.json() : null)),
  ]);
  const adminOrgs = ((me && me.billing && me.billing.orgs) || []).filter((o) => o.role === "admin");
  const box = document.getElementById("plans");
  if (!plans.length) {
    box.append(el("p", "No plans are on sale on this server. Every public room is free to watch.", {class: "muted", id: "no-plans"}));
  }
  if (plans.length && !checkout) {
    box.append(el("p", "Subscriptions are not open on this server yet: no payment provider is set up.",
                  {class: "muted", id: "no-checkout"}));
  }
  for (const plan of plans) {
    const card = el("section", undefined, {class: "panel", "data-plan": plan.code});
    card.append(el("h3", plan.label));
    if (plan.description) card.append(el("p", plan.description));
    const form = el("form");
    let orgSelect, seats;
    if (plan.seats) {
      document.getElementById("org-create").hidden = !me;
      orgSelect = el("select", undefined, {"aria-label": "Organization"});
      for (const org of adminOrgs) orgSelect.append(el("option", org.name, {value: String(org.id)}));
      seats = el("input", undefined, {type: "number", min: "1", max: "10000", value: "5", "aria-label": "Seats"});
      form.append(orgSelect, " seats ", seats, " ");
    }
    const buy = el("button", plan.seats ? "Buy seats" : "Subscribe", {type: "submit", class: "primary"});
    buy.disabled = !checkout;
    form.append(buy);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      buy.disabled = true;
      try {
        const body = {plan: plan.code};
        if (plan.seats) {
          if (!orgSelect.value) throw new Error("Create an organization first.");
          body.org_id = Number(orgSelect.value);
          body.seats = Number(seats.value);
        }
        const {url} = await post("/billing/checkout", body);
        location.assign(url);
      } catch (e) { fail(e); } finally { buy.disabled = false; }
    });
    card.append(form);
    box.append(card);
  }
  document.getElementById("org-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const org = await post("/api/orgs", {name: document.getElementById("org-name").value});
      location.assign(`/orgs/${org.id}`);
    } catch (e) { fail(e); }
  });
});
