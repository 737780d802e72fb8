//! Analytics: the client plugin's `core.analytics.appOpened` and events, stored per scope.
//!
//! A request costs a share of one insert into an unlogged inbox (migration 0007): the records
//! that arrive on a worker while its last insert is under way go in together, as one statement
//! of arrays. [`Analytics::roll_up`]
//! moves the inbox into the raw events and the daily counts in one statement (every few seconds
//! on one worker, and before the console reads), and [`Analytics::prune`] drops raw events past
//! `analytics.keep_days`. Reads use only the daily counts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio_postgres::types::Json;

use crate::db::DbHandle;
use crate::status::{ErrorAnswer, Status};
use crate::users::input::has_nul;

/// `[analytics]` in the configuration.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsSettings {
    /// Days raw events are kept (the daily counts are kept for good).
    pub keep_days: u32,
    /// Distinct keys (event names, platforms, versions, models) counted per scope, metric and
    /// day; keys past it are counted together as [`OTHER_KEY`], so made-up names cannot grow the
    /// daily counts without bound.
    pub max_keys_per_day: u32,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        AnalyticsSettings {
            keep_days: 30,
            max_keys_per_day: 1000,
        }
    }
}

/// The daily key that counts whatever a full day's keys left out.
pub const OTHER_KEY: &str = "(other)";

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("Missing required parameter: {0}")]
    Missing(&'static str),
    #[error("{0}")]
    BadParameter(String),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The insert that carried this record with others failed (its cause, for the log).
    #[error("database: {0}")]
    Batch(String),
}

/// PostgreSQL's own words when it said something (`tokio_postgres` shows only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    crate::db::words(e)
}

impl crate::db::StatementError for AnalyticsError {
    fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            AnalyticsError::Postgres(e) => Some(e),
            _ => None,
        }
    }
}

impl AnalyticsError {
    /// The client's answer; our own failures are logged and answered without their details.
    pub fn answer(&self) -> ErrorAnswer {
        match self {
            AnalyticsError::Missing(_) => {
                ErrorAnswer::new(Status::MISSING_PARAMETER, self.to_string())
            }
            AnalyticsError::BadParameter(_) => {
                ErrorAnswer::new(Status::MISMATCHED_PARAMETER, self.to_string())
            }
            // Logged once for its whole batch.
            AnalyticsError::Batch(_) => ErrorAnswer::new(Status::GENERAL, "Internal server error."),
            AnalyticsError::Pool(_) | AnalyticsError::Postgres(_) => {
                static GATE: crate::logging::Gate = crate::logging::Gate::new();
                if let Some(held_back) = GATE.pass() {
                    tracing::error!(error = %self, held_back, "analytics could not be stored");
                }
                ErrorAnswer::new(Status::GENERAL, "Internal server error.")
            }
        }
    }
}

/// Records one roll-up statement moves.
const ROLL_UP_BATCH: i64 = 10_000;

/// The longest name, platform, version or model kept (longer ones are cut).
const MAX_TEXT_CHARS: usize = 100;
/// The largest `data` an event may carry, as JSON.
const MAX_DATA_BYTES: usize = 4096;

/// One appOpened or event, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub kind: Kind,
    pub name: Option<String>,
    pub device: Option<String>,
    pub platform: Option<String>,
    pub platform_ver: Option<String>,
    pub version: Option<String>,
    pub model: Option<String>,
    pub manufacturer: Option<String>,
    pub country_code: Option<String>,
    pub data: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Open,
    Event,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Event => "event",
        }
    }
}

/// A text field: strings as given (cut to length), numbers as their text, nothing else.
fn text(params: &Map<String, Value>, names: &[&str]) -> Result<Option<String>, AnalyticsError> {
    for name in names {
        match params.get(*name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if s.trim().is_empty() => continue,
            Some(Value::String(s)) if s.contains('\0') => return Err(nul_in(name)),
            Some(Value::String(s)) => {
                return Ok(Some(s.trim().chars().take(MAX_TEXT_CHARS).collect()));
            }
            Some(Value::Number(n)) => return Ok(Some(n.to_string())),
            Some(_) => {
                return Err(AnalyticsError::BadParameter(format!(
                    "Parameter '{name}' must be a string."
                )));
            }
        }
    }
    Ok(None)
}

