// A list cell cut short by its column (CSS ellipsis) shows its whole text on hover.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const cell of document.querySelectorAll("#result_list tbody td, #result_list tbody th")) {
    if (cell.scrollWidth > cell.clientWidth && !cell.querySelector("[title]")) {
      cell.title = cell.textContent.trim();
    }
  }
});
