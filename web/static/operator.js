// Operator page: deletion of an account on request (the rest of the page is server-rendered).
"use strict";

(function () {
  const form = document.getElementById("delete-account-form");
  if (!form) return;
  const status = document.getElementById("delete-status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const email = document.getElementById("delete-email").value.trim();
    const reason = document.getElementById("delete-reason").value.trim();
    if (!window.confirm(`Delete the account ${email} and everything personal to it? This cannot be undone.`)) return;
    status.className = "";
    try {
      const body = await window.ODS.api("POST", "/api/operator/accounts/delete", {email, reason});
      status.textContent = `Deleted account ${body.account_id}.`;
      status.dataset.state = "deleted";
      form.reset();
    } catch (failure) {
      status.className = "error";
      status.textContent = failure.message;
      status.dataset.state = "failed";
    }
  });
})();
