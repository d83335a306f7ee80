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
    "earnings": "#111111",
    "others": "#b8b8b8",
  };
  // Twenty hues told apart at a glance (no red or amber: those mean rejected and invalid).
  var PALETTE = [
    "#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1", "#636363",
    "#6baed6", "#74c476", "#9e9ac8", "#a55194",
  ];
  var money = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  var whole = new Intl.NumberFormat("en-US");

  function query(parts) {
    return parts
      .filter(Boolean)
      .map(function (part) {
        return Object.keys(part)
          .map(function (key) { return encodeURIComponent(key) + "=" + encodeURIComponent(part[key]); })
          .join("&");
      })
      .filter(Boolean)
      .join("&");
  }

  // A click on a bar opens its conversions: the chart's base link, narrowed to the bar's
  // day (or offer) and its dataset's status.
  function opener(chart) {
    return function (event, elements, instance) {
      if (!chart.links || !elements.length) {
        return;
      }
      var element = elements[0];
      var dataset = instance.data.datasets[element.datasetIndex];
      var label = (chart.links.labels || [])[element.index];
      var base = chart.links.base;
      var params = query([label, dataset.link]);
      // Later parameters win in the list's query: drop the base's own day bounds first when narrowed.
      var url = new URL(base, window.location.href);
      new URLSearchParams(params).forEach(function (value, key) { url.searchParams.set(key, value); });
      window.location.href = url.toString();
    };
  }

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
      var palette = 0;
      var datasets = chart.datasets.map(function (dataset) {
        var color = COLORS[dataset.kind] || PALETTE[palette++ % PALETTE.length];
        var drawn = Object.assign({ backgroundColor: color, borderColor: color, borderWidth: 1, order: 1 }, dataset);
        if (dataset.type === "line") {
          drawn.borderWidth = 2;
          drawn.pointRadius = 2;
          drawn.stack = "line";
        }
        return drawn;
      });
      var hasRightAxis = datasets.some(function (dataset) { return dataset.yAxisID === "earnings"; });
      var format = function (value) { return chart.money ? money.format(value) : whole.format(value); };
      var scales = {
        x: { stacked: !!chart.stacked },
        y: { stacked: !!chart.stacked, beginAtZero: true },
      };
      var valueAxis = chart.horizontal ? "x" : "y";
      scales[valueAxis].ticks = { callback: function (value) { return format(value); } };
      if (hasRightAxis) {
        scales.earnings = {
          position: "right",
          beginAtZero: true,
          grid: { drawOnChartArea: false },
          title: { display: true, text: "earnings (USD)" },
          ticks: { callback: function (value) { return money.format(value); } },
        };
      }
      if (chart.money) {
        scales[valueAxis].title = { display: true, text: "USD" };
      }
      new window.Chart(canvas, {
        type: "bar",
        data: { labels: chart.labels, datasets: datasets },
        options: {
          animation: false,
          maintainAspectRatio: false,
          indexAxis: chart.horizontal ? "y" : "x",
          onClick: opener(chart),
          onHover: function (event, elements) {
            event.native.target.style.cursor = chart.links && elements.length ? "pointer" : "default";
          },
          plugins: {
            legend: { display: datasets.length > 1 },
            tooltip: {
              callbacks: {
                label: function (item) {
                  var isMoney = chart.money || item.dataset.yAxisID === "earnings";
                  return item.dataset.label + ": " + (isMoney ? "USD " + money.format(item.raw) : whole.format(item.raw));
                },
              },
            },
          },
          scales: scales,
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
