// The search page: text or photo queries to POST /, "Similar" to GET /products/<name>/similar.
// A photo is sent with look=true: one section per garment found in it (its class, the garment cut
// from the photo on a <canvas> by its box, its own results).
// Results are built with createElement / textContent / setAttribute only (see ../shared/ui.js).
import { clearError, el, request, safeUrl, setBusy, showError } from "../shared/ui.js";

const form = document.getElementById("search-form");
const textInput = document.getElementById("text");
const nSelect = document.getElementById("n");
const photoInput = document.getElementById("photo");
const photoPreview = document.getElementById("photo-preview");
const photoThumb = document.getElementById("photo-thumb");
const photoClear = document.getElementById("photo-clear");
const lookClasses = document.getElementById("look-classes");
const searchButton = document.getElementById("search-button");
const errorBox = document.getElementById("error");
const heading = document.getElementById("results-heading");
const statusLine = document.getElementById("status");
const grid = document.getElementById("results");
const look = document.getElementById("look");
const backButton = document.getElementById("back");
const referenceThumb = document.getElementById("reference-thumb");

const endpoint = form.getAttribute("action") || "/";
const GARMENT_HEADINGS = { upper: "Upper-body garment", lower: "Lower-body garment", full: "Full-body garment" };
const THUMB_HEIGHT = 96; // CSS px; a garment's thumbnail is at most THUMB_MAX_WIDTH wide (contained)
const THUMB_MAX_WIDTH = 160;
let thumbUrl = null;
let current = null; // {title, status, results} or {title, status, garments, bitmap} on screen now
const previous = []; // what "Back" returns to
let busy = false;

function similarUrl(productName, n) {
  return new URL(`products/${encodeURIComponent(productName)}/similar?n=${n}`, new URL(endpoint, document.baseURI)).href;
}

function resultCard(result, rank, titleTag = "h3") {
  const name = String(result.product_name ?? "");
  const score = Number(result.score);
  const src = safeUrl(result.url);
  const card = el("li", { class: "card", "data-product": name });
  const image = el("img", { alt: name, decoding: "async" });
  image.addEventListener("error", () => card.classList.add("no-image"), { once: true });
  if (src) image.setAttribute("src", src);
  else card.classList.add("no-image");
  const picture = src
    ? el("a", { class: "card-image", href: src, target: "_blank", rel: "noopener noreferrer",
                "aria-label": `Open the photo of ${name}` }, image)
    : el("div", { class: "card-image" }, image);
  picture.append(el("span", { class: "card-rank", "aria-hidden": "true", text: `#${rank}` }));
  const similar = el("button", { class: "btn btn-secondary btn-small similar", type: "button",
                                 "aria-label": `Products similar to ${name}` }, "Similar");
  similar.addEventListener("click", () => showSimilar(name, src, similar));
  card.append(picture, el("div", { class: "card-body" },
    el(titleTag, { class: "card-title", text: name }),
    el("div", { class: "card-meta" },
      el("span", { class: "card-score", title: "Similarity score (higher is closer)",
                   text: `Score ${Number.isFinite(score) ? score.toFixed(3) : "–"}` }),
      similar)));
  return card;
}

/** The part of the photo inside `box` ([x0, y0, x1, y1] in its pixels) drawn on a canvas
    THUMB_HEIGHT px high (at the screen's pixel density), or null without a decoded photo. */
function garmentThumb(bitmap, box, label) {
  if (!bitmap || !Array.isArray(box) || box.length !== 4) return null;
  const [x0, y0, x1, y1] = box.map(Number);
  const left = Math.max(0, Math.min(x0, bitmap.width));
  const top = Math.max(0, Math.min(y0, bitmap.height));
  const width = Math.min(x1, bitmap.width) - left;
  const height = Math.min(y1, bitmap.height) - top;
  if (!(width > 0 && height > 0)) return null;
  const density = Math.max(1, Math.ceil(window.devicePixelRatio || 1));
  const shown = Math.max(1, Math.round(Math.min(width / height, THUMB_MAX_WIDTH / THUMB_HEIGHT) * THUMB_HEIGHT));
  const canvas = el("canvas", { class: "garment-thumb", width: shown * density, height: THUMB_HEIGHT * density,
                                role: "img", "aria-label": label });
  const context = canvas.getContext("2d");
  if (!context) return null;
  const fit = Math.min(canvas.width / width, canvas.height / height); // contained, centred
  const w = width * fit;
  const h = height * fit;
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, left, top, width, height, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  return canvas;
}

function garmentSection(garment, index, bitmap) {
  const known = typeof garment.class === "string" && Object.hasOwn(GARMENT_HEADINGS, garment.class);
  const title = known ? GARMENT_HEADINGS[garment.class] : "Product"; // class null: a flat-lay product
  const id = `garment-${index + 1}`;
  const results = Array.isArray(garment.results) ? garment.results : [];
  const thumb = garmentThumb(bitmap, garment.box,
    known ? `The ${title.toLowerCase()} cut from your photo` : "The product in your photo")
    || el("div", { class: "garment-thumb garment-thumb-empty", "aria-hidden": "true" });
  return el("section", { class: "garment", "aria-labelledby": id, "data-class": known ? garment.class : "product" },
    el("div", { class: "garment-head" }, thumb,
      el("div", { class: "garment-title" },
        el("h3", { id, class: "garment-heading", text: title }),
        el("p", { class: "garment-meta", text: results.length ? plural(results.length, "product") : "No products" }))),
    el("ol", { class: "grid", "aria-labelledby": id }, ...results.map((result, i) => resultCard(result, i + 1, "h4"))));
}

