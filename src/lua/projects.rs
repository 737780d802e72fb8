//! API projects: `<projects_dir>/<Name>/main.lua` loaded into an environment of its own per
//! project, `require("<Project>.<file>")`, and reloading when a project's files change.
//!
//! Rust keeps only each project's api table and the files it was built from; the environment,
//! the module cache and `require` live in Lua (see `host.new_project` in the prelude), so a
//! reloaded project's old tables are garbage once its last request ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use mlua::{Function, Lua, MultiValue, Table, Value};

use super::budget::Meter;
use super::pending::Pending;
use crate::vitals::Vitals;

/// Largest project file compiled: Luau compiles in C, outside the CPU budget and the state's
/// memory limit (hostile source compiles at about 2 MB/s).
const MAX_SOURCE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("project '{project}' failed to load: {message}")]
    Load { project: String, message: String },
    #[error("cannot require '{module}': {message}")]
    Module { module: String, message: String },
}

impl ProjectError {
    /// What a client may see: the first line (the log gets the traceback too).
    pub fn summary(&self) -> String {
        let text = self.to_string();
        text.lines().next().unwrap_or_default().to_owned()
    }
}

struct Entry {
    api: Table,
    files: Vec<(PathBuf, Stamp)>,
}

pub(crate) struct Projects {
    dir: Option<PathBuf>,
    /// The prelude's `host.new_project`, set once the prelude has run.
    new_project: RefCell<Option<Function>>,
    entries: RefCell<HashMap<String, Entry>>,
    /// Files read while a project loads, before its entry exists.
    loading: RefCell<HashMap<String, Vec<(PathBuf, Stamp)>>>,
    /// Where a project's loading code leaves what it waits for.
    pending: Rc<Pending>,
    /// Loading code runs under the same CPU budget as a request.
    meter: Rc<Meter>,
    /// Where loads are reported (the console's Projects page).
    vitals: Arc<Vitals>,
}

/// The projects under `dir` (folders with a `main.lua`), by name, with their folders; `Err`
/// when `dir` cannot be read.
pub fn project_dirs(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut projects = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.join("main.lua").is_file()
            && let Some(name) = path.file_name()
        {
            projects.push((name.to_string_lossy().into_owned(), path));
        }
    }
    projects.sort();
    Ok(projects)
}

/// A name segment: letters, digits, `_` and `-` (no dots, slashes or `..`).
pub(crate) fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What tells a file changed: its mtime and size (mtimes can be coarser than an edit).
type Stamp = Option<(SystemTime, u64)>;

