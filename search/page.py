"""The search web page (GET /): search by text or by photo, results in a grid (image, product
name, score), and "Similar" on each result. It calls POST / and /products/<name>/similar."""
from shared.pages import page_blueprint

bp = page_blueprint(__name__, "search", "search.html")