/// PostgreSQL's text and JSONB cannot hold NUL: such a record is refused on its own, before it
/// can join (and fail) a batch of other clients' records.
fn nul_in(name: &str) -> AnalyticsError {
    AnalyticsError::BadParameter(format!(
        "Parameter '{name}' must not contain a NUL character."
    ))
}

impl Record {
    /// `appOpened`'s body: the app and device fields the client plugin collects (analytics
    /// docs), all optional; `device_id` (or `udid`) names the device.
    pub fn opened(params: &Map<String, Value>) -> Result<Record, AnalyticsError> {
        let mut data = Map::new();
        for key in ["screen_w", "screen_h", "corona_build"] {
            if let Some(value) = params.get(key).filter(|v| v.is_number() || v.is_string()) {
                if has_nul(value) {
                    return Err(nul_in(key));
                }
                data.insert(key.into(), value.clone());
            }
        }
        Ok(Record {
            kind: Kind::Open,
            name: text(params, &["name"])?,
            device: text(params, &["device_id", "udid", "device"])?,
            platform: text(params, &["platform"])?,
            platform_ver: text(params, &["platform_ver"])?,
            version: text(params, &["version"])?,
            model: text(params, &["model"])?,
            manufacturer: text(params, &["manufacturer"])?,
            country_code: text(params, &["country_code"])?,
            data,
        })
    }

    /// An event: a name (`name` or `event`, required) and an optional `value` or `data`.
    pub fn event(params: &Map<String, Value>) -> Result<Record, AnalyticsError> {
        let name = text(params, &["name", "event"])?.ok_or(AnalyticsError::Missing("name"))?;
        let mut data = Map::new();
        for key in ["value", "data"] {
            if let Some(value) = params.get(key).filter(|v| !v.is_null()) {
                if has_nul(value) {
                    return Err(nul_in(key));
                }
                data.insert(key.into(), value.clone());
            }
        }
        if serde_json::to_vec(&data).map_or(0, |v| v.len()) > MAX_DATA_BYTES {
            return Err(AnalyticsError::BadParameter(format!(
                "An event's value is limited to {MAX_DATA_BYTES} bytes of JSON."
            )));
        }
        Ok(Record {
            kind: Kind::Event,
            name: Some(name),
            device: text(params, &["device_id", "udid", "device"])?,
            platform: text(params, &["platform"])?,
            version: text(params, &["version"])?,
            data,
            ..Record::default()
        })
    }
}

/// One metric's counts over a period, largest first.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Count {
    pub key: String,
    pub count: i64,
}

/// App opens per day (oldest first, zero days included) and the top keys of each metric.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub opens_per_day: Vec<(String, i64)>,
    pub platforms: Vec<Count>,
    pub versions: Vec<Count>,
    pub models: Vec<Count>,
    pub events: Vec<Count>,
}

/// The analytics service, one per worker.
#[derive(Clone)]
pub struct Analytics {
    db: DbHandle,
    settings: AnalyticsSettings,
    /// Records waiting for the next insert, with whom to tell how it went; `None` when no
    /// insert is being gathered.
    gathering: Arc<Mutex<Option<Vec<Waiting>>>>,
    /// Set while this worker's periodic roll-up runs: the next one is skipped rather than run
    /// beside it (holding a second connection).
    rolling: Arc<AtomicBool>,
}

type Waiting = (String, Record, oneshot::Sender<Result<(), String>>);

/// The most records one insert carries.
const MAX_BATCH: usize = 500;

impl Analytics {
    pub fn new(db: DbHandle, settings: AnalyticsSettings) -> Self {
        Analytics {
            db,
            settings,
            gathering: Arc::default(),
            rolling: Arc::default(),
        }
    }

