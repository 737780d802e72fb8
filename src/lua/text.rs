//! String functions in linear time, for what Luau's C library would do in quadratic time or
//! without the CPU budget's reach: `core.trim`, `core.split` and plain `string.find`.

use mlua::{Lua, LuaString, Table};

use super::budget::{Meter, Paced};

/// Lua's `%s` (C's `isspace` in the "C" locale).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// `s` without leading and trailing `%s`.
pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| !is_space(b));
    match start {
        None => &[],
        Some(start) => {
            let end = bytes
                .iter()
                .rposition(|&b| !is_space(b))
                .map_or(start, |e| e + 1);
            &bytes[start..end]
        }
    }
}

/// The pieces of `bytes`: between occurrences of `sep` (empty pieces kept), or the runs of
/// non-space bytes when `sep` is empty. Lazy, so a caller can stop early.
pub(crate) fn split<'a>(bytes: &'a [u8], sep: &'a [u8]) -> Box<dyn Iterator<Item = &'a [u8]> + 'a> {
    if sep.is_empty() {
        return Box::new(
            bytes
                .split(|&b| is_space(b))
                .filter(|word| !word.is_empty()),
        );
    }
    let mut start = 0;
    let mut occurrences = memchr::memmem::find_iter(bytes, sep);
    let mut done = false;
    Box::new(std::iter::from_fn(move || {
        if done {
            return None;
        }
        // Occurrences overlap when `sep` does ("aa" in "aaa"); a piece starts after the last.
        for at in occurrences.by_ref() {
            if at >= start {
                let piece = &bytes[start..at];
                start = at + sep.len();
                return Some(piece);
            }
        }
        done = true;
        Some(&bytes[start..])
    }))
}

/// Where plain `needle` first occurs in `haystack` from `init` (1-based, negative counts from
/// the end), as `string.find` answers: 1-based first and last positions.
pub(crate) fn find_plain(haystack: &[u8], needle: &[u8], init: i64) -> Option<(usize, usize)> {
    let len = haystack.len() as i64;
    let init = if init >= 0 {
        init
    } else if -init > len {
        0
    } else {
        len + init + 1
    }
    .max(1);
    if init > len + 1 {
        return None;
    }
    let from = (init - 1) as usize;
    let at = from + memchr::memmem::find(&haystack[from..], needle)?;
    Some((at + 1, at + needle.len()))
}

/// How a split reads its separator.
#[derive(Clone, Copy)]
pub(crate) enum Separator {
    /// `core.split`: none or empty means words.
    Core,
    /// Luau's `string.split`: none means `","`, empty means every byte.
    Luau,
}

/// A split as a Lua sequence.
pub(crate) fn split_table(
    lua: &Lua,
    meter: &Meter,
    s: &LuaString,
    sep: Option<&LuaString>,
    form: Separator,
) -> mlua::Result<Table> {
    let bytes = s.as_bytes();
    let sep = sep.map(|sep| sep.as_bytes());
    let sep: &[u8] = match (&sep, form) {
        (None, Separator::Luau) => b",",
        (None, Separator::Core) => b"",
        (Some(sep), _) => sep,
    };
    let pieces = match form {
        Separator::Luau if sep.is_empty() => Box::new(bytes.chunks(1)),
        _ => split(&bytes, sep),
    };
    let table = lua.create_table()?;
    let paced = Paced::new(Some(meter));
    for (i, piece) in pieces.enumerate() {
        paced.step().map_err(mlua::Error::runtime)?;
        table.raw_set(i + 1, lua.create_string(piece)?)?;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_lua_whitespace_only() {
        assert_eq!(trim(b"  a b \t\r\n"), b"a b");
        assert_eq!(trim(b" \x0b\x0c "), b"");
        assert_eq!(trim(b""), b"");
        assert_eq!(trim(b"\xc2\xa0x\xc2\xa0"), b"\xc2\xa0x\xc2\xa0");
    }

    #[test]
    fn splits_like_the_lua_version_did() {
        let pieces = |s: &'static [u8], sep: &'static [u8]| split(s, sep).collect::<Vec<_>>();
        assert_eq!(pieces(b"a,,b,", b","), [&b"a"[..], b"", b"b", b""]);
        assert_eq!(pieces(b"", b","), [&b""[..]]);
        assert_eq!(pieces(b"aaa", b"aa"), [&b""[..], b"a"]);
        assert_eq!(
            pieces(b"  one two\tthree ", b""),
            [&b"one"[..], b"two", b"three"]
        );
        assert!(pieces(b"   ", b"").is_empty());
    }

    #[test]
    fn finds_as_string_find_does() {
        assert_eq!(find_plain(b"hello", b"l", 1), Some((3, 3)));
        assert_eq!(find_plain(b"hello", b"l", 4), Some((4, 4)));
        assert_eq!(find_plain(b"hello", b"l", -1), None);
        assert_eq!(find_plain(b"hello", b"lo", -2), Some((4, 5)));
        assert_eq!(find_plain(b"hello", b"", 6), Some((6, 5)));
        assert_eq!(find_plain(b"hello", b"", 7), None);
        assert_eq!(find_plain(b"hello", b"h", -100), Some((1, 1)));
        assert_eq!(find_plain(b"a.b", b".", 1), Some((2, 2)));
    }
}
