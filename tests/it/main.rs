//! Integration tests: one binary, so one PostgreSQL cluster serves every test in it.

mod abuse;
mod browser;
mod common;
mod concurrency;
mod console;
mod db;
mod embedded;
mod first_hour;
mod lua_core;
mod mail;
mod passwords;
mod projects;
mod providers;
mod queries;
mod sandbox;
mod seed;
mod serve;
mod throttle;
mod users;
