//! What the console's Server and Projects pages show: process-wide facts the workers record as
//! they go. The server's figures come from the same Prometheus recorder `/metrics` renders
//! (sampled every few seconds for the request rate); the projects' from their loads and failed
//! requests, kept in memory (a bounded ring of recent handler errors).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use metrics_exporter_prometheus::PrometheusHandle;

/// Recent handler errors kept.
pub const HANDLER_ERRORS_KEPT: usize = 50;
/// The window the request rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// The longest error message kept (a traceback is for the log).
const MESSAGE_CHARS: usize = 500;

/// One process's vitals (one for every worker).
pub struct Vitals {
    started: SystemTime,
    started_at: Instant,
    workers: AtomicUsize,
    metrics: Mutex<Option<PrometheusHandle>>,
    samples: Mutex<VecDeque<RequestSample>>,
    projects: Mutex<ProjectRecords>,
}

#[derive(Debug, Clone, Copy)]
struct RequestSample {
    at: Instant,
    requests: f64,
    failed: f64,
}

#[derive(Default)]
struct ProjectRecords {
    projects: BTreeMap<String, ProjectRecord>,
    errors: VecDeque<HandlerError>,
}

/// What is known of one project's loads.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProjectRecord {
    /// When a worker last (re)loaded it, as Unix seconds.
    pub loaded: Option<i64>,
    /// Loads by any worker since the server started (each worker loads for itself).
    pub loads: u64,
    /// The last failed load.
    pub error: Option<LoggedError>,
    /// Whether the last load (by any worker) failed.
    pub failing: bool,
}

impl ProjectRecord {
    /// `loaded`, `failed` (its last load failed) or `not loaded yet`.
    pub fn state(&self) -> &'static str {
        match (self.failing, self.loaded) {
            (true, _) => "failed",
            (false, Some(_)) => "loaded",
            (false, None) => "not loaded yet",
        }
    }
}

/// An error with where in the project it happened (`Demo/main.lua:3`) when the message says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoggedError {
    pub at: i64,
    pub message: String,
    pub location: Option<String>,
}

impl LoggedError {
    fn new(text: &str) -> Self {
        let first_line = text.lines().next().unwrap_or_default();
        let location = location(first_line);
        // The location is shown beside the message: not twice.
        let message = match &location {
            Some(at) => first_line.replacen(&format!("{at}: "), "", 1),
            None => first_line.to_owned(),
        };
        LoggedError {
            at: unix_now(),
            message: message.chars().take(MESSAGE_CHARS).collect(),
            location,
        }
    }
}

/// A request whose handler failed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HandlerError {
    pub project: String,
    pub action: String,
    #[serde(flatten)]
    pub error: LoggedError,
}

