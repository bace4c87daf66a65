// The demo page: collect support images + captions and a query, post them, show the answers.
// The server checks everything again; the checks here only save a round trip.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

let limits = { min_support: 2, max_support: 10, max_image_bytes: 8 * 1024 * 1024,
  max_text_chars: 200 };
const support = []; // [{file, url, caption}]
let query = null; // {file, url}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function checkFile(file) {
  if (!file.type.startsWith("image/")) return `${file.name} is not an image`;
  if (file.size > limits.max_image_bytes) {
    return `${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; the limit is ` +
      `${limits.max_image_bytes / 2 ** 20} MB per image`;
  }
  return null;
}

function addSupport(files) {
  const problems = [];
  for (const file of files) {
    if (support.length >= limits.max_support) {
      problems.push(`at most ${limits.max_support} support images`);
      break;
    }
    // Leave type checking to the server for files the browser cannot type (it decodes them).
    const problem = file.type ? checkFile(file) : null;
    if (problem) { problems.push(problem); continue; }
    support.push({ file, url: URL.createObjectURL(file), caption: "" });
  }
  showError(problems.join("; "));
  renderSupport();
}

function renderSupport() {
  const list = $("support-list");
  list.replaceChildren();
  support.forEach((item, i) => {
    const li = document.createElement("li");
    li.className = "card";
    const top = document.createElement("div");
    top.className = "top";
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = `support image ${i + 1}`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = `${i + 1}. ${item.file.name}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.title = "remove";
    remove.setAttribute("aria-label", `remove support image ${i + 1}`);
    remove.textContent = "×";
    remove.addEventListener("click", () => {
      URL.revokeObjectURL(item.url);
      support.splice(i, 1);
      renderSupport();
    });
    top.append(img, name, remove);
    const label = document.createElement("label");
    label.htmlFor = `caption-${i}`;
    label.textContent = "Caption";
    const input = document.createElement("input");
    input.type = "text";
    input.id = `caption-${i}`;
    input.className = "caption";
    input.maxLength = limits.max_text_chars;
    input.placeholder = i % 2 ? "This is a blicket." : "This is a dax.";
    input.value = item.caption;
    input.addEventListener("input", () => {
      item.caption = input.value;
      input.classList.remove("invalid");
    });
    li.append(top, label, input);
    list.append(li);
  });
  $("support-hint").textContent =
    `(${limits.min_support}–${limits.max_support}, a caption each; ${support.length} chosen)`;
}

function setQuery(file) {
  const problem = file.type ? checkFile(file) : null;
  if (problem) { showError(problem); return; }
  if (query) URL.revokeObjectURL(query.url);
  query = { file, url: URL.createObjectURL(file) };
  $("query-preview").src = query.url;
  $("query-preview").alt = "query image";
  $("query-preview").hidden = false;
  $("query-label").textContent = file.name;
  showError("");
}

function wireDrop(zone, input, onFiles) {
  input.addEventListener("change", () => {
    onFiles([...input.files]);
    input.value = ""; // so choosing the same file again still fires "change"
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    onFiles([...e.dataTransfer.files]);
  });
}

function validate() {
  if (support.length < limits.min_support) {
    return `add at least ${limits.min_support} support images (${support.length} so far)`;
  }
  const empty = support.map((s, i) => (s.caption.trim() ? null : i)).filter((i) => i !== null);
  empty.forEach((i) => $(`caption-${i}`).classList.add("invalid"));
  if (empty.length) return `write a caption for support image ${empty.map((i) => i + 1).join(", ")}`;
  if (!query) return "add a query image";
  return null;
}

function plotLosses(losses) {
  const box = $("loss");
  box.replaceChildren();
  if (!losses.length) {
    const p = document.createElement("p");
    p.className = "note";
    p.textContent = "The support is read in context; no gradient steps.";
    box.append(p);
    return;
  }
  const W = 360, H = 170, L = 48, R = 12, T = 12, B = 32;
  const lo = Math.min(...losses), hi = Math.max(...losses);
  const span = hi - lo || 1;
  const x = (i) => L + (losses.length === 1 ? 0 : (i * (W - L - R)) / (losses.length - 1));
  const y = (v) => T + ((hi - v) * (H - T - B)) / span;
  const el = (tag, attrs, text) => {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": `support loss from ${losses[0].toFixed(3)} to ` +
      `${losses[losses.length - 1].toFixed(3)} over ${losses.length - 1} steps` });
  svg.append(
    el("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
    el("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    el("text", { x: L - 6, y: y(hi) + 4, "text-anchor": "end" }, hi.toFixed(3)),
    el("text", { x: L - 6, y: y(lo) + 4, "text-anchor": "end" }, lo.toFixed(3)),
    el("text", { x: L, y: H - B + 15, "text-anchor": "middle" }, "0"),
    el("text", { x: W - R, y: H - B + 15, "text-anchor": "middle" }, String(losses.length - 1)),
    el("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "adaptation step"),
    el("polyline", { class: "curve", points: losses.map((v, i) => `${x(i)},${y(v)}`).join(" ") }),
  );
  losses.forEach((v, i) => {
    const dot = el("circle", { class: "dot", cx: x(i), cy: y(v), r: 3 });
    dot.append(el("title", {}, `step ${i}: ${v.toFixed(4)}`));
    svg.append(dot);
  });
  box.append(svg);
}

function showResult(r, question) {
  $("answer-question").textContent = question;
  $("answer").textContent = r.answer;
  $("unadapted").textContent = r.unadapted;
  plotLosses(r.support_losses);
  $("timing").textContent = `method ${r.method}, ${r.steps} adaptation steps, ` +
    `${r.seconds.toFixed(2)} s on the server`;
  $("results").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  const problem = validate();
  if (problem) { showError(problem); return; }
  showError("");
  const question = $("question").value.trim() || $("question").placeholder;
  const body = new FormData();
  support.forEach((s) => {
    body.append("support", s.file, s.file.name);
    body.append("captions", s.caption.trim());
  });
  body.append("query", query.file, query.file.name);
  body.append("question", question);
  if ($("method").value) body.append("method", $("method").value);
  if ($("steps").value !== "") body.append("steps", $("steps").value);

  const button = $("submit");
  button.disabled = true;
  button.textContent = "Working…";
  $("status").textContent = "Adapting to the support images…";
  try {
    const response = await fetch("/api/answer", { method: "POST", body });
    let data;
    try { data = await response.json(); } catch { data = {}; }
    if (!response.ok) {
      throw new Error(data.error || `the server answered ${response.status}`);
    }
    showResult(data, question);
    $("status").textContent = "";
  } catch (err) {
    showError(err.message);
    $("status").textContent = "";
  } finally {
    button.disabled = false;
    button.textContent = "Adapt and answer";
  }
}

async function loadInfo() {
  try {
    const info = await (await fetch("/api/info")).json();
    limits = info.limits;
    $("run-info").textContent = `Run: ${info.run} (step ${info.step}) · trained for: ${info.method}`;
    $("question").placeholder = info.default_question;
    for (const [m, description] of Object.entries(info.methods)) {
      const opt = document.createElement("option");
      opt.value = m;
      opt.title = description;
      opt.textContent = m === info.method ? `${m} (as trained)` : m;
      $("method").append(opt);
    }
    $("steps").max = limits.max_steps;
  } catch (err) {
    $("run-info").textContent = "Could not reach the server.";
  }
  renderSupport();
}

wireDrop($("support-drop"), $("support-input"), addSupport);
wireDrop($("query-drop"), $("query-input"), (files) => files.length && setQuery(files[0]));
$("form").addEventListener("submit", submit);
loadInfo();
