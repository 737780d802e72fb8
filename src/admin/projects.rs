//! The Projects page's view of the projects folder: each API project (a folder with a
//! `main.lua`) and its files, read off the disk when the page is asked for.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Files listed per project at most (a project is a handful of Lua files).
const MAX_FILES: usize = 200;
/// Folder depth listed below a project.
const MAX_DEPTH: usize = 4;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectFolder {
    pub name: String,
    pub files: Vec<ProjectFile>,
    /// More files than were listed.
    pub more: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectFile {
    /// Relative to the project's folder, with `/`.
    pub path: String,
    pub bytes: u64,
    pub modified: Option<i64>,
}

/// The projects under `dir` with their files; `Err` when the folder cannot be read.
pub fn scan(dir: &Path) -> std::io::Result<Vec<ProjectFolder>> {
    Ok(crate::lua::project_dirs(dir)?
        .into_iter()
        .map(|(name, path)| {
            let mut files = Vec::new();
            let more = !list_files(&path, &path, 0, &mut files);
            files.sort_by(|a, b| a.path.cmp(&b.path));
            ProjectFolder { name, files, more }
        })
        .collect())
}

/// Adds the files below `dir` to `files`; false once [`MAX_FILES`] is reached.
fn list_files(root: &Path, dir: &Path, depth: usize, files: &mut Vec<ProjectFile>) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    let mut folders: Vec<PathBuf> = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let path = entry.path();
        if meta.is_dir() {
            folders.push(path);
            continue;
        }
        if files.len() == MAX_FILES {
            return false;
        }
        let relative = path.strip_prefix(root).unwrap_or(&path);
        files.push(ProjectFile {
            path: relative.to_string_lossy().replace('\\', "/"),
            bytes: meta.len(),
            modified: meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64),
        });
    }
    if depth < MAX_DEPTH {
        for folder in folders {
            if !list_files(root, &folder, depth + 1, files) {
                return false;
            }
        }
    }
    true
}
