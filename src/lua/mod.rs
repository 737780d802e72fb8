//! Everything that touches mlua: the sandboxed Luau state, the `core` table, conversions.
//! A [`Runtime`] is one Luau state; it is `!Send` and never leaves the thread that made it.

mod budget;
pub mod check;
mod convert;
mod natives;
mod pending;
mod projects;
mod text;
mod to_lua;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use mlua::{
    Function, IntoLuaMulti, Lua, LuaOptions, LuaSerdeExt, MultiValue, StdLib, Table, Value,
};

pub use budget::Pulse;
pub use convert::MAX_DEPTH;

use crate::app::Services;
use crate::status::{ErrorAnswer, Status};

const PRELUDE: &str = include_str!("../../lua/prelude.lua");

/// One entry of [`LUA_FILES`]: its name, its chunk name (as errors show it) and its source.
macro_rules! lua_file {
    ($name:literal, $path:literal) => {
        (
            $name,
            concat!("@lua/", $path),
            include_str!(concat!("../../lua/", $path)),
        )
    };
}
/// The Lua files the prelude runs, each a function of what the prelude passes it: the `core`
/// modules written in Lua (`lua/core/`, each with its Rust half and what the prelude shares,
/// `kernel`) and the host's own (`lua/host/`). A new `core.x` adds its file here and one line in
/// the prelude. (name, chunk name, source)
const LUA_FILES: &[(&str, &str, &str)] = &[
    lua_file!("users", "core/users.lua"),
    lua_file!("util", "core/util.lua"),
    lua_file!("json", "core/json.lua"),
    lua_file!("email", "core/email.lua"),
    lua_file!("guards", "host/guards.lua"),
    lua_file!("lua51", "host/lua51.lua"),
];

/// Where `print` and `core.debug` write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// Into the log (`tracing`), for servers.
    Log,
}

#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// The scope `core.users` acts in when a call names none.
    pub scope: String,
    /// Memory limit of the state, in bytes.
    pub memory_limit: usize,
    pub output: Output,
    /// Where API projects live (servers only).
    pub projects_dir: Option<PathBuf>,
    /// Lua CPU time one request may use; `None` for no limit (scripts).
    pub cpu_budget: Option<Duration>,
    /// Where the state publishes when its running slice started (servers' watchdog).
    pub pulse: Option<std::sync::Arc<Pulse>>,
}

/// How an API project request ended.
#[derive(Debug, Clone)]
pub enum HandlerOutcome {
    /// The handler's result as JSON text, for `{"result": ...}`.
    Result(Box<serde_json::value::RawValue>),
    /// `core.error(...)`, `return nil, err`, no result, or a failure.
    Error(ErrorAnswer),
    UnknownProject,
    UnknownAction,
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A Lua error (syntax or runtime), with its location and traceback.
    #[error("{0}")]
    Lua(String),
}

impl From<mlua::Error> for ScriptError {
    fn from(e: mlua::Error) -> Self {
        ScriptError::Lua(describe(&e))
    }
}

pub use projects::project_dirs;

/// Whether clients can call a project of this name (letters, digits, `_` and `-`).
pub fn valid_project_name(name: &str) -> bool {
    projects::valid_segment(name)
}

/// Renders a Lua error as a person wants to read it: the message with its file:line, then the
/// traceback, without mlua's wrapping noise.
fn describe(error: &mlua::Error) -> String {
    match error {
        mlua::Error::CallbackError { traceback, cause } => {
            let mut text = describe(cause);
            if !text.contains("stack traceback") {
                text.push('\n');
                text.push_str(traceback);
            }
            text
        }
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", describe(cause)),
        mlua::Error::RuntimeError(message) | mlua::Error::SyntaxError { message, .. } => {
            message.clone()
        }
        mlua::Error::MemoryError(message) => format!("out of memory: {message}"),
        other => other.to_string(),
    }
}

/// Per-state host context shared by the native functions.
pub(crate) struct Host {
    pub services: Services,
    pub scope: String,
    pub output: Output,
    pub projects: projects::Projects,
    /// The operation a native left for the coroutine's driver.
    pub pending: Rc<pending::Pending>,
    /// The running request's CPU account, for host functions that can run long.
    pub meter: Rc<budget::Meter>,
}

