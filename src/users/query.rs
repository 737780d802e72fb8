//! `getWithQuery` and `getGroup` (users spec §6): ANDed equalities, an order and a limit, parsed
//! here so that the store only ever sees known columns.

use serde_json::Value;

use super::error::UserError;

/// Rows a query returns when it names no limit.
pub const DEFAULT_LIMIT: i64 = 100;
/// Rows a query may ask for at most by default (`users.max_query_limit`; a larger count is cut
/// to it).
pub const MAX_LIMIT: i64 = 1000;

/// A parsed query: which users, in which order, which rows of the result.
#[derive(Debug, Clone, PartialEq)]
pub struct UserQuery {
    /// Case-insensitive equality, as uniqueness compares them.
    pub username: Option<String>,
    pub email: Option<String>,
    /// Exact.
    pub group: Option<String>,
    pub active: Option<bool>,
    /// Applied in this order; `user_id` breaks the last tie.
    pub order: Vec<(Column, Direction)>,
    pub offset: i64,
    pub count: i64,
    /// `limit == 1` (the number): one user, not an array, and 604 when none matches.
    pub single: bool,
}

/// The columns a query may order by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Active,
    Created,
    Email,
    Group,
    LastLogin,
    LoginCount,
    Updated,
    Username,
}

impl Column {
    fn parse(name: &str) -> Option<Column> {
        Some(match name {
            "active" => Column::Active,
            "created" => Column::Created,
            "email" => Column::Email,
            "group" => Column::Group,
            "last_login" => Column::LastLogin,
            "login_count" => Column::LoginCount,
            "updated" => Column::Updated,
            "username" => Column::Username,
            _ => return None,
        })
    }

    /// The SQL the store orders by: a fixed column name, never caller text.
    pub fn sql(self) -> &'static str {
        match self {
            Column::Active => "active",
            Column::Created => "created",
            Column::Email => "email",
            Column::Group => "\"group\"",
            Column::LastLogin => "last_login",
            Column::LoginCount => "login_count",
            Column::Updated => "updated",
            Column::Username => "username",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ascending,
    Descending,
}

impl Direction {
    pub fn sql(self) -> &'static str {
        match self {
            Direction::Ascending => "ASC",
            Direction::Descending => "DESC",
        }
    }
}

impl UserQuery {
    /// Every user of the scope, oldest first, the default number of rows.
    fn everyone() -> UserQuery {
        UserQuery {
            username: None,
            email: None,
            group: None,
            active: None,
            order: Vec::new(),
            offset: 0,
            count: DEFAULT_LIMIT,
            single: false,
        }
    }

    /// `getWithQuery`'s query table (absent: every user). Unknown keys, `password` included
    /// (2.6 could match on it; ignoring it would let old code match any password), are refused.
    pub fn parse(query: Option<&Value>) -> Result<UserQuery, UserError> {
        let mut parsed = UserQuery::everyone();
        let map = match query {
            None | Some(Value::Null) => return Ok(parsed),
            Some(Value::Object(map)) => map,
            // An empty Lua table arrives as `[]`.
            Some(Value::Array(items)) if items.is_empty() => return Ok(parsed),
            Some(_) => return Err(UserError::bad("The query must be a table.")),
        };
        for (key, value) in map {
            match key.as_str() {
                "username" => parsed.username = Some(text(key, value)?),
                "email" => parsed.email = Some(text(key, value)?),
                "group" => parsed.group = Some(text(key, value)?),
                "active" => match value {
                    Value::Bool(active) => parsed.active = Some(*active),
                    _ => return Err(UserError::bad("Query key 'active' must be a boolean.")),
                },
                "orderby" => parsed.order = order(value)?,
                "limit" => parsed.limit(value)?,
                "password" => {
                    return Err(UserError::bad(
                        "Users cannot be queried by password; log them in instead.",
                    ));
                }
                other => {
                    return Err(UserError::bad(format!("Unknown query key '{other}'.")));
                }
            }
        }
        Ok(parsed)
    }

    /// `getGroup(scope, group, limit)`: the group's active users.
    pub fn group(group: Option<&Value>, limit: Option<&Value>) -> Result<UserQuery, UserError> {
        let mut parsed = UserQuery::everyone();
        parsed.group = match group {
            None | Some(Value::Null) => return Err(UserError::Missing("group")),
            Some(Value::String(group)) if group.is_empty() => {
                return Err(UserError::Missing("group"));
            }
            Some(value) => Some(text("group", value)?),
        };
        parsed.active = Some(true);
        if let Some(limit) = limit.filter(|limit| !limit.is_null()) {
            parsed.limit(limit)?;
        }
        Ok(parsed)
    }

