"""Text search over precomputed, per-product pooled CLIP embeddings of garment-only photos."""
from __future__ import annotations

from flask import Flask

from search.config import SearchConfig


def create_app(config: SearchConfig | None = None, *, embedder=None, garments=None) -> Flask:
    """App factory. `embedder` (a ClipEmbedder) and `garments` (a garment source, search/garments.py)
    let tests share loaded models between apps."""
    from search.api import bp
    from search.schemas import openapi_document
    from search.searcher import Searcher
    from search.index_format import Index
    from shared.web import create_service_app

    from shared.garment_vocabulary import Vocabulary

    config = config or SearchConfig.from_env()
    vocabulary = Vocabulary.load(config.vocabulary_path)  # a bad file stops the start, naming it

    def load(app: Flask) -> str:
        from pathlib import Path

        from search.index_format import IndexLoadError
        from search.text_encoder import export_dir, open_text_encoder
        from search.vectors import open_store

        index = Index.load(config.index_dir)  # cheap checks first: a bad index fails fast
        catalog = Path(config.catalog_dir or index.meta["catalog_dir"])
        if not catalog.is_dir():
            raise IndexLoadError(f"catalog folder {catalog} does not exist; set SEARCH_CATALOG_DIR to the "
                                 "catalog the index was built from (result urls serve its images)")
        missing, examples = index.missing_images(catalog)
        if missing:
            raise IndexLoadError(f"the catalog at {catalog} lacks {missing} of the index's {len(index.image_files)} "
                                 f"images (e.g. {', '.join(examples)}); set SEARCH_CATALOG_DIR to the catalog "
                                 "the index was built from, or rebuild the index")
        if embedder is not None:
            model = embedder
        else:
            model = open_text_encoder(config.clip, config.text_encoder, export_dir(config),
                                      keep_image_tower=config.image_queries)
        index.check_compatible(model.identity)
        photos = None
        if config.image_queries:  # the image tower (and the garment step) load only for photo queries
            from search.image_encoder import open_image_encoder
            from search.photos import PhotoEmbedder, open_garments

            photos = PhotoEmbedder(garments if garments is not None else open_garments(config),
                                   open_image_encoder(config.clip, model, export_dir(config)),
                                   index_meta=index.meta, max_pixels=config.max_image_pixels,
                                   look_min_fraction=config.look_min_fraction)
        app.extensions["photos"] = photos
        app.extensions["garment_vocabulary"] = vocabulary
        store = open_store(config.vectors, index)
        searcher = Searcher(index, model, store=store, fusion=config.fusion,
                            cache_size=config.query_cache_size)
        app.extensions["searcher"] = searcher
        app.extensions["catalog_dir"] = catalog
        readiness = app.extensions["readiness"]
        readiness.info = {"backend": store.describe(), "text_encoder": model.describe(),
                          "photo_queries": photos.describe() if photos is not None else "off"}
        readiness.probe = store.check
        searcher.embed_query("warm up")  # the first call is slow (torch, onnxruntime); pay it before ready
        return (f"{len(index.products)} products, {len(index.image_files)} images, {model.model_name} "
                f"({model.describe()}), backend {store.backend}, photo queries "
                f"{photos.describe() if photos is not None else 'off'}")

    return create_service_app(
        __name__, service="search", openapi=openapi_document(config), blueprint=bp, max_body_bytes=max(config.max_body_bytes, config.max_upload_bytes),
        settings=("SEARCH", config), loader=load, page="search.page",
    )
