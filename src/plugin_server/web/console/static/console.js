// The console's own script: copy buttons, live charts (uPlot), and keeping the log scrolled to its end.
"use strict";

const COLORS = ["#1d4ed8", "#dc2626", "#15803d", "#b45309"];
const REFRESH_MS = 2000;

function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  const area = document.createElement("textarea");  // plain http to another host: the old way
  area.value = text;
  document.body.appendChild(area);
  area.select();
  document.execCommand("copy");
  area.remove();
  return Promise.resolve();
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  copyText(button.dataset.copy).then(() => {
    const label = button.textContent;
    button.textContent = "copied";
    setTimeout(() => { button.textContent = label; }, 1200);
  });
});

// Charts that read the same url share one request per refresh.
const feeds = new Map();

function feed(url) {
  if (!feeds.has(url)) {
    const listeners = [];
    const refresh = async () => {
      try {
        const response = await fetch(url, { credentials: "same-origin" });
        if (!response.ok) return;
        const data = await response.json();
        listeners.forEach((listener) => listener(data));
      } catch (error) { /* the next refresh tries again */ }
    };
    feeds.set(url, listeners);
    refresh();
    setInterval(refresh, REFRESH_MS);
  }
  return feeds.get(url);
}

function startChart(element) {
  const keys = element.dataset.series.split(",");
  const labels = element.dataset.labels.split(",");
  const options = {
    width: Math.max(element.clientWidth, 300),
    height: 200,
    scales: { x: { time: true } },
    series: [{}, ...keys.map((key, index) => ({ label: labels[index], stroke: COLORS[index % COLORS.length], width: 2 }))],
    axes: [{}, { size: 60 }],
    legend: { live: true },
  };
  const plot = new uPlot(options, [[], ...keys.map(() => [])], element);
  feed(element.dataset.url).push((data) => plot.setData([data.t, ...keys.map((key) => data[key] || [])]));
  new ResizeObserver(() => plot.setSize({ width: Math.max(element.clientWidth, 300), height: 200 })).observe(element);
}

document.querySelectorAll("[data-chart]").forEach(startChart);

// Keep the log viewer at its end while the reader is there.
document.body.addEventListener("htmx:beforeSwap", () => {
  document.querySelectorAll(".log").forEach((log) => {
    log.dataset.atEnd = String(log.scrollHeight - log.scrollTop - log.clientHeight < 40);
  });
});
document.body.addEventListener("htmx:afterSwap", () => {
  document.querySelectorAll(".log").forEach((log) => {
    if (log.dataset.atEnd !== "false") log.scrollTop = log.scrollHeight;
  });
});
