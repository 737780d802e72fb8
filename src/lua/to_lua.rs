//! Rust data → a Lua value, through serde and the C API: a [`Serializer`] that pushes onto the
//! Lua stack. It writes user records and decoded JSON without an intermediate tree and without an
//! mlua `Value` (a registry reference) per field. `nil` fields are left out of tables (setting a
//! key to nil is no key), sequences get mlua's array metatable (so they encode back as arrays,
//! even empty), and nesting deeper than [`MAX_DEPTH`] is an error. JSON text streams straight
//! from the parser onto the stack ([`json_text_to_lua`]): no tree in Rust's heap, outside the
//! state's memory limit, and the running request's CPU budget looked at as it goes.

use std::ffi::c_int;
use std::fmt;

use mlua::{Lua, LuaSerdeExt, Value, ffi};
use serde::Serialize;
use serde::ser::{self, Impossible};

use super::budget::{Meter, OverBudget, Paced};
use super::convert::{ConvertError, MAX_DEPTH};

/// `value` as a Lua value.
pub fn to_lua(lua: &Lua, value: &impl Serialize) -> mlua::Result<Value> {
    push_with(lua, None, |pusher| value.serialize(pusher)).map_err(|e| match e {
        Pushed::Lua(e) => e,
        Pushed::Refused(e) => mlua::Error::runtime(e),
    })
}

/// JSON text as a Lua value (`core.json.decode`), under `meter`'s budget.
pub fn json_text_to_lua(lua: &Lua, text: &[u8], meter: &Meter) -> Result<Value, Pushed> {
    push_with(lua, Some(meter), |pusher| {
        let mut parser = serde_json::Deserializer::from_slice(text);
        serde_transcode::transcode(&mut parser, pusher)?;
        parser.end().map_err(|e| PushError::Invalid(e.to_string()))
    })
}

/// Why a push made no value.
#[derive(Debug, thiserror::Error)]
pub enum Pushed {
    #[error(transparent)]
    Refused(PushError),
    #[error(transparent)]
    Lua(#[from] mlua::Error),
}

/// Runs `push` with a [`Pusher`] on a fresh stack and returns what it left on top.
fn push_with(
    lua: &Lua,
    meter: Option<&Meter>,
    push: impl FnOnce(Pusher<'_>) -> Result<(), PushError>,
) -> Result<Value, Pushed> {
    let mut failure = None;
    let paced = Paced::new(meter);
    // SAFETY: the closure runs in a protected call with the array metatable at 1 (where
    // `ARRAY_METATABLE` says). A failed allocation raises a Lua error: this Luau build raises
    // errors as C++ exceptions, which unwind through the closure's frames (mlua's `C-unwind`
    // callbacks; Rust runs their destructors) to the protected call. The unit tests raise such
    // errors mid-push and keep using the state.
    let pushed = unsafe {
        lua.exec_raw::<Value>(lua.array_metatable(), |state| {
            let pusher = Pusher {
                state,
                depth: 0,
                paced: &paced,
            };
            match push(pusher) {
                Ok(()) => ffi::lua_replace(state, 1),
                Err(e) => {
                    failure = Some(e);
                    ffi::lua_settop(state, 0);
                }
            }
        })?
    };
    match failure {
        Some(e) => Err(Pushed::Refused(e)),
        None => Ok(pushed),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The data cannot be a Lua value (nested too deep, an enum with data).
    #[error("{0}")]
    Refused(String),
    /// The text is not JSON (what the parser said).
    #[error("invalid JSON: {0}")]
    Invalid(String),
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

impl ser::Error for PushError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        PushError::Invalid(msg.to_string())
    }
}

/// Pushes one value; `depth` counts the tables around it.
///
/// Its safe methods call the Lua C API on `state`. That is sound because of where a `Pusher` can
/// be: its fields are private to this module, only [`push_with`] makes one, and the closure it is
/// handed to is generic over the `Pusher`'s lifetime, so no `Pusher` (nor a copy) outlives the
/// protected call. Inside it, `state` is the running stack, slot 1 holds the array metatable,
/// and every table level has made room for the few slots it pushes (`table`).
#[derive(Clone, Copy)]
struct Pusher<'a> {
    state: *mut ffi::lua_State,
    depth: usize,
    /// The budget looked at while pushing (`None` for host-sized data).
    paced: &'a Paced<'a>,
}

/// Where the array metatable sits (see [`to_lua`]).
const ARRAY_METATABLE: c_int = 1;

impl<'a> Pusher<'a> {
    fn push_str(self, s: &str) {
        self.push_bytes(s.as_bytes());
    }

