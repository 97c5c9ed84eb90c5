// The search page: text or photo queries to POST /, "Similar" to GET /products/<name>/similar.
// Results are built with createElement / textContent / setAttribute only (see ../shared/ui.js).
import { clearError, el, request, safeUrl, setBusy, showError } from "../shared/ui.js";

const form = document.getElementById("search-form");
const textInput = document.getElementById("text");
const nSelect = document.getElementById("n");
const photoInput = document.getElementById("photo");
const photoPreview = document.getElementById("photo-preview");
const photoThumb = document.getElementById("photo-thumb");
const photoClear = document.getElementById("photo-clear");
const searchButton = document.getElementById("search-button");
const errorBox = document.getElementById("error");
const heading = document.getElementById("results-heading");
const statusLine = document.getElementById("status");
const grid = document.getElementById("results");
const backButton = document.getElementById("back");
const referenceThumb = document.getElementById("reference-thumb");

const endpoint = form.getAttribute("action") || "/";
let thumbUrl = null;
let current = null; // {title, status, results} on screen now
const previous = []; // what "Back" returns to
let busy = false;

function similarUrl(productName, n) {
  return new URL(`products/${encodeURIComponent(productName)}/similar?n=${n}`, new URL(endpoint, document.baseURI)).href;
}

function resultCard(result, rank) {
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
  similar.addEventListener("click", () => showSimilar(name, src));
  card.append(picture, el("div", { class: "card-body" },
    el("h3", { class: "card-title", text: name }),
    el("div", { class: "card-meta" },
      el("span", { class: "card-score", title: "Similarity score (higher is closer)",
                   text: `Score ${Number.isFinite(score) ? score.toFixed(3) : "–"}` }),
      similar)));
  return card;
}

function render(view, { focus = true } = {}) {
  current = view;
  heading.textContent = view.title;
  const reference = view.reference ? safeUrl(view.reference) : null;
  if (reference) referenceThumb.setAttribute("src", reference);
  else referenceThumb.removeAttribute("src");
  referenceThumb.hidden = !reference;
  statusLine.textContent = view.status;
  grid.replaceChildren(...view.results.map((result, i) => resultCard(result, i + 1)));
  backButton.hidden = previous.length === 0;
  if (focus) heading.focus();
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

async function run(load, describe, button = searchButton, busyLabel = "Searching…") {
  if (busy) return;
  busy = true;
  clearError(errorBox, form);
  setBusy(button, true, busyLabel);
  grid.setAttribute("aria-busy", "true");
  statusLine.textContent = "Searching…";
  const started = performance.now();
  try {
    const response = await load();
    const results = await response.json();
    if (!Array.isArray(results)) throw Object.assign(new Error("The service sent something other than a list."),
                                                     { title: "Unexpected answer" });
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    const view = { ...describe(results), results };
    view.status = results.length
      ? `${plural(results.length, "product")} ${view.status} · ${seconds} s`
      : `No products ${view.status}.`;
    if (current) previous.push(current);
    render(view);
  } catch (error) {
    statusLine.textContent = current ? current.status : "";
    showError(errorBox, error, form);
  } finally {
    grid.setAttribute("aria-busy", "false");
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
    if (text) body.append("text", text);
    const about = text ? `“${text}” and your photo` : "your photo";
    run(() => request(endpoint, { method: "POST", body, headers: { Accept: "application/json" } }),
        () => ({ title: "Results", status: `matching ${about}` }));
  } else {
    run(() => request(endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ text, n }),
    }), () => ({ title: "Results", status: `matching “${text}”` }));
  }
});

function showSimilar(productName, imageUrl) {
  const n = Number(nSelect.value);
  const button = [...grid.querySelectorAll("button.similar")]
    .find((candidate) => candidate.closest(".card").dataset.product === productName) || searchButton;
  run(() => request(similarUrl(productName, n), { headers: { Accept: "application/json" } }),
      () => ({ title: `Similar to ${productName}`, status: `similar to “${productName}”`, reference: imageUrl }),
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
}

photoInput.addEventListener("change", showThumb);
photoClear.addEventListener("click", () => {
  photoInput.value = "";
  showThumb();
  photoInput.focus();
});