/// One sandboxed Luau state with `core` installed.
pub struct Runtime {
    lua: Lua,
    host: Rc<Host>,
    /// The prelude's `host.request`: runs one API request in the calling coroutine.
    request: Function,
    /// What the prelude answers, as its error, for a method the project's api lacks.
    no_such_action: Table,
    meter: Rc<budget::Meter>,
    memory_limit: usize,
}

/// What [`Runtime::reclaim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Still near its memory limit after a full collection: what it holds on to (a project's
    /// growing cache, a leak) leaves requests no room. Replace the state.
    Exhausted,
}

impl Runtime {
    pub fn new(services: Services, options: RuntimeOptions) -> Result<Self, ScriptError> {
        // Luau's safe libraries: no io, no os.execute, no file or process access.
        let lua = Lua::new_with(StdLib::ALL_SAFE, LuaOptions::new())?;
        lua.set_memory_limit(options.memory_limit)?;
        let pending = Rc::new(pending::Pending::default());
        let meter = Rc::new(budget::Meter::new(
            options.cpu_budget,
            options.pulse.clone(),
        ));
        let projects = projects::Projects::new(
            options.projects_dir.clone(),
            pending.clone(),
            meter.clone(),
            services.vitals.clone(),
        );
        let host = Rc::new(Host {
            services,
            scope: options.scope,
            output: options.output,
            projects,
            pending,
            meter: meter.clone(),
        });
        let core = lua.create_table()?;
        let native = natives::install(&lua, host.clone())?;
        let no_such_action = lua.create_table()?;
        no_such_action.set_readonly(true);
        native.set("NO_SUCH_ACTION", &no_such_action)?;
        lua.globals().set("core", &core)?;
        let modules = lua.create_table()?;
        for (name, chunk_name, source) in LUA_FILES {
            let module = lua.load(*source).set_name(*chunk_name).into_function()?;
            modules.set(*name, module)?;
        }
        let prelude: Table = lua
            .load(PRELUDE)
            .set_name("@lua/prelude.lua")
            .call((&core, native, modules))?;
        host.projects.set_new_project(prelude.get("new_project")?);
        let request: Function = prelude.get("request")?;
        if meter.is_budgeted() {
            meter.install(&lua, host.pending.clone());
        }
        restrict_globals(&lua)?;
        // The sandbox freezes only the globals' own tables; `core.users` and `core.json` too.
        freeze(&core)?;
        // Every decoded JSON array carries this metatable, in every project.
        lua.array_metatable().set_readonly(true);
        // Libraries, metatables and globals become read-only; a script's global writes stay in
        // its own environment.
        lua.sandbox(true)?;
        if options.projects_dir.is_some() {
            // A server's threads share these globals (a script's would be its own): projects
            // have environments of their own, and nothing may write here.
            lua.globals().set_readonly(true);
        }
        Ok(Runtime {
            lua,
            host,
            request,
            no_such_action,
            meter,
            memory_limit: options.memory_limit,
        })
    }

    /// Collects garbage when the state is near its memory limit, and says whether it has room
    /// left. Luau collects as it allocates, against a goal set after the last cycle: after a
    /// spike that goal can lie beyond the limit, where no allocation reaches it, and the garbage
    /// would stay for good. Cheap when there is room (one comparison).
    pub fn reclaim(&self) -> Health {
        if self.lua.used_memory() <= self.memory_limit / 4 * 3 {
            return Health::Healthy;
        }
        let _ = self.lua.gc_collect();
        if self.lua.used_memory() > self.memory_limit / 10 * 9 {
            Health::Exhausted
        } else {
            Health::Healthy
        }
    }