    fn push_bytes(self, bytes: &[u8]) {
        // An empty slice's pointer dangles; hand Lua a real one.
        let ptr = if bytes.is_empty() {
            c"".as_ptr()
        } else {
            bytes.as_ptr().cast()
        };
        // SAFETY: a live stack with room (see `Pusher`); Lua copies `len` bytes from `ptr`.
        // Interning may allocate: a failure raises a Lua error, caught by the protected call.
        unsafe { ffi::lua_pushlstring_(self.state, ptr, bytes.len()) };
    }

    fn number(self, n: f64) -> Result<(), PushError> {
        self.tick()?;
        // SAFETY: a live stack with room (see `Pusher`); pushing a number never allocates.
        unsafe { ffi::lua_pushnumber(self.state, n) };
        Ok(())
    }

    /// Counts a value against the budget, when there is one.
    fn tick(self) -> Result<(), PushError> {
        Ok(self.paced.step()?)
    }

    /// Pushes a new table for a compound value; its entries go one level deeper.
    fn table(self, array: usize, fields: usize) -> Result<Table<'a>, PushError> {
        self.tick()?;
        // SAFETY: makes room for this level's pushes (the table, a key, a value, one spare); a
        // failed allocation raises a Lua error, caught by the protected call.
        if self.depth >= MAX_DEPTH || unsafe { ffi::lua_checkstack(self.state, 4) } == 0 {
            return Err(PushError::Refused(ConvertError::TooDeep.to_string()));
        }
        let clamp = |n: usize| c_int::try_from(n).unwrap_or(0);
        // SAFETY: room was made above; the size hints are only hints.
        unsafe { ffi::lua_createtable(self.state, clamp(array), clamp(fields)) };
        Ok(Table {
            inner: Pusher {
                depth: self.depth + 1,
                ..self
            },
            next_index: 1,
        })
    }
}

/// A table being filled: the top of the stack while its entries are pushed.
struct Table<'a> {
    inner: Pusher<'a>,
    next_index: c_int,
}

impl Table<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PushError> {
        value.serialize(self.inner)?;
        // SAFETY: the element's value is on top and this table just below it (a value pushes
        // exactly one slot); the raw set pops the value and runs no metamethod.
        unsafe { ffi::lua_rawseti_(self.inner.state, -2, self.next_index) };
        self.next_index += 1;
        Ok(())
    }

    fn end_array(self) -> Result<(), PushError> {
        // SAFETY: this table is on top; the array metatable at its fixed slot is pushed and
        // then set (which pops it).
        unsafe {
            ffi::lua_pushvalue(self.inner.state, ARRAY_METATABLE);
            ffi::lua_setmetatable(self.inner.state, -2);
        }
        Ok(())
    }

    /// Sets the key and value on top of the stack, or drops both when the value is nil.
    fn set_pair(&mut self) {
        let state = self.inner.state;
        // SAFETY: a key and its value are on top of this table (each pushed one slot); both are
        // popped, by the raw set or explicitly.
        unsafe {
            if ffi::lua_type(state, -1) == ffi::LUA_TNIL {
                ffi::lua_pop(state, 2);
            } else {
                ffi::lua_rawset(state, -3);
            }
        }
    }
}

impl ser::SerializeSeq for Table<'_> {
    type Ok = ();
    type Error = PushError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PushError> {
        self.element(value)
    }
    fn end(self) -> Result<(), PushError> {
        self.end_array()
    }
}

impl ser::SerializeTuple for Table<'_> {
    type Ok = ();
    type Error = PushError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PushError> {
        self.element(value)
    }
    fn end(self) -> Result<(), PushError> {
        self.end_array()
    }
}

impl ser::SerializeTupleStruct for Table<'_> {
    type Ok = ();
    type Error = PushError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PushError> {
        self.element(value)
    }
    fn end(self) -> Result<(), PushError> {
        self.end_array()
    }
}

