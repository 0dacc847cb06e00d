// The console's only script: dialogs, copy, confirmations, template filtering, live rows.
(function () {
  "use strict";
  function $(sel, root) { return (root || document).querySelector(sel); }
  function each(sel, fn) { document.querySelectorAll(sel).forEach(fn); }

  document.addEventListener("DOMContentLoaded", function () {
    each("[data-open]", function (b) {
      b.addEventListener("click", function () { document.getElementById(b.dataset.open).showModal(); });
    });
    each("dialog [data-close]", function (b) {
      b.addEventListener("click", function () { b.closest("dialog").close(); });
    });
    each("dialog[data-open-now]", function (d) { d.showModal(); });

    // The token dialog: once closed, the token leaves the page, and the POST result is replaced in
    // history so a reload is a plain GET (no second spawn, no token).
    var tokenDialog = document.getElementById("token-dialog");
    if (tokenDialog) {
      history.replaceState(null, "", tokenDialog.dataset.forgetUrl);
      tokenDialog.addEventListener("close", function () {
        var field = document.getElementById("acceptance-token");
        if (field) { field.value = ""; }
        tokenDialog.remove();
      });
    }
    each("[data-copy]", function (b) {
      b.addEventListener("click", function () {
        var field = document.getElementById(b.dataset.copy);
        field.select();
        var done = function () { b.textContent = "Copied"; };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
        } else { document.execCommand("copy"); done(); }
      });
    });
    each("[data-confirm]", function (b) {
      b.addEventListener("click", function (e) { if (!window.confirm(b.dataset.confirm)) { e.preventDefault(); } });
    });

    // Spawn modal: only templates that fit the chosen mode.
    var select = $("#template_id");
    function fitTemplates() {
      var mode = ($("input[name=spawn_mode]:checked") || {}).value;
      if (!select || !mode) { return; }
      var firstFit = null;
      Array.prototype.forEach.call(select.options, function (o) {
        var fits = (o.dataset.modes || "").split(" ").indexOf(mode) >= 0;
        o.hidden = !fits; o.disabled = !fits;
        if (fits && !firstFit) { firstFit = o; }
      });
      if (select.selectedOptions.length === 0 || select.selectedOptions[0].disabled) {
        if (firstFit) { firstFit.selected = true; }
      }
    }
    each("input[name=spawn_mode]", function (r) { r.addEventListener("change", fitTemplates); });
    fitTemplates();

    // Live rows: the table body re-rendered by the server every 2 s, without reloading the page.
    var rows = document.getElementById("children-rows");
    var state = document.getElementById("live-state");
    if (rows && rows.dataset.live) {
      setInterval(function () {
        fetch(rows.dataset.live, { credentials: "same-origin", cache: "no-store" }).then(function (r) {
          if (r.status === 401) { state.textContent = "Signed out: reload to sign in again"; return null; }
          if (!r.ok) { state.textContent = "Live updates paused: the hub answered " + r.status; return null; }
          return r.text();
        }).then(function (html) {
          if (html !== null && html !== undefined) {
            rows.innerHTML = html;
            state.textContent = "Live: updated " + new Date().toLocaleTimeString();
          }
        }).catch(function () { state.textContent = "Live updates paused: the hub is unreachable"; });
      }, 2000);
    }
  });
})();