    /// Runs `project`'s `action` with `input` in `scope`, in a coroutine (and global
    /// environment) of its own, under the CPU budget. `client` is the address the request came
    /// from (what `core.users.login` counts failed attempts against).
    pub async fn handle(
        &self,
        project: &str,
        action: &str,
        input: serde_json::Value,
        scope: &str,
        client: Option<IpAddr>,
    ) -> HandlerOutcome {
        let api = match self.host.projects.api(&self.lua, project).await {
            Ok(Some(api)) => api,
            Ok(None) => return HandlerOutcome::UnknownProject,
            Err(e) => {
                tracing::error!(project, "{e}");
                return HandlerOutcome::Error(ErrorAnswer::new(Status::GENERAL, e.summary()));
            }
        };
        match self
            .run_request(api, project, action, input, scope, client)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                let text = describe(&e);
                tracing::error!(project, action, "handler failed: {text}");
                self.host
                    .services
                    .vitals
                    .handler_failed(project, action, &text);
                let first_line = text.lines().next().unwrap_or("handler failed");
                HandlerOutcome::Error(ErrorAnswer::new(Status::GENERAL, first_line))
            }
        }
    }

    async fn run_request(
        &self,
        api: Table,
        project: &str,
        action: &str,
        input: serde_json::Value,
        scope: &str,
        client: Option<IpAddr>,
    ) -> mlua::Result<HandlerOutcome> {
        let (thread, args) = convert::host_sized(&self.lua, || -> mlua::Result<_> {
            let input = convert::json_to_lua(&self.lua, &input)?;
            let thread = self.lua.create_thread(self.request.clone())?;
            let client = client
                .map(|ip| natives::client_to_lua(&self.lua, ip))
                .transpose()?;
            let args = (api, action, input, scope, project, client).into_lua_multi(&self.lua)?;
            Ok((thread, args))
        })?;
        // Converted: a handler that waits keeps only its Lua copy.
        drop(input);
        // Converted with the limit lifted (see `host_sized`): the input may not leave the state
        // above its limit. Garbage first, then this request gives way.
        if self.lua.used_memory() > self.memory_limit {
            self.lua.gc_collect()?;
            if self.lua.used_memory() > self.memory_limit {
                drop((thread, args));
                self.lua.gc_collect()?;
                return Err(mlua::Error::MemoryError(
                    "the request's input does not fit in the Lua state's memory now".into(),
                ));
            }
        }
        let mut budget = self.meter.budget_for(&thread);
        let results = self.drive(&thread, args, budget.as_mut()).await?;
        let mut results = results.into_iter();
        let result = results.next().unwrap_or(Value::Nil);
        let message = results.next().unwrap_or(Value::Nil);
        let status = results.next().unwrap_or(Value::Nil);
        if let Value::Nil = result {
            if matches!(&message, Value::Table(marker) if *marker == self.no_such_action) {
                return Ok(HandlerOutcome::UnknownAction);
            }
            let status = match status {
                Value::Integer(i) => Status::from_code(i),
                Value::Number(n) => Status::from_code(n as i64),
                _ => Status::DEFAULT,
            };
            let message = message.to_string().unwrap_or_default();
            return Ok(HandlerOutcome::Error(ErrorAnswer::new(status, message)));
        }
        // The result is the handler's to size: encoded under what is left of its budget.
        let encode = || {
            convert::host_sized(&self.lua, || {
                convert::encode(
                    &self.lua,
                    &result,
                    convert::Unencodable::Fail,
                    Some(&self.meter),
                    |v| serde_json::value::to_raw_value(v),
                )
            })
        };
        let json = match budget.as_mut() {
            Some(budget) => budget.run(encode),
            None => encode(),
        };
        if let Err(convert::ConvertError::OverBudget(e)) = &json {
            return Err(mlua::Error::runtime(*e));
        }
        Ok(match json {
            Ok(json) => HandlerOutcome::Result(json),
            Err(e) => HandlerOutcome::Error(ErrorAnswer::new(
                Status::JSON_ENCODE_FAILED,
                format!("JSON encode failed: {e}"),
            )),
        })
    }

    /// Bytes the Lua state holds now (what its memory limit is measured against).
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }

    /// Loads and runs a script file; `print` output goes to the runtime's output.
    pub async fn run_file(&self, path: &Path) -> Result<(), ScriptError> {
        let source = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.run_source(&path.display().to_string(), &source).await
    }

    /// Runs a chunk named `name` (shown in errors as `name:line`).
    pub async fn run_source(&self, name: &str, source: &str) -> Result<(), ScriptError> {
        let chunk = self.load(name, source)?;
        let thread = self.lua.create_thread(chunk)?;
        self.drive(&thread, MultiValue::new(), None).await?;
        Ok(())
    }

    /// Calls a global function with JSON arguments and returns its results as JSON, `nil`
    /// becoming null. Many calls may run at once: each gets its own coroutine.
    pub async fn call(
        &self,
        function: &str,
        args: &[serde_json::Value],
    ) -> Result<Vec<serde_json::Value>, ScriptError> {
        let f: Function = self.lua.globals().get(function)?;
        let args = args
            .iter()
            .map(|a| convert::json_to_lua(&self.lua, a))
            .collect::<mlua::Result<mlua::MultiValue>>()?;
        let thread = self.lua.create_thread(f)?;
        let results = self.drive(&thread, args, None).await?;
        results
            .iter()
            .map(|v| {
                convert::lua_to_json(&self.lua, v, convert::Unencodable::Fail, None)
                    .map_err(|e| ScriptError::Lua(e.to_string()))
            })
            .collect()
    }

    async fn drive(
        &self,
        thread: &mlua::Thread,
        args: MultiValue,
        budget: Option<&mut budget::Budget>,
    ) -> mlua::Result<MultiValue> {
        pending::drive(&self.lua, &self.host.pending, thread, args, budget).await
    }

    fn load(&self, name: &str, source: &str) -> Result<Function, ScriptError> {
        Ok(self
            .lua
            .load(source)
            .set_name(format!("@{name}"))
            .into_function()?)
    }
}

