"""The ML server, a small FastAPI app (:mod:`.app`: lifespan, auth, routes), its Pydantic schemas
(:mod:`.schemas`), the classification pipeline (:mod:`.pipeline`), its own cache store
(:mod:`.cache`), and the client every other process uses to reach it (:mod:`.client`).
"""