    /// Stores one record in `scope`. The first record of a batch starts a task that lets the
    /// worker's other requests run once, then inserts every record that joined in one
    /// statement; each request waits for its batch (a request that gives up takes no one's
    /// record with it).
    pub async fn record(&self, scope: &str, record: Record) -> Result<(), AnalyticsError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut gathering = self.gathering.lock().unwrap();
            let waiting = (scope.to_owned(), record, tx);
            match gathering.as_mut() {
                Some(batch) if batch.len() < MAX_BATCH => batch.push(waiting),
                // Its task takes the full batch; this record goes in one of its own.
                Some(_) => drop(tokio::spawn(self.clone().insert(vec![waiting]))),
                None => {
                    *gathering = Some(vec![waiting]);
                    tokio::spawn(self.clone().insert_gathered());
                }
            }
        }
        match rx.await {
            Ok(outcome) => outcome.map_err(AnalyticsError::Batch),
            Err(_) => Err(AnalyticsError::Batch("the insert was dropped".into())),
        }
    }

    async fn insert_gathered(self) {
        tokio::task::yield_now().await;
        let batch = self.gathering.lock().unwrap().take();
        if let Some(batch) = batch {
            self.insert(batch).await;
        }
    }

    async fn insert(self, batch: Vec<Waiting>) {
        let outcome = self.insert_records(&batch).await;
        if outcome.is_err() && batch.len() > 1 {
            // One record the checks let through must not lose the others: each goes in alone.
            for waiting in batch {
                let outcome = self.insert_records(std::slice::from_ref(&waiting)).await;
                let _ = waiting.2.send(outcome);
            }
            return;
        }
        for (_, _, tx) in batch {
            let _ = tx.send(outcome.clone());
        }
    }

    async fn insert_records(&self, batch: &[Waiting]) -> Result<(), String> {
        let records: Vec<(&str, &Record)> = batch.iter().map(|(s, r, _)| (s.as_str(), r)).collect();
        let outcome = self
            .db
            .write(|client| async move { insert(&*client, &records).await })
            .await;
        outcome.map_err(|e| {
            static GATE: crate::logging::Gate = crate::logging::Gate::new();
            if let Some(held_back) = GATE.pass() {
                tracing::error!(error = %e, records = batch.len(), held_back, "analytics could not be stored");
            }
            e.to_string()
        })
    }

    /// Moves the inbox into the raw events and the daily counts; the records moved. Roll-ups
    /// on every instance take turns (an advisory lock taken before any row), so they never
    /// deadlock on the daily counts; this one waits for its turn.
    pub async fn roll_up(&self) -> Result<u64, AnalyticsError> {
        self.roll_up_batches(Turn::Wait).await
    }

    /// The periodic roll-up: skipped when this worker's last one is still running, or when
    /// another instance's is (it moves the same inbox).
    pub async fn roll_up_unless_busy(&self) -> Result<u64, AnalyticsError> {
        if self.rolling.swap(true, Ordering::AcqRel) {
            return Ok(0);
        }
        let moved = self.roll_up_batches(Turn::Skip).await;
        self.rolling.store(false, Ordering::Release);
        moved
    }

    async fn roll_up_batches(&self, turn: Turn) -> Result<u64, AnalyticsError> {
        // On a connection of its own, in batches: a big inbox must not hold up the statements
        // pipelined behind it on the shared write connection (the inserts themselves).
        let max_keys = i64::from(self.settings.max_keys_per_day);
        let mut moved = 0;
        loop {
            let batch = self
                .db
                .transaction(async |tx| roll_up(tx, turn, max_keys).await)
                .await?;
            moved += batch;
            if batch < ROLL_UP_BATCH as u64 {
                return Ok(moved);
            }
        }
    }

    /// Drops raw events older than `keep_days`.
    pub async fn prune(&self) -> Result<u64, AnalyticsError> {
        let days = f64::from(self.settings.keep_days.max(1));
        self.db
            .write(|client| async move {
                Ok(client
                    .execute(
                        "DELETE FROM analytics_events
                         WHERE at < now() - make_interval(days => $1::float8::int)",
                        &[&days],
                    )
                    .await?)
            })
            .await
    }

    /// The last `days` days of `scope` (rolled up first, so what was just sent is in).
    pub async fn summary(&self, scope: &str, days: i32) -> Result<Summary, AnalyticsError> {
        self.roll_up().await?;
        self.db
            .read(|client| async move { summary(&*client, scope, days).await })
            .await
    }
}

