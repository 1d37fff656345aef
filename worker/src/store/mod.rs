//! The object store: objects addressed by [`FabricUri`]
//! (`fabric://<instance>/<bucket>/<key>`) in [`MemObjectStore`], a
//! shared-memory hash map that any process of the instance opens.

mod object;
mod uri;

pub use object::{
    DEFAULT_CONTENT_TYPE, DEFAULT_LARGE_OBJECT_BYTES, DEFAULT_STORE_LEASE_SECS,
    MAX_CONTENT_TYPE_LEN, MemObjectStore, ObjectList, ObjectMeta, ObjectStore, PutOptions,
};
pub use uri::{FabricUri, MAX_BUCKET_LEN, MAX_KEY_LEN, SCHEME, UriError, UriPart};
