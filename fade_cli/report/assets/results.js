// Review page of a `fade segment` run: grid, live threshold, filters, detail view.
// Data comes from the inline JSON block; nothing is fetched but the run's own image files.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("fade-data").textContent);
  const images = data.images;
  const $ = (id) => document.getElementById(id);
  const state = { threshold: Number(data.threshold), filter: "all", view: "overlay", sort: "score-desc",
                  query: "", detailView: "overlay", current: -1 };
  const cards = [];
  let visibleOrder = [];

  // ---------------------------------------------------------------- threshold range
  const scores = images.map((im) => im.score);
  let lo = state.threshold, hi = state.threshold;
  for (const s of scores) { if (s < lo) lo = s; if (s > hi) hi = s; }
  if (!(hi > lo)) { lo -= 0.01; hi += 0.01; }
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / 1000)));
  lo = Math.floor(lo / step) * step; hi = Math.ceil(hi / step) * step;
  const digits = Math.max(0, -Math.round(Math.log10(step)));
  const slider = $("threshold"), number = $("threshold-value");
  for (const el of [slider, number]) { el.min = lo; el.max = hi; el.step = step; el.value = state.threshold; }

  // ---------------------------------------------------------------- lazy thumbnails
  const pictureOf = (im) => (state.view === "input" ? im.thumb_input || im.thumb : im.thumb || im.thumb_input);
  const observer = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      const card = e.target;
      observer.unobserve(card);
      card.dataset.seen = "1";
      showPicture(card);
    }
  }, { rootMargin: "600px 0px" }) : null;

  function showPicture(card) {
    const im = images[card.dataset.i];
    const img = card.querySelector("img");
    const src = pictureOf(im);
    if (img && src && img.getAttribute("src") !== src) img.src = src;
  }

  function noteFor(pic, text) {
    pic.textContent = "";
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = text;
    pic.appendChild(note);
  }

  // ---------------------------------------------------------------- grid
  function makeCard(im, i) {
    const card = document.createElement("figure");
    card.className = "card";
    card.tabIndex = 0;
    card.dataset.i = i;
    const pic = document.createElement("div");
    pic.className = "pic";
    if (im.thumb || im.thumb_input) {
      const img = document.createElement("img");
      img.alt = im.name;
      img.decoding = "async";
      img.addEventListener("error", () => noteFor(pic, "picture not found"), { once: true });
      pic.appendChild(img);
    } else {
      noteFor(pic, im.missing || "no picture");
    }
    const cap = document.createElement("figcaption");
    const label = document.createElement("span");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = im.score.toFixed(3);
    const name = document.createElement("span");
    name.className = "name";
    // the end of a long path tells images apart (file name, camera folder); keep that visible
    name.textContent = im.name.length > 24 ? "\u2026" + im.name.slice(-23) : im.name;
    name.title = im.name;
    cap.append(label, score, name);
    card.append(pic, cap);
    card.addEventListener("click", () => openDetail(i));
    card.addEventListener("keydown", (ev) => { if (ev.key === "Enter") openDetail(i); });
    card._label = label;
    return card;
  }

  function isAnomalous(im) { return im.score >= state.threshold; }

  function relabel() {
    let nAnom = 0;
    for (let i = 0; i < images.length; i++) {
      const a = isAnomalous(images[i]);
      if (a) nAnom++;
      const card = cards[i];
      if (card._state !== a) {
        card._state = a;
        card.classList.toggle("anomalous", a);
        card._label.className = "label " + (a ? "anomalous" : "normal");
        card._label.textContent = a ? "ANOMALOUS" : "normal";
      }
    }
    $("count-all").textContent = images.length + data.failed.length;
    $("count-anomalous").textContent = nAnom;
    $("count-normal").textContent = images.length - nAnom;
    $("count-failed").textContent = data.failed.length;
    applyFilter();
    if (state.current >= 0) fillDetailLabel();
  }

  function matches(im) {
    if (state.query && !im.name.toLowerCase().includes(state.query)) return false;
    if (state.filter === "all") return true;
    if (state.filter === "failed") return false;
    return isAnomalous(im) === (state.filter === "anomalous");
  }

  function applyFilter() {
    visibleOrder = [];
    for (const i of sortedOrder()) {
      const show = matches(images[i]);
      if (cards[i].hidden === show) cards[i].hidden = !show;
      if (show) visibleOrder.push(i);
    }
    const failedShown = state.filter === "all" || state.filter === "failed";
    $("failed").hidden = !(failedShown && data.failed.length);
    $("empty").hidden = visibleOrder.length > 0 || (failedShown && data.failed.length > 0);
  }

  let order = null;
  function sortedOrder() {
    if (order && order.key === state.sort) return order.list;
    const list = images.map((_, i) => i);
    if (state.sort === "score-asc") list.sort((a, b) => images[a].score - images[b].score);
    else if (state.sort === "name") list.sort((a, b) => images[a].name.localeCompare(images[b].name));
    else list.sort((a, b) => images[b].score - images[a].score);
    order = { key: state.sort, list };
    const grid = $("grid"), frag = document.createDocumentFragment();
    for (const i of list) frag.appendChild(cards[i]);
    grid.appendChild(frag);
    return list;
  }

  function setThreshold(value, from) {
    const t = Number(value);
    if (!Number.isFinite(t)) return;
    state.threshold = t;
    if (from !== slider) slider.value = t;
    if (from !== number) number.value = t.toFixed(digits);
    relabel();
  }

  // ---------------------------------------------------------------- detail view
  function fillDetailLabel() {
    const im = images[state.current], a = isAnomalous(im);
    const label = $("detail-label");
    label.className = "label " + (a ? "anomalous" : "normal");
    label.textContent = a ? "ANOMALOUS" : "normal";
  }

  function row(table, key, value) {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    const td = document.createElement("td");
    th.textContent = key;
    td.textContent = typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);
    tr.append(th, td);
    table.appendChild(tr);
  }

  function showDetailPicture() {
    const im = images[state.current];
    const src = im[state.detailView] || im.overlay || im.input;
    const img = $("detail-img");
    img.alt = im.name + " (" + state.detailView + ")";
    if (img.getAttribute("src") !== src) img.src = src;
    for (const b of document.querySelectorAll("[data-detail-view]")) {
      b.classList.toggle("on", b.dataset.detailView === state.detailView);
      b.disabled = !im[b.dataset.detailView];
    }
  }

  // small pictures are scaled up to fill the view, large ones down; the region boxes follow the box
  function fitDetail() {
    const img = $("detail-img"), holder = img.parentElement;
    if (!img.naturalWidth) return;
    const room = Math.max(200, holder.clientWidth), tall = Math.max(200, window.innerHeight * 0.78);
    const scale = Math.min(room / img.naturalWidth, tall / img.naturalHeight);
    const svg = $("detail-svg");
    svg.style.width = img.style.width = Math.round(img.naturalWidth * scale) + "px";
    svg.style.height = img.style.height = Math.round(img.naturalHeight * scale) + "px";
  }

  function drawRegions() {
    const im = images[state.current], svg = $("detail-svg"), img = $("detail-img");
    svg.textContent = "";
    const regions = im.regions || [];
    if (!regions.length || !img.naturalWidth || !$("detail-boxes").checked) return;
    svg.setAttribute("viewBox", "0 0 " + img.naturalWidth + " " + img.naturalHeight);
    const ns = "http://www.w3.org/2000/svg";
    const unit = img.naturalWidth / Math.max(1, img.clientWidth);  // picture pixels per screen pixel
    svg.style.fontSize = (12 * unit) + "px";
    svg.style.strokeWidth = (3 * unit) + "px";
    regions.forEach((r, k) => {
      if (!Array.isArray(r.bbox) || r.bbox.length !== 4) return;
      const [x0, y0, x1, y1] = r.bbox.map(Number);
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", x0); rect.setAttribute("y", y0);
      rect.setAttribute("width", Math.max(1, x1 - x0)); rect.setAttribute("height", Math.max(1, y1 - y0));
      const text = document.createElementNS(ns, "text");
      text.setAttribute("x", x0 + 2 * unit); text.setAttribute("y", Math.max(12 * unit, y0 - 3 * unit));
      text.textContent = String(k + 1);
      svg.append(rect, text);
    });
  }

  function openDetail(i) {
    state.current = i;
    const im = images[i];
    $("detail-name").textContent = im.name;
    $("detail-score").textContent = im.score.toFixed(4);
    fillDetailLabel();
    const fields = $("detail-fields");
    fields.textContent = "";
    for (const [k, v] of Object.entries(im.fields || {})) row(fields, k, v);
    const body = $("detail-regions").tBodies[0];
    body.textContent = "";
    const regions = im.regions || [];
    $("detail-regions-title").textContent = regions.length ? "Regions (" + regions.length + ")" :
      (im.regions ? "Regions: none above the pixel threshold" : "Regions: not recorded by this run");
    $("detail-regions").hidden = !regions.length;
    regions.forEach((r, k) => {
      const tr = document.createElement("tr");
      const cells = [k + 1, (r.bbox || []).join(", "), r.area, fmt(r.peak), fmt(r.mean)];
      for (const c of cells) { const td = document.createElement("td"); td.textContent = c === undefined ? "" : c; tr.appendChild(td); }
      body.appendChild(tr);
    });
    $("detail").hidden = false;
    showDetailPicture();
    drawRegions();
    $("detail-close").focus();
  }

  function fmt(v) { return typeof v === "number" ? v.toFixed(3) : v === undefined ? "" : String(v); }

  function closeDetail() {
    $("detail").hidden = true;
    const card = cards[state.current];
    state.current = -1;
    if (card) card.focus();
  }

  function moveDetail(delta) {
    const pos = visibleOrder.indexOf(state.current);
    if (pos < 0 || !visibleOrder.length) return;
    const next = visibleOrder[(pos + delta + visibleOrder.length) % visibleOrder.length];
    openDetail(next);
  }

  // ---------------------------------------------------------------- wiring
  $("source").textContent = images.length + " image(s), " + data.failed.length + " failed · " + data.source +
    " · written " + data.generated + (data.runs.length > 1 ? " · rows from " + data.runs.length + " runs with different settings" : "");
  images.forEach((im, i) => cards.push(makeCard(im, i)));
  const failedRows = $("failed-rows");
  for (const f of data.failed) {
    const tr = document.createElement("tr");
    const a = document.createElement("td"), b = document.createElement("td");
    a.textContent = f.name; b.textContent = f.error; b.className = "error";
    tr.append(a, b);
    failedRows.appendChild(tr);
  }
  const settings = $("settings-rows");
  const shown = Object.assign({}, data.settings);
  if (!Object.keys(shown).length) $("settings").hidden = true;
  for (const [k, v] of Object.entries(shown)) row(settings, k, v);

  slider.addEventListener("input", () => setThreshold(slider.value, slider));
  number.addEventListener("input", () => setThreshold(number.value, number));
  for (const b of document.querySelectorAll("[data-filter]")) {
    b.addEventListener("click", () => {
      state.filter = b.dataset.filter;
      for (const o of document.querySelectorAll("[data-filter]")) o.classList.toggle("on", o === b);
      applyFilter();
    });
  }
  for (const b of document.querySelectorAll("[data-view]")) {
    b.addEventListener("click", () => {
      state.view = b.dataset.view;
      for (const o of document.querySelectorAll("[data-view]")) o.classList.toggle("on", o === b);
      for (const card of cards) if (card.dataset.seen || !observer) showPicture(card);
    });
  }
  $("sort").addEventListener("change", (ev) => { state.sort = ev.target.value; applyFilter(); });
  $("search").addEventListener("input", (ev) => { state.query = ev.target.value.trim().toLowerCase(); applyFilter(); });
  for (const b of document.querySelectorAll("[data-detail-view]")) {
    b.addEventListener("click", () => { state.detailView = b.dataset.detailView; showDetailPicture(); });
  }
  $("detail-img").addEventListener("load", () => { fitDetail(); drawRegions(); });
  window.addEventListener("resize", fitDetail);
  $("detail-boxes").addEventListener("change", drawRegions);
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-prev").addEventListener("click", () => moveDetail(-1));
  $("detail-next").addEventListener("click", () => moveDetail(1));
  $("detail").addEventListener("click", (ev) => { if (ev.target === $("detail")) closeDetail(); });
  document.addEventListener("keydown", (ev) => {
    if (state.current < 0) return;
    if (ev.key === "Escape") closeDetail();
    else if (ev.key === "ArrowLeft") moveDetail(-1);
    else if (ev.key === "ArrowRight") moveDetail(1);
  });

  setThreshold(state.threshold, null);
  for (const card of cards) { if (observer) observer.observe(card); else showPicture(card); }
  document.body.dataset.ready = "1";
})();
