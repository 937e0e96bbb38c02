// The page talks to the same /v1 API a site backend uses; errors are shown, never swallowed.
"use strict";

const $ = (id) => document.getElementById(id);
const hasHead = document.body.dataset.hasHead === "true";
const displayFields = (document.body.dataset.displayFields || "").split(",").filter(Boolean);
const protectReads = document.body.dataset.protectReads === "true";
const KEY_STORAGE = "lookalike-api-key";  // this tab only (sessionStorage)

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function showImage(image, url) {  // with PROTECT_READS an <img> cannot send the key: fetch it
  if (!protectReads) { image.src = url; return; }
  const response = await fetch(url, { headers: authHeaders() });
  if (response.ok) image.src = URL.createObjectURL(await response.blob());
}
const SCORE_MEANING = "similarity: 1 = looks identical; (1 - colour weight) x shape + colour weight x colour";

let lastSearch = null;  // re-run when a control changes

function params() {
  const query = new URLSearchParams({ k: $("k").value || "8", colour_weight: $("colour").value });
  if ($("category").value) query.append("category", $("category").value);
  if ($("per-product").checked) query.append("group_by", "product_id");
  if ($("in-colour").checked) query.append("colour", $("target-colour").value);
  if ($("hide-duplicates").checked) query.append("hide_duplicates", "true");
  if (Number($("diversity").value) > 0) query.append("diversity", $("diversity").value);
  for (const numeric of document.querySelectorAll("fieldset.numeric")) {  // range filters and boosts
    const field = numeric.dataset.field;
    for (const [cls, name] of [["gte", `filter.${field}.gte`], ["lte", `filter.${field}.lte`], ["boost", `boost.${field}`]]) {
      const value = numeric.querySelector(`.${cls}`).value;
      if (value !== "") query.append(name, value);
    }
  }
  return query;
}

function line(className, text) {
  const element = document.createElement("div");
  element.className = className;
  element.textContent = text;
  return element;
}

