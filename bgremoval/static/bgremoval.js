// The background-removal page: sends the photo (multipart) or its URL (JSON) to POST / with the
// options (the garments to keep: the boxes, or the product's text), shows before and after side by
// side, says what was kept (the X-Garment-* headers) and offers the result as a download.
// Texts from the API or the user go in with textContent / setAttribute only (see ../shared/ui.js).
import { clearError, formatBytes, request, safeUrl, setBusy, showError } from "../shared/ui.js";

const form = document.getElementById("bg-form");
const fileInput = document.getElementById("file");
const urlInput = document.getElementById("url");
const fileField = document.getElementById("file-field");
const urlField = document.getElementById("url-field");
const colourInput = document.getElementById("background");
const colourValue = document.getElementById("background-value");
const backgroundUrlInput = document.getElementById("background-url");
const formatSelect = document.getElementById("format");
const cropSelect = document.getElementById("crop");
const productInput = document.getElementById("product");
const classBoxes = [...form.querySelectorAll('input[name="classes"]')];
const submitButton = document.getElementById("submit");
const errorBox = document.getElementById("error");
const before = document.getElementById("before");
const beforeEmpty = document.getElementById("before-empty");
const beforeInfo = document.getElementById("before-info");
const after = document.getElementById("after");
const afterEmpty = document.getElementById("after-empty");
const afterInfo = document.getElementById("after-info");
const afterFrame = document.getElementById("after-frame");
const afterLoading = document.getElementById("after-loading");
const statusLine = document.getElementById("status");
const download = document.getElementById("download");

const endpoint = form.getAttribute("action") || "/";
const EXTENSIONS = { "image/jpeg": "jpg", "image/png": "png", "image/webp": "webp" };
let beforeUrl = null; // object URL of the chosen file
let resultUrl = null; // object URL of the result
let busy = false;

function source() {
  return form.querySelector('input[name="source"]:checked').value;
}

function baseName() {
  let name = "photo";
  if (source() === "file" && fileInput.files[0]) name = fileInput.files[0].name;
  else if (source() === "url" && urlInput.value.trim()) {
    try {
      name = decodeURIComponent(new URL(urlInput.value.trim()).pathname.split("/").pop() || "photo");
    } catch {
      name = "photo";
    }
  }
  const stem = name.replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "-").replace(/^-+|-+$/g, "");
  return (stem || "photo").slice(0, 80);
}

function showBefore(src, label) {
  beforeInfo.textContent = label || "";
  if (src) {
    before.setAttribute("src", src);
    before.hidden = false;
    beforeEmpty.hidden = true;
  } else {
    before.removeAttribute("src");
    before.hidden = true;
    beforeEmpty.textContent = "Choose a photo to begin.";
    beforeEmpty.hidden = false;
  }
}

function clearResult() {
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = null;
  after.removeAttribute("src");
  after.hidden = true;
  afterEmpty.hidden = false;
  afterInfo.textContent = "";
  download.hidden = true;
  download.removeAttribute("href");
  download.removeAttribute("download");
}

function updateBefore() {
  if (beforeUrl) URL.revokeObjectURL(beforeUrl);
  beforeUrl = null;
  if (source() === "file") {
    const file = fileInput.files[0];
    if (file) {
      beforeUrl = URL.createObjectURL(file);
      showBefore(beforeUrl, `${file.name} · ${formatBytes(file.size)}`);
    } else {
      showBefore(null);
    }
  } else {
    const src = urlInput.value.trim() ? safeUrl(urlInput.value.trim()) : null;
    showBefore(src && !src.startsWith("blob:") ? src : null, "");
  }
}

before.addEventListener("load", () => {
  const size = `${before.naturalWidth} × ${before.naturalHeight} px`;
  beforeInfo.textContent = beforeInfo.textContent ? `${beforeInfo.textContent} · ${size}` : size;
});
before.addEventListener("error", () => {
  if (!before.getAttribute("src")) return;
  before.hidden = true;
  beforeEmpty.textContent = "No preview: the browser cannot show this file.";
  beforeEmpty.hidden = false;
});
after.addEventListener("load", () => {
  const type = after.dataset.type || "";
  const size = `${after.naturalWidth} × ${after.naturalHeight} px`;
  afterInfo.textContent = `${size} · ${(EXTENSIONS[type] || "").toUpperCase()} · ${after.dataset.bytes || ""}`;
});

for (const radio of form.querySelectorAll('input[name="source"]')) {
  radio.addEventListener("change", () => {
    fileField.hidden = source() !== "file";
    urlField.hidden = source() !== "url";
    updateBefore();
  });
}
fileInput.addEventListener("change", () => {
  clearError(errorBox, form);
  updateBefore();
});
urlInput.addEventListener("change", updateBefore);
colourInput.addEventListener("input", () => {
  colourValue.textContent = colourInput.value;
});
backgroundUrlInput.addEventListener("input", () => {
  // A background image replaces the colour: the picker is off while a URL is given.
  colourInput.disabled = Boolean(backgroundUrlInput.value.trim());
});

