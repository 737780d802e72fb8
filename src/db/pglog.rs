//! The embedded PostgreSQL's log: its output, read through pipes and written to
//! `postgres.log` with every line cut to [`MAX_LINE_BYTES`] and the file rotated by size
//! (`postgres.log.1`, `.2`), so no flood of failing statements a client can cause fills the
//! disk: the files together stay under `(KEEP + 1) × ROTATE_AT` plus one line.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The longest line kept; the rest of a longer one is dropped.
pub const MAX_LINE_BYTES: usize = 2048;
/// The size at which `postgres.log` is renamed to `postgres.log.1`.
pub const ROTATE_AT: u64 = 10 * 1024 * 1024;
/// Rotated files kept beside the current one.
pub const KEEP: usize = 2;

/// `postgres.log` and its rotated files.
pub struct RotatingLog {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    rotate_at: u64,
}

impl RotatingLog {
    /// Appends to `path` (made if missing).
    pub fn open(path: &Path, rotate_at: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_owned(),
            file: Some(file),
            written,
            rotate_at,
        })
    }

    /// Writes one line (cut already), rotating first when the file is full. A write that fails
    /// (a full disk) loses the line, never blocks PostgreSQL.
    fn write_line(&mut self, line: &[u8]) {
        if self.written >= self.rotate_at {
            self.rotate();
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if file
            .write_all(line)
            .and_then(|()| file.write_all(b"\n"))
            .is_ok()
        {
            self.written += line.len() as u64 + 1;
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let rotated = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..KEEP).rev() {
            let _ = fs::rename(rotated(n), rotated(n + 1));
        }
        let _ = fs::rename(&self.path, rotated(1));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.written = 0;
    }
}

/// Copies `output` line by line into `log` on a thread of its own until the pipe closes (the
/// process and every backend that inherited it have exited).
pub fn copy_into(output: impl Read + Send + 'static, log: Arc<Mutex<RotatingLog>>) {
    let spawned = std::thread::Builder::new()
        .name("postgres-log".into())
        .spawn(move || {
            let mut reader = BufReader::new(output);
            let mut line = Vec::with_capacity(256);
            while read_cut_line(&mut reader, &mut line).unwrap_or(false) {
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_line(&line);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the thread that keeps PostgreSQL's log");
    }
}

/// Reads the next line into `line`, keeping at most [`MAX_LINE_BYTES`] of it (and never holding
/// more); false at the end of the output.
fn read_cut_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<bool> {
    line.clear();
    let mut any = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(any);
        }
        any = true;
        let (chunk, ends) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (&buf[..at], Some(at + 1)),
            None => (buf, None),
        };
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = ends.unwrap_or(buf.len());
        reader.consume(used);
        if ends.is_some() {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_and_the_files_stay_under_their_cap() {
        let dir = std::env::temp_dir().join(format!("pglog-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("postgres.log");
        let log = Arc::new(Mutex::new(RotatingLog::open(&path, 64 * 1024).unwrap()));
        // 2 MB of output: short lines and lines of 100 KB.
        let mut output = Vec::new();
        for i in 0..200 {
            output.extend_from_slice(format!("ERROR: line {i}\n").as_bytes());
            output.extend(std::iter::repeat_n(b'x', 10_000));
            output.push(b'\n');
        }
        output.extend_from_slice(b"last line without newline");
        let (reader, mut writer) = std::io::pipe().unwrap();
        copy_into(reader, log.clone());
        writer.write_all(&output).unwrap();
        drop(writer);
        // The copier ends when the pipe closes; wait for the last line.
        for _ in 0..500 {
            if fs::read_to_string(&path)
                .unwrap_or_default()
                .contains("last line")
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.ends_with("last line without newline\n"));
        let mut total = 0;
        for name in [
            "postgres.log",
            "postgres.log.1",
            "postgres.log.2",
            "postgres.log.3",
        ] {
            let Ok(text) = fs::read_to_string(dir.join(name)) else {
                assert_eq!(name, "postgres.log.3", "only {KEEP} rotated files are kept");
                continue;
            };
            assert!(text.lines().all(|l| l.len() <= MAX_LINE_BYTES));
            total += text.len();
        }
        assert!(
            total <= 3 * 64 * 1024 + MAX_LINE_BYTES + 1,
            "{total} bytes kept"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
