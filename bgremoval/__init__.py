"""Background-removal service: keeps only the garment of a fashion photo."""
from __future__ import annotations

import logging

from flask import Flask

from bgremoval.config import BgConfig


def create_app(config: BgConfig | None = None, *, models=None) -> Flask:
    """App factory. `models` lets tests and tools pass already-loaded models."""
    from bgremoval.api import bp
    from bgremoval.openapi import OPENAPI
    from bgremoval.pipeline import GarmentPipeline
    from shared.web import Readiness, install_common, load_in_background

    config = config or BgConfig.from_env()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = Flask(__name__)
    app.config["BG"] = config
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    readiness = Readiness()
    install_common(app, service="bgremoval", readiness=readiness, openapi=OPENAPI)
    app.register_blueprint(bp)

    def load() -> str:
        from bgremoval.models import load_models

        loaded = models if models is not None else load_models(config)
        app.extensions["bg_pipeline"] = GarmentPipeline(loaded, config.pipeline)
        return f"models: {loaded.person.name}, {loaded.cloth.name}, {loaded.product.name}"

    load_in_background(readiness, load, synchronous=config.load_synchronously or models is not None)
    return app
