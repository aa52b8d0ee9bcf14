/* The dashboard's client: Chart.js fed from the /ws/stats frames, htmx swaps the rest.
 *
 * Every frame is JSON: {type, stats, points|series, html}. A small htmx extension sees it before
 * the ws extension swaps: it hands the points to the charts (appended, never rebuilt) and gives
 * htmx back the `html` part, whose out-of-band fragments replace the cards and tables.
 */
(function () {
  "use strict";

  var MAX_POINTS = 300; // five minutes at one point a second
  var STALL_MS = 3000; // frames come every 500 ms; this long without one means trouble
  var RETRIED_BY_HTMX = [1006, 1011, 1012, 1013];

  var style = getComputedStyle(document.documentElement);
  function cssVar(name) { return style.getPropertyValue(name).trim(); }

  var charts = {};
  var lastSecond = null;
  var lastFrameAt = 0;

  function clock(epochSecond) {
    return new Date(epochSecond * 1000).toISOString().slice(11, 19);
  }

  function loneRadius(context) {
    var data = context.dataset.data;
    var i = context.dataIndex;
    var lone = data[i] !== null && data[i] !== undefined && (i === 0 || data[i - 1] === null) &&
      (i === data.length - 1 || data[i + 1] === null);
    return lone ? 2.5 : 0;
  }

  function lineChart(canvasId, series, unit) {
    var canvas = document.getElementById(canvasId);
    if (!canvas || typeof Chart === "undefined") { return null; }
    var chart = new Chart(canvas, {
      type: "line",
      data: {
        labels: [],
        datasets: series.map(function (s) {
          var colour = cssVar(s.colour);
          return {
            label: s.label,
            data: [],
            borderColor: colour,
            backgroundColor: s.fill ? colour + "33" : colour,
            fill: Boolean(s.fill),
            borderWidth: 2,
            borderDash: s.dash || [],
            // Lines need two neighbours: a lone second of traffic between idle ones gets a dot.
            pointRadius: loneRadius,
            pointHitRadius: 6,
            tension: 0.25,
            spanGaps: false,
          };
        }),
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { ticks: { maxTicksLimit: 5, maxRotation: 0, autoSkipPadding: 16 }, grid: { display: false } },
          y: { beginAtZero: true, ticks: { maxTicksLimit: 5 }, title: { display: false, text: unit } },
        },
        plugins: {
          legend: { display: series.length > 1, labels: { boxWidth: 12, boxHeight: 2 } },
          tooltip: {
            callbacks: {
              label: function (item) {
                var value = item.parsed.y;
                return item.dataset.label + ": " + (value === null ? "–" : value.toLocaleString()) + " " + unit;
              },
            },
          },
        },
      },
    });
    chart.$keys = series.map(function (s) { return s.key; });
    return chart;
  }

  function chartsCreate() {
    Chart.defaults.color = cssVar("--muted");
    Chart.defaults.borderColor = cssVar("--grid");
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    charts.throughput = lineChart("chart-throughput", [
      { key: "in", label: "In (accepted)", colour: "--in", dash: [5, 3] },
      { key: "out", label: "Out (persisted)", colour: "--out" },
    ], "msg/s");
    charts.queue = lineChart("chart-queue", [
      { key: "queue", label: "Queue depth", colour: "--queue", fill: true },
    ], "msgs");
    charts.latency = lineChart("chart-latency", [
      { key: "p50", label: "p50", colour: "--p50" },
      { key: "p95", label: "p95", colour: "--p95" },
      { key: "p99", label: "p99", colour: "--p99" },
    ], "ms");
    // Tests and curious operators read the charts' data from here.
    window.dashboardCharts = charts;
  }

  function eachChart(fn) {
    Object.keys(charts).forEach(function (name) { if (charts[name]) { fn(charts[name]); } });
  }

  function pointPush(point) {
    eachChart(function (chart) {
      chart.data.labels.push(clock(point.t));
      chart.data.datasets.forEach(function (dataset, i) {
        var value = point[chart.$keys[i]];
        dataset.data.push(value === undefined ? null : value);
      });
      if (chart.data.labels.length > MAX_POINTS) {
        chart.data.labels.shift();
        chart.data.datasets.forEach(function (dataset) { dataset.data.shift(); });
      }
    });
    lastSecond = point.t;
  }

  function pointsAppend(points) {
    var added = false;
    points.forEach(function (point) {
      if (lastSecond !== null && point.t <= lastSecond) { return; }
      // Gaps are gaps: a second the server sent nothing for is drawn empty (spanGaps: false), one
      // label per second, so the x axis stays true to time instead of closing up around it.
      if (lastSecond !== null) {
        var from = Math.max(lastSecond + 1, point.t - MAX_POINTS);
        for (var t = from; t < point.t; t++) { pointPush({ t: t }); }
      }
      pointPush(point);
      added = true;
    });
    // 'none': no animation; Chart.js redraws the canvas but keeps its data and scales.
    if (added) { eachChart(function (chart) { chart.update("none"); }); }
  }

  function seriesReplace(series) {
    lastSecond = null;
    eachChart(function (chart) {
      chart.data.labels.length = 0;
      chart.data.datasets.forEach(function (dataset) { dataset.data.length = 0; });
    });
    pointsAppend(series);
    eachChart(function (chart) { chart.update("none"); });
  }

  /* Connection indicator: green while frames flow, amber when they stop, red when the socket drops. */
  var indicator = document.getElementById("connection");
  var LABELS = {
    connecting: "Connecting…",
    live: "Live",
    stalled: "No data for a few seconds…",
    down: "Disconnected, reconnecting…",
  };
  function connectionSet(state, label) {
    if (!indicator) { return; }
    indicator.dataset.state = state;
    indicator.querySelector(".label").textContent = label || LABELS[state];
  }

  function frameHandle(frame) {
    lastFrameAt = Date.now();
    if (frame.error) {
      connectionSet("stalled", "Metrics unavailable: " + frame.error);
    } else if (indicator && indicator.dataset.state !== "live") {
      connectionSet("live");
    }
    if (frame.type === "snapshot") {
      seriesReplace(frame.series || []);
    } else if (frame.type === "stats_update") {
      pointsAppend(frame.points || []);
    }
    document.dispatchEvent(new CustomEvent("dashboard:frame", { detail: frame }));
  }

  htmx.defineExtension("dashboard-frames", {
    transformResponse: function (text, xhr) {
      // Only websocket frames (no xhr) are JSON; ordinary htmx answers pass through untouched.
      if (xhr || typeof text !== "string" || text.charAt(0) !== "{") { return text; }
      var frame;
      try { frame = JSON.parse(text); } catch (error) { return text; }
      frameHandle(frame);
      return frame.html || "";
    },
  });

  // Reconnect quickly after a restart: 0.25–0.5 s, doubling up to 2.5–5 s.
  htmx.config.wsReconnectDelay = function (retryCount) {
    return Math.min(500 * Math.pow(2, retryCount), 5000) * (0.5 + Math.random() / 2);
  };
  // Show the server's answer (a short notice) for errors too, not only for 2xx.
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[2345]..", swap: true },
    { code: "...", swap: false },
  ];

  document.body.addEventListener("htmx:wsConnecting", function () {
    if (indicator && indicator.dataset.state !== "down") { connectionSet("connecting"); }
  });
  document.body.addEventListener("htmx:wsOpen", function () { connectionSet("live"); lastFrameAt = Date.now(); });
  document.body.addEventListener("htmx:wsError", function () { connectionSet("down"); });
  document.body.addEventListener("htmx:wsClose", function (event) {
    connectionSet("down");
    var detail = event.detail || {};
    var code = detail.event ? detail.event.code : 1006;
    // htmx retries only abnormal closes; a server going away cleanly (1000/1001) is retried here.
    if (RETRIED_BY_HTMX.indexOf(code) < 0 && detail.socketWrapper) {
      setTimeout(function () { detail.socketWrapper.reconnect(); }, 500 + Math.random() * 1000);
    }
  });
  setInterval(function () {
    if (indicator && indicator.dataset.state === "live" && Date.now() - lastFrameAt > STALL_MS) {
      connectionSet("stalled");
    }
  }, 1000);

  chartsCreate();
})();
