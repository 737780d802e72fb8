//! `core`'s small utilities: uuid, md5, sleep, log and the output `print` writes to.

use std::rc::Rc;
use std::time::Duration;

use mlua::{Lua, MultiValue, Table, Value, Variadic};

use super::super::{Host, Output};
use crate::users::password;

pub(super) fn install(lua: &Lua, host: &Rc<Host>) -> mlua::Result<Table> {
    let native = lua.create_table()?;
    native.set(
        "uuid",
        lua.create_function(|_, ()| Ok(uuid::Uuid::new_v4().to_string()))?,
    )?;
    native.set(
        "md5",
        lua.create_function(|_, s: mlua::LuaString| Ok(password::md5_hex(&s.to_string_lossy())))?,
    )?;
    let sleep_host = host.clone();
    native.set(
        "sleep",
        lua.create_function(move |_, seconds: f64| {
            sleep_host.pending.start(async move {
                if seconds.is_finite() && seconds > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                }
                Ok(MultiValue::new())
            });
            Ok(())
        })?,
    )?;
    native.set(
        "log",
        lua.create_function(
            |_, (project, action, args): (Option<String>, Option<String>, Variadic<Value>)| {
                let line = args
                    .iter()
                    .map(|v| v.to_string().unwrap_or_else(|_| v.type_name().to_owned()))
                    .collect::<Vec<_>>()
                    .join(" ");
                log_from(project.as_deref(), action.as_deref(), &line);
                Ok(())
            },
        )?,
    )?;
    let output = host.output;
    native.set(
        "write",
        lua.create_function(
            move |_, (line, project, action): (mlua::LuaString, Option<String>, Option<String>)| {
                let line = line.to_string_lossy();
                match output {
                    Output::Stdout => {
                        use std::io::Write as _;
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                    Output::Log => log_from(project.as_deref(), action.as_deref(), &line),
                }
                Ok(())
            },
        )?,
    )?;
    // Read-only in place (Luau's `table.freeze` refuses tables with a protected metatable).
    Ok(native)
}

/// Longest line a script writes into a server's log: the log is written on the worker's thread,
/// and one `print` of a 200 MB string should not fill the operator's disk.
const MAX_LOG_LINE: usize = 64 * 1024;

/// `line`, cut at [`MAX_LOG_LINE`] bytes (on a character boundary) with a note of the rest.
/// A script's line in the log, naming the project and action whose request wrote it (none: a
/// script or a project loading).
fn log_from(project: Option<&str>, action: Option<&str>, line: &str) {
    match (project, action) {
        (Some(project), Some(action)) => {
            tracing::info!(target: "lua", project, action, "{}", log_line(line));
        }
        (Some(project), None) => tracing::info!(target: "lua", project, "{}", log_line(line)),
        _ => tracing::info!(target: "lua", "{}", log_line(line)),
    }
}

fn log_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_LOG_LINE {
        return line.into();
    }
    let cut = (0..=MAX_LOG_LINE)
        .rev()
        .find(|&at| line.is_char_boundary(at))
        .unwrap_or(0);
    format!("{}... ({} more bytes)", &line[..cut], line.len() - cut).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_log_lines_are_cut_on_a_character_boundary() {
        assert_eq!(log_line("short"), "short");
        let long = format!("{}é{}", "x".repeat(MAX_LOG_LINE - 1), "y".repeat(10));
        let cut = log_line(&long);
        assert!(cut.starts_with(&"x".repeat(MAX_LOG_LINE - 1)));
        assert!(
            cut.ends_with("... (12 more bytes)"),
            "{}",
            &cut[MAX_LOG_LINE - 5..]
        );
    }
}
