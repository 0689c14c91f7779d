// Sign-in page: asks for a magic link. The server answers the same for every
// address, so this page can only ever say "check your inbox".
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Room pages send people here with ?next=/rooms/...; the confirm page (usually opened
  // from the mail in another tab, hence localStorage) returns them there.
  const next = sameOriginPath(new URLSearchParams(location.search).get("next"));
  if (next) localStorage.setItem("ods.after_signin", next);
  const form = document.getElementById("signin");
  const status = document.getElementById("status");
  const error = document.getElementById("error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const button = document.getElementById("send");
    button.disabled = true;
    try {
      const resp = await fetch("/auth/magic-link", {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({email: document.getElementById("email").value}),
        credentials: "same-origin",
      });
      const body = await resp.json().catch(() => ({}));
      if (resp.status === 202) {
        form.hidden = true;
        status.textContent = "Check your inbox: we sent a sign-in link. It works once and expires soon.";
        status.hidden = false;
        return;
      }
      error.textContent = resp.status === 429
        ? "Too many links requested. Try again in a few minutes."
        : (body.message || "Could not send the link.");
      error.hidden = false;
    } catch (e) {
      error.textContent = "Network error; try again.";
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
});