function clearResults() {  // a failed search leaves no stale query or results under its error
  $("query").hidden = true;
  $("results").replaceChildren();
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function callApi(url, options) {
  const response = await fetch(url, { ...options, headers: { ...(options && options.headers), ...authHeaders() } });
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

function showQuery(src, caption) {
  $("query").hidden = false;
  $("query-image").hidden = !src;
  if (!src) { $("query-caption").textContent = caption; return; }
  if (src.startsWith("blob:")) $("query-image").src = src;
  else showImage($("query-image"), src);
  $("query-caption").textContent = caption;
}

function showResults(body) {
  const list = $("results");
  list.replaceChildren();
  for (const result of body.results) {
    const item = document.createElement("li");
    item.dataset.id = result.id;
    const tile = document.createElement("button");  // reachable by Tab, opened with Enter or Space
    tile.type = "button";
    tile.className = "tile";
    tile.title = `look-alikes of ${result.id}`;
    const image = document.createElement("img");
    showImage(image, result.image_url);
    image.alt = result.id;
    tile.append(image, line("category", result.category), line("id", result.id));
    if (result.product_id && result.product_id !== result.id) tile.append(line("product", `product ${result.product_id}`));
    for (const field of displayFields) {
      if (result.metadata && result.metadata[field] !== undefined) tile.append(line("field", `${field}: ${result.metadata[field]}`));
    }
    const score = line("score", `score ${result.score.toFixed(3)}`);
    score.title = SCORE_MEANING;
    tile.append(score);
    tile.addEventListener("click", () => searchById(result.id, result.image_url, result.category));
    item.append(tile);
    list.append(item);
  }
  let status = `${body.results.length} results in ${body.took_ms} ms`;
  if (body.predicted_category) {
    const p = body.predicted_category;
    status += ` · predicted ${p.category} (${(p.probability * 100).toFixed(0)} %${p.applied ? "" : ", not applied"})`;
  }
  $("status").textContent = status;
}

let latest = 0;  // only the newest search may paint: a slow older answer must not overwrite it

async function run(task) {
  const mine = ++latest;
  showError("");
  $("status").textContent = "searching…";
  try {
    const paint = await task();
    if (mine === latest) paint();
  } catch (error) {
    if (mine !== latest) return;
    $("status").textContent = "";
    clearResults();
    showError(error.message);
  }
}

// A box dragged on an uploaded photo: the search re-runs with that region (`box`, fractions).
let queryFile = null;  // the uploaded photo shown, or null for a catalogue item
let queryBox = null;   // [x0, y0, x1, y1] of queryFile, or null for the whole photo

function drawBox(box) {
  const marker = $("query-box");
  marker.hidden = !box;
  if (!box) return;
  const [x0, y0, x1, y1] = box.map((v) => `${(v * 100).toFixed(2)}%`);
  Object.assign(marker.style, { left: x0, top: y0, width: `calc(${x1} - ${x0})`, height: `calc(${y1} - ${y0})` });
}

function showBoxControls() {
  $("query-image").classList.toggle("boxable", Boolean(queryFile));
  $("box-hint").hidden = !queryFile;
  $("whole-photo").hidden = !queryBox;
  drawBox(queryBox);
}

function pointAt(event) {  // fractions of the shown photo, kept inside it
  const rect = $("query-image").getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return [clamp((event.clientX - rect.left) / rect.width), clamp((event.clientY - rect.top) / rect.height)];
}

function spanned(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}

let dragStart = null;
$("query-image").addEventListener("pointerdown", (event) => {
  if (!queryFile) return;
  event.preventDefault();
  dragStart = pointAt(event);
  $("query-image").setPointerCapture(event.pointerId);
});
$("query-image").addEventListener("pointermove", (event) => { if (dragStart) drawBox(spanned(dragStart, pointAt(event))); });
$("query-image").addEventListener("pointerup", (event) => {
  if (!dragStart) return;
  const box = spanned(dragStart, pointAt(event));
  dragStart = null;
  if (box[2] - box[0] < 0.05 || box[3] - box[1] < 0.05) { drawBox(queryBox); return; }  // a click, not a box
  queryBox = box;
  searchByUpload(queryFile);
});
$("whole-photo").addEventListener("click", () => { queryBox = null; searchByUpload(queryFile); });

function searchById(id, imageUrl, category) {
  lastSearch = () => searchById(id, imageUrl, category);
  queryFile = null;
  queryBox = null;
  return run(async () => {
    const body = await callApi(`/v1/items/${encodeURIComponent(id)}/similar?${params()}`);
    return () => { showQuery(imageUrl, `${id} · ${category}`); showBoxControls(); showResults(body); };
  });
}

function searchByUpload(file) {
  lastSearch = () => searchByUpload(file);
  if (file !== queryFile) queryBox = null;  // a new photo starts whole
  queryFile = file;
  const box = queryBox;
  return run(async () => {
    const form = new FormData();
    form.append("image", file);
    const query = params();
    if (box) query.append("box", box.map((v) => v.toFixed(4)).join(","));
    const body = await callApi(`/v1/search?${query}`, { method: "POST", body: form });
    const caption = box ? `${file.name} · the boxed part` : file.name;
    return () => { showQuery(URL.createObjectURL(file), caption); showBoxControls(); showResults(body); };
  });
}

function searchByWords(words) {  // mixed with the uploaded photo shown, if any (text_weight 0.5)
  lastSearch = () => searchByWords(words);
  const file = queryFile;
  queryBox = null;
  return run(async () => {
    const form = new FormData();
    if (file) form.append("image", file);
    form.append("text", words);
    const body = await callApi(`/v1/search?${params()}`, { method: "POST", body: form });
    const caption = file ? `${file.name} + “${words}”` : `“${words}”`;
    return () => { showQuery(file ? URL.createObjectURL(file) : "", caption); showBoxControls(); showResults(body); };
  });
}

async function loadCategories() {
  try {
    const body = await callApi("/v1/categories");
    for (const loaded of $("category").querySelectorAll("option[data-loaded]")) loaded.remove();
    for (const { name, count } of body.categories) {
      const option = new Option(`${name} (${count})`, name);
      option.dataset.loaded = "true";
      $("category").append(option);
    }
  } catch (error) {
    showError(`categories: ${error.message}`);
  }
}

$("file").addEventListener("change", () => { if ($("file").files[0]) searchByUpload($("file").files[0]); });
$("random").addEventListener("click", () => run(async () => {
  const category = $("category").value;
  const query = new URLSearchParams({ k: "1" });
  if (category && category !== "auto") query.append("category", category);
  const [item] = (await callApi(`/v1/items:random?${query}`)).items;
  if (!item) throw new Error("the catalogue is empty");
  return () => searchById(item.id, item.image_url, item.category);
}));
if ($("search-words")) {
  const searchWords = () => { if ($("words").value.trim()) searchByWords($("words").value.trim()); };
  $("search-words").addEventListener("click", searchWords);
  $("words").addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); searchWords(); } });
}
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files[0]) searchByUpload(event.dataTransfer.files[0]);
});
$("colour").addEventListener("input", () => { $("colour-value").textContent = $("colour").value; });
$("in-colour").addEventListener("change", () => {  // a colour target needs some weight on colour
  if ($("in-colour").checked && Number($("colour").value) === 0) {
    $("colour").value = "0.5";
    $("colour-value").textContent = "0.5";
  }
});
for (const control of ["colour", "per-product", "category", "k", "in-colour", "target-colour", "hide-duplicates", "diversity"]) {
  $(control).addEventListener("change", () => { if (lastSearch) lastSearch(); });
}
for (const input of document.querySelectorAll("fieldset.numeric input")) {
  input.addEventListener("change", () => { if (lastSearch) lastSearch(); });
}
if (!hasHead) $("category").title = "category=auto needs a fine-tuned checkpoint";
if (protectReads) {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value);
    showError("");
    loadCategories();
    if (lastSearch) lastSearch();
  });
}
loadCategories();
