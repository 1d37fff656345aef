//! The object store's addresses: [`FabricUri`]
//! (`fabric://<instance>/<bucket>/<key>`). The store itself
//! (`MemObjectStore` over a shared-memory hash map) is not built yet.

mod uri;

pub use uri::{FabricUri, MAX_BUCKET_LEN, MAX_KEY_LEN, SCHEME, UriError, UriPart};
