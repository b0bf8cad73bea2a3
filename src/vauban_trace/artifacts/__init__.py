"""Content-addressed blob store for trace artifacts.

Artifacts (token ids, logits, activations...) are stored as blobs named by the digest of their
bytes; spans carry only the digest, the URI and a small summary.

Stores::

    from vauban_trace.artifacts import open_store, encode_array, MEDIA_TYPE_SAFETENSORS
    store = open_store(".vauban/blobs")          # LocalArtifactStore; "memory://x", "s3://b/p" -> fsspec
    ref = store.put(encode_array(logits), MEDIA_TYPE_SAFETENSORS)
    ref.digest   # 'blake3:9f2c...'   (over the stored bytes: `b3sum` of the file prints it)
    ref.uri      # 'file:///.../.vauban/blobs/blake3/9f/9f2c...'
    logits2 = decode_array(store.get(ref.digest))   # verified: IntegrityError if the file changed
    data = get_uri(ref.uri)                          # a reader with only the URI

- :class:`LocalArtifactStore` ``<root>/<algorithm>/<hex[:2]>/<hex>``; atomic (temp file, fsync,
  ``os.replace``) and idempotent writes, safe across threads and processes; every digest, path and
  URI is checked to stay inside the root (:class:`UnsafeLocationError` otherwise).
- :class:`FsspecArtifactStore` the same layout and checks on any fsspec URL.
- :func:`open_store`, :func:`open_store_for_uri`, :func:`get_uri`, :func:`split_blob_uri`.
- :class:`BackgroundWriter` hashes in the caller's thread, writes on a worker thread, bounded
  queue with backpressure, errors recorded (never raised into inference).

Digests: ``blake3:<hex>`` by default (:data:`DEFAULT_ALGORITHM`, chosen by measurement, see
docs/artifacts.md) or ``sha256:<hex>``; :func:`compute_digest`, :func:`verify_bytes`.

Codecs (no pickle): :func:`encode_json`/:func:`decode_json` (canonical JSON,
:data:`MEDIA_TYPE_JSON`), :func:`encode_array`/:func:`decode_array` (safetensors, one tensor named
``data``, :data:`MEDIA_TYPE_SAFETENSORS`), :func:`summarize_array` (mean, std, min, max, l2_norm,
top-k over the last row).

Errors (from :mod:`vauban_trace._exceptions`): :class:`InvalidDigestError`,
:class:`UnsafeLocationError`, :class:`BlobNotFoundError`, :class:`IntegrityError`, all
:class:`ArtifactStoreError`.
"""

from vauban_trace._exceptions import (
    ArtifactStoreError,
    BlobNotFoundError,
    IntegrityError,
    InvalidDigestError,
    UnsafeLocationError,
)
from vauban_trace.artifacts._codecs import (
    decode_array,
    decode_json,
    encode_array,
    encode_json,
    summarize_array,
)
from vauban_trace.artifacts._digests import (
    DEFAULT_ALGORITHM,
    MEDIA_TYPE_JSON,
    MEDIA_TYPE_SAFETENSORS,
    BlobRef,
    compute_digest,
    verify_bytes,
)
from vauban_trace.artifacts._local import LocalArtifactStore
from vauban_trace.artifacts._remote import (
    ArtifactStore,
    FsspecArtifactStore,
    get_uri,
    open_store,
    open_store_for_uri,
    split_blob_uri,
)
from vauban_trace.artifacts._writer import (
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_PENDING_ITEMS,
    BackgroundWriter,
    WriteError,
)

__all__ = [
    "DEFAULT_ALGORITHM",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PENDING_ITEMS",
    "MEDIA_TYPE_JSON",
    "MEDIA_TYPE_SAFETENSORS",
    "ArtifactStore",
    "ArtifactStoreError",
    "BackgroundWriter",
    "BlobNotFoundError",
    "BlobRef",
    "FsspecArtifactStore",
    "IntegrityError",
    "InvalidDigestError",
    "LocalArtifactStore",
    "UnsafeLocationError",
    "WriteError",
    "compute_digest",
    "decode_array",
    "decode_json",
    "encode_array",
    "encode_json",
    "get_uri",
    "open_store",
    "open_store_for_uri",
    "split_blob_uri",
    "summarize_array",
    "verify_bytes",
]
