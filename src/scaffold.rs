//! `coronium new NAME`: a new API project's folder, ready to call and to edit with completion
//! (the `core` type definitions and luau-lsp settings beside the code).

use std::path::{Path, PathBuf};

/// The type definitions of `core` for luau-lsp (also shipped as `editor/coronium.d.luau`).
pub const DEFINITIONS: &str = include_str!("../editor/coronium.d.luau");

/// The files of a new project: path inside its folder, and text (`__NAME__` is its name).
const FILES: &[(&str, &str)] = &[
    ("main.lua", include_str!("../editor/template/main.lua")),
    ("test.lua", include_str!("../editor/template/test.lua")),
    (".luaurc", include_str!("../editor/template/luaurc.json")),
    (
        ".vscode/settings.json",
        include_str!("../editor/template/vscode-settings.json"),
    ),
    ("types/coronium.d.luau", DEFINITIONS),
];

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "'{0}' cannot be a project name: clients call projects by name, which is letters, digits, '_' and '-'"
    )]
    InvalidName(String),
    #[error("{} already exists: choose another name or remove it first", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes the project `name` under `projects_dir` (made if missing); the project's folder.
pub fn new_project(projects_dir: &Path, name: &str) -> Result<PathBuf, ScaffoldError> {
    if !crate::lua::valid_project_name(name) {
        return Err(ScaffoldError::InvalidName(name.to_owned()));
    }
    let folder = projects_dir.join(name);
    if folder.exists() {
        return Err(ScaffoldError::Exists(folder));
    }
    for (file, text) in FILES {
        let path = folder.join(file);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text.replace("__NAME__", name))
        };
        write(&path).map_err(|source| ScaffoldError::Write { path, source })?;
    }
    Ok(folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_project_compiles_and_is_not_written_twice() {
        let root = tempfile::tempdir().unwrap();
        let folder = new_project(root.path(), "Demo").unwrap();
        let main = std::fs::read_to_string(folder.join("main.lua")).unwrap();
        assert!(main.contains("coronium call Demo hello"), "{main}");
        assert!(folder.join("types/coronium.d.luau").is_file());
        let report = crate::lua::check::check(root.path(), None).unwrap();
        assert_eq!((report.files, report.problems.len()), (2, 0));
        assert!(matches!(
            new_project(root.path(), "Demo"),
            Err(ScaffoldError::Exists(_))
        ));
        assert!(matches!(
            new_project(root.path(), "../escape"),
            Err(ScaffoldError::InvalidName(_))
        ));
    }
}
