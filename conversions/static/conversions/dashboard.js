// Draws the dashboard's charts from the numbers the page carries (#dashboard-data, made
// by conversions/dashboard.py); the same numbers are in the tables beside each chart.
(function () {
  "use strict";
  // What a dataset counts (its `kind`) has one colour, the hue of its badge (admin.css): an invalid
  // postback amber, a sale the network rejected red. Other series take the palette, which
  // holds neither, so no other series can be mistaken for them.
  var COLORS = {
    "outcome:original": "#2f7ed8",
    "outcome:duplicate": "#8c9aa5",
    "outcome:invalid": "#e0a526",
    "status:pending": "#77a1e5",
    "status:approved": "#5a9e3a",
    "status:paid": "#1aadce",
    "status:rejected": "#c42525",
  };
  var PALETTE = ["#492970", "#8bbc21", "#0d233a", "#a6c96a", "#7f5fb5", "#4f6d7a", "#3d7a6b", "#2b908f"];

  function draw() {
    var source = document.getElementById("dashboard-data");
    if (!source || typeof window.Chart === "undefined") {
      return;
    }
    JSON.parse(source.textContent).forEach(function (chart) {
      var canvas = document.getElementById(chart.id);
      if (!canvas) {
        return;
      }
      var datasets = chart.datasets.map(function (dataset, index) {
        var color = COLORS[dataset.kind] || PALETTE[index % PALETTE.length];
        return Object.assign({ backgroundColor: color, borderColor: color, borderWidth: 1 }, dataset);
      });
      new window.Chart(canvas, {
        type: "bar",
        data: { labels: chart.labels, datasets: datasets },
        options: {
          animation: false,
          maintainAspectRatio: false,
          indexAxis: chart.horizontal ? "y" : "x",
          plugins: { legend: { display: datasets.length > 1 } },
          scales: { x: { stacked: !!chart.stacked }, y: { stacked: !!chart.stacked, beginAtZero: true } },
        },
      });
      canvas.dataset.rendered = "true";
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
