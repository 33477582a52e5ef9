// skulens web page: send a photo to /v1/recognize and show the answer, the matching products, similar
// products, the category tree and (on request) a Grad-CAM heat map. Plain JS, no build step.
// Everything from the server is written with textContent (never innerHTML), so titles cannot inject markup.
// Two ways to recognise (?engine=device|server, and a toggle): on this device (device.js: the photo stays in
// the browser, only its embedding is sent to search) or on the server (the photo is uploaded).
import { DeviceEngine, deviceSupported } from "./device.js";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 24;
let info = null;
let previewUrl = null;
let heatmapUrl = null;
let lastFile = null;
let photoToken = 0;  // answers for an older photo than the one on screen are dropped
let browsing = null;  // {path, nextOffset} of the category being listed
let manifest = null;  // GET /v1/device/manifest: what on-device mode needs, or why it is off
let mode = "server";  // where photos are recognised: "device" or "server"
let deviceEngine = null;  // a promise of the loaded DeviceEngine, made on first use

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

function pct(x) {
  return `${Math.round(100 * x)}%`;
}

function megabytes(n) {
  return `${Math.round((10 * n) / 1048576) / 10} MB`;  // MiB, as in --max-upload-mb
}

function authHeaders() {
  // The key lives only in this page's memory (the input field): nothing is saved in the browser.
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  const error = new Error(body && body.error ? body.error.message : `the server answered HTTP ${response.status}`);
  error.status = response.status;
  return error;
}

async function fetchBlob(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) throw await errorOf(response);
  return response.blob();
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) throw await errorOf(response);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  return body;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function safeImageUrl(url) {
  if (!url) return null;
  try {
    const parsed = new URL(url, window.location.href);
    if (["http:", "https:", "blob:"].includes(parsed.protocol)) return parsed.href;
    if (parsed.protocol === "data:" && url.startsWith("data:image/")) return url;
  } catch (_) {
    return null;
  }
  return null;
}

async function loadInfo() {
  try {
    info = await api("/v1/info");
  } catch (error) {
    $("model-info").textContent = "";
    showError(`Cannot reach the server: ${error.message}`);
    return;
  }
  const m = info.model;
  $("model-info").textContent = `${m.name} · ${m.classes} classes · ${m.engine}`;
  $("limits").textContent = `${info.limits.formats.join(", ")} · up to ${megabytes(info.limits.max_upload_bytes)}`;
  $("api-key-row").hidden = !info.auth.reads;
  // Each product is found by default when the server has a detector (?objects=0 turns it off): a photo
  // of one product gets the same answer either way (the server answers it whole, issue 18).
  $("objects-toggle").checked = !["0", "false"].includes(new URLSearchParams(window.location.search).get("objects"));
  if (info.catalog) {
    loadTree();
    $("text-search").hidden = false;
  }
  await loadManifest();
}

async function loadManifest() {
  try {
    manifest = await api("/v1/device/manifest");
  } catch (_) {
    manifest = null;  // an older server, or the network is down and nothing was cached
  }
  const possible = Boolean(manifest && manifest.available && deviceSupported());
  $("engine-row").hidden = !possible;
  const asked = new URLSearchParams(window.location.search).get("engine");
  if (asked === "device" && !possible) {
    const why = manifest && manifest.reason ? manifest.reason : "this browser cannot run the model";
    showError(`On-device recognition is not available here: ${why}. Photos are recognised on the server.`);
  }
  setMode(possible && asked !== "server" ? "device" : "server");
}

function setMode(next) {
  mode = next;
  $(`engine-${mode}`).checked = true;
  const onDevice = mode === "device";
  $("privacy-note").textContent = onDevice
    ? "On this device: your photo stays in this browser. To find matching products, only a list of numbers computed from it is sent, never the photo."
    : "Photos are analysed and then discarded; the server does not keep them.";
  // The heat map and "refine the photo" need the photo on the server: offered in server mode only.
  $("heatmap-row").hidden = onDevice || !info || !info.explain;
  $("objects-row").hidden = onDevice || !info || !info.objects;
  if (onDevice && !deviceEngine) loadDevice();
}

