// What the status page shows, measured in the page by tests/status_page.rs over the
// DevTools protocol, once its script has drawn storm's burst (at most 20 s).
(async () => {
  const deadline = Date.now() + 20000;
  const ready = () => {
    const f = document.querySelector('figure.chart[data-chart="storm"]');
    return f && +f.dataset.admitted >= 1 && +f.dataset.refused >= 2;
  };
  while (!ready() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  await new Promise((r) => requestAnimationFrame(() => r()));
  const doc = document.documentElement;
  const scrolling = [...document.querySelectorAll("*")]
    .filter((e) => ["auto", "scroll"].includes(getComputedStyle(e).overflowX) && e.scrollWidth > e.clientWidth)
    .map((e) => e.tagName + " " + e.className + " " + e.scrollWidth + ">" + e.clientWidth);
  // Hovering the last second drawn shows its numbers: the last one whose queue depth
  // was sampled (the sampler runs twice a second, but a second in which the test
  // process got no CPU, while Chromium started, has no sample), within 10 pixels.
  const storm = document.querySelector('figure.chart[data-chart="storm"]');
  const box = storm.querySelector("svg").getBoundingClientRect();
  let hover = "";
  for (let dx = 1; dx <= 10; dx++) {
    storm.querySelector("svg").dispatchEvent(new MouseEvent("mousemove",
      { bubbles: true, clientX: box.right - dx, clientY: box.top + 10 }));
    hover = storm.querySelector(".readout").textContent;
    if (!hover.endsWith("not sampled")) break;
  }
  const clipped = (e) => !!e && getComputedStyle(e).textOverflow === "ellipsis" && e.scrollWidth > e.clientWidth;
  return {
    innerWidth: window.innerWidth,
    clientWidth: doc.clientWidth,
    scrollWidth: doc.scrollWidth,
    scrolling,
    charts: [...document.querySelectorAll("figure.chart")].map((f) => ({
      name: f.dataset.chart,
      admitted: +f.dataset.admitted,
      refused: +f.dataset.refused,
      peakDepth: +f.dataset.peakDepth,
      width: f.getBoundingClientRect().width,
      svgWidth: f.querySelector("svg").getBoundingClientRect().width,
      paths: Object.fromEntries([...f.querySelectorAll("path")].map((p) => [p.getAttribute("class"), p.getAttribute("d")])),
      nameClipped: clipped(f.querySelector("figcaption .ell")),
      title: f.querySelector("figcaption .ell").title,
    })),
    rowNameClipped: Object.fromEntries([...document.querySelectorAll("#tenants tr[data-tenant]")]
      .map((r) => [r.dataset.tenant, clipped(r.querySelector("td.name .ell"))])),
    endpointClipped: [...document.querySelectorAll("#errors .endpoint")].map(clipped),
    callsLine: !!document.querySelector(".calls .calls-active"),
    resources: performance.getEntriesByType("resource").map((e) => e.name),
    links: [...document.querySelectorAll("[src], [href]")].map((e) => e.getAttribute("src") ?? e.getAttribute("href")),
    stale: document.getElementById("stale").style.display,
    hover,
  };
})()
