//! Attacks on the sandbox through `coronium serve`: a hostile API project next to honest ones,
//! and hostile clients. After each attack the other projects must answer as before, nothing may
//! have leaked or persisted, and the worker must keep answering.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{TestDb, TestServer, scratch_dir, serve_projects, write_project};

const HONEST: &str = r#"
local api = core.api()
local secret = require("Honest.secret")

function api.signup(input)
  local name = core.trim(input.name)
  print("signup", name)
  core.debug(input)
  return { name = name, password = input.password, words = core.split(input.name) }
end
function api.leak()
  return { global = leak, loaded = loadstring("return leak")(), hidden = hidden,
           pwned = rawget(_G, "pwned"), secret = secret.key }
end
function api.call_evil() return core.callApi("Evil", "peek", {}) end
function api.fails() return core.error("honest failure", 42) end
function api.ping() return "pong" end
return api
"#;

const EVIL: &str = r#"
local api = core.api()
local mine = getfenv(1)

-- Every function and table reachable from the globals and the shared metatables.
local function reachable()
  local functions, tables, seen = {}, {}, {}
  local function visit(v, path)
    if seen[v] then return end
    if type(v) == "function" then
      seen[v] = true
      functions[#functions + 1] = { v, path }
    elseif type(v) == "table" then
      seen[v] = true
      tables[#tables + 1] = { v, path }
      for k, x in pairs(v) do visit(x, path .. "." .. tostring(k)) end
      local mt = getmetatable(v)
      if type(mt) == "table" then visit(mt, path .. "<mt>") end
    end
  end
  visit(_G, "_G")
  visit(getmetatable(""), "string<mt>")
  visit(getmetatable(core.error("x")), "error<mt>")
  visit(getmetatable(core.json.decode("[]")), "array<mt>")
  -- A chunk compiled from a C caller runs in the thread's globals, shared by all requests.
  local ok, chunk = pcall(loadstring, "return getfenv(0), getfenv(1)")
  if ok and chunk then
    local zero, one = chunk()
    visit(zero, "thread globals")
    visit(one, "thread globals 1")
  end
  return functions, tables
end

-- What the attacks changed: must stay empty.
function api.attack_shared()
  local functions, tables = reachable()
  local changed = {}
  local evil = setmetatable({}, { __index = _G })
  for _, entry in ipairs(functions) do
    local f, path = entry[1], entry[2]
    if pcall(setfenv, f, evil) then changed[#changed + 1] = "setfenv " .. path end
    local ok, env = pcall(getfenv, f)
    if ok and env ~= _G then changed[#changed + 1] = "getfenv " .. path end
    if ok and pcall(rawset, env, "pwned", true) then changed[#changed + 1] = "env of " .. path end
  end
  for _, entry in ipairs(tables) do
    local t, path = entry[1], entry[2]
    if pcall(rawset, t, "pwned", true) then changed[#changed + 1] = "rawset " .. path end
    if pcall(setmetatable, t, {}) then changed[#changed + 1] = "setmetatable " .. path end
  end
  -- Every level up the stack that runs someone else's code (the server's, C functions).
  for level = 2, 16 do
    pcall(function()
      if getfenv(level) == mine then return end -- Evil's own code: Evil's to change
      setfenv(level, evil)
      changed[#changed + 1] = "level " .. level
    end)
  end
  if pcall(rawset, mine, "leak", "evil") then changed[#changed + 1] = "rawset own env" end
  if getmetatable(mine) ~= false then changed[#changed + 1] = "own env metatable visible" end
  if pcall(function() api.ping = function() return "hijacked" end end) then
    changed[#changed + 1] = "api table"
  end
  local ok, chunk = pcall(loadstring, "hidden = 'evil'")
  if ok and chunk and pcall(chunk) then changed[#changed + 1] = "thread globals" end
  if #functions < 50 or #tables < 10 then changed[#changed + 1] = "walk found too little" end
  return { changed = changed, functions = #functions, tables = #tables }
end

-- The attack from the review: replace the prelude's `invoke` environment for every project.
function api.hijack()
  setfenv(2, setmetatable({}, { __index = _G }))
  return "hijacked"
end

function api.steal_module()
  local results = {}
  for _, name in ipairs({ "Honest.secret", "Other.secret", "Evil..secret", "Evil.link" }) do
    local ok, value = pcall(require, name)
    results[#results + 1] = { ok = ok, value = ok and type(value) or value }
  end
  return results
end

function api.plant()
  leak = "evil"
  loadstring("leak = 'evil'")()
  return { leak = leak }
end
function api.after_plant() return { leak = leak or "none" } end

-- Called by Honest through core.callApi: looks for the caller's environment up the stack.
function api.peek()
  local leaked = {}
  for level = 1, 20 do
    local ok, env = pcall(function() return getfenv(level) end)
    if ok and env ~= _G and env ~= mine then leaked[#leaked + 1] = level end
  end
  return { leaked = leaked }
end

function api.ping() return "evil pong" end
return api
"#;

fn projects() -> PathBuf {
    let root = scratch_dir("sandbox");
    write_project(
        &root,
        "Honest",
        &[
            ("main.lua", HONEST),
            ("secret.lua", "return { key = 's3cret' }"),
        ],
    );
    write_project(&root, "Evil", &[("main.lua", EVIL)]);
    write_project(
        &root,
        "Other",
        &[
            (
                "main.lua",
                HONEST.replace("Honest.secret", "Other.secret").as_str(),
            ),
            ("secret.lua", "return { key = 'other' }"),
        ],
    );
    // A link inside Evil that leads into Honest.
    std::os::unix::fs::symlink(root.join("Honest/secret.lua"), root.join("Evil/link.lua")).unwrap();
    root
}

/// One worker: every attack lands on the state the honest projects use.
fn serve(db: &TestDb, root: &Path, env: &[(&str, &str)]) -> TestServer {
    serve_projects(db, root, "1", env)
}

/// What the honest project answers when nothing was tampered with.
async fn assert_honest(server: &TestServer) {
    assert_eq!(
        server
            .call(
                "Honest",
                "signup",
                json!({"name": "  Ann Lee ", "password": "pw"})
            )
            .await,
        json!({"result": {"name": "Ann Lee", "password": "pw", "words": ["Ann", "Lee"]}})
    );
    assert_eq!(
        server.call("Honest", "leak", json!({})).await,
        json!({"result": {"secret": "s3cret"}})
    );
    assert_eq!(
        server.call("Honest", "fails", json!({})).await,
        json!({"result": {"error": "honest failure", "status": 42}})
    );
}

#[tokio::test]
async fn a_project_cannot_change_what_other_projects_share() {
    let db = TestDb::new().await;
    let root = projects();
    let server = serve(&db, &root, &[]);
    assert_honest(&server).await;

    let attacked = server.call("Evil", "attack_shared", json!({})).await;
    assert_eq!(attacked["result"]["changed"], json!({}), "{attacked}");

    let hijack = server.call("Evil", "hijack", json!({})).await;
    assert_eq!(hijack["result"]["status"], json!(810), "{hijack}");
    assert!(
        hijack["result"]["error"]
            .as_str()
            .unwrap()
            .contains("setfenv: cannot change the environment of a function the server provides"),
        "{hijack}"
    );

    let planted = server.call("Evil", "plant", json!({})).await;
    assert_eq!(planted, json!({"result": {"leak": "evil"}}));
    assert_eq!(
        server.call("Evil", "after_plant", json!({})).await,
        json!({"result": {"leak": "none"}})
    );

    // Called by Honest, Evil cannot reach Honest's environment up the stack.
    assert_eq!(
        server.call("Honest", "call_evil", json!({})).await,
        json!({"result": {"leaked": {}}})
    );
    assert_honest(&server).await;
    assert_eq!(
        server.call("Other", "leak", json!({})).await,
        json!({"result": {"secret": "other"}})
    );
}

#[tokio::test]
async fn require_reaches_only_the_projects_own_files() {
    let db = TestDb::new().await;
    let root = projects();
    let server = serve(&db, &root, &[]);
    let answer = server.call("Evil", "steal_module", json!({})).await;
    let results = answer["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(results.len(), 4, "{answer}");
    for result in results {
        assert_eq!(result["ok"], json!(false), "{answer}");
    }
    assert!(
        results[0]["value"]
            .as_str()
            .unwrap()
            .contains("project 'Evil' can require only its own files"),
        "{answer}"
    );
    assert!(
        results[3]["value"]
            .as_str()
            .unwrap()
            .contains("Evil/link.lua: no such file"),
        "{answer}"
    );
    let root_text = root.display().to_string();
    assert!(!answer.to_string().contains(&root_text), "{answer}");
    assert_honest(&server).await;
}

#[tokio::test]
async fn errors_name_project_files_relative_to_the_projects_folder() {
    let db = TestDb::new().await;
    let root = projects();
    write_project(
        &root,
        "Faulty",
        &[
            (
                "main.lua",
                "local api = core.api()\nlocal m = require('Faulty.mod')\nfunction api.boom() error('kaboom') end\nfunction api.deep() return m.fail() end\nreturn api",
            ),
            (
                "mod.lua",
                "local m = {}\nfunction m.fail() local x = nil; return x.y end\nreturn m",
            ),
        ],
    );
    write_project(
        &root,
        "Unloadable",
        &[("main.lua", "local api = core.api(\nreturn api")],
    );
    write_project(
        &root,
        "BadModule",
        &[("main.lua", "return require('BadModule.missing')")],
    );
    let server = serve(&db, &root, &[]);
    let root_text = root.display().to_string();
    let mut answers = Vec::new();
    for (project, action, expected) in [
        ("Faulty", "boom", "Faulty/main.lua:3: kaboom"),
        ("Faulty", "deep", "Faulty/mod.lua:2: attempt to index nil"),
        (
            "Unloadable",
            "x",
            "project 'Unloadable' failed to load: Unloadable/main.lua:2:",
        ),
        ("BadModule", "x", "BadModule/missing.lua"),
    ] {
        let answer = server.call(project, action, json!({})).await;
        let message = answer["result"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(expected), "{project}.{action}: {answer}");
        assert!(
            !message.contains(&root_text),
            "{project}.{action}: {answer}"
        );
        assert!(
            !message.contains("stack traceback"),
            "{project}.{action}: {answer}"
        );
        answers.push(answer);
    }
    assert_eq!(answers.len(), 4);
}

/// Each hostile handler: what it runs. The budget is 100 ms.
const HOG: &str = r##"
local api = core.api()
local function evade_top(pad)
  local function dive()
    pcall(dive)
    while true do pcall(function() while true do end end) end
  end
  local function padded(n) if n == 0 then return dive() end return padded(n - 1) end
  padded(pad)
end
local attacks = {
  spin = function() while true do end end,
  pattern_find = function() return string.find(("a"):rep(1300), ".-.-b") end,
  pattern_match = function() return string.match(("a"):rep(1300), ".-.-b") end,
  gmatch = function() for _ in string.gmatch(("a"):rep(3000), "(.-)(.-)b") do end end,
  gsub = function() return string.gsub(("a"):rep(3000), "(.-)(.-)b", "") end,
  method_find = function() local s = ("a"):rep(1300) return s:find(".-.-b") end,
  long_pattern = function() return string.match(("a"):rep(1e6), ("a"):rep(1e5) .. ".") end,
  plain_find = function() return string.find(("a"):rep(4e6), ("a"):rep(2e6) .. "b", 1, true) end,
  literal_find = function() return string.find(("a"):rep(4e6), ("a"):rep(2e6) .. "b") end,
  trim = function() return #core.trim("x" .. (" "):rep(4e6) .. "x") end,
  split = function() return #core.split((","):rep(4e6), ",") end,
  words = function() return #core.split((" x"):rep(4e6)) end,
  sort = function() local t = string.split(("9,1,"):rep(1e6), ",") table.sort(t) end,
  sort_by = function() local t = string.split(("9,1,"):rep(1e6), ",") table.sort(t, function(a, b) return a > b end) end,
  move = function() return table.move({}, 1, 2^31 - 2, 2, {}) end,
  rep = function() return #string.rep("ab", 5e7) end,
  concat = function() return #table.concat(table.create(5e6, "ab")) end,
  encode_keys = function()
    local t = {}
    for i = 1, 5e5 do t["k" .. i] = i end
    return core.json.encode(t)
  end,
  encode_array = function() return core.json.encode(string.split(("x,"):rep(3e6), ",")) end,
  decode = function() return core.json.decode("[" .. ("1,"):rep(8e6) .. "1]") end,
  decode_objects = function() return core.json.decode("[" .. ('{"a":[1,2]},'):rep(2e6) .. "1]") end,
  loadstring = function() return loadstring(("local a = 1 "):rep(1e6)) end,
  unpack = function() return select("#", unpack(table.create(1e6, 1))) end,
  luau_split = function() return #string.split((","):rep(1.2e7), ",") end,
  format_q = function() return #string.format("%q", ("\0"):rep(3e7)) end,
  evade_pcall = function() while true do pcall(function() while true do end end) end end,
  evade_nested = function()
    local function again() while true do pcall(again) end end
    again()
  end,
  -- Dives to the top of the call stack, then loops catching there, where the pcall wrappers have
  -- no room left to raise a caught budget error again. Each pad shifts the dive's frames
  -- against the stack's limit, so that every alignment is tried.
  evade_top_0 = function() evade_top(0) end,
  evade_top_1 = function() evade_top(1) end,
  evade_top_2 = function() evade_top(2) end,
  evade_top_in_coroutine = function() coroutine.wrap(function() evade_top(0) end)() end,
  -- The same from inside C functions, where Lua cannot yield.
  evade_top_in_sort = function() table.sort({ 1, 2, 3 }, function() evade_top(0) end) end,
  evade_top_in_gsub = function() string.gsub("aaa", "a", function() evade_top(1) end) end,
  evade_top_in_index = function()
    return setmetatable({}, { __index = function() evade_top(2) end }).x
  end,
  evade_top_in_resume = function()
    local co = coroutine.create(function() evade_top(0) end)
    while true do coroutine.resume(co) end
  end,
  evade_xpcall = function()
    while true do xpcall(function() while true do end end, function() while true do end end) end
  end,
  evade_resume = function()
    while true do coroutine.resume(coroutine.create(function() while true do end end)) end
  end,
}
function api.attack(input)
  local attack = attacks[input.name]
  if not attack then return core.error("no attack " .. tostring(input.name), 1) end
  attack()
  return "finished"
end
function api.ping() return "pong" end
return api
"##;

const ATTACKS: &[&str] = &[
    "spin",
    "pattern_find",
    "pattern_match",
    "gmatch",
    "gsub",
    "method_find",
    "long_pattern",
    "plain_find",
    "literal_find",
    "trim",
    "split",
    "words",
    "sort",
    "sort_by",
    "move",
    "rep",
    "concat",
    "encode_keys",
    "encode_array",
    "decode",
    "decode_objects",
    "loadstring",
    "unpack",
    "luau_split",
    "format_q",
    "evade_pcall",
    "evade_nested",
    "evade_top_0",
    "evade_top_1",
    "evade_top_2",
    "evade_top_in_coroutine",
    "evade_top_in_resume",
    "evade_top_in_sort",
    "evade_top_in_gsub",
    "evade_top_in_index",
    "evade_xpcall",
    "evade_resume",
];

#[tokio::test]
async fn the_cpu_budget_holds_inside_library_functions() {
    let db = TestDb::new().await;
    let root = scratch_dir("hog");
    write_project(&root, "Hog", &[("main.lua", HOG)]);
    write_project(
        &root,
        "Honest",
        &[
            ("main.lua", HONEST),
            ("secret.lua", "return {key='s3cret'}"),
        ],
    );
    let server = crate::common::serve_projects_process(
        &db,
        &root,
        "1",
        &[("CORONIUM_CPU_BUDGET_MS", "100")],
    );
    assert_eq!(
        server.call("Hog", "ping", json!({})).await,
        json!({"result": "pong"})
    );
    let budget = Duration::from_millis(100);
    let mut report = Vec::new();
    for &name in ATTACKS {
        let started = Instant::now();
        let cpu_before = server.cpu_time();
        let attack = async {
            let answer = server.call("Hog", "attack", json!({"name": name})).await;
            (answer, started.elapsed())
        };
        let bystander = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let asked = Instant::now();
            let answer = server.call("Honest", "ping", json!({})).await;
            (answer, asked.elapsed())
        };
        let ((answer, took), (pong, waited)) = tokio::join!(attack, bystander);
        assert_eq!(pong, json!({"result": "pong"}), "{name}");
        let status = &answer["result"]["status"];
        if answer != json!({"result": "finished"}) {
            assert_eq!(status, &json!(810), "{name}: {answer}");
        }
        let cpu = server.cpu_time().saturating_sub(cpu_before);
        report.push(format!(
            "{name}: {took:?}, {cpu:?} of CPU (bystander {waited:?}) {answer}"
        ));
        // CPU time, which a loaded machine does not stretch: the attack and the bystander's
        // call together used about the budget, not the seconds the attack would run without it.
        assert!(
            cpu < budget + Duration::from_millis(600),
            "{name} used {cpu:?} of CPU (in {took:?}): {answer}"
        );
        // Wall time, with room for a busy machine: the worker was not held.
        assert!(
            waited < Duration::from_secs(5),
            "{name}: the bystander waited {waited:?}"
        );
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(
        server.call("Honest", "ping", json!({})).await,
        json!({"result": "pong"})
    );
    // Every attack was failed by the budget: the watchdog saw no worker stuck.
    let (status, health) = crate::common::http_get(&server.addr, "/healthz").await;
    assert_eq!(status, 200, "{health}");
    let (_, metrics) = crate::common::http_get(&server.addr, "/metrics").await;
    assert!(
        metrics.contains("coronium_worker_stalled{worker=\"0\"} 0"),
        "{metrics}"
    );
}

const HOARD: &str = r#"
local api = core.api()
local hoard = {}
function api.hold(input) core.sleep(1) return #input.junk end
function api.alloc()
  local t = {}
  for i = 1, 1e5 do t[i] = { i } end
  return #t + #string.rep("x", 4e6)
end
function api.hoard() hoard[#hoard + 1] = string.rep("x", 1e6) .. #hoard return #hoard end
local NOT_ENOUGH = "not enough memory"
function api.catch()
  -- The answer is made before memory runs out, and read without allocating after it: the
  -- caught garbage is not collected yet, so the state may have no room for even a small table
  -- (or a library call's arguments) right after the pcall.
  local answer = { ok = true, memory = false }
  local ok, err = pcall(function()
    local t = {}
    for i = 1, 1e9 do t[i] = string.rep("x", 1024) .. i end
  end)
  answer.ok = ok
  answer.memory = err == NOT_ENOUGH
  return answer
end
function api.ping() return "pong" end
return api
"#;

/// Polls `action` until it answers `expected`; how long that took.
async fn until_answers(
    server: &TestServer,
    action: &str,
    expected: serde_json::Value,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let answer = server.call("Hoard", action, json!({})).await;
        if answer == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{action} still answers {answer} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_flood_of_large_inputs_leaves_the_state_usable() {
    let db = TestDb::new().await;
    let root = scratch_dir("flood");
    write_project(&root, "Hoard", &[("main.lua", HOARD)]);
    let server = std::sync::Arc::new(serve(&db, &root, &[("CORONIUM_LUA_MEMORY_LIMIT_MB", "64")]));
    // Each body is just under the 1 MiB limit and becomes about 25 MB of Lua tables.
    let junk = json!({ "junk": vec![json!([]); 349_000] });
    let floods: Vec<_> = (0..16)
        .map(|_| {
            let (server, junk) = (server.clone(), junk.clone());
            tokio::spawn(async move { server.call("Hoard", "hold", junk).await })
        })
        .collect();
    let mut answers = Vec::new();
    for flood in floods {
        answers.push(flood.await.unwrap());
    }
    let held = answers
        .iter()
        .filter(|a| **a == json!({"result": 349_000}))
        .count();
    for answer in &answers {
        if *answer != json!({"result": 349_000}) {
            assert_eq!(answer["result"]["status"], json!(810), "{answer}");
            assert!(
                answer["result"]["error"]
                    .as_str()
                    .unwrap()
                    .contains("memory"),
                "{answer}"
            );
        }
    }
    assert!(held >= 1, "no flood request was served: {answers:?}");
    let took = until_answers(
        &server,
        "alloc",
        json!({"result": 4_100_000}),
        Duration::from_secs(5),
    )
    .await;
    eprintln!("{held} of 16 served; an allocating handler worked again after {took:?}");
}

#[tokio::test]
async fn a_state_that_stays_full_is_replaced() {
    let db = TestDb::new().await;
    let root = scratch_dir("hoard");
    write_project(&root, "Hoard", &[("main.lua", HOARD)]);
    // Memory is what runs out here: a busy machine filling 64 MB must not hit the CPU budget first.
    let server = crate::common::serve_projects_process(
        &db,
        &root,
        "1",
        &[
            ("CORONIUM_LUA_MEMORY_LIMIT_MB", "64"),
            ("CORONIUM_CPU_BUDGET_MS", "10000"),
        ],
    );
    // A handler that catches running out of memory carries on, as a script would.
    assert_eq!(
        server.call("Hoard", "catch", json!({})).await,
        json!({"result": {"ok": false, "memory": true}})
    );
    // The hoard grows by 1 MB a request until the state has no room left after a full
    // collection; then a fresh state (an empty hoard) takes the next request. Which notices
    // first is a race: a request that runs out of memory (answered 810), or the worker's
    // once-a-second look at a state that is already over 90% full.
    let (mut expected, mut out_of_memory, mut replaced) = (1, 0, false);
    for _ in 0..150 {
        let answer = server.call("Hoard", "hoard", json!({})).await;
        if answer == json!({ "result": expected }) {
            expected += 1;
        } else if answer == json!({"result": 1}) && expected > 1 {
            replaced = true;
            break;
        } else {
            assert_eq!(answer["result"]["status"], json!(810), "{answer}");
            out_of_memory += 1;
        }
    }
    assert!(
        replaced,
        "never replaced (hoarded {expected}, {out_of_memory} failures)"
    );
    until_answers(
        &server,
        "alloc",
        json!({"result": 4_100_000}),
        Duration::from_secs(5),
    )
    .await;
    let (_, metrics) = crate::common::http_get(&server.addr, "/metrics").await;
    assert!(
        metrics.contains("coronium_lua_rebuilds_total 1"),
        "{metrics}"
    );
}

const COMPAT: &str = r#"
local api = core.api()
local mod = require("Compat.mod")
local function make() return function() return answer end end
local f = make()
setfenv(f, { answer = 42 })
local chunk = loadstring("return who")
setfenv(chunk, { who = "chunk" })
function api.check()
  local g = loadstring("x = 1 return x")
  local ok, err = pcall(error, "plain", 0)
  local caught = { pcall(function() local t = nil; return t.x end) }
  return { f = f(), chunk = chunk(), g = g(), x = x, same = getfenv() == getfenv(1),
           zero = getfenv(0) == getfenv(1), ok = ok, err = err, caught = caught[1],
           hello = mod.hello(), frozen = pcall(function() mod.extra = 1 end) }
end
return api
"#;

const COMPAT_MOD: &str = r#"
local M = setmetatable({}, { __index = getfenv(0) })
setfenv(1, M)
function hello() return "hi from " .. type(M) end
return M
"#;

#[tokio::test]
async fn lua51_environment_functions_still_work_within_a_project() {
    let db = TestDb::new().await;
    let root = scratch_dir("compat");
    write_project(
        &root,
        "Compat",
        &[("main.lua", COMPAT), ("mod.lua", COMPAT_MOD)],
    );
    let server = serve(&db, &root, &[]);
    assert_eq!(
        server.call("Compat", "check", json!({})).await,
        json!({"result": {
            "f": 42, "chunk": "chunk", "g": 1, "x": 1, "same": true, "zero": true,
            "ok": false, "err": "plain", "caught": false, "hello": "hi from table", "frozen": false
        }})
    );
}