function loadDevice() {
  setStatus(`Loading the model for this device (${megabytes(manifest.model.bytes)}, once)…`);
  deviceEngine = DeviceEngine.load(manifest, authHeaders());
  deviceEngine.then(
    (engine) => {
      $("model-info").textContent = `${info.model.name} · ${info.model.classes} classes · ${engine.backend} on this device`;
      setStatus("Ready: photos are recognised on this device.");
    },
    (error) => {
      deviceEngine = null;
      setStatus("");
      showError(`The model could not start on this device (${error.message}); photos are recognised on the server.`);
      setMode("server");
    },
  );
  return deviceEngine;
}

function showPreview(file) {
  $("preview-boxes").replaceChildren();
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  if (heatmapUrl) URL.revokeObjectURL(heatmapUrl);
  heatmapUrl = null;
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
  $("preview").alt = "the photo you sent";
  $("preview").hidden = false;
}

async function showHeatmap() {
  // The server blends the heat map over the photo; the page swaps it in for the plain preview.
  if (!lastFile || !$("heatmap-toggle").checked) return;
  const token = photoToken;
  if (!heatmapUrl) {
    const form = new FormData();
    form.append("image", lastFile, lastFile.name || "photo.jpg");
    try {
      const blob = await fetchBlob("/v1/explain", { method: "POST", body: form });
      if (token !== photoToken) return;
      heatmapUrl = URL.createObjectURL(blob);
    } catch (error) {
      if (token === photoToken) showError(`No heat map: ${error.message}`);
      return;
    }
  }
  if ($("heatmap-toggle").checked) {
    $("preview").src = heatmapUrl;
    $("preview").alt = "the photo with a heat map of where the model looked";
  }
}

function toggleHeatmap() {
  if ($("heatmap-toggle").checked) {
    showHeatmap();
  } else if (previewUrl) {
    $("preview").src = previewUrl;
    $("preview").alt = "the photo you sent";
  }
}

async function recognize(file) {
  if (!file) return;
  clearError();
  photoToken += 1;
  lastFile = file;
  showPreview(file);
  if (info && file.size > info.limits.max_upload_bytes) {
    showError(`This photo is ${megabytes(file.size)}; the limit is ${megabytes(info.limits.max_upload_bytes)}.`);
    return;
  }
  setStatus("Recognizing…");
  try {
    const token = photoToken;
    const result = mode === "device" ? await recognizeOnDevice(file) : await recognizeOnServer(file);
    if (token !== photoToken) return;
    renderPrediction(result);
    renderObjects(result);
    renderProducts($("products"), result.products);
    $("products-title").textContent = "Matching products";
    $("products-panel").hidden = result.products.length === 0;
    $("refine-row").hidden = !info || !info.catalog || mode === "device";
    $("similar-panel").hidden = true;
    const where = mode === "device" ? " on this device" : "";
    setStatus(`Answered${where} in ${Math.round(result.elapsed_ms)} ms.${result.note ? ` ${result.note}` : ""}`);
    if (mode === "server") showHeatmap();
  } catch (error) {
    $("result").hidden = true;
    $("products-panel").hidden = true;
    setStatus("");
    // A photo the browser cannot decode (TIFF) is never sent without asking: the shopper chose the device.
    const hint = error.code === "unsupported_on_device" ? " Choose “on the server” above to send it there." : "";
    showError(error.message + hint);
  }
}

async function recognizeOnServer(file) {
  const form = new FormData();
  form.append("image", file, file.name || "photo.jpg");
  // "Find each product" (a detector on the server): every product of the photo answered on its own.
  const objects = info && info.objects && $("objects-toggle").checked;
  return api(objects ? "/v1/recognize?objects=true" : "/v1/recognize", { method: "POST", body: form });
}

// Boxes over the photo, one per product found (a photo of several); clicking one shows that product's
// answer and matching products. Nothing found (the whole photo answered): no boxes.
function renderObjects(result) {
  const frame = $("preview-boxes");
  frame.replaceChildren();
  const objects = (result.objects || []).filter((o) => o.score !== null);
  if (objects.length === 0) return;
  const img = $("preview");
  const place = () => {
    const w = img.naturalWidth;
    const h = img.naturalHeight;
    const boxes = objects.map((obj, i) => {
      const [x1, y1, x2, y2] = obj.box;
      const box = el("button", { type: "button", className: "object-box", title: `${obj.label} (${pct(obj.confidence)})` },
        el("span", { textContent: `${i + 1}. ${obj.label}` }));
      box.setAttribute("aria-label", `product ${i + 1}: ${obj.label}`);
      Object.assign(box.style, {
        left: `${(100 * x1) / w}%`, top: `${(100 * y1) / h}%`,
        width: `${(100 * (x2 - x1)) / w}%`, height: `${(100 * (y2 - y1)) / h}%`,
      });
      box.addEventListener("click", () => showObject(obj, box));
      return box;
    });
    frame.replaceChildren(...boxes);
    boxes[0].classList.add("current");
  };
  if (img.complete && img.naturalWidth) place();
  else img.addEventListener("load", place, { once: true });
}

