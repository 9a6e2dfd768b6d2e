// Live parts of the dashboard's pages: every element with data-refresh is fetched again
// every data-every milliseconds and its content replaced by the element of the same id
// in the answer. No build step, no third-party code: the page works without it too.
"use strict";
(function () {
  function refresh(element) {
    var url = element.getAttribute("data-refresh");
    var every = parseInt(element.getAttribute("data-every"), 10) || 2000;
    function again() {
      if (document.hidden) { window.setTimeout(again, every); return; }
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          if (html !== null) {
            var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(element.id);
            if (fresh) {
              element.innerHTML = fresh.innerHTML;
              if (!fresh.hasAttribute("data-refresh")) { return; } // it has stopped changing
            }
          }
          window.setTimeout(again, every);
        })
        .catch(function () { window.setTimeout(again, every * 2); });
    }
    window.setTimeout(again, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh][id]").forEach(refresh);
  });
})();
