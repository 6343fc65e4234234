//! Directories in a bucket. S3 has none: a directory exists while some key
//! lies under `PATH/`. An *empty* directory (made by
//! [`Store::create_dir`](crate::Store::create_dir)) is kept by a marker,
//! the empty object `.ferry/dirs/PATH`, one per level, outside the served
//! namespace so no client file can collide with it. Listings add the
//! markers' directories to the implicit ones; deleting an empty directory
//! deletes its marker.

use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio_stream::StreamExt;

use super::{Inner, backend, map_error};
use crate::{Error, Metadata, Result, StorePath};

impl Inner {
    fn marker_key(&self, path: Option<&StorePath>) -> Key {
        match path {
            Some(path) => self.key_raw(&format!(".ferry/dirs/{}", path.as_str())),
            None => self.key_raw(".ferry/dirs"),
        }
    }

    /// The store path a marker key stands for.
    fn marker_path(&self, key: &Key) -> Option<StorePath> {
        let base = self.marker_key(None);
        let rel = key.as_ref().strip_prefix(base.as_ref())?.strip_prefix('/')?;
        StorePath::parse(rel).ok()
    }

    /// Whether `path` was made as a directory and not deleted since.
    pub(super) async fn has_marker(&self, path: &StorePath) -> Result<bool> {
        match self.s3.head(&self.marker_key(Some(path))).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(backend("reading a directory marker", &e)),
        }
    }

    /// Directories made directly under `dir` (the root when `None`).
    pub(super) async fn child_markers(&self, dir: Option<&StorePath>) -> Result<Vec<StorePath>> {
        let listing = self
            .s3
            .list_with_delimiter(Some(&self.marker_key(dir)))
            .await
            .map_err(|e| backend("listing directory markers", &e))?;
        Ok(listing.objects.iter().filter_map(|object| self.marker_path(&object.location)).collect())
    }

    /// Directories made anywhere under `dir` (the root when `None`).
    pub(super) async fn all_markers(&self, dir: Option<&StorePath>) -> Result<Vec<StorePath>> {
        let prefix = self.marker_key(dir);
        let mut objects = self.s3.list(Some(&prefix));
        let mut paths = Vec::new();
        while let Some(object) = objects.next().await {
            let object = object.map_err(|e| backend("listing directory markers", &e))?;
            paths.extend(self.marker_path(&object.location));
        }
        Ok(paths)
    }

    /// Makes `path` and its missing parents directories, refusing where a
    /// file is in the way.
    pub(super) async fn create_dir(&self, path: &StorePath) -> Result<Metadata> {
        let segments: Vec<&str> = path.segments().collect();
        let mut levels = Vec::with_capacity(segments.len());
        for depth in 1..=segments.len() {
            let level = StorePath::parse(&segments[..depth].join("/"))?;
            match self.s3.head(&self.key(&level)).await {
                Ok(_) if depth == segments.len() => {
                    return Err(Error::AlreadyExists { path: path.as_str().to_owned() });
                }
                Ok(_) => return Err(Error::ParentNotDirectory { path: path.as_str().to_owned() }),
                Err(object_store::Error::NotFound { .. }) => levels.push(level),
                Err(e) => return Err(map_error(e, path.as_str(), "reading metadata")),
            }
        }
        for level in &levels {
            self.s3
                .put(&self.marker_key(Some(level)), PutPayload::new())
                .await
                .map_err(|e| backend("writing a directory marker", &e))?;
        }
        Ok(Inner::directory(path.clone()))
    }

    /// Deletes the directory `path` if nothing is in it: neither objects nor
    /// directories made under it.
    pub(super) async fn delete_dir(&self, path: &StorePath) -> Result<()> {
        let prefix = self.key(path);
        let listing =
            self.s3.list_with_delimiter(Some(&prefix)).await.map_err(|e| backend("listing a directory", &e))?;
        let has_entries = !listing.objects.is_empty() || !listing.common_prefixes.is_empty();
        if has_entries || !self.child_markers(Some(path)).await?.is_empty() {
            return Err(Error::DirectoryNotEmpty { path: path.as_str().to_owned() });
        }
        if !self.has_marker(path).await? {
            return Err(Error::NotFound { path: path.as_str().to_owned() });
        }
        self.s3.delete(&self.marker_key(Some(path))).await.map_err(|e| backend("deleting a directory marker", &e))
    }
}
