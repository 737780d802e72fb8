//! What the log needs beyond `tracing`: a writer that keeps every event on one line whatever a
//! client or script put into its values, and a gate that keeps an error a client can repeat at
//! will from flooding the log.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;

/// Standard error for the human format, each event's control characters escaped (`\n` inside
/// an event becomes the two characters `\n`), so no value can start a made-up line. With
/// `ansi`, the colour codes the formatter writes are kept. (The JSON format needs none of this:
/// its strings are escaped as JSON.)
#[derive(Clone, Copy)]
pub struct OneLineStderr {
    pub ansi: bool,
}

impl<'a> MakeWriter<'a> for OneLineStderr {
    type Writer = OneLineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        OneLineWriter { ansi: self.ansi }
    }
}

pub struct OneLineWriter {
    ansi: bool,
}

impl Write for OneLineWriter {
    /// The formatter hands over one whole event, ending in its newline, per write.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr()
            .lock()
            .write_all(&one_line(buf, self.ansi))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `event` with its control characters escaped, but for a final newline (and, with `ansi`,
/// SGR colour sequences: ESC `[` digits and `;` then `m`).
pub fn one_line(event: &[u8], ansi: bool) -> Vec<u8> {
    let (body, newline) = match event.strip_suffix(b"\n") {
        Some(body) => (body, true),
        None => (event, false),
    };
    let mut out = Vec::with_capacity(event.len() + 8);
    let text = String::from_utf8_lossy(body);
    for (at, c) in text.char_indices() {
        match c {
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.push(b'\t'),
            '\u{1b}' if ansi && is_colour(&text[at..]) => out.push(0x1b),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                out.extend_from_slice(format!("\\u{{{:x}}}", c as u32).as_bytes());
            }
            c => {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    if newline {
        out.push(b'\n');
    }
    out
}

/// Whether `text` starts with an SGR sequence (the only escape the formatter writes).
fn is_colour(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("\u{1b}[") else {
        return false;
    };
    let params = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    rest.as_bytes().get(params) == Some(&b'm')
}

/// Lets a few events a second through and counts the rest: for errors a client can cause as
/// often as it likes. `const`-constructible, so each call site keeps a `static` one.
pub struct Gate {
    /// The second (Unix time) that `passed` counts.
    second: AtomicU64,
    passed: AtomicU64,
    held_back: AtomicU64,
}

/// Events a gate lets through per second.
const PER_SECOND: u64 = 5;

impl Gate {
    pub const fn new() -> Self {
        Gate {
            second: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event may be logged, `n` being how many were held back since the
    /// last one that was; `None` when it is held back.
    pub fn pass(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second.swap(now, Ordering::AcqRel) != now {
            self.passed.store(0, Ordering::Release);
        }
        if self.passed.fetch_add(1, Ordering::AcqRel) < PER_SECOND {
            Some(self.held_back.swap(0, Ordering::AcqRel))
        } else {
            self.held_back.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_on_one_line() {
        let forged =
            "INFO lua: hi\n2026-01-01T00:00:00Z ERROR coronium: forged\r\u{1b}[2J\u{0}\u{2028}x\n";
        let out = String::from_utf8(one_line(forged.as_bytes(), false)).unwrap();
        assert_eq!(
            out,
            "INFO lua: hi\\n2026-01-01T00:00:00Z ERROR coronium: forged\\r\\u{1b}[2J\\u{0}\\u{2028}x\n"
        );
        assert_eq!(out.lines().count(), 1);
        // Colours are kept when they are on; any other escape is not.
        let coloured = "\u{1b}[32m INFO\u{1b}[0m hi \u{1b}]0;title\u{7}\n";
        let out = String::from_utf8(one_line(coloured.as_bytes(), true)).unwrap();
        assert_eq!(out, "\u{1b}[32m INFO\u{1b}[0m hi \\u{1b}]0;title\\u{7}\n");
        assert_eq!(one_line("tab\there".as_bytes(), false), b"tab\there");
    }

    #[test]
    fn a_gate_lets_a_few_through_and_counts_the_rest() {
        let gate = Gate::new();
        let passed = (0..100).filter(|_| gate.pass().is_some()).count();
        // Two seconds at most were crossed while counting.
        assert!((5..=10).contains(&passed), "{passed}");
    }
}