function showObject(obj, box) {
  for (const other of document.querySelectorAll("#preview-boxes .object-box")) other.classList.remove("current");
  box.classList.add("current");
  renderPrediction(obj);
  renderProducts($("products"), obj.products);
  $("products-panel").hidden = obj.products.length === 0;
}

// Recognised in the browser; the catalog is searched with the photo's embedding alone.
async function recognizeOnDevice(file) {
  const engine = await (deviceEngine || loadDevice());
  const { answer, vector } = await engine.recognize(file);
  if (info && info.catalog && !manifest.search) {
    answer.note = `No matching products on this device (${manifest.search_reason}); choose “on the server” for them.`;
  }
  if (vector && manifest.search) {
    try {
      const found = await api(manifest.search.url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ vector, model: manifest.search.model }),
      });
      answer.products = found.products;
    } catch (error) {
      answer.note = error instanceof TypeError
        ? "Matching products need the network: search runs on the server."
        : `No matching products: ${error.message}`;
    }
  }
  return answer;
}

function renderPath(levels) {
  return levels.map((level) => el("li", {},
    el("span", { className: "name", textContent: level.name }),
    el("span", { className: "conf", textContent: pct(level.confidence) })));
}

function renderPrediction(result) {
  $("top-label").textContent = `${result.label} (${pct(result.confidence)})`;
  $("top-label").dataset.label = result.label;
  $("category-path").replaceChildren(...renderPath(result.path));
  const note = $("answer-note");
  if (result.unknown) {
    note.textContent = "The model is not sure what this is; the path above is only its best guess.";
    note.hidden = false;
  } else if (result.answer_path && result.answer_path.length) {
    note.textContent = `Sure only down to: ${result.answer_path.map((l) => l.name).join(" › ")}`;
    note.hidden = false;
  } else {
    note.hidden = true;
  }
  const rows = result.top_k.map((scored) => {
    const bar = el("div", { className: "bar" }, el("span"));
    bar.firstChild.style.width = pct(scored.confidence);
    return el("tr", {},
      el("td", { className: "label", textContent: scored.label, title: scored.path.join(" › ") }),
      el("td", {}, bar),
      el("td", { className: "pct", textContent: pct(scored.confidence) }));
  });
  $("top-k").tBodies[0].replaceChildren(...rows);
  const attributes = $("attributes");
  attributes.replaceChildren(...result.attributes.flatMap((a) => [
    el("dt", { textContent: a.name }),
    el("dd", { textContent: a.confidence == null ? a.value : `${a.value} (${pct(a.confidence)})` })]));
  attributes.hidden = result.attributes.length === 0;
  $("result").hidden = false;
}

function productCard(product) {
  const src = safeImageUrl(product.image_url);
  const picture = src
    ? el("img", { src, alt: product.title, loading: "lazy" })
    : el("div", { className: "noimg", role: "img", ariaLabel: "no image" });
  // Listings have no score; search answers do.
  const score = typeof product.score === "number" ? [el("span", { className: "score", textContent: ` · ${pct(product.score)}` })] : [];
  const card = el("button", { type: "button", className: "card", title: `Show products similar to ${product.title}` },
    picture,
    el("span", { className: "title", textContent: product.title }),
    el("span", { className: "sku" }, product.sku, ...score));
  card.dataset.sku = product.sku;
  card.addEventListener("click", () => showSimilar(product));
  return card;
}

function renderProducts(container, products) {
  container.replaceChildren(...(products || []).map(productCard));
}

