//! `coronium check`: compiles every Lua file of API projects the way the server would, without
//! running them or touching a database, and reports syntax errors with file and line.

use std::path::{Path, PathBuf};

use mlua::Lua;

use super::projects::{read_source, valid_segment};

/// How deep below a project's folder files are looked for.
const MAX_DEPTH: usize = 8;

/// Files checked per project at most: a folder holding a whole asset tree is not walked forever.
const MAX_FILES: usize = 5_000;

/// One problem found, with the file it is in (relative to the projects folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// `file:line: message` for syntax errors, `file: message` otherwise.
    pub message: String,
}

/// What checking found.
#[derive(Debug, Default)]
pub struct Report {
    pub projects: usize,
    pub files: usize,
    pub problems: Vec<Problem>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read the projects folder {}: {source}", dir.display())]
    Folder {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no project '{name}' in {}: a project is a folder holding a main.lua",
        dir.display()
    )]
    NoSuchProject { name: String, dir: PathBuf },
}

/// Checks one project (`only`) or every project under `projects_dir`.
///
/// `only` names a project in `projects_dir`, or is the path of a project's folder.
pub fn check(projects_dir: &Path, only: Option<&str>) -> Result<Report, CheckError> {
    let lua = Lua::new();
    let mut report = Report::default();
    let targets: Vec<(String, PathBuf)> = match only {
        Some(wanted) => {
            let as_path = Path::new(wanted);
            let folder = if as_path.join("main.lua").is_file() {
                as_path.to_path_buf()
            } else {
                projects_dir.join(wanted)
            };
            if !folder.join("main.lua").is_file() {
                return Err(CheckError::NoSuchProject {
                    name: wanted.to_owned(),
                    dir: projects_dir.to_path_buf(),
                });
            }
            let name = folder
                .canonicalize()
                .ok()
                .and_then(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| wanted.to_owned());
            vec![(name, folder)]
        }
        None => super::project_dirs(projects_dir).map_err(|source| CheckError::Folder {
            dir: projects_dir.to_path_buf(),
            source,
        })?,
    };
    for (name, folder) in targets {
        report.projects += 1;
        if !valid_segment(&name) {
            report.problems.push(Problem {
                file: name.clone(),
                message: format!(
                    "{name}: clients cannot call this project: a project's name is letters, \
                     digits, '_' and '-'"
                ),
            });
        }
        let mut files = Vec::new();
        lua_files(&folder, 0, &mut files);
        files.sort();
        if files.len() >= MAX_FILES {
            report.problems.push(Problem {
                file: name.clone(),
                message: format!(
                    "{name}: more than {MAX_FILES} .lua files; only the first {MAX_FILES} were checked"
                ),
            });
        }
        for path in files {
            report.files += 1;
            let relative = format!(
                "{name}/{}",
                path.strip_prefix(&folder)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/")
            );
            if let Err(message) = compile(&lua, &path, &relative) {
                report.problems.push(Problem {
                    file: relative,
                    message,
                });
            }
        }
    }
    Ok(report)
}

/// The `.lua` files below `dir` (links to folders are not followed: they may lead anywhere).
fn lua_files(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if files.len() >= MAX_FILES {
            return;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            if depth < MAX_DEPTH {
                lua_files(&path, depth + 1, files);
            }
        } else if path.extension().is_some_and(|e| e == "lua") {
            files.push(path);
        }
    }
}

/// Compiles one file as the server would name it; the message says what is wrong and where.
fn compile(lua: &Lua, path: &Path, relative: &str) -> Result<(), String> {
    let source = read_source(path).map_err(|e| format!("{relative}: {e}"))?;
    match lua
        .load(source)
        .set_name(format!("@{relative}"))
        .into_function()
    {
        Ok(_) => Ok(()),
        Err(mlua::Error::SyntaxError { message, .. }) => Err(message),
        Err(other) => Err(format!("{relative}: {}", super::describe(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(root: &Path, name: &str, files: &[(&str, &str)]) {
        for (file, text) in files {
            let path = root.join(name).join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn syntax_errors_are_reported_with_file_and_line() {
        let root = tempfile::tempdir().unwrap();
        project(
            root.path(),
            "Good",
            &[("main.lua", "local api = core.api()\nreturn api\n")],
        );
        project(
            root.path(),
            "Bad",
            &[
                ("main.lua", "return core.api()\n"),
                ("lib/util.lua", "local x = 1\n\nlocal y = = 2\nreturn x\n"),
                ("notes.txt", "not lua ("),
            ],
        );
        let report = check(root.path(), None).unwrap();
        assert_eq!((report.projects, report.files), (2, 3));
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let problem = &report.problems[0];
        assert_eq!(problem.file, "Bad/lib/util.lua");
        assert!(
            problem.message.starts_with("Bad/lib/util.lua:3:"),
            "{}",
            problem.message
        );

        let only = check(root.path(), Some("Good")).unwrap();
        assert_eq!((only.projects, only.files, only.problems.len()), (1, 1, 0));
        let by_path = check(
            Path::new("/nonexistent"),
            Some(root.path().join("Bad").to_str().unwrap()),
        )
        .unwrap();
        assert_eq!(by_path.problems.len(), 1);
        assert!(matches!(
            check(root.path(), Some("Missing")),
            Err(CheckError::NoSuchProject { .. })
        ));
        assert!(matches!(
            check(&root.path().join("nope"), None),
            Err(CheckError::Folder { .. })
        ));
    }

    #[test]
    fn a_project_too_big_to_check_whole_says_so() {
        let root = tempfile::tempdir().unwrap();
        project(root.path(), "Big", &[("main.lua", "return core.api()")]);
        for i in 0..MAX_FILES {
            std::fs::write(root.path().join(format!("Big/f{i}.lua")), "return 1").unwrap();
        }
        let report = check(root.path(), None).unwrap();
        assert_eq!(report.files, MAX_FILES);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].message.contains("only the first"));
    }

    #[test]
    fn what_the_server_would_not_load_is_reported_without_blocking() {
        let root = tempfile::tempdir().unwrap();
        project(
            root.path(),
            "Odd",
            &[("main.lua", "return core.api()"), ("big.lua", "")],
        );
        let big = root.path().join("Odd/big.lua");
        std::fs::write(&big, vec![b' '; 2 * 1024 * 1024]).unwrap();
        let fifo =
            std::ffi::CString::new(root.path().join("Odd/pipe.lua").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path and a mode; mkfifo only creates the file.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let report = check(root.path(), None).unwrap();
        let messages: Vec<&str> = report.problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("Odd/big.lua: file larger than")),
            "{messages:?}"
        );
        assert!(
            messages.contains(&"Odd/pipe.lua: not a regular file"),
            "{messages:?}"
        );
    }

    #[test]
    fn a_name_no_client_can_call_is_reported() {
        let root = tempfile::tempdir().unwrap();
        project(root.path(), "My Game", &[("main.lua", "return core.api()")]);
        let report = check(root.path(), None).unwrap();
        assert_eq!(report.problems.len(), 1);
        assert!(report.problems[0].message.contains("letters, digits"));
    }
}