/// The server's figures at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerFigures {
    pub version: &'static str,
    pub started: i64,
    pub uptime_secs: u64,
    pub workers: usize,
    /// `None` when this process has no metrics recorder.
    pub metrics: Option<MetricFigures>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MetricFigures {
    pub requests_total: f64,
    pub failed_total: f64,
    /// Over the last minute (or since start).
    pub requests_per_sec: f64,
    /// The share of those requests that failed or were refused, in percent.
    pub error_percent: f64,
    pub in_flight: f64,
    pub pool_connections: f64,
    pub pool_idle: f64,
    pub pool_waiting: f64,
    pub hash_queue: f64,
    pub lua_memory_bytes: f64,
    pub workers_stalled: f64,
    pub mail_queued: f64,
    pub postgres_restarts: f64,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `Project/file.lua:12` out of a Lua error message.
fn location(message: &str) -> Option<String> {
    let at = message.find(".lua:")?;
    let start = message[..at]
        .rfind(|c: char| c.is_whitespace() || c == '[' || c == '"' || c == '\'')
        .map_or(0, |i| i + 1);
    let digits: String = message[at + 5..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if digits.is_empty() {
        return None;
    }
    Some(format!("{}{digits}", &message[start..at + 5]))
}

impl Default for Vitals {
    fn default() -> Self {
        Vitals {
            started: SystemTime::now(),
            started_at: Instant::now(),
            workers: AtomicUsize::new(0),
            metrics: Mutex::new(None),
            samples: Mutex::new(VecDeque::new()),
            projects: Mutex::default(),
        }
    }
}

impl Vitals {
    /// A server started: how many workers, and the recorder `/metrics` renders.
    pub fn server_started(&self, workers: usize, metrics: Option<PrometheusHandle>) {
        self.workers.store(workers, Ordering::Relaxed);
        *self.metrics.lock().unwrap() = metrics;
    }

    /// Takes a sample of the request counters (a worker calls this every few seconds).
    pub fn sample(&self) {
        let Some(figures) = self.read_metrics() else {
            return;
        };
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap();
        samples.push_back(RequestSample {
            at: now,
            requests: figures.requests_total,
            failed: figures.failed_total,
        });
        while samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) > RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// The recorder `/metrics` renders; `None` when this process has none.
    pub fn metrics(&self) -> Option<PrometheusHandle> {
        self.metrics.lock().unwrap().clone()
    }

    fn read_metrics(&self) -> Option<MetricFigures> {
        let text = self.metrics()?.render();
        Some(MetricFigures::from_prometheus(&text))
    }

    pub fn server(&self) -> ServerFigures {
        let metrics = self.read_metrics().map(|mut figures| {
            let now = Instant::now();
            let oldest = self.samples.lock().unwrap().front().copied();
            let (since, requests, failed) = match oldest {
                Some(s) => (now.duration_since(s.at), s.requests, s.failed),
                None => (self.started_at.elapsed(), 0.0, 0.0),
            };
            let requests = (figures.requests_total - requests).max(0.0);
            let failed = (figures.failed_total - failed).max(0.0);
            let secs = since.as_secs_f64().max(1.0);
            figures.requests_per_sec = requests / secs;
            figures.error_percent = if requests > 0.0 {
                failed * 100.0 / requests
            } else {
                0.0
            };
            figures
        });
        ServerFigures {
            version: env!("CARGO_PKG_VERSION"),
            started: self
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            uptime_secs: self.started_at.elapsed().as_secs(),
            workers: self.workers.load(Ordering::Relaxed),
            metrics,
        }
    }

    /// A worker loaded (or reloaded) `project`.
    pub fn project_loaded(&self, project: &str) {
        let mut records = self.projects.lock().unwrap();
        let record = records.projects.entry(project.to_owned()).or_default();
        record.loaded = Some(unix_now());
        record.loads += 1;
        record.failing = false;
    }

    /// Loading `project` failed with `error`.
    pub fn project_failed(&self, project: &str, error: &str) {
        let mut records = self.projects.lock().unwrap();
        let record = records.projects.entry(project.to_owned()).or_default();
        record.error = Some(LoggedError::new(error));
        record.failing = true;
    }

    /// A request to `project`'s `action` failed with `error` (a Lua error, not a `core.error`).
    pub fn handler_failed(&self, project: &str, action: &str, error: &str) {
        let mut records = self.projects.lock().unwrap();
        if records.errors.len() == HANDLER_ERRORS_KEPT {
            records.errors.pop_front();
        }
        records.errors.push_back(HandlerError {
            project: project.chars().take(100).collect(),
            action: action.chars().take(100).collect(),
            error: LoggedError::new(error),
        });
    }

    /// What is known of each project that was loaded or failed to.
    pub fn projects(&self) -> BTreeMap<String, ProjectRecord> {
        self.projects.lock().unwrap().projects.clone()
    }

    /// The recent handler errors, newest first.
    pub fn handler_errors(&self) -> Vec<HandlerError> {
        let records = self.projects.lock().unwrap();
        records.errors.iter().rev().cloned().collect()
    }
}

impl MetricFigures {
    /// The figures out of the Prometheus text format (sums over label sets).
    fn from_prometheus(text: &str) -> Self {
        let mut figures = MetricFigures::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let slot = match name {
                "coronium_requests_total" => {
                    if !labels.contains(r#"outcome="ok""#) {
                        figures.failed_total += value;
                    }
                    &mut figures.requests_total
                }
                "coronium_requests_in_flight" => &mut figures.in_flight,
                "coronium_db_pool_connections" => &mut figures.pool_connections,
                "coronium_db_pool_idle_connections" => &mut figures.pool_idle,
                "coronium_db_pool_waiting" => &mut figures.pool_waiting,
                "coronium_password_hash_queue" => &mut figures.hash_queue,
                "coronium_lua_memory_bytes" => &mut figures.lua_memory_bytes,
                "coronium_worker_stalled" => &mut figures.workers_stalled,
                "coronium_mail_queued" => &mut figures.mail_queued,
                "coronium_postgres_restarts_total" => &mut figures.postgres_restarts,
                _ => continue,
            };
            *slot += value;
        }
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_their_labels() {
        let text = "# TYPE coronium_requests_total counter\n\
            coronium_requests_total{project=\"api.users\",action=\"get\",outcome=\"ok\"} 90\n\
            coronium_requests_total{project=\"api.users\",action=\"get\",outcome=\"error\"} 6\n\
            coronium_requests_total{project=\"-\",action=\"-\",outcome=\"refused\"} 4\n\
            coronium_db_pool_connections{worker=\"0\"} 3\n\
            coronium_db_pool_connections{worker=\"1\"} 2\n\
            coronium_password_hash_queue 1\n";
        let figures = MetricFigures::from_prometheus(text);
        assert_eq!(figures.requests_total, 100.0);
        assert_eq!(figures.failed_total, 10.0);
        assert_eq!(figures.pool_connections, 5.0);
        assert_eq!(figures.hash_queue, 1.0);
    }

    #[test]
    fn error_locations_are_found_in_lua_messages() {
        assert_eq!(
            location("Demo/main.lua:12: attempt to index nil").as_deref(),
            Some("Demo/main.lua:12")
        );
        assert_eq!(
            location("project 'Demo' failed to load: Demo/lib/util.lua:3: boom").as_deref(),
            Some("Demo/lib/util.lua:3")
        );
        assert_eq!(location("out of memory"), None);
    }

    #[test]
    fn a_load_after_a_failure_counts_as_loaded_and_the_ring_is_bounded() {
        let vitals = Vitals::default();
        vitals.project_failed("Demo", "Demo/main.lua:1: syntax error");
        assert_eq!(vitals.projects()["Demo"].state(), "failed");
        vitals.project_loaded("Demo");
        assert_eq!(vitals.projects()["Demo"].state(), "loaded");
        for i in 0..HANDLER_ERRORS_KEPT + 5 {
            vitals.handler_failed("Demo", &format!("a{i}"), "Demo/main.lua:2: boom");
        }
        let errors = vitals.handler_errors();
        assert_eq!(errors.len(), HANDLER_ERRORS_KEPT);
        assert_eq!(errors[0].action, format!("a{}", HANDLER_ERRORS_KEPT + 4));
        assert_eq!(errors[0].error.location.as_deref(), Some("Demo/main.lua:2"));
        assert_eq!(
            errors[0].error.message, "boom",
            "the location is not said twice"
        );
        let failed = LoggedError::new("project 'Demo' failed to load: Demo/lib/util.lua:3: boom");
        assert_eq!(failed.message, "project 'Demo' failed to load: boom");
    }
}
