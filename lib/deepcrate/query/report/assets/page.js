// The report's map: draws the songs on a canvas, names them on hover, plays them and lists
// their recommendations on click, finds them by title or artist. Text from the catalogue is
// only ever set as textContent, never as HTML.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const n = data.count;
  const decode = (b64, Type) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Type(bytes.buffer);
  };
  const xs = data.x ? decode(data.x, Uint16Array) : null;
  const ys = data.y ? decode(data.y, Uint16Array) : null;
  const k = data.k;
  const neighbours = k ? decode(data.neighbours, Int32Array) : new Int32Array(0);
  const similarity = k ? decode(data.similarity, Int16Array) : new Int16Array(0);
  const bpm = decode(data.bpm, Uint16Array);
  const keyOf = decode(data.key, Uint8Array);
  const weak = decode(data.weak, Uint8Array);  // 1: a weak tempo, 2: a weak key, 3: both
  const musical = (i) => [bpm[i] ? `${(bpm[i] / 10).toFixed(1)} BPM${weak[i] & 1 ? " (weak)" : ""}` : "",
    keyOf[i] < 255 ? `${data.keys[keyOf[i]]}${weak[i] & 2 ? " (weak)" : ""}` : ""].filter(Boolean).join(", ");
  const isTest = new Uint8Array(n);
  data.test.forEach((i) => { isTest[i] = 1; });
  const isLost = new Uint8Array(n);
  data.lost.forEach((i) => { isLost[i] = 1; });
  const UNMAPPED = 65535;
  // Tableau's 20 distinct colours, then golden-angle hues for catalogues with more genres
  const TABLEAU = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#637939", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#dbdb8d", "#9edae5", "#393b79"];
  const colours = data.genres.map((_, g) => TABLEAU[g] || `hsl(${Math.round((g * 137.508) % 360)}, 65%, 45%)`);
  const colourOf = (i) => (data.genre[i] >= 0 ? colours[data.genre[i]] : "#999");
  const genreOf = (i) => (data.genre[i] >= 0 ? data.genres[data.genre[i]] : "unlabelled");
  const urlOf = (i) => data.folders[data.folder[i]] + data.files[i];
  const nameOf = (i) => (data.titles[i] || data.files[i]) + (data.artists[i] ? " — " + data.artists[i] : "");
  const el = (tag, props, children) => {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    (children || []).forEach((child) => node.append(child));
    return node;
  };

  const canvas = document.getElementById("map");
  const tooltip = document.getElementById("tooltip");
  const panel = document.getElementById("song");
  const player = el("audio", { controls: true, preload: "none", id: "player" });
  let selected = -1;
  let size = { w: 0, h: 0 };
  let cells = new Map();
  const CELL = 12;
  const MARGIN = 14;

  function position(i) {
    return {
      x: MARGIN + (xs[i] / 65534) * (size.w - 2 * MARGIN),
      y: MARGIN + (1 - ys[i] / 65534) * (size.h - 2 * MARGIN),
    };
  }

  function layout() {
    const ratio = window.devicePixelRatio || 1;
    size = { w: canvas.clientWidth, h: canvas.clientHeight };
    canvas.width = Math.round(size.w * ratio);
    canvas.height = Math.round(size.h * ratio);
    canvas.getContext("2d").setTransform(ratio, 0, 0, ratio, 0, 0);
    cells = new Map();
    for (let i = 0; i < n; i++) {
      if (xs[i] === UNMAPPED) continue;
      const p = position(i);
      const key = Math.floor(p.x / CELL) * 100000 + Math.floor(p.y / CELL);
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(i);
    }
    draw();
  }

  function draw() {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, size.w, size.h);
    let drawn = 0;
    const dot = n > 20000 ? 2 : n > 2000 ? 3 : 6;
    for (let i = 0; i < n; i++) {
      if (xs[i] === UNMAPPED) continue;
      const p = position(i);
      ctx.fillStyle = colourOf(i);
      ctx.fillRect(p.x - dot / 2, p.y - dot / 2, dot, dot);
      if (isTest[i]) {
        ctx.strokeStyle = "#000";
        ctx.lineWidth = 1.5;
        ctx.strokeRect(p.x - dot / 2 - 1, p.y - dot / 2 - 1, dot + 2, dot + 2);
      }
      drawn++;
    }
    canvas.dataset.points = String(drawn);
    if (selected >= 0 && xs[selected] !== UNMAPPED) {
      const from = position(selected);
      ctx.strokeStyle = "rgba(0, 0, 0, 0.45)";
      for (let r = 0; r < k; r++) {
        const j = neighbours[selected * k + r];
        if (j < 0 || xs[j] === UNMAPPED) continue;
        const to = position(j);
        ctx.beginPath();
        ctx.moveTo(from.x, from.y);
        ctx.lineTo(to.x, to.y);
        ctx.stroke();
      }
      ctx.beginPath();
      ctx.arc(from.x, from.y, 8, 0, 2 * Math.PI);
      ctx.lineWidth = 2.5;
      ctx.strokeStyle = "#000";
      ctx.stroke();
    }
  }

  function nearest(px, py, radius) {
    let best = -1;
    let bestDistance = radius * radius;
    const cx = Math.floor(px / CELL);
    const cy = Math.floor(py / CELL);
    for (let dx = -1; dx <= 1; dx++) {
      for (let dy = -1; dy <= 1; dy++) {
        for (const i of cells.get((cx + dx) * 100000 + cy + dy) || []) {
          const p = position(i);
          const d = (p.x - px) ** 2 + (p.y - py) ** 2;
          if (d <= bestDistance) {
            best = i;
            bestDistance = d;
          }
        }
      }
    }
    return best;
  }

  function pointer(event) {
    const box = canvas.getBoundingClientRect();
    return { x: event.clientX - box.left, y: event.clientY - box.top };
  }

  function play(i) {
    if (isLost[i]) return;
    player.src = urlOf(i);
    player.play().catch(() => {});  // a file the browser cannot play shows in the player itself
  }

  function playButton(i) {
    if (isLost[i]) return el("span", { className: "lost", textContent: "audio file not found" });
    return el("button", { className: "play", type: "button", textContent: "▶", title: "play " + nameOf(i),
      onclick: () => play(i) });
  }

  function select(i) {
    selected = i;
    const facts = [`genre: ${genreOf(i)}`];
    if (data.predicted[i]) facts.push(`predicted: ${data.predicted[i]}`);
    if (musical(i)) facts.push(musical(i));
    if (isTest[i]) facts.push("test split");
    const recs = el("ol", { id: "recommendations" });
    for (let r = 0; r < k; r++) {
      const j = neighbours[i * k + r];
      if (j < 0) continue;
      const link = el("a", { href: "#", className: "song-link", textContent: nameOf(j),
        onclick: (event) => { event.preventDefault(); select(j); } });
      const item = el("li", {}, [playButton(j), " ", link,
        el("span", { className: "similarity", textContent: (similarity[i * k + r] / 10000).toFixed(3) }),
        el("span", { className: "musical", textContent: musical(j) })]);
      item.dataset.songId = data.ids[j];
      recs.append(item);
    }
    panel.replaceChildren(
      el("h3", { id: "song-title", textContent: data.titles[i] || data.files[i] }),
      el("p", { className: "artist", textContent: data.artists[i] || "(artist unknown)" }),
      el("p", { className: "facts", textContent: facts.join(" · ") }),
      el("p", {}, [playButton(i), " ", el("code", { className: "song-id", textContent: data.ids[i] })]),
      player,
      el("h4", { textContent: k ? "Sounds like" : "No recommendations yet (run deepcrate index)" }),
      recs,
    );
    panel.dataset.songId = data.ids[i];
    draw();
  }

  function search(text) {
    const results = document.getElementById("search-results");
    const query = text.trim().toLowerCase();
    const found = [];
    for (let i = 0; query && i < n && found.length < 20; i++) {
      if (data.titles[i].toLowerCase().includes(query) || data.artists[i].toLowerCase().includes(query)
          || data.files[i].toLowerCase().includes(query)) found.push(i);
    }
    results.replaceChildren(...found.map((i) => {
      const item = el("li", {}, [el("a", { href: "#", textContent: nameOf(i),
        onclick: (event) => { event.preventDefault(); select(i); } })]);
      item.dataset.songId = data.ids[i];
      return item;
    }));
    return found;
  }

  function legend() {
    const counts = new Array(data.genres.length).fill(0);
    let unlabelled = 0;
    data.genre.forEach((g) => { if (g >= 0) counts[g]++; else unlabelled++; });
    const items = data.genres.map((genre, g) => el("li", {}, [
      el("span", { className: "swatch", style: `background:${colours[g]}` }), `${genre} (${counts[g]})`]));
    if (unlabelled) items.push(el("li", {}, [el("span", { className: "swatch", style: "background:#999" }),
      `unlabelled (${unlabelled})`]));
    document.getElementById("legend").replaceChildren(...items);
  }

  if (canvas && xs) {
    canvas.addEventListener("mousemove", (event) => {
      const p = pointer(event);
      const i = nearest(p.x, p.y, 8);
      tooltip.hidden = i < 0;
      if (i < 0) return;
      tooltip.replaceChildren(el("b", { textContent: data.titles[i] || data.files[i] }),
        el("div", { textContent: data.artists[i] || "" }),
        el("div", { textContent: `${genreOf(i)}${data.predicted[i] ? " → predicted " + data.predicted[i] : ""}` }));
      tooltip.style.left = `${p.x + 12}px`;
      tooltip.style.top = `${p.y + 12}px`;
    });
    canvas.addEventListener("mouseleave", () => { tooltip.hidden = true; });
    canvas.addEventListener("click", (event) => {
      const p = pointer(event);
      const i = nearest(p.x, p.y, 10);
      if (i >= 0) select(i);
    });
    document.getElementById("search").addEventListener("input", (event) => search(event.target.value));
    document.getElementById("search").addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        const found = search(event.target.value);
        if (found.length) select(found[0]);
      }
    });
    window.addEventListener("resize", layout);
    legend();
    layout();
  }

  // for tests and for people at the console: where a song is drawn, and what it recommends
  window.deepcrate = {
    count: n,
    position: (i) => (xs && xs[i] !== UNMAPPED ? position(i) : null),
    index: (id) => data.ids.indexOf(id),
    recommendations: (i) => Array.from({ length: k }, (_, r) => neighbours[i * k + r])
      .filter((j) => j >= 0).map((j) => data.ids[j]),
    select,
    search,
  };
})();