async function showSimilar(product) {
  clearError();
  setStatus(`Looking for products similar to ${product.title}…`);
  try {
    const result = await api(`/v1/products/${encodeURIComponent(product.sku)}/similar`);
    $("similar-title").textContent = `Similar to ${product.title}`;
    renderProducts($("similar"), result.products);
    $("similar-panel").hidden = false;
    $("similar-panel").scrollIntoView({ behavior: "smooth", block: "start" });
    setStatus("");
  } catch (error) {
    setStatus("");
    showError(error.message);
  }
}

function renderTree(nodes) {
  return el("ul", {}, ...nodes.map((node) => {
    const name = el("button", { type: "button", className: "category name", textContent: node.name,
      title: `Show the products in ${node.path.join(" › ")}` });
    name.dataset.path = JSON.stringify(node.path);
    name.addEventListener("click", () => browseCategory(node.path, name));
    const label = [name, el("span", { className: "count", textContent: `(${node.product_count})` })];
    if (!node.children || node.children.length === 0) return el("li", {}, ...label);
    return el("li", {}, el("details", {}, el("summary", {}, ...label), renderTree(node.children)));
  }));
}

// The words alone (GET /v1/search?q=), or, with a photo on the page and "refine" ticked, the photo
// refined by the words (POST /v1/search with q): "this, but in blue".
async function searchWords(event) {
  event.preventDefault();
  clearError();
  const words = $("search-words").value.trim();
  if (!words) return;
  const refine = lastFile && !$("refine-row").hidden && $("refine-toggle").checked;
  setStatus(refine ? `Looking for products like the photo, ${words}…` : `Searching for ${words}…`);
  try {
    let result;
    if (refine) {
      const form = new FormData();
      form.append("image", lastFile, lastFile.name || "photo.jpg");
      form.append("q", words);
      result = await api("/v1/search", { method: "POST", body: form });
    } else {
      result = await api(`/v1/search?${new URLSearchParams({ q: words })}`);
    }
    $("products-title").textContent = refine ? `Like the photo, ${words}` : `Products for “${words}”`;
    renderProducts($("products"), result.products);
    $("products-panel").hidden = false;
    setStatus(result.products.length ? "" : "No product matches these words.");
  } catch (error) {
    setStatus("");
    showError(error.message);
  }
}

async function browseCategory(path, button = null, offset = 0) {
  clearError();
  if (button) {
    for (const other of document.querySelectorAll("#tree .category.current")) other.classList.remove("current");
    button.classList.add("current");
  }
  const query = new URLSearchParams({ offset: String(offset), limit: String(PAGE_SIZE) });
  for (const level of path) query.append("category", level);
  try {
    const page = await api(`/v1/products?${query}`);
    const cards = page.products.map(productCard);
    if (offset === 0) {
      $("browse-title").textContent = path.join(" › ");
      $("browse").replaceChildren(...cards);
    } else {
      $("browse").append(...cards);
    }
    browsing = { path, nextOffset: page.next_offset };
    $("browse-more").hidden = page.next_offset == null;
    $("browse-panel").hidden = false;
    if (offset === 0) $("browse-panel").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (error) {
    showError(error.message);
  }
}

async function loadTree() {
  try {
    const result = await api("/v1/categories");
    $("tree").replaceChildren(renderTree(result.roots));
    $("tree-panel").hidden = result.roots.length === 0;
  } catch (_) {
    $("tree-panel").hidden = true;  // the tree is a convenience: the page works without it
  }
}

function wireInputs() {
  for (const id of ["engine-device", "engine-server"]) {
    $(id).addEventListener("change", (event) => {
      if (event.target.checked) setMode(event.target.value);
    });
  }
  $("text-search").addEventListener("submit", searchWords);
  $("heatmap-toggle").addEventListener("change", toggleHeatmap);
  $("browse-more").addEventListener("click", () => {
    if (browsing && browsing.nextOffset != null) browseCategory(browsing.path, null, browsing.nextOffset);
  });
  for (const id of ["file-input", "camera-input"]) {
    $(id).addEventListener("change", (event) => {
      recognize(event.target.files[0]);
      event.target.value = "";  // choosing the same file again must still trigger a change
    });
  }
  const zone = $("dropzone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/")) || event.dataTransfer.files[0];
    recognize(file);
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
    if (item) recognize(item.getAsFile());
  });
}

// After the first visit the page, the runtime and the model load from the browser, also offline (sw.js).
if ("serviceWorker" in navigator) navigator.serviceWorker.register("/sw.js").catch(() => {});
wireInputs();
loadInfo();
