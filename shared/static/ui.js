// Helpers both service pages share. Everything that comes from the API or the user (product
// names, scores, error texts, file names) goes into the page as text nodes or attribute values:
// createElement / textContent / setAttribute only, never innerHTML or HTML built from strings.

/** A new element: `props` become attributes (text: its textContent), `children` nodes or text. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child); // strings -> text nodes
  }
  return node;
}

/** `url` resolved against the page if it is http(s) or blob:, else null (no javascript: etc.). */
export function safeUrl(url) {
  try {
    const resolved = new URL(String(url), document.baseURI);
    return ["http:", "https:", "blob:"].includes(resolved.protocol) ? resolved.href : null;
  } catch {
    return null;
  }
}

/** An Error from a failed response: its problem+json title, detail and field when it has them. */
export async function problemFrom(response) {
  const error = new Error(`${response.status} ${response.statusText}`.trim());
  error.title = error.message;
  error.detail = "";
  error.status = response.status;
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try {
      const body = await response.json();
      if (body && typeof body === "object") {
        if (typeof body.title === "string" && body.title) error.title = body.title;
        if (typeof body.detail === "string") error.detail = body.detail;
        if (typeof body.field === "string") error.field = body.field;
      }
    } catch {
      /* not JSON after all: the status line is all we have */
    }
  }
  if (!error.detail) error.detail = `The service answered ${error.message}.`;
  error.message = error.detail;
  return error;
}

/** fetch() with a deadline; a failed status becomes a thrown problem error (see problemFrom). */
export async function request(url, options = {}, timeoutMs = 120000) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  let response;
  try {
    response = await fetch(url, { ...options, signal: controller.signal, credentials: "omit", cache: "no-store" });
  } catch (cause) {
    const error = new Error(cause && cause.name === "AbortError"
      ? `No answer within ${Math.round(timeoutMs / 1000)} s; try again.`
      : "Could not reach the service; check the connection and try again.");
    error.title = cause && cause.name === "AbortError" ? "Timed out" : "Network error";
    error.detail = error.message;
    throw error;
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok) throw await problemFrom(response);
  return response;
}

/** Shows `error` (title + detail) in the alert box `box`; marks the form field it names. */
export function showError(box, error, form = null) {
  const title = error && error.title ? error.title : "Something went wrong";
  const detail = error && (error.detail || error.message) ? (error.detail || error.message) : "";
  box.replaceChildren(el("strong", { text: title }), el("span", { class: "alert-detail", text: detail }));
  box.hidden = false;
  if (form && error && error.field) {
    const field = form.querySelector(`[data-field="${CSS.escape(error.field)}"]`);
    if (field) field.setAttribute("aria-invalid", "true");
  }
}

/** Hides the alert box and clears the fields it had marked. */
export function clearError(box, form = null) {
  box.hidden = true;
  box.replaceChildren();
  if (form) form.querySelectorAll("[aria-invalid]").forEach((node) => node.removeAttribute("aria-invalid"));
}

/** Puts `button` into (or out of) its loading state, with `busyLabel` and a spinner. */
export function setBusy(button, busy, busyLabel) {
  if (!button.dataset.label) button.dataset.label = button.textContent.trim();
  button.disabled = busy;
  button.setAttribute("aria-busy", busy ? "true" : "false");
  if (busy) button.replaceChildren(el("span", { class: "spinner", "aria-hidden": "true" }), busyLabel);
  else button.replaceChildren(button.dataset.label);
}

/** "1.2 MB", "830 KB", "512 B". */
export function formatBytes(bytes) {
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  if (bytes >= 1e3) return `${Math.round(bytes / 1e3)} KB`;
  return `${bytes} B`;
}