/// Makes a table and the tables it holds read-only.
fn freeze(table: &Table) -> mlua::Result<()> {
    table.set_readonly(true);
    for pair in table.pairs::<Value, Value>() {
        if let (_, Value::Table(inner)) = pair?
            && !inner.is_readonly()
        {
            freeze(&inner)?;
        }
    }
    Ok(())
}

/// Removes what scripts must not reach: `require` (it reads files), and `debug` beyond
/// `debug.traceback`.
fn restrict_globals(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.set("require", Value::Nil)?;
    if let Ok(debug) = globals.get::<Table>("debug") {
        let safe = lua.create_table()?;
        safe.set("traceback", debug.get::<Value>("traceback")?)?;
        globals.set("debug", safe)?;
    }
    Ok(())
}

/// Entry points for the fuzz targets in `fuzz/` (not an API).
#[doc(hidden)]
pub mod fuzzing {
    use mlua::{Lua, Value};

    use super::budget::Meter;
    use super::convert::{self, Unencodable};
    use super::to_lua;

    /// A bare Luau state with the safe libraries and a 256 MiB limit, for a target to reuse.
    pub fn new_state() -> Lua {
        let lua =
            Lua::new_with(mlua::StdLib::ALL_SAFE, mlua::LuaOptions::new()).expect("a Lua state");
        lua.set_memory_limit(256 << 20).expect("a memory limit");
        lua
    }

    /// JSON text → Lua (as `core.json.decode`) → JSON text (as `core.json.encode`); `None`
    /// when either step refuses (invalid JSON, too deep, a number JSON cannot hold).
    pub fn json_round_trip(lua: &Lua, text: &[u8]) -> Option<String> {
        let meter = Meter::default();
        let value = to_lua::json_text_to_lua(lua, text, &meter).ok()?;
        encode(lua, &value)
    }

    /// A Lua value → JSON text (as `core.json.encode`); `None` when refused.
    pub fn encode(lua: &Lua, value: &Value) -> Option<String> {
        convert::encode(lua, value, Unencodable::Fail, None, |v| {
            serde_json::to_string(v)
        })
        .ok()
    }

    /// A Lua value → JSON as `core.users` parameters read it (unencodable values marked).
    pub fn encode_marked(lua: &Lua, value: &Value) -> Option<serde_json::Value> {
        convert::lua_to_json(lua, value, Unencodable::Mark, None).ok()
    }
}
