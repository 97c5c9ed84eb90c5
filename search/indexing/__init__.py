"""The offline side of search: building an index from a catalog folder and what is done with it
afterwards. Nothing in the service imports this package; it imports the serving modules it shares
(the index format, the embedder, the garment step, the vector stores' identities).

    catalog     the catalog folder: scan (products, images, sha256s), decoding a photo
    embedding   the garment + embedding step of one batch (every executor runs this), BuildModels
    executors   where that step runs: here, in worker processes, or on Ray (ray_build)
    ray_build   the step as a Ray Data job on an actor pool
    pooling     product vectors from their images' vectors
    update      what an --update may keep from the previous index
    builder     build_index: scan, embed, pool, write (search/index_format.py), report duplicates
    report      the build report and the garment-class summary (`info`)
    ann         the FAISS approximate index (SEARCH_BACKEND=faiss)
    duplicates  near-duplicate images across products, in bounded memory
    export      the CLIP towers to ONNX, for serving without torch
    publish     an index's vectors to Milvus (SEARCH_BACKEND=milvus)
    cli         `python -m search.index build [--update] | info | ann | publish`
"""