/// One statement for every record: arrays, one per column, unnested into rows.
async fn insert(
    client: &impl GenericClient,
    records: &[(&str, &Record)],
) -> Result<(), AnalyticsError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO analytics_inbox (scope, kind, name, device, platform, platform_ver,
               version, model, manufacturer, country_code, data)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
               $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::jsonb[])",
        )
        .await?;
    let column = |field: fn(&Record) -> &Option<String>| -> Vec<&Option<String>> {
        records.iter().map(|(_, r)| field(r)).collect()
    };
    let scopes: Vec<&str> = records.iter().map(|(s, _)| *s).collect();
    let kinds: Vec<&str> = records.iter().map(|(_, r)| r.kind.as_str()).collect();
    let data: Vec<Json<&Map<String, Value>>> = records.iter().map(|(_, r)| Json(&r.data)).collect();
    client
        .execute(
            &stmt,
            &[
                &scopes,
                &kinds,
                &column(|r| &r.name),
                &column(|r| &r.device),
                &column(|r| &r.platform),
                &column(|r| &r.platform_ver),
                &column(|r| &r.version),
                &column(|r| &r.model),
                &column(|r| &r.manufacturer),
                &column(|r| &r.country_code),
                &data,
            ],
        )
        .await?;
    Ok(())
}

/// Whether a roll-up waits for another one to finish or leaves the work to it.
#[derive(Clone, Copy)]
enum Turn {
    Wait,
    Skip,
}

/// The advisory lock every roll-up takes first (any number, the same on every instance).
const ROLL_UP_LOCK: i64 = 0x636f_726f_6e61;

async fn roll_up(
    client: &impl GenericClient,
    turn: Turn,
    max_keys: i64,
) -> Result<u64, AnalyticsError> {
    match turn {
        Turn::Wait => {
            client
                .execute("SELECT pg_advisory_xact_lock($1)", &[&ROLL_UP_LOCK])
                .await?;
        }
        Turn::Skip => {
            let row = client
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&ROLL_UP_LOCK])
                .await?;
            if !row.get::<_, bool>(0) {
                return Ok(0);
            }
        }
    }
    let stmt = client
        .prepare_cached(
            "WITH moved AS (DELETE FROM analytics_inbox WHERE id IN
                              (SELECT id FROM analytics_inbox ORDER BY id LIMIT $1)
                            RETURNING *),
                  kept AS (INSERT INTO analytics_events SELECT * FROM moved),
                  counts AS (
                    SELECT scope, (at AT TIME ZONE 'UTC')::date AS day, v.metric, v.key,
                           count(*) AS n
                    FROM moved, LATERAL (VALUES
                      (CASE WHEN kind = 'open' THEN 'opens' END, ''),
                      (CASE WHEN kind = 'open' THEN 'platform' END, COALESCE(platform, '?')),
                      (CASE WHEN kind = 'open' THEN 'version' END, COALESCE(version, '?')),
                      (CASE WHEN kind = 'open' THEN 'model' END, COALESCE(model, '?')),
                      (CASE WHEN kind = 'event' THEN 'event' END, COALESCE(name, '?'))
                    ) AS v(metric, key)
                    WHERE v.metric IS NOT NULL
                    GROUP BY 1, 2, 3, 4),
                  -- A key the day already counts stays itself; new keys take the room left
                  -- (most frequent first), and the rest are counted as $3.
                  ranked AS (
                    SELECT c.*, (c.metric = 'opens' OR EXISTS (
                             SELECT 1 FROM analytics_daily d WHERE d.scope = c.scope
                               AND d.day = c.day AND d.metric = c.metric AND d.key = c.key)) AS known
                    FROM counts c),
                  placed AS (
                    SELECT scope, day, metric, n,
                      CASE WHEN known THEN key
                           WHEN row_number() OVER (PARTITION BY scope, day, metric, known
                                                   ORDER BY n DESC, key)
                                + (SELECT count(*) FROM analytics_daily d WHERE d.scope = r.scope
                                     AND d.day = r.day AND d.metric = r.metric) <= $2 THEN key
                           ELSE $3 END AS key
                    FROM ranked r),
                  counted AS (
                    INSERT INTO analytics_daily AS d (scope, day, metric, key, count)
                    SELECT scope, day, metric, key, sum(n)::bigint FROM placed GROUP BY 1, 2, 3, 4
                    ON CONFLICT (scope, day, metric, key) DO UPDATE SET count = d.count + EXCLUDED.count)
             SELECT count(*) FROM moved",
        )
        .await?;
    let moved: i64 = client
        .query_one(&stmt, &[&ROLL_UP_BATCH, &max_keys, &OTHER_KEY])
        .await?
        .get(0);
    Ok(moved as u64)
}

