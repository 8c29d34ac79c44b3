//! Each shape directory's own copy of its metadata row, `shapes/<handle>/shape.json`
//! (deploy-semantics MD-3: the metadata is an index that can be rebuilt from the shape
//! directories).
//!
//! The text is opaque here (the metadata module encodes it); this module only writes it
//! atomically and lists it back. Never creates, removes or truncates a shape directory or any
//! other file in it: a description is written only into a directory that already exists.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use ampere_core::shape::ShapeHandle;

use super::layout;

/// A shape directory found on disk, with its description if it has a readable one.
#[derive(Debug)]
pub struct ShapeDirDescription {
    /// The directory's handle.
    pub handle: ShapeHandle,
    /// The text of `shape.json`, if present and readable.
    pub description: Option<String>,
}

/// Writes `<root>/shapes/<handle>/shape.json` atomically (temporary file, `fsync`, rename,
/// `fsync` of the directory). `Ok(false)` without writing anything if the shape directory does
/// not exist (the shape was removed, or is not created yet). Blocking.
pub fn write_description(root: &Path, handle: &ShapeHandle, text: &str) -> io::Result<bool> {
    let dir = root.join(layout::SHAPES_DIR).join(handle.as_str());
    if !dir.is_dir() {
        return Ok(false);
    }
    let tmp = dir.join(format!(".{}.tmp", layout::SHAPE_DESCRIPTION_FILE));
    let target = dir.join(layout::SHAPE_DESCRIPTION_FILE);
    let mut file = match File::create(&tmp) {
        Ok(file) => file,
        // Removed between the check and the create.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &target)?;
    File::open(&dir)?.sync_all()?;
    Ok(true)
}

/// From this many descriptions on, [`write_descriptions`] is worth its two `syncfs`s.
pub const BATCH_MIN_DESCRIPTIONS: usize = super::sync::SYNCFS_MIN_SHAPES;

/// Writes many descriptions at once, each replacing its `shape.json` atomically as
/// [`write_description`] does; per shape, whether its directory existed. The temporary files
/// are written, their file system synced once (`syncfs`, Linux), renamed into place, and
/// synced once more, instead of two `fsync`s per shape: 2,000 shapes whose snapshot
/// filtering ended together held the driver for 2 s. A shape directory on another file
/// system than `shapes/` (a mount point) is written on its own. Blocking.
pub fn write_descriptions(
    root: &Path,
    descriptions: &[(&ShapeHandle, String)],
) -> io::Result<Vec<bool>> {
    let shapes_dir = root.join(layout::SHAPES_DIR);
    if !cfg!(target_os = "linux") {
        return descriptions
            .iter()
            .map(|(handle, text)| write_description(root, handle, text))
            .collect();
    }
    // Opened before the first write: `syncfs` reports write-back errors since then.
    let dir = File::open(&shapes_dir)?;
    let dev = dir.metadata()?.dev();
    let mut written = vec![false; descriptions.len()];
    let mut renames = Vec::new();
    for (i, (handle, text)) in descriptions.iter().enumerate() {
        let shape_dir = shapes_dir.join(handle.as_str());
        match fs::metadata(&shape_dir) {
            Ok(meta) if meta.is_dir() && meta.dev() == dev => {}
            Ok(meta) if meta.is_dir() => {
                written[i] = write_description(root, handle, text)?;
                continue;
            }
            Ok(_) => continue,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        }
        let tmp = shape_dir.join(format!(".{}.tmp", layout::SHAPE_DESCRIPTION_FILE));
        match File::create(&tmp) {
            Ok(mut file) => file.write_all(text.as_bytes())?,
            // Removed since the check.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        }
        renames.push((i, tmp, shape_dir.join(layout::SHAPE_DESCRIPTION_FILE)));
    }
    // The contents durable before any rename can be: a crash leaves the old file or the new.
    super::sync::syncfs(&dir)?;
    for (i, tmp, target) in renames {
        match fs::rename(&tmp, &target) {
            Ok(()) => written[i] = true,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    super::sync::syncfs(&dir)?;
    Ok(written)
}

/// Every shape directory under `<root>/shapes/` (half-created ones excluded), sorted by
/// handle, with its description. A missing `shapes/` is no shapes. Reads only. Blocking.
pub fn read_descriptions(root: &Path) -> io::Result<Vec<ShapeDirDescription>> {
    let shapes_dir = root.join(layout::SHAPES_DIR);
    let entries = match fs::read_dir(&shapes_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let is_shape = path.is_dir()
            && path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(super::is_valid_handle);
        if is_shape {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs
        .into_iter()
        .filter_map(|dir| {
            let name = dir.file_name()?.to_str()?.to_owned();
            let description = fs::read_to_string(dir.join(layout::SHAPE_DESCRIPTION_FILE)).ok();
            Some(ShapeDirDescription {
                handle: ShapeHandle::from_string(name),
                description,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct TempRoot(PathBuf);

    impl TempRoot {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("ampere-description-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(path.join(layout::SHAPES_DIR)).expect("shapes dir");
            Self(path)
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_batch_replaces_every_existing_shapes_description_and_skips_missing_directories() {
        let root = TempRoot::new("batch");
        let handles: Vec<ShapeHandle> = (0..40)
            .map(|i| ShapeHandle::from_string(format!("{i:08}-1")))
            .collect();
        for handle in handles.iter().filter(|h| h.as_str() != "00000007-1") {
            fs::create_dir(root.0.join(layout::SHAPES_DIR).join(handle.as_str())).expect("dir");
            assert!(write_description(&root.0, handle, "old").expect("first copy"));
        }
        let texts: Vec<(&ShapeHandle, String)> =
            handles.iter().map(|h| (h, format!("new {h:?}"))).collect();
        assert!(texts.len() >= BATCH_MIN_DESCRIPTIONS);

        let written = write_descriptions(&root.0, &texts).expect("batch");

        let expected: Vec<bool> = handles.iter().map(|h| h.as_str() != "00000007-1").collect();
        assert_eq!(written, expected);
        let read = read_descriptions(&root.0).expect("list");
        assert_eq!(
            read.len(),
            39,
            "no directory was created for the missing shape"
        );
        for found in read {
            assert_eq!(
                found.description.as_deref(),
                Some(format!("new {:?}", found.handle).as_str())
            );
            let tmp = format!(".{}.tmp", layout::SHAPE_DESCRIPTION_FILE);
            let shape_dir = root.0.join(layout::SHAPES_DIR).join(found.handle.as_str());
            assert!(!shape_dir.join(tmp).exists(), "no temporary file is left");
        }
    }
}
