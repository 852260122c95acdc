"""The category-aware semantic cache (library layer).

* `cache.keys`: isolation -- `partition_key` (tenant, user, decision, models, system prompt, tools,
  response format, generation parameters, stream) and `exact_key` (the normalized conversation;
  also the document id).
* `cache.index`: `VectorIndex`, per-partition nearest neighbours over unit vectors (exact numpy
  search for small partitions, a faiss HNSW graph past ``hnsw_threshold``, tombstones + rebuilds).
* `cache.qdrant_index`: `QdrantVectorIndex`, the same methods on a Qdrant collection that every
  replica shares (one collection, the partition a mandatory filter); `open_vector_index` picks
  faiss or qdrant for `server.cache_index`.
* `cache.store`: `CacheEntry` and the `DocumentStore` protocol -- `MemoryDocumentStore` (the
  embedded default) and `RedisDocumentStore` (native TTLs, per-category LRU quotas, an event
  stream that keeps other processes' indexes in step).
* `cache.semantic`: `SemanticCache` (exact then semantic lookup, insert, sync/rebuild, counters;
  never raises into the request path) and `SingleFlight` (N identical concurrent misses -> one
  upstream call).

Nothing here is imported by the package itself: import the submodules you need (faiss is imported
only when a partition first grows past the HNSW threshold).
"""
