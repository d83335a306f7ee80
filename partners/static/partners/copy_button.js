// "Copy" buttons: <button data-copy-target="element-id">. Says whether it worked, and
// falls back to selecting the text where the clipboard API is unavailable (plain http).
(function () {
  "use strict";

  function say(button, text, state) {
    var status = document.getElementById(button.getAttribute("data-copy-status"));
    if (status) {
      status.textContent = text;
      status.dataset.state = state;
    }
    button.textContent = state === "copied" ? "Copied ✓" : "Copy";
    window.clearTimeout(button._copyTimer);
    button._copyTimer = window.setTimeout(function () {
      button.textContent = "Copy";
      if (status) {
        status.textContent = "";
        status.dataset.state = "";
      }
    }, 4000);
  }

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function fallback(button, element) {
    selectText(element);
    var copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (error) {
      copied = false;
    }
    if (copied) {
      say(button, "Copied to the clipboard.", "copied");
    } else {
      say(button, "Could not copy: the text is selected, press Ctrl+C (⌘C) to copy it.", "failed");
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) {
      return;
    }
    var element = document.getElementById(button.getAttribute("data-copy-target"));
    var text = element.textContent.trim();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { say(button, "Copied to the clipboard.", "copied"); },
        function () { fallback(button, element); }
      );
    } else {
      fallback(button, element);
    }
  });
})();
