"""Background-removal service: keeps only the garment of a fashion photo."""
from __future__ import annotations

from flask import Flask

from bgremoval.config import BgConfig


def create_app(config: BgConfig | None = None, *, models=None) -> Flask:
    """App factory. `models` lets tests and tools pass already-loaded models."""
    from bgremoval.api import bp
    from bgremoval.schemas import openapi_document
    from bgremoval.pipeline import GarmentPipeline
    from shared.web import create_service_app

    from shared.garment_vocabulary import Vocabulary

    config = config or BgConfig.from_env()
    vocabulary = Vocabulary.load(config.vocabulary_path)  # a bad file stops the start, naming it

    def load(app: Flask) -> str:
        from bgremoval.models import load_models
        from shared.budget import PixelBudget

        loaded = models if models is not None else load_models(config)
        app.extensions["bg_pipeline"] = GarmentPipeline(loaded, config.pipeline)
        app.extensions["pixel_budget"] = PixelBudget(config.max_inflight_mp, config.inflight_wait_s)
        app.extensions["garment_vocabulary"] = vocabulary
        return f"models: {loaded.person.name}, {loaded.cloth.name}, {loaded.product.name}"

    return create_service_app(
        __name__, service="bgremoval", openapi=openapi_document(config), blueprint=bp, max_body_bytes=config.max_body_bytes,
        settings=("BG", config), loader=load, page="bgremoval.page",
    )