function render(view, { focus = true } = {}) {
  current = view;
  heading.textContent = view.title;
  const reference = view.reference ? safeUrl(view.reference) : null;
  if (reference) referenceThumb.setAttribute("src", reference);
  else referenceThumb.removeAttribute("src");
  referenceThumb.hidden = !reference;
  statusLine.textContent = view.status;
  if (view.garments) {
    grid.replaceChildren();
    look.replaceChildren(...view.garments.map((garment, i) => garmentSection(garment, i, view.bitmap)));
  } else {
    look.replaceChildren();
    grid.replaceChildren(...view.results.map((result, i) => resultCard(result, i + 1)));
  }
  grid.hidden = Boolean(view.garments);
  look.hidden = !view.garments;
  backButton.hidden = previous.length === 0;
  if (focus) heading.focus();
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

/** A view of a list of results; `describe()` gives its title and what the status says they match. */
function listView(describe) {
  return (results, seconds) => {
    if (!Array.isArray(results)) throw Object.assign(new Error("The service sent something other than a list."),
                                                     { title: "Unexpected answer" });
    const view = { ...describe(), results };
    view.status = results.length
      ? `${plural(results.length, "product")} ${view.status} · ${seconds} s`
      : `No products ${view.status}.`;
    return view;
  };
}

/** A view of a photo's look: its garments, each with its results, cut from `bitmap` (a promise). */
function lookView(bitmap, text) {
  return async (answer, seconds) => {
    if (!answer || !Array.isArray(answer.garments)) {
      throw Object.assign(new Error("The service sent no garments."), { title: "Unexpected answer" });
    }
    const { garments } = answer;
    const only = answer.classes_source === "classes" && Array.isArray(answer.classes)
      ? ` (${answer.classes.map(String).join(", ")} only)` : "";
    const matching = text ? ` · matching “${text}”` : "";
    const status = garments.length
      ? `${plural(garments.length, "garment")} found in your photo${only}${matching} · ${seconds} s`
      : `No garment found in your photo${only}.`;
    return { title: "Results", status, garments, bitmap: await bitmap };
  };
}

async function run(load, toView, button = searchButton, busyLabel = "Searching…") {
  if (busy) return;
  busy = true;
  clearError(errorBox, form);
  setBusy(button, true, busyLabel);
  grid.setAttribute("aria-busy", "true");
  look.setAttribute("aria-busy", "true");
  statusLine.textContent = "Searching…";
  const started = performance.now();
  try {
    const response = await load();
    const answer = await response.json();
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    const view = await toView(answer, seconds);
    if (current) previous.push(current);
    render(view);
  } catch (error) {
    statusLine.textContent = current ? current.status : "";
    showError(errorBox, error, form);
  } finally {
    grid.setAttribute("aria-busy", "false");
    look.setAttribute("aria-busy", "false");
    setBusy(button, false);
    busy = false;
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = textInput.value.trim();
  const n = Number(nSelect.value);
  const photo = photoInput.files && photoInput.files[0];
  if (!text && !photo) {
    clearError(errorBox, form);
    showError(errorBox, { title: "Nothing to search for", detail: "Type a description or choose a photo.",
                          field: "text" }, form);
    textInput.focus();
    return;
  }
  if (photo) {
    const body = new FormData();
    body.append("file", photo, photo.name);
    body.append("n", String(n));
    body.append("look", "true"); // one result list per garment found in the photo
    if (text) body.append("text", text);
    if (lookClasses.value) body.append("classes", lookClasses.value);
    // The photo as the browser decodes it (upright), to cut each garment's thumbnail from.
    const bitmap = createImageBitmap(photo).catch(() => null);
    run(() => request(endpoint, { method: "POST", body, headers: { Accept: "application/json" } }),
        lookView(bitmap, text));
  } else {
    run(() => request(endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ text, n }),
    }), listView(() => ({ title: "Results", status: `matching “${text}”` })));
  }
});

function showSimilar(productName, imageUrl, button = searchButton) {
  const n = Number(nSelect.value);
  run(() => request(similarUrl(productName, n), { headers: { Accept: "application/json" } }),
      listView(() => ({ title: `Similar to ${productName}`, status: `similar to “${productName}”`,
                        reference: imageUrl })),
      button, "Finding…");
}

backButton.addEventListener("click", () => {
  const view = previous.pop();
  if (view) render(view);
});

function showThumb() {
  if (thumbUrl) URL.revokeObjectURL(thumbUrl);
  thumbUrl = null;
  const photo = photoInput.files && photoInput.files[0];
  if (photo) {
    thumbUrl = URL.createObjectURL(photo);
    photoThumb.setAttribute("src", thumbUrl);
    photoThumb.setAttribute("alt", `The photo to search with: ${photo.name}`);
    photoPreview.hidden = false;
  } else {
    photoThumb.removeAttribute("src");
    photoPreview.hidden = true;
  }
  lookClasses.disabled = !photo; // which of the photo's garments: only with a photo
}

photoInput.addEventListener("change", showThumb);
photoClear.addEventListener("click", () => {
  photoInput.value = "";
  showThumb();
  photoInput.focus();
});

// A photo already chosen when the page was restored from the back/forward cache.
showThumb();
