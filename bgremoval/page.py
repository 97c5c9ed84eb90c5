"""The background-removal web page (GET /): upload a photo or give a URL, pick the options, see
the photo before and after side by side and download the result. It calls POST / like any client."""
from shared.pages import page_blueprint

bp = page_blueprint(__name__, "bgremoval", "bgremoval.html")
