"""The services' web pages: the assets both pages share (/assets/shared/) and the blueprint each
service's page module builds (GET / and its own assets under /assets/<service>/).

The pages are plain HTML, CSS and JavaScript files served from the package: no build step, no
CDN, no external font. They obey the Content-Security-Policy that shared.web sets on every
response: scripts and styles come from files on this origin only (no inline script, style
attribute or event handler), and the scripts insert what the API returns with textContent /
createElement / setAttribute, never as HTML.
"""
from __future__ import annotations

from flask import Blueprint, Response, render_template

# Its templates/ holds page_base.html: the head, top bar and footer both pages extend.
assets = Blueprint("shared_assets", __name__, static_folder="static", static_url_path="/assets/shared",
                   template_folder="templates")


def page_blueprint(import_name: str, service: str, template: str) -> Blueprint:
    """Blueprint "page": GET / renders `template` (from the package's templates/), and the
    package's static/ folder is served at /assets/<service>/."""
    bp = Blueprint("page", import_name, static_folder="static", static_url_path=f"/assets/{service}",
                   template_folder="templates")

    @bp.get("/")
    def page() -> Response:
        response = Response(render_template(template), mimetype="text/html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    return bp