function product() {
  return productInput.value.trim();
}

function updateClassBoxes() {
  // The product's text chooses the garments: the boxes are off while it is given.
  const fromProduct = Boolean(product());
  for (const box of classBoxes) box.disabled = fromProduct;
}
productInput.addEventListener("input", updateClassBoxes);

function options() {
  const chosen = { format: formatSelect.value };
  // product and classes exclude each other: the product's text, when given, chooses the garments.
  if (product()) chosen.product = product();
  else chosen.classes = classBoxes.filter((box) => box.checked).map((box) => box.value);
  const backgroundUrl = backgroundUrlInput.value.trim();
  // background and background_url exclude each other; defaults (crop none) are not sent.
  if (backgroundUrl) chosen.background_url = backgroundUrl;
  else chosen.background = colourInput.value;
  if (cropSelect.value !== "none") chosen.crop = cropSelect.value;
  return chosen;
}

function buildRequest(chosen) {
  if (source() === "file") {
    const file = fileInput.files[0];
    if (!file) return { error: { title: "No photo", detail: "Choose a photo file to upload.", field: "file" } };
    const body = new FormData();
    body.append("file", file, file.name);
    for (const [name, value] of Object.entries(chosen)) {
      body.append(name, Array.isArray(value) ? value.join(",") : value);
    }
    return { init: { method: "POST", body, headers: { Accept: "image/*, application/problem+json" } } };
  }
  const url = urlInput.value.trim();
  if (!url) return { error: { title: "No URL", detail: "Paste the address of an image.", field: "url" } };
  return {
    init: {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "image/*, application/problem+json" },
      body: JSON.stringify({ url, ...chosen }),
    },
  };
}

/** What the result kept, from its X-Garment-* headers: "upper, full (from the product: tunic)". */
function keptSummary(headers, sentProduct) {
  const classes = (headers.get("X-Garment-Classes") || "").split(",").map((name) => name.trim()).filter(Boolean);
  if (!classes.length) return "";
  const garment = headers.get("X-Garment-Name");
  let why;
  if (headers.get("X-Garment-Fallback") === "true") {
    why = sentProduct ? "the product's garment was not found: all garments kept"
      : "the chosen garments were not found: all garments kept";
  } else {
    const source = headers.get("X-Garment-Source");
    if (source === "product") why = garment ? `from the product: ${garment}` : "from the product";
    else if (source === "classes") why = "as chosen";
    else if (source === "all") why = sentProduct ? "all garments: the product names none" : "all garments";
  }
  return `${classes.join(", ")}${why ? ` (${why})` : ""}`;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (busy) return;
  clearError(errorBox, form);
  const chosen = options();
  const { init, error } = buildRequest(chosen);
  if (error) {
    showError(errorBox, error, form);
    (source() === "file" ? fileInput : urlInput).focus();
    return;
  }
  busy = true;
  setBusy(submitButton, true, "Removing background…");
  afterFrame.setAttribute("aria-busy", "true");
  afterLoading.hidden = false;
  statusLine.textContent = "Working…";
  const started = performance.now();
  try {
    const response = await request(endpoint, init);
    const blob = await response.blob();
    const type = (response.headers.get("Content-Type") || blob.type || "").split(";")[0].trim();
    const extension = EXTENSIONS[type] || "img";
    clearResult();
    resultUrl = URL.createObjectURL(blob);
    after.dataset.type = type;
    after.dataset.bytes = formatBytes(blob.size);
    after.setAttribute("src", resultUrl);
    after.hidden = false;
    afterEmpty.hidden = true;
    download.setAttribute("href", resultUrl);
    download.setAttribute("download", `${baseName()}-garment.${extension}`);
    download.textContent = `Download ${extension.toUpperCase()}`;
    download.hidden = false;
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    const mask = response.headers.get("X-Mask-Source");
    const kept = keptSummary(response.headers, "product" in chosen);
    statusLine.textContent = `Done in ${seconds} s${mask ? ` · mask: ${mask}` : ""}${kept ? ` · kept: ${kept}` : ""}.`;
  } catch (failure) {
    clearResult();
    statusLine.textContent = "";
    showError(errorBox, failure, form);
  } finally {
    afterLoading.hidden = true;
    afterFrame.setAttribute("aria-busy", "false");
    setBusy(submitButton, false);
    busy = false;
  }
});

// A file (or product text) already there when the page was restored from the back/forward cache.
updateBefore();
updateClassBoxes();
