"""The web pages at GET / of both services, at the Flask level: HTML with the security headers,
every asset served locally with its real content type, nothing inline that the CSP forbids, and the
headers on the JSON API's answers too. tests/test_browser.py drives the pages in a real browser."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from shared.web import CONTENT_SECURITY_POLICY

REPO = Path(__file__).resolve().parent.parent
CONTENT_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
PAGE_SCRIPTS = [REPO / "shared/static/ui.js", REPO / "search/static/search.js", REPO / "bgremoval/static/bgremoval.js"]


class Page(HTMLParser):
    """Every tag with its attributes, and the text inside <script> and <style> elements."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        self._open = None

    def handle_data(self, data):
        if self._open and data.strip():
            self.inline.append(f"<{self._open}>{data.strip()[:80]}")

    def find(self, tag: str, **attrs: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    def asset_urls(self) -> list[str]:
        urls = [a["src"] for t, a in self.tags if t in ("script", "img") and a.get("src")]
        urls += [a["href"] for t, a in self.tags if t == "link" and a.get("href")]
        return urls


def label_text(html: str, control_id: str) -> str:
    """The text of the <label for=control_id> (its tags stripped, spaces collapsed)."""
    found = re.search(rf'<label[^>]*\bfor="{re.escape(control_id)}"[^>]*>(.*?)</label>', html, re.DOTALL)
    assert found, f"no <label for={control_id}>"
    return " ".join(re.sub(r"<[^>]+>", " ", found.group(1)).split())


def select_options(html: str, select_id: str) -> list[tuple[str, str]]:
    """(value, text) of each <option> of the <select id=select_id>."""
    found = re.search(rf'<select[^>]*\bid="{re.escape(select_id)}"[^>]*>(.*?)</select>', html, re.DOTALL)
    assert found, f"no <select id={select_id}>"
    return [(value, " ".join(text.split()))
            for value, text in re.findall(r'<option[^>]*\bvalue="([^"]*)"[^>]*>(.*?)</option>', found.group(1), re.DOTALL)]


def assert_safe_headers(response) -> None:
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "Set-Cookie" not in response.headers


def test_the_policy_forbids_inline_script_eval_and_framing():
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["base-uri"] == "'none'"


@pytest.fixture(params=["bgremoval", "search"])
def service(request):
    """(client, the page's script) for each service; `client` is parameterised over the search
    backends, which a page does not depend on, so the search page is checked on one of them."""
    if request.param == "bgremoval":
        return request.getfixturevalue("bg_client"), "bgremoval.js"
    return request.getfixturevalue("exact_search_app").test_client(), "search.js"


@pytest.fixture(scope="module")
def exact_search_app(synthetic_index, tiny_embedder):
    from search import create_app
    from search.config import ClipSettings, SearchConfig
    from tests.conftest import TINY

    app = create_app(SearchConfig(clip=ClipSettings(**TINY), index_dir=str(synthetic_index)), embedder=tiny_embedder)
    app.testing = True
    assert app.extensions["readiness"].ready, app.extensions["readiness"].error
    return app


def test_get_root_is_the_html_page_with_the_headers(service):
    client, script = service
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert_safe_headers(response)
    page = Page(response.get_data(as_text=True))
    assert page.find("html", lang="en") and page.find("meta", name="viewport")
    assert any(a["src"].endswith("/" + script) and a.get("type") == "module" for a in page.find("script"))
    assert client.head("/").status_code == 200


def test_every_asset_is_served_locally_with_its_type_and_nosniff(service):
    client, _ = service
    page = Page(client.get("/").get_data(as_text=True))
    pending = list(page.asset_urls())
    assert len(pending) >= 4  # icon, two stylesheets, the script
    seen = set()
    while pending:
        url = pending.pop()
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{url} is not served by the service itself"
        assert parts.path.startswith("/assets/"), url
        if parts.path in seen:
            continue
        seen.add(parts.path)
        response = client.get(parts.path)
        assert response.status_code == 200, url
        assert response.mimetype == CONTENT_TYPES[Path(parts.path).suffix], (url, response.mimetype)
        assert_safe_headers(response)
        if parts.path.endswith(".js"):  # the modules it imports must be local too
            for imported in re.findall(r'^import .* from "([^"]+)";', response.get_data(as_text=True), re.MULTILINE):
                pending.append(urljoin(parts.path, imported))
    assert any(path.endswith("/ui.js") for path in seen), seen  # the shared module was followed


def test_the_html_has_nothing_inline_that_the_policy_forbids(service):
    client, _ = service
    page = Page(client.get("/").get_data(as_text=True))
    assert not page.inline, page.inline  # no inline <script> or <style> body
    assert not page.find("style")
    for tag, attrs in page.tags:
        assert "style" not in attrs, f"<{tag} style=...>"
        handlers = [name for name in attrs if name.startswith("on")]
        assert not handlers, f"<{tag} {handlers}>"
        for name in ("href", "src", "action"):
            assert not (attrs.get(name) or "").lower().startswith(("javascript:", "data:", "http:", "https:", "//"))
        if tag == "script":
            assert attrs.get("src"), "a script without src"


def test_every_control_has_a_label_and_the_buttons_are_real_buttons(service):
    client, _ = service
    page = Page(client.get("/").get_data(as_text=True))
    labelled = {a["for"] for a in page.find("label") if a.get("for")}
    for tag, attrs in page.tags:
        if tag in ("input", "select", "textarea") and attrs.get("type") not in ("radio", "checkbox"):
            assert attrs.get("id") in labelled, f"<{tag} id={attrs.get('id')}> has no <label for>"
    assert page.find("form") and page.find("button", type="submit")
    assert page.find("div", role="alert")  # where problem details are shown


def test_the_search_page_has_its_controls(exact_search_app):
    html = exact_search_app.test_client().get("/").get_data(as_text=True)
    page = Page(html)
    assert page.find("input", id="text") and page.find("input", id="photo", type="file")
    assert [value for value, _ in select_options(html, "n")] == ["6", "12", "24", "48", "100"]
    assert page.find("ol", id="results")
    # Which of the photo's garments to search for: every one by default (nothing sent), or one class.
    assert label_text(html, "look-classes") == "Search for"
    assert page.find("select", id="look-classes", **{"data-field": "classes"})
    assert select_options(html, "look-classes") == [
        ("", "Every garment in the photo"), ("upper", "Upper body"), ("lower", "Lower body"), ("full", "Full body")]
    assert page.find("div", id="look")  # where a photo's garments go, one section each


def test_the_bg_page_has_its_controls(bg_client):
    page = Page(bg_client.get("/").get_data(as_text=True))
    assert page.find("input", id="file", type="file") and page.find("input", id="url", type="url")
    assert page.find("input", id="background", type="color") and page.find("input", id="background-url")
    values = [a["value"] for a in page.find("option")]
    assert {"jpeg", "png", "webp"} <= set(values) and {"none", "garment"} <= set(values)
    assert sorted(a["value"] for a in page.find("input", type="checkbox", name="classes")) == ["full", "lower", "upper"]
    assert page.find("a", id="download")


def test_the_bg_page_has_the_product_field(bg_client):
    """The product's name, title or category: optional, up to 500 characters (as the API takes),
    labelled, with a hint; its text chooses the garments instead of the boxes."""
    html = bg_client.get("/").get_data(as_text=True)
    page = Page(html)
    [product] = page.find("input", id="product")
    assert product["type"] == "text" and product["maxlength"] == "500" and product["data-field"] == "product"
    assert "required" not in product
    assert label_text(html, "product") == "Product name, title or category (optional)"
    assert product["aria-describedby"] == "product-hint" and page.find("p", id="product-hint")
    assert "Kadın Lacivert Tunik" in re.search(r'<p id="product-hint"[^>]*>(.*?)</p>', html, re.DOTALL).group(1)


@pytest.mark.parametrize("script", PAGE_SCRIPTS, ids=lambda p: p.name)
def test_the_scripts_never_build_html_from_strings(script):
    source = re.sub(r"/\*.*?\*/", "", script.read_text(), flags=re.DOTALL)
    source = re.sub(r"(^|\s)//.*$", "", source, flags=re.MULTILINE)  # comments may name what the code avoids
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setTimeout(\"", "setAttribute(\"on", "createContextualFragment", "DOMParser", "srcdoc",
                 "setHTMLUnsafe"):
        assert sink not in source, f"{script.name} uses {sink}"
    # Nothing styled inline either (the policy's style-src 'self'): classes and the stylesheets only.
    for sink in ('setAttribute("style"', ".style.", ".style =", "cssText"):
        assert sink not in source, f"{script.name} uses {sink}"


def test_json_answers_and_errors_carry_the_headers(service):
    client, _ = service
    for response in (client.get("/nope"), client.delete("/"), client.get("/assets/shared/nope.js"),
                     client.post("/", data="{", content_type="application/json"), client.get("/healthz"),
                     client.get("/openapi.json")):
        assert_safe_headers(response)
        assert response.mimetype in ("application/json", "application/problem+json"), response.mimetype
    assert client.get("/nope").status_code == 404 and client.delete("/").status_code == 405
    assert client.post("/", data="{", content_type="application/json").status_code in (400, 415)


def test_a_search_answer_carries_the_headers(exact_search_app):
    response = exact_search_app.test_client().post("/", json={"text": "red top", "n": 2})
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert_safe_headers(response)


def test_an_image_answer_carries_the_headers(bg_client):
    import io

    from tests import scenes

    buf = io.BytesIO()
    scenes.street_photo(200, 260)[0].save(buf, "PNG")
    response = bg_client.post("/", data=buf.getvalue(), content_type="image/png")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert_safe_headers(response)


def test_openapi_documents_the_page(service):
    client, _ = service
    document = client.get("/openapi.json").json
    get = document["paths"]["/"]["get"]
    assert "text/html" in get["responses"]["200"]["content"]
    assert "post" in document["paths"]["/"]