async fn summary(
    client: &impl GenericClient,
    scope: &str,
    days: i32,
) -> Result<Summary, AnalyticsError> {
    let opens = client
        .query(
            "SELECT to_char(d.day, 'YYYY-MM-DD'), COALESCE(a.count, 0)
             FROM generate_series((now() AT TIME ZONE 'UTC')::date - ($2 - 1),
                                  (now() AT TIME ZONE 'UTC')::date, interval '1 day') AS d(day)
             LEFT JOIN analytics_daily a
               ON a.scope = $1 AND a.day = d.day::date AND a.metric = 'opens' AND a.key = ''
             ORDER BY d.day",
            &[&scope, &days],
        )
        .await?;
    let top = |metric: &'static str| async move {
        let rows = client
            .query(
                "SELECT key, sum(count)::bigint AS total FROM analytics_daily
                 WHERE scope = $1 AND metric = $2
                   AND day > (now() AT TIME ZONE 'UTC')::date - $3::int
                 GROUP BY key ORDER BY total DESC, key LIMIT 20",
                &[&scope, &metric, &days],
            )
            .await?;
        Ok::<_, AnalyticsError>(
            rows.iter()
                .map(|r| Count {
                    key: r.get(0),
                    count: r.get(1),
                })
                .collect::<Vec<_>>(),
        )
    };
    Ok(Summary {
        opens_per_day: opens.iter().map(|r| (r.get(0), r.get(1))).collect(),
        platforms: top("platform").await?,
        versions: top("version").await?,
        models: top("model").await?,
        events: top("event").await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn an_open_keeps_the_plugins_fields_and_cuts_long_text() {
        let long = "x".repeat(500);
        let record = Record::opened(&params(json!({
            "name": "FunRun", "platform": "ios", "platform_ver": "10.12.6", "version": 12,
            "model": long, "screen_w": 320, "screen_h": 480, "device_id": "abc",
            "unknown": "ignored",
        })))
        .unwrap();
        assert_eq!(record.kind, Kind::Open);
        assert_eq!(record.version.as_deref(), Some("12"));
        assert_eq!(record.model.as_ref().unwrap().len(), MAX_TEXT_CHARS);
        assert_eq!(record.device.as_deref(), Some("abc"));
        assert_eq!(
            Value::Object(record.data),
            json!({"screen_w": 320, "screen_h": 480})
        );
        assert!(Record::opened(&params(json!({ "platform": {"a": 1} }))).is_err());
        assert!(
            Record::opened(&Map::new()).is_ok(),
            "every field is optional"
        );
    }

    #[test]
    fn an_event_needs_a_name_and_a_small_value() {
        assert!(matches!(
            Record::event(&Map::new()),
            Err(AnalyticsError::Missing("name"))
        ));
        let record = Record::event(&params(json!({ "event": "level_up", "value": 3 }))).unwrap();
        assert_eq!(record.name.as_deref(), Some("level_up"));
        let big = "y".repeat(MAX_DATA_BYTES + 1);
        assert!(matches!(
            Record::event(&params(json!({ "name": "x", "value": big }))),
            Err(AnalyticsError::BadParameter(_))
        ));
    }
}
