//! The sandbox, the Lua 5.1 names old code uses, and the small `core` utilities.

use crate::common::{TestDb, assert_ok, coronium, run_lua, scratch_dir};

#[tokio::test]
async fn the_sandbox_keeps_files_processes_and_debug_out() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "sandbox.lua",
        r#"
print(io, os.execute, os.remove, os.getenv, require, dofile, loadfile, load)
print(debug.getinfo, debug.info, type(debug.traceback))
print(pcall(function() string.len = nil end))
print(pcall(function() core.users.get = nil end))
x_global = 42
print(x_global, type(os.time()), type(os.clock()))
"#,
    );
    assert_ok(&run);
    let lines = run.lines();
    assert_eq!(lines[0], "nil\tnil\tnil\tnil\tnil\tnil\tnil\tnil");
    assert_eq!(lines[1], "nil\tnil\tfunction");
    assert!(
        lines[2].starts_with("false\t") && lines[2].contains("readonly"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("false\t") && lines[3].contains("readonly"),
        "{}",
        lines[3]
    );
    assert_eq!(lines[4], "42\tnumber\tnumber");
}

#[tokio::test]
async fn lua_5_1_names_that_coronium_code_uses() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "compat.lua",
        r##"
print(4 / 2, 10 / 4, 2^53)
print(unpack({1, 2, 3}))
print(table.getn({1, 2, 3}), table.maxn({[1] = 1, [7] = 2}), math.mod(7, 3), math.pow(2, 10))
print(loadstring("return 1 + 1")())
for w in string.gfind("a b", "%a") do io_unused = w end
print(io_unused)
local env = setmetatable({}, {__index = _G})
local f = loadstring("y = 5 return y")
setfenv(f, env)
print(f(), env.y, getfenv(f) == env)
print(select("#", unpack({1, nil, 3}, 1, 3)), string.format("%d items", 3))
"##,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "2\t2.5\t9007199254740992",
            "1\t2\t3",
            "3\t7\t1\t1024",
            "2",
            "b",
            "5\t5\ttrue",
            "3\t3 items",
        ]
    );
}

#[tokio::test]
async fn core_utilities() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "utils.lua",
        r#"
print(core.md5("abcd1234"), core.sf("%s-%03d", "x", 7))
print("[" .. core.trim("  a b \t\n") .. "]")
print(table.concat(core.split("a,b,,c", ","), "|"), table.concat(core.split("  one two  "), "|"))
local id = core.uuid()
print(#id, id:match("^%x+%-%x+%-4%x+%-%x+%-%x+$") ~= nil, id ~= core.uuid())
print(core.NULL, core.users.NULL, core.FACEBOOK, core.GOOGLE, core.OPENUDID)
local t0 = os.clock()
core.sleep(0.05)
core.sleep(-1)
print("slept")
core.debug({b = {1, "two"}, a = true})
core.log("to the log", 1, nil)
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "e19d5cd5af0378da05f63f891c7467af\tx-007",
            "[a b]",
            "a|b||c\tone|two",
            "36\ttrue\ttrue",
            "_NULL\t_NULL\tfacebook\tgoogle\topenudid",
            "slept",
            "{",
            "  a = true,",
            "  b = {",
            "    [1] = 1,",
            "    [2] = \"two\",",
            "  },",
            "}",
        ]
    );
}

#[tokio::test]
async fn json_round_trips_and_refuses_what_it_cannot_encode() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "json.lua",
        r#"
print(core.json.encode({n = 3, f = 1.5, big = 2^40, s = "x", t = true}))
print(core.json.encode({1, 2, 3}), core.json.encode({}), core.json.encode({a = {}}))
local v = core.json.decode('{"arr":[],"n":null,"obj":{},"nums":[1,2.5,"x"]}')
print(v.n, #v.arr, core.json.encode(v.arr), core.json.encode(v.obj), v.nums[2])
print(core.json.encode(core.json.decode('{"arr":[],"obj":{}}')))
print(core.json.decode("{nope"))
print(core.json.encode({f = print}))
local t = {}
t.self = t
print(core.json.encode(t))
print(core.json.encode({x = 0/0}))
print(core.json.encode({[1] = "a", ["1"] = "b", [2.5] = true}))
print(core.json.decode(string.rep("[", 70) .. string.rep("]", 70)))
print(#core.json.decode(string.rep("[", 60) .. string.rep("]", 60)))
"#,
    );
    assert_ok(&run);
    let lines = run.lines();
    assert_eq!(
        lines[0],
        r#"{"big":1099511627776,"f":1.5,"n":3,"s":"x","t":true}"#
    );
    assert_eq!(lines[1], "[1,2,3]\t{}\t{\"a\":{}}");
    assert_eq!(lines[2], "nil\t0\t[]\t{}\t2.5");
    assert_eq!(lines[3], r#"{"arr":[],"obj":{}}"#);
    assert!(lines[4].starts_with("nil\tinvalid JSON:"), "{}", lines[4]);
    assert_eq!(lines[5], "nil\tcannot encode a function value as JSON");
    assert!(
        lines[6].starts_with("nil\ttables nested deeper than 64"),
        "{}",
        lines[6]
    );
    assert!(
        lines[7].starts_with("nil\tcannot encode NaN"),
        "{}",
        lines[7]
    );
    // Keys become text: one key per text (the later one in the walk), still in order.
    assert_eq!(lines[8], r#"{"1":"b","2.5":true}"#);
    // Decoding is bounded the same way.
    assert!(
        lines[9].starts_with("nil\t") && lines[9].contains("tables nested deeper than 64"),
        "{}",
        lines[9]
    );
    assert_eq!(lines[10], "1");
}

#[tokio::test]
async fn a_memory_bomb_is_a_lua_error_not_a_crash() {
    let db = TestDb::new().await;
    let dir = scratch_dir("bomb");
    let script = dir.join("bomb.lua");
    std::fs::write(
        &script,
        r#"
local ok, err = pcall(function()
  local t = {}
  for i = 1, 1e9 do t[i] = string.rep("x", 1024) .. i end
end)
print(ok, tostring(err):find("memory") ~= nil)
collectgarbage("count")
print("still running")
"#,
    )
    .unwrap();
    let out = coronium(Some(&db))
        .env("CORONIUM_LUA_MEMORY_LIMIT_MB", "16")
        .arg("run")
        .arg(&script)
        .output()
        .unwrap();
    let run = crate::common::Run::from(out);
    assert_ok(&run);
    assert_eq!(run.lines(), ["false\ttrue", "still running"]);
}

#[tokio::test]
async fn scripts_own_coroutines_can_wait_on_the_database() {
    let db = TestDb::new().await;
    let run = run_lua(
        &db,
        "coroutines.lua",
        r#"
local id = core.users.create({username = "co", password = "p"})
local fetch = coroutine.wrap(function()
  local user = core.users.get(id)
  coroutine.yield(user.username)
  core.sleep(0.001)
  return select(2, core.users.get("289bc36e-0df7-44df-99b1-a6543c6f45eb"))
end)
print(fetch())
print(fetch())
local co = coroutine.create(function(a) core.sleep(0.001) return a * 2 end)
print(coroutine.resume(co, 21))
print(coroutine.status(co))
print(pcall(coroutine.wrap(function() core.sleep(0.001) error("inner", 0) end)))
"#,
    );
    assert_ok(&run);
    assert_eq!(
        run.lines(),
        [
            "co",
            "User not found.\t604",
            "true\t42",
            "dead",
            "false\tinner"
        ]
    );
}
