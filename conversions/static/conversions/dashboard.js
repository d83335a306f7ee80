// Draws the dashboard's charts from the numbers the page carries (#dashboard-data, made
// by conversions/dashboard.py); the same numbers are in the tables beside each chart.
(function () {
  "use strict";
  var PALETTE = ["#2f7ed8", "#8bbc21", "#c42525", "#f28f43", "#77a1e5", "#a6c96a", "#910000", "#492970", "#1aadce", "#0d233a"];

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
        var color = PALETTE[index % PALETTE.length];
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
