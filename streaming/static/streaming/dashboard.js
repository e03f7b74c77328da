// The live metrics dashboard: follows platform.metrics over Server-Sent Events (the admin
// session authenticates it) and draws the last few minutes on canvases. No dependencies.
(function () {
  "use strict";
  var root = document.getElementById("sluice-metrics");
  var status = document.getElementById("sluice-status");
  var MAX_POINTS = 300;
  var COLORS = ["#417690", "#d9534f", "#5cb85c", "#f0ad4e", "#8e44ad", "#16a085"];
  var state = { points: [], received: 0, errors: 0 };
  window.sluiceMetrics = state;

  function series(points, pick) {
    return points.map(function (p) { var v = pick(p); return typeof v === "number" ? v : null; });
  }

  function queueSeries(points) {
    var names = {};
    points.forEach(function (p) {
      Object.keys(p.queue_depth || {}).forEach(function (q) { names["waiting " + q] = ["queue_depth", q]; });
      Object.keys(p.in_flight || {}).forEach(function (q) { names["in flight " + q] = ["in_flight", q]; });
    });
    return Object.keys(names).sort().map(function (label) {
      var path = names[label];
      return { label: label, values: series(points, function (p) { return (p[path[0]] || {})[path[1]]; }) };
    });
  }

  var charts = {
    "chart-requests": function (pts) {
      return [{ label: "requests/s", values: series(pts, function (p) { return p.requests_per_s; }) }];
    },
    "chart-latency": function (pts) {
      return ["p50", "p95", "p99"].map(function (k) {
        return { label: k, values: series(pts, function (p) { return (p.latency_ms || {})[k]; }) };
      });
    },
    "chart-queues": queueSeries,
    "chart-streams": function (pts) {
      return [
        { label: "active streams", values: series(pts, function (p) { return p.active_streams; }) },
        { label: "mean batch", values: series(pts, function (p) { return p.batch_size_mean; }) },
      ];
    },
  };

  function draw(id, lines) {
    var canvas = document.getElementById(id);
    var ratio = window.devicePixelRatio || 1;
    var w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = w * ratio; canvas.height = h * ratio;
    var ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, w, h);
    var top = 1;
    lines.forEach(function (l) { l.values.forEach(function (v) { if (v !== null && v > top) top = v; }); });
    top *= 1.1;
    var left = 44, bottom = h - 18;
    ctx.strokeStyle = "#999"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(left, 4); ctx.lineTo(left, bottom); ctx.lineTo(w - 4, bottom); ctx.stroke();
    ctx.fillStyle = "#666"; ctx.font = "11px sans-serif";
    ctx.fillText(top.toFixed(top < 10 ? 1 : 0), 2, 12); ctx.fillText("0", 30, bottom);
    var step = (w - left - 8) / (MAX_POINTS - 1);
    lines.forEach(function (l, i) {
      var color = COLORS[i % COLORS.length];
      ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
      var offset = MAX_POINTS - l.values.length, started = false;
      l.values.forEach(function (v, j) {
        if (v === null) { started = false; return; }
        var x = left + (offset + j) * step, y = bottom - (v / top) * (bottom - 6);
        if (started) { ctx.lineTo(x, y); } else { ctx.moveTo(x, y); started = true; }
      });
      ctx.stroke();
      var last = l.values[l.values.length - 1];
      ctx.fillStyle = color;
      ctx.fillText(l.label + (last === null || last === undefined ? "" : ": " + last), left + 6 + i * 110 % (w - left), h - 4);
    });
  }

  function render() {
    Object.keys(charts).forEach(function (id) { draw(id, charts[id](state.points)); });
    var p = state.points[state.points.length - 1];
    if (p) {
      status.textContent = "Live: " + new Date(p.t * 1000).toLocaleTimeString() + " — " +
        p.requests_per_s + " requests/s, " + p.active_streams + " active streams";
    }
  }

  var pending = false;
  var source = new EventSource(root.dataset.events);
  source.addEventListener("metric", function (e) {
    state.points.push(JSON.parse(e.data));
    if (state.points.length > MAX_POINTS) { state.points.shift(); }
    state.received += 1;
    if (!pending) { pending = true; window.requestAnimationFrame(function () { pending = false; render(); }); }
  });
  source.addEventListener("error", function () {
    state.errors += 1;
    status.textContent = "Disconnected; reconnecting…";
  });
})();
