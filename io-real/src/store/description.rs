//! Each shape directory's own copy of its metadata row, `shapes/<handle>/shape.json`
//! (deploy-semantics MD-3: the metadata is an index that can be rebuilt from the shape
//! directories).
//!
//! The text is opaque here (the metadata module encodes it); this module only writes it
//! atomically and lists it back. Never creates, removes or truncates a shape directory or any
//! other file in it: a description is written only into a directory that already exists.

use std::fs::{self, File};
use std::io::{self, Write as _};
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
