// paas dashboard: the little behaviour htmx does not cover.
"use strict";

// A form with data-confirm asks before it is sent (rollback, revoke, remove, drain).
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}, true);

// Keep a live log box scrolled to the end unless the reader scrolled up.
function stickToBottom(box) {
  if (box.dataset.pinned !== "false") { box.scrollTop = box.scrollHeight; }
}
document.addEventListener("scroll", function (event) {
  var box = event.target;
  if (box.classList && box.classList.contains("logs")) {
    box.dataset.pinned = String(box.scrollTop + box.clientHeight >= box.scrollHeight - 8);
  }
}, true);
document.addEventListener("htmx:afterSwap", function (event) {
  var box = event.target.closest ? event.target.closest(".logs") : null;
  if (box) { stickToBottom(box); }
});
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".logs").forEach(stickToBottom);
});

// Show error answers (403, 404) in the part that asked, instead of silently ignoring them.
if (window.htmx) {
  window.htmx.config.responseHandling = [
    {code: "204", swap: false},
    {code: "[23]..", swap: true},
    {code: "[45]..", swap: true, error: true},
  ];
}
