// Confirm page behind the magic link. The token lives in the URL fragment, so it
// never reaches the server in a GET, a log or a Referer; only the button POSTs it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token") || "";
  // Keep the token out of history and of anything copied from the address bar.
  history.replaceState(null, "", location.pathname);
  const form = document.getElementById("confirm");
  const error = document.getElementById("error");
  const again = document.getElementById("again");
  const ageBox = document.getElementById("age-box");
  const age = document.getElementById("age");
  if (!token) {
    form.hidden = true;
    error.textContent = "This page needs the link from your sign-in e-mail.";
    error.hidden = false;
    again.hidden = false;
    return;
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    if (!ageBox.hidden && !age.checked) {
      error.textContent = "You must be 16 or older to create an account.";
      error.hidden = false;
      return;
    }
    const button = document.getElementById("signin");
    button.disabled = true;
    try {
      const resp = await fetch("/auth/confirm", {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({token, age_confirmed: !ageBox.hidden && age.checked}),
        credentials: "same-origin",
      });
      const body = await resp.json().catch(() => ({}));
      if (resp.ok) {
        // Checked again here: localStorage is shared with every page of this origin.
        const next = sameOriginPath(localStorage.getItem("ods.after_signin")) || "/account";
        localStorage.removeItem("ods.after_signin");
        location.assign(next);
        return;
      }
      // A first sign-in asks one more thing: said plainly, not in an error's red.
      error.classList.toggle("error", body.error !== "age_confirmation_required");
      if (body.error === "age_confirmation_required") {
        ageBox.hidden = false;
        error.textContent = "Welcome! Confirm your age to create your account.";
      } else {
        error.textContent = body.message || "This link cannot sign you in.";
        again.hidden = false;
        form.hidden = ["invalid_link", "link_used", "link_expired"].includes(body.error);
      }
      error.hidden = false;
    } catch (e) {
      error.textContent = "Network error; try again.";
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
});