fn modified(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Projects {
    pub fn new(
        dir: Option<PathBuf>,
        pending: Rc<Pending>,
        meter: Rc<Meter>,
        vitals: Arc<Vitals>,
    ) -> Self {
        Projects {
            dir,
            pending,
            meter,
            vitals,
            new_project: RefCell::new(None),
            entries: RefCell::new(HashMap::new()),
            loading: RefCell::new(HashMap::new()),
        }
    }

    pub fn set_new_project(&self, f: Function) {
        *self.new_project.borrow_mut() = Some(f);
    }

    /// Remembers a file `project` was built from: into the load under way, or (for a module
    /// first required by a request) into the loaded project's entry.
    fn record(&self, project: &str, path: PathBuf) {
        let stamp = (path.clone(), modified(&path));
        if let Some(files) = self.loading.borrow_mut().get_mut(project) {
            files.push(stamp);
        } else if let Some(entry) = self.entries.borrow_mut().get_mut(project) {
            entry.files.push(stamp);
        }
    }

    /// The api table of `name`, loading or reloading it as needed; `None` when there is no such
    /// project.
    pub async fn api(&self, lua: &Lua, name: &str) -> Result<Option<Table>, ProjectError> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        if !valid_segment(name) {
            return Ok(None);
        }
        if let Some(entry) = self.entries.borrow().get(name)
            && entry
                .files
                .iter()
                .all(|(path, stamp)| modified(path) == *stamp)
        {
            return Ok(Some(entry.api.clone()));
        }
        let main = dir.join(name).join("main.lua");
        if !main.is_file() {
            self.entries.borrow_mut().remove(name);
            return Ok(None);
        }
        let loaded = self.load(lua, name, main).await;
        match &loaded {
            Ok(_) => {
                tracing::info!(project = name, "loaded API project");
                self.vitals.project_loaded(name);
            }
            Err(e) => self.vitals.project_failed(name, &e.to_string()),
        }
        loaded.map(Some)
    }

    /// Compiles and runs `name`'s `main.lua`, keeping the api table it returns.
    async fn load(&self, lua: &Lua, name: &str, main: PathBuf) -> Result<Table, ProjectError> {
        let load_err = |message: String| ProjectError::Load {
            project: name.to_owned(),
            message,
        };
        let source = read_source(&main).map_err(load_err)?;
        self.loading
            .borrow_mut()
            .insert(name.to_owned(), Vec::new());
        self.record(name, main.clone());
        let new_project = self
            .new_project
            .borrow()
            .clone()
            .ok_or_else(|| load_err("the runtime is not ready".into()))?;
        let loaded = async {
            let (env, seal): (Table, Function) = new_project.call(name)?;
            let chunk = lua
                .load(source)
                .set_name(format!("@{name}/main.lua"))
                .set_environment(env)
                .into_function()?;
            let thread = lua.create_thread(chunk)?;
            let mut budget = self.meter.budget_for(&thread);
            let returned = super::pending::drive(
                lua,
                &self.pending,
                &thread,
                MultiValue::new(),
                budget.as_mut(),
            )
            .await?;
            let api = returned.into_iter().next().unwrap_or(Value::Nil);
            if let Value::Table(api) = &api {
                seal.call::<()>(api)?;
            }
            Ok::<_, mlua::Error>(api)
        }
        .await;
        let files = self.loading.borrow_mut().remove(name).unwrap_or_default();
        let api = match loaded {
            Ok(Value::Table(api)) => api,
            Ok(other) => {
                return Err(load_err(format!(
                    "main.lua must return the table made by core.api(), not a {}",
                    other.type_name()
                )));
            }
            Err(e) => return Err(load_err(super::describe(&e))),
        };
        self.entries.borrow_mut().insert(
            name.to_owned(),
            Entry {
                api: api.clone(),
                files,
            },
        );
        Ok(api)
    }

    /// Reads the file of `require("<Project>.<file>")` for `project`; returns the source and
    /// its chunk name.
    pub fn read_module(
        &self,
        project: &str,
        module: &str,
    ) -> Result<(String, String), ProjectError> {
        let fail = |message: &str| ProjectError::Module {
            module: module.to_owned(),
            message: message.to_owned(),
        };
        let dir = self
            .dir
            .as_ref()
            .ok_or_else(|| fail("no projects directory"))?;
        let segments: Vec<&str> = module.split('.').collect();
        if segments.len() < 2 || !segments.iter().all(|s| valid_segment(s)) {
            return Err(fail("module names look like \"<Project>.<file>\""));
        }
        if segments[0] != project {
            return Err(fail(&format!(
                "project '{project}' can require only its own files (\"{project}.<file>\")"
            )));
        }
        let relative = format!("{}.lua", segments.join("/"));
        let path = dir.join(&relative);
        // A link inside the project may not lead out of it.
        let inside = match (path.canonicalize(), dir.join(project).canonicalize()) {
            (Ok(file), Ok(root)) => file.starts_with(root),
            _ => false,
        };
        if !inside {
            return Err(fail(&format!("{relative}: no such file in the project")));
        }
        let source = read_source(&path).map_err(|e| fail(&format!("{relative}: {e}")))?;
        self.record(project, path);
        Ok((source, format!("@{relative}")))
    }
}

/// A project file's text, refused past [`MAX_SOURCE_BYTES`].
pub(crate) fn read_source(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    // A FIFO or a device would block or never end the read, on the worker's thread.
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let size = meta.len();
    if size > MAX_SOURCE_BYTES {
        return Err(format!(
            "file larger than {} KiB ({size} bytes)",
            MAX_SOURCE_BYTES / 1024
        ));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}