impl ser::SerializeMap for Table<'_> {
    type Ok = ();
    type Error = PushError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), PushError> {
        key.serialize(self.inner)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PushError> {
        value.serialize(self.inner)?;
        self.set_pair();
        Ok(())
    }
    fn end(self) -> Result<(), PushError> {
        Ok(())
    }
}

impl ser::SerializeStruct for Table<'_> {
    type Ok = ();
    type Error = PushError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), PushError> {
        self.inner.push_str(key);
        value.serialize(self.inner)?;
        self.set_pair();
        Ok(())
    }
    fn end(self) -> Result<(), PushError> {
        Ok(())
    }
}

impl<'a> ser::Serializer for Pusher<'a> {
    type Ok = ();
    type Error = PushError;
    type SerializeSeq = Table<'a>;
    type SerializeTuple = Table<'a>;
    type SerializeTupleStruct = Table<'a>;
    type SerializeTupleVariant = Impossible<(), PushError>;
    type SerializeMap = Table<'a>;
    type SerializeStruct = Table<'a>;
    type SerializeStructVariant = Impossible<(), PushError>;

    fn serialize_bool(self, v: bool) -> Result<(), PushError> {
        self.tick()?;
        // SAFETY: a live stack with room (see `Pusher`); never allocates.
        unsafe { ffi::lua_pushboolean(self.state, c_int::from(v)) };
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), PushError> {
        self.number(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), PushError> {
        self.number(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), PushError> {
        self.number(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), PushError> {
        self.number(v as f64)
    }
    fn serialize_u8(self, v: u8) -> Result<(), PushError> {
        self.number(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), PushError> {
        self.number(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), PushError> {
        self.number(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), PushError> {
        self.number(v as f64)
    }
    fn serialize_f32(self, v: f32) -> Result<(), PushError> {
        self.number(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), PushError> {
        self.number(v)
    }
    fn serialize_char(self, v: char) -> Result<(), PushError> {
        self.push_str(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), PushError> {
        self.tick()?;
        self.push_str(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), PushError> {
        self.push_bytes(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), PushError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), PushError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), PushError> {
        self.tick()?;
        // SAFETY: a live stack with room (see `Pusher`); never allocates.
        unsafe { ffi::lua_pushnil(self.state) };
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), PushError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), PushError> {
        self.push_str(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), PushError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _value: &T,
    ) -> Result<(), PushError> {
        Err(PushError::Refused(format!(
            "cannot convert {name}::{variant} to Lua"
        )))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Table<'a>, PushError> {
        self.table(len.unwrap_or(0), 0)
    }
    fn serialize_tuple(self, len: usize) -> Result<Table<'a>, PushError> {
        self.table(len, 0)
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Table<'a>, PushError> {
        self.table(len, 0)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, PushError> {
        Err(PushError::Refused(format!(
            "cannot convert {name}::{variant} to Lua"
        )))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Table<'a>, PushError> {
        self.table(0, len.unwrap_or(0))
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Table<'a>, PushError> {
        self.table(0, len)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, PushError> {
        Err(PushError::Refused(format!(
            "cannot convert {name}::{variant} to Lua"
        )))
    }
}

#[cfg(test)]
mod tests {
    use crate::lua::fuzzing::{json_round_trip, new_state};

    /// Found by the `json_round_trip` and `lua_to_json` fuzz targets: parsing floats in
    /// serde_json's default best-effort precision moved them by one unit in the last place.
    #[test]
    fn numbers_come_back_exactly() {
        let lua = new_state();
        for text in [
            "[1111111807199704254993,0.3,0.1]",
            "2.7522655208262567e-298",
            "[9007199254740993,1e300,-0.0,5e-324]",
        ] {
            let once = json_round_trip(&lua, text.as_bytes()).expect(text);
            let twice = json_round_trip(&lua, once.as_bytes()).expect(text);
            assert_eq!(once, twice, "{text}");
        }
        assert_eq!(
            json_round_trip(&lua, b"2.7522655208262567e-298").as_deref(),
            Some("2.7522655208262567e-298")
        );
    }
}
