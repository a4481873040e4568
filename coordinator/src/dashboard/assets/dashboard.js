// tt dashboard: confirmed actions through the /v1 API, the env filter, and live updates of a
// stage's host grid over server-sent events. Embedded in the binary; no dependencies.
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);

  // ----- env filter (no reload; the form's ?q= does the same without script)
  const filter = $("#env-filter");
  if (filter) {
    filter.addEventListener("input", () => {
      const q = filter.value.trim();
      document.querySelectorAll("tr[data-name]").forEach((tr) => {
        tr.hidden = q !== "" && !tr.dataset.name.includes(q);
      });
    });
  }

  // ----- failed-only filter on the host grid (a class on the live section survives updates)
  const failedOnly = $("#failed-only");
  const live = $("#live");
  if (failedOnly && live) {
    failedOnly.addEventListener("change", () => live.classList.toggle("failed-only", failedOnly.checked));
  }

  // ----- actions: confirm, then call the API with the login cookie and the dashboard header
  const result = $("#action-result");
  const show = (outcome, text) => {
    if (!result) return;
    result.dataset.outcome = outcome;
    result.textContent = text;
  };
  const dialog = $("#confirm");
  let pending = null;
  if (dialog) {
    dialog.addEventListener("close", () => {
      const action = pending;
      pending = null;
      if (action && dialog.returnValue === "yes") run(action);
    });
  }
  async function run(action) {
    show("busy", "Working…");
    let resp;
    try {
      resp = await fetch(action.url, {
        method: action.method,
        credentials: "same-origin",
        headers: { "X-TT-Dashboard": "1", "Accept": "application/json" },
      });
    } catch (e) {
      show("refused", "Request failed: " + e);
      return;
    }
    let body = null;
    try { body = await resp.json(); } catch (_) { /* empty body */ }
    if (resp.ok) {
      const what = body && body.id ? "deploy " + body.id + " started" : "done";
      show("ok", action.label + ": " + what);
    } else {
      const why = body && body.message ? body.message : resp.statusText;
      show("refused", action.label + " refused (" + resp.status + "): " + why);
    }
  }
  document.querySelectorAll("button[data-action]").forEach((btn) => {
    btn.addEventListener("click", () => {
      let url = btn.dataset.url;
      let question = btn.dataset.confirm;
      if (btn.dataset.param) {
        const v = document.getElementById(btn.dataset.param).value;
        if (!v) { show("refused", "Nothing selected"); return; }
        url = url.split("{v}").join(encodeURIComponent(v));
        question = question.split("{v}").join(v);
      }
      pending = { url, method: btn.dataset.action, label: btn.textContent };
      if (dialog && dialog.showModal) {
        $("#confirm-text").textContent = question;
        dialog.returnValue = "";
        dialog.showModal();
      } else if (window.confirm(question)) {
        const action = pending;
        pending = null;
        run(action);
      }
    });
  });

  // ----- live updates: the server sends the re-rendered summary and grid
  if (live && live.dataset.events && window.EventSource) {
    const source = new EventSource(live.dataset.events);
    source.addEventListener("live", (e) => {
      live.innerHTML = e.data;
      live.dataset.updates = String(Number(live.dataset.updates || "0") + 1);
    });
    source.addEventListener("gone", () => {
      source.close();
      show("refused", "This stage was deleted.");
    });
  }
})();