    /// `n`, or `{offset, count}` (`{5, 10}` is rows 6 to 15).
    fn limit(&mut self, value: &Value) -> Result<(), UserError> {
        const SHAPE: &str = "Query key 'limit' must be a count of at least 1, or {offset, count}.";
        let (offset, count) = match value {
            Value::Number(_) => (0, whole(value).ok_or_else(|| UserError::bad(SHAPE))?),
            Value::Array(pair) if pair.len() == 2 => (
                whole(&pair[0]).ok_or_else(|| UserError::bad(SHAPE))?,
                whole(&pair[1]).ok_or_else(|| UserError::bad(SHAPE))?,
            ),
            _ => return Err(UserError::bad(SHAPE)),
        };
        if offset < 0 || count < 1 {
            return Err(UserError::bad(SHAPE));
        }
        self.single = matches!(value, Value::Number(_)) && count == 1;
        self.offset = offset;
        // Cut to `users.max_query_limit` when it runs.
        self.count = count;
        Ok(())
    }
}

/// A whole number (Lua numbers arrive as floats when they were written as `5.0`).
fn whole(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        _ => None,
    }
}

fn text(key: &str, value: &Value) -> Result<String, UserError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        _ => Err(UserError::bad(format!(
            "Query key '{key}' must be a string."
        ))),
    }
}

/// `{column = "ASC" | "DESC"}`, directions in any case; several columns apply in alphabetical
/// order (a Lua table has no order of its own).
fn order(value: &Value) -> Result<Vec<(Column, Direction)>, UserError> {
    let map = match value {
        Value::Object(map) => map,
        Value::Array(items) if items.is_empty() => return Ok(Vec::new()),
        _ => {
            return Err(UserError::bad(
                "Query key 'orderby' must be a table of column = \"ASC\" or \"DESC\".",
            ));
        }
    };
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let column = Column::parse(name)
                .ok_or_else(|| UserError::bad(format!("Cannot order users by '{name}'.")))?;
            let direction = match map[name].as_str().map(str::to_ascii_uppercase).as_deref() {
                Some("ASC") => Direction::Ascending,
                Some("DESC") => Direction::Descending,
                _ => {
                    return Err(UserError::bad(format!(
                        "The order of '{name}' must be \"ASC\" or \"DESC\"."
                    )));
                }
            };
            Ok((column, direction))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(query: Value) -> Result<UserQuery, UserError> {
        UserQuery::parse(Some(&query))
    }

    #[test]
    fn an_absent_or_empty_query_is_everyone_oldest_first_a_hundred() {
        for query in [None, Some(json!({})), Some(json!([]))] {
            let parsed = UserQuery::parse(query.as_ref()).unwrap();
            assert_eq!(parsed, UserQuery::everyone());
        }
        assert_eq!(UserQuery::everyone().count, DEFAULT_LIMIT);
    }

    #[test]
    fn limits_one_number_or_an_offset_and_count() {
        let one = parse(json!({"limit": 1})).unwrap();
        assert!(one.single);
        let pair = parse(json!({"limit": [0, 1]})).unwrap();
        assert!(!pair.single, "only the number 1 means one user");
        let window = parse(json!({"limit": [5, 10]})).unwrap();
        assert_eq!((window.offset, window.count), (5, 10));
        assert_eq!(parse(json!({"limit": 5.0})).unwrap().count, 5);
        assert_eq!(parse(json!({"limit": 1e6})).unwrap().count, 1_000_000);
        for bad in [
            json!({"limit": 0}),
            json!({"limit": -1}),
            json!({"limit": 2.5}),
            json!({"limit": [-1, 5]}),
            json!({"limit": [0, 0]}),
            json!({"limit": [1]}),
            json!({"limit": "10"}),
        ] {
            let e = parse(bad.clone()).unwrap_err();
            assert!(matches!(e, UserError::BadParameter(_)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn order_keys_apply_alphabetically_in_any_case() {
        let parsed = parse(json!({"orderby": {"username": "desc", "created": "Asc"}})).unwrap();
        assert_eq!(
            parsed.order,
            vec![
                (Column::Created, Direction::Ascending),
                (Column::Username, Direction::Descending)
            ]
        );
        assert!(parse(json!({"orderby": {"password_hash": "ASC"}})).is_err());
        assert!(parse(json!({"orderby": {"created": "UP"}})).is_err());
    }

    #[test]
    fn unknown_keys_and_the_password_key_are_refused() {
        for bad in [
            json!({"password": "x"}),
            json!({"where": "1=1"}),
            json!({"active": "yes"}),
            json!({"username": 5}),
        ] {
            assert!(
                matches!(parse(bad.clone()), Err(UserError::BadParameter(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_group_query_needs_its_group_and_takes_only_active_users() {
        assert!(matches!(
            UserQuery::group(None, None),
            Err(UserError::Missing("group"))
        ));
        let parsed = UserQuery::group(Some(&json!("cadets")), Some(&json!(1))).unwrap();
        assert_eq!(parsed.group.as_deref(), Some("cadets"));
        assert_eq!(parsed.active, Some(true));
        assert!(parsed.single);
    }
}
