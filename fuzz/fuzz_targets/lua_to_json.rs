//! Lua values built from the input (any keys, numbers JSON cannot hold, cycles, functions, the
//! array metatable, deep nesting) → JSON: nothing crashes, what we write is JSON, and it decodes
//! and encodes back to the same text (with nulls, which decode to nil: the same after one trip).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlua::{Lua, LuaSerdeExt, Table, Value};

use coronium::lua::fuzzing::{encode, encode_marked, json_round_trip, new_state};

thread_local! {
    static LUA: Lua = new_state();
    static INPUTS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Reads a value from `bytes`; `tables` holds those made so far (for cycles and sharing).
fn build(lua: &Lua, bytes: &mut &[u8], depth: usize, tables: &mut Vec<Table>) -> Value {
    let Some((&op, rest)) = bytes.split_first() else {
        return Value::Nil;
    };
    *bytes = rest;
    let mut take = |n: usize| {
        let n = n.min(bytes.len());
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        head
    };
    match op % 12 {
        0 => Value::Nil,
        1 => Value::Boolean(op & 0x10 != 0),
        2 => {
            let mut raw = [0u8; 8];
            let head = take(8);
            raw[..head.len()].copy_from_slice(head);
            Value::Number(f64::from_le_bytes(raw))
        }
        3 => Value::Number(f64::from(take(1).first().copied().unwrap_or(0)) - 8.0),
        4 => {
            let len = take(1).first().copied().unwrap_or(0) as usize % 24;
            let text = take(len);
            lua.create_string(text)
                .map(Value::String)
                .unwrap_or(Value::Nil)
        }
        5 | 6 | 7 if depth < 80 => {
            let Ok(table) = lua.create_table() else {
                return Value::Nil;
            };
            tables.push(table.clone());
            let entries = take(1).first().copied().unwrap_or(0) % 8;
            for i in 1..=entries {
                let key = if op % 12 == 7 {
                    Value::Integer(i64::from(i))
                } else {
                    build(lua, bytes, depth + 1, tables)
                };
                let value = build(lua, bytes, depth + 1, tables);
                let _ = table.raw_set(key, value);
            }
            if op & 0x80 != 0 {
                let _ = table.set_metatable(Some(lua.array_metatable()));
            }
            Value::Table(table)
        }
        8 => lua.globals().get::<Value>("print").unwrap_or(Value::Nil),
        9 if !tables.is_empty() => {
            let at = take(1).first().copied().unwrap_or(0) as usize % tables.len();
            Value::Table(tables[at].clone())
        }
        10 => Value::NULL,
        _ => Value::Integer(i64::from(op)),
    }
}

fuzz_target!(|data: &[u8]| {
    LUA.with(|lua| {
        // The tables each input builds are garbage after it; a full collection now and then
        // keeps the state small (and the target fast).
        let inputs = INPUTS.with(|n| {
            n.set(n.get().wrapping_add(1));
            n.get()
        });
        if inputs % 1000 == 0 {
            let _ = lua.gc_collect();
        }
        let mut bytes = data;
        let mut tables = Vec::new();
        let value = build(lua, &mut bytes, 0, &mut tables);
        let _ = encode_marked(lua, &value);
        let Some(text) = encode(lua, &value) else {
            return;
        };
        serde_json::from_str::<serde_json::Value>(&text).expect("encode wrote invalid JSON");
        let again = json_round_trip(lua, text.as_bytes()).expect("our own JSON was refused");
        if text.contains("null") {
            // A null (mlua's null value) decodes to nil, which an array or object drops: the
            // text may shrink once, then holds.
            assert_eq!(
                json_round_trip(lua, again.as_bytes()).as_deref(),
                Some(again.as_str()),
                "a second trip changed our JSON"
            );
        } else {
            assert_eq!(again, text, "our JSON did not come back the same");
        }
    });
});
