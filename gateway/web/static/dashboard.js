// The admin dashboard's two charts (templates/admin/dashboard.html), as an ES module.
// The numbers come from the page's JSON block (#activity-data); the same numbers are in the
// page's tables, so the charts are a picture for sighted readers (aria-hidden) and the page
// reads the same without them. uPlot draws on a canvas and sets sizes through element.style
// (the CSSOM), which the CSP allows: no style element, no style attribute, no eval.
import uPlot from "/assets/uPlot.esm.js";

const HEIGHT = 240;
const MAX_ORGS = 12; // the chart shows the busiest; the table below it lists every one
const INCREMENTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000];

function colour(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

function short(label, size) {
  return label.length > size ? `${label.slice(0, size - 1)}\u2026` : label;
}

// Categories 0..n-1 on x; a label under every ``step``-th one so labels never overlap, cut
// to what fits under its bar (the table below the chart has every name in full).
function categoryAxis(labels, minSpace) {
  let chars = 8;
  return {
    space: minSpace,
    splits: (u) => {
      const width = u.bbox.width / devicePixelRatio;
      const fits = Math.max(1, Math.floor(width / minSpace));
      const step = Math.max(1, Math.ceil(labels.length / fits));
      chars = Math.max(5, Math.floor((width / labels.length) * step / 7.5));
      const out = [];
      for (let i = labels.length - 1; i >= 0; i -= step) out.unshift(i);
      return out;
    },
    values: (u, splits) => splits.map((i) => short(labels[i] ?? "", chars)),
    grid: { show: false },
  };
}

function countAxis() {
  return { incrs: INCREMENTS, values: (u, splits) => splits.map((v) => String(v)) };
}

function barChart(box, labels, counts, axis) {
  const accent = colour("--accent", "#1f5f99");
  const xs = labels.map((_, i) => i);
  const options = {
    width: box.clientWidth,
    height: HEIGHT,
    legend: { show: false }, // the numbers are in the tables beside the chart
    cursor: { show: false },
    scales: {
      x: { time: false, range: [-0.5, labels.length - 0.5] },
      y: { range: (u, min, max) => [0, Math.max(1, max)] },
    },
    series: [
      {},
      {
        label: "Sessions",
        stroke: accent,
        fill: accent,
        width: 0,
        paths: uPlot.paths.bars({ size: [0.7, 48] }),
        points: { show: false },
      },
    ],
    axes: [axis, countAxis()],
  };
  const chart = new uPlot(options, [xs, counts], box);
  new ResizeObserver(() => chart.setSize({ width: box.clientWidth, height: HEIGHT })).observe(box);
  return chart;
}

function draw() {
  const block = document.getElementById("activity-data");
  if (!block) return;
  const data = JSON.parse(block.textContent);
  const perDay = document.getElementById("chart-per-day");
  if (perDay) {
    const days = data.days.map((d) => d.slice(5)); // MM-DD; the table has the full date
    barChart(perDay, days, data.per_day, categoryAxis(days, 48));
    perDay.dataset.drawn = "true";
  }
  const perOrg = document.getElementById("chart-per-org");
  if (perOrg && data.orgs.length) {
    const orgs = data.orgs.slice(0, MAX_ORGS);
    barChart(perOrg, orgs, data.per_org.slice(0, MAX_ORGS), categoryAxis(orgs, 90));
    perOrg.dataset.drawn = "true";
  }
}

draw();
