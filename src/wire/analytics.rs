//! `api.analytics` over the wire: the client plugin's `core.analytics.appOpened` and events.

use serde_json::Value;
use serde_json::value::RawValue;

use super::json_text;
use crate::analytics::{Analytics, AnalyticsError, Record};
use crate::users::input::Params;

/// The project id of the built-in analytics module.
pub const ANALYTICS_PROJECT: &str = "api.analytics";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    AppOpened,
    Event,
}

impl Action {
    pub fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "appOpened" | "opened" => Action::AppOpened,
            "event" | "addEvent" | "logEvent" => Action::Event,
            _ => return None,
        })
    }

    /// The v2 name (what scope permissions are kept under).
    pub fn name(self) -> &'static str {
        match self {
            Action::AppOpened => "appOpened",
            Action::Event => "event",
        }
    }
}

/// Stores one record in `scope` (from `X-Scope`) and answers `true`.
pub async fn execute(
    analytics: &Analytics,
    scope: &str,
    action: Action,
    params: &Params,
) -> Result<Box<RawValue>, AnalyticsError> {
    crate::users::Scope::parse(scope).map_err(|e| AnalyticsError::BadParameter(e.to_string()))?;
    let record = match action {
        Action::AppOpened => Record::opened(params)?,
        Action::Event => Record::event(params)?,
    };
    analytics.record(scope, record).await?;
    Ok(json_text(&Value::Bool(true)))
}
