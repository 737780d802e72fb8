//! JSON text → Lua (`core.json.decode`) → JSON text (`core.json.encode`): nothing crashes, what
//! we write is JSON, and our own output makes the same trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlua::Lua;

use coronium::lua::fuzzing::{json_round_trip, new_state};

thread_local! {
    static LUA: Lua = new_state();
}

fuzz_target!(|data: &[u8]| {
    LUA.with(|lua| {
        let Some(first) = json_round_trip(lua, data) else {
            return;
        };
        serde_json::from_str::<serde_json::Value>(&first).expect("encode wrote invalid JSON");
        let second = json_round_trip(lua, first.as_bytes()).expect("our own JSON was refused");
        assert_eq!(first, second, "a second trip changed our own JSON");
    });
});
