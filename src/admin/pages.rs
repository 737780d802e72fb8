//! The console's pages: the route table (the one list the router and its tests share), session
//! and CSRF checks, and one function per page. Templates are embedded (`templates/`), rendered
//! with minijinja, HTML-escaped by default.

use std::collections::HashSet;
use std::net::IpAddr;

use minijinja::{Environment, context};
use serde_json::{Map, Value, json};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::store::{self, AuditEntry, SearchField, UserSearch, UserState};
use super::{AdminError, Console, chart};
use crate::users::input::{MailOptions, UserId, UserPatch};
use crate::users::password::Secret;
use crate::users::{ClientAddress, PasswordForm, Scope, User, UserError, Within};

/// Where the console lives.
pub const BASE: &str = "/_coronium/admin";
/// The session cookie.
pub const SESSION_COOKIE: &str = "coronium_admin";
/// The login form's own CSRF token (a double-submit cookie: there is no session yet).
pub const LOGIN_COOKIE: &str = "coronium_admin_login";
/// Users per page of a list.
const PAGE_SIZE: i64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// What a page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    LoginForm,
    Login,
    Stylesheet,
    Logout,
    Dashboard,
    Users,
    User,
    EditUser,
    SetExtra,
    RemoveExtra,
    Disable,
    Enable,
    DeleteForm,
    Delete,
    Resend,
    Reset,
    Unlock,
    Pending,
    Audit,
    Analytics,
    Scopes,
    SetScopePermissions,
    Projects,
    Server,
}

/// A route: a method, a path under [`BASE`] (`{id}` matches one segment), and whether it is
/// open without a session (only the login form and the stylesheet are).
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub handler: Handler,
    pub public: bool,
}

const fn route(method: Method, path: &'static str, handler: Handler) -> Route {
    Route {
        method,
        path,
        handler,
        public: false,
    }
}

const fn public(method: Method, path: &'static str, handler: Handler) -> Route {
    Route {
        method,
        path,
        handler,
        public: true,
    }
}

/// The extra keys a user's page shows, and how much of each value.
const SHOWN_EXTRA_KEYS: usize = 200;
const SHOWN_VALUE_CHARS: usize = 200;

/// `text` cut to `chars` characters, with an ellipsis when it was longer.
fn cut(text: String, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// Every console route. The router matches only these.
pub const ROUTES: &[Route] = &[
    public(Method::Get, "/login", Handler::LoginForm),
    public(Method::Post, "/login", Handler::Login),
    public(Method::Get, "/assets/console.css", Handler::Stylesheet),
    route(Method::Post, "/logout", Handler::Logout),
    route(Method::Get, "/", Handler::Dashboard),
    route(Method::Get, "/users", Handler::Users),
    route(Method::Get, "/users/{id}", Handler::User),
    route(Method::Post, "/users/{id}", Handler::EditUser),
    route(Method::Post, "/users/{id}/extra", Handler::SetExtra),
    route(
        Method::Post,
        "/users/{id}/extra/remove",
        Handler::RemoveExtra,
    ),
    route(Method::Post, "/users/{id}/disable", Handler::Disable),
    route(Method::Post, "/users/{id}/enable", Handler::Enable),
    route(Method::Get, "/users/{id}/delete", Handler::DeleteForm),
    route(Method::Post, "/users/{id}/delete", Handler::Delete),
    route(Method::Post, "/users/{id}/resend", Handler::Resend),
    route(Method::Post, "/users/{id}/reset", Handler::Reset),
    route(Method::Post, "/users/{id}/unlock", Handler::Unlock),
    route(Method::Get, "/pending", Handler::Pending),
    route(Method::Get, "/audit", Handler::Audit),
    route(Method::Get, "/analytics", Handler::Analytics),
    route(Method::Get, "/scopes", Handler::Scopes),
    route(Method::Post, "/scopes", Handler::SetScopePermissions),
    route(Method::Get, "/projects", Handler::Projects),
    route(Method::Get, "/server", Handler::Server),
];

/// The route for `path` (under [`BASE`]) and the `{id}` it matched.
pub fn find_route(method: Method, path: &str) -> Option<(Route, Option<String>)> {
    let segments: Vec<&str> = path.split('/').collect();
    ROUTES.iter().filter(|r| r.method == method).find_map(|r| {
        let pattern: Vec<&str> = r.path.split('/').collect();
        if pattern.len() != segments.len() {
            return None;
        }
        let mut id = None;
        for (want, got) in pattern.iter().zip(&segments) {
            if *want == "{id}" {
                if got.is_empty() {
                    return None;
                }
                id = Some((*got).to_owned());
            } else if want != got {
                return None;
            }
        }
        Some((*r, id))
    })
}

/// A console request, as the HTTP layer read it.
#[derive(Debug, Clone)]
pub struct ConsoleRequest {
    pub method: Method,
    /// The path under [`BASE`], starting with `/`.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// A POST's form fields.
    pub form: Vec<(String, String)>,
    pub session_token: Option<String>,
    pub login_token: Option<String>,
    pub client: IpAddr,
    /// The browser reached us over HTTPS (cookies get `Secure`).
    pub secure: bool,
}

impl ConsoleRequest {
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The answer, for the HTTP layer to send.
#[derive(Debug, Clone)]
pub struct ConsoleResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// A redirect's target (status 303 or 301).
    pub location: Option<String>,
    pub cookies: Vec<String>,
}

impl ConsoleResponse {
    fn html(status: u16, body: String) -> Self {
        ConsoleResponse {
            status,
            content_type: "text/html; charset=utf-8",
            body,
            location: None,
            cookies: Vec::new(),
        }
    }

    /// A 303 to a console path.
    fn see_other(path: &str) -> Self {
        ConsoleResponse {
            status: 303,
            content_type: "text/plain; charset=utf-8",
            body: String::new(),
            location: Some(format!("{BASE}{path}")),
            cookies: Vec::new(),
        }
    }

    fn with_cookie(mut self, cookie: String) -> Self {
        self.cookies.push(cookie);
        self
    }
}

/// The compiled templates.
pub struct Views {
    env: Environment<'static>,
}

const STYLESHEET: &str = include_str!("templates/console.css");

impl Views {
    pub fn new() -> Self {
        let mut env = Environment::new();
        for (name, source) in [
            ("base.html", include_str!("templates/base.html")),
            ("login.html", include_str!("templates/login.html")),
            ("dashboard.html", include_str!("templates/dashboard.html")),
            ("users.html", include_str!("templates/users.html")),
            ("user.html", include_str!("templates/user.html")),
            ("delete.html", include_str!("templates/delete.html")),
            ("audit.html", include_str!("templates/audit.html")),
            ("analytics.html", include_str!("templates/analytics.html")),
            ("scopes.html", include_str!("templates/scopes.html")),
            ("projects.html", include_str!("templates/projects.html")),
            ("server.html", include_str!("templates/server.html")),
            ("message.html", include_str!("templates/message.html")),
        ] {
            env.add_template(name, source)
                .expect("the console's built-in templates compile");
        }
        env.add_filter("utc", |secs: Option<i64>| {
            secs.map(format_utc).unwrap_or_default()
        });
        Views { env }
    }

    fn render(&self, name: &str, ctx: &Value) -> Result<String, AdminError> {
        self.render_with(name, ctx, None)
    }

    /// `safe_html` is markup we made (the chart), given to the template as `chart`, unescaped.
    fn render_with(
        &self,
        name: &str,
        ctx: &Value,
        safe_html: Option<String>,
    ) -> Result<String, AdminError> {
        let values = minijinja::Value::from(minijinja::value::Serde(ctx));
        let ctx = match safe_html {
            Some(html) => context! { chart => minijinja::Value::from_safe_string(html), ..values },
            None => values,
        };
        Ok(self.env.get_template(name)?.render(ctx)?)
    }
}

impl Default for Views {
    fn default() -> Self {
        Self::new()
    }
}

/// `3 d 4 h`, `5 h 12 min`, `42 s`: how long a server has been up.
fn uptime_text(secs: u64) -> String {
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min {} s", secs % 60),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) of unix seconds.
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// A logged-in admin's session.
struct Session {
    admin: String,
    csrf: String,
    token_hash: Vec<u8>,
}

fn token_hash(token: &str) -> Vec<u8> {
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

fn random_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path={BASE}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// What a page asks of the user after a change (`?notice=`): only these words, never text from
/// the request.
fn notice_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "saved" => "Saved.",
        "extra_saved" => "The extra key was saved.",
        "extra_removed" => "The extra key was removed.",
        "disabled" => "The user is disabled.",
        "enabled" => "The user is enabled.",
        "deleted" => "The user was deleted.",
        "resent" => "A new confirmation mail is queued.",
        "reset_sent" => "A password-reset mail is queued.",
        "unlocked" => "Failed-login counters were cleared.",
        "permissions_saved" => "The scope's client permissions were saved.",
        _ => return None,
    })
}

impl Console {
    /// Answers one console request.
    pub async fn handle(&self, request: ConsoleRequest) -> ConsoleResponse {
        match self.answer(&request).await {
            Ok(response) => response,
            Err(e) => {
                tracing::error!(error = %e, path = %request.path, "console page failed");
                self.message(
                    500,
                    "Something went wrong",
                    "The details are in the server log.",
                )
            }
        }
    }

    fn message(&self, status: u16, title: &str, text: &str) -> ConsoleResponse {
        let body = self
            .views
            .render(
                "message.html",
                &json!({ "base": BASE, "title": title, "text": text }),
            )
            .unwrap_or_else(|_| text.to_owned());
        ConsoleResponse::html(status, body)
    }

    async fn answer(&self, request: &ConsoleRequest) -> Result<ConsoleResponse, AdminError> {
        let Some((route, id)) = find_route(request.method, &request.path) else {
            return Ok(self.message(404, "Not found", "There is no such console page."));
        };
        if route.public {
            return match route.handler {
                Handler::LoginForm => self.login_form(request, None, 200),
                Handler::Login => self.login(request).await,
                _ => Ok(ConsoleResponse {
                    status: 200,
                    content_type: "text/css; charset=utf-8",
                    body: STYLESHEET.to_owned(),
                    location: None,
                    cookies: Vec::new(),
                }),
            };
        }
        let Some(session) = self.session(request).await? else {
            return Ok(match request.method {
                Method::Get => ConsoleResponse::see_other("/login"),
                Method::Post => self.message(
                    403,
                    "Signed out",
                    "Your session has ended. Sign in again and repeat the change.",
                ),
            });
        };
        if request.method == Method::Post
            && !request
                .field("csrf")
                .is_some_and(|sent| same(sent, &session.csrf))
        {
            return Ok(self.message(
                403,
                "Refused",
                "The form's security token is missing or wrong. Reload the page and try again.",
            ));
        }
        let user_id = id.as_deref().and_then(|id| Uuid::parse_str(id).ok());
        let page = Page {
            request,
            session: &session,
        };
        match (route.handler, user_id) {
            (Handler::Logout, _) => self.logout(&page).await,
            (Handler::Dashboard, _) => self.dashboard(&page).await,
            (Handler::Users, _) => self.users_list(&page, false).await,
            (Handler::Pending, _) => self.users_list(&page, true).await,
            (Handler::Audit, _) => self.audit_page(&page).await,
            (Handler::Analytics, _) => self.analytics_page(&page).await,
            (Handler::Scopes, _) => self.scopes_page(&page).await,
            (Handler::SetScopePermissions, _) => self.set_scope_permissions(&page).await,
            (Handler::Projects, _) => self.projects_page(&page).await,
            (Handler::Server, _) => self.server_page(&page).await,
            (_, None) => Ok(self.message(404, "Not found", "There is no such user.")),
            (Handler::User, Some(id)) => self.user_page(&page, id, None, 200).await,
            (Handler::DeleteForm, Some(id)) => self.delete_form(&page, id).await,
            (handler, Some(id)) => self.change_user(&page, handler, id).await,
        }
    }

    async fn session(&self, request: &ConsoleRequest) -> Result<Option<Session>, AdminError> {
        let Some(token) = &request.session_token else {
            return Ok(None);
        };
        let hash = token_hash(token);
        let idle = self.settings.idle_secs();
        let found = self
            .db
            .write(|client| {
                let hash = hash.clone();
                async move { store::touch_session(&*client, &hash, idle).await }
            })
            .await?;
        Ok(found.map(|(admin, csrf)| Session {
            admin,
            csrf,
            token_hash: hash,
        }))
    }

    fn login_form(
        &self,
        request: &ConsoleRequest,
        error: Option<&str>,
        status: u16,
    ) -> Result<ConsoleResponse, AdminError> {
        let token = random_token();
        let body = self.views.render(
            "login.html",
            &json!({ "base": BASE, "login_csrf": token, "error": error }),
        )?;
        Ok(ConsoleResponse::html(status, body).with_cookie(cookie(
            LOGIN_COOKIE,
            &token,
            3600,
            request.secure,
        )))
    }

    async fn login(&self, request: &ConsoleRequest) -> Result<ConsoleResponse, AdminError> {
        let token_matches = match (request.field("login_csrf"), &request.login_token) {
            (Some(sent), Some(cookie)) => same(sent, cookie),
            _ => false,
        };
        if !token_matches {
            return self.login_form(
                request,
                Some("The sign-in form expired. Please try again."),
                403,
            );
        }
        let name = request.field("name").unwrap_or("").trim().to_owned();
        let password = request.field("password").unwrap_or("");
        let address = ClientAddress::from_ip(request.client);
        let wait = {
            let (name, address) = (name.as_str(), &address);
            self.db
                .write(|client| async move { store::login_attempt(&*client, name, address).await })
                .await?
        };
        if wait > 0.0 {
            let secs = crate::users::throttle::wait_secs(wait);
            return self.login_form(
                request,
                Some(&format!("Too many failed sign-ins. Try again in {secs} s.")),
                429,
            );
        }
        let stored = {
            let name = name.as_str();
            self.db
                .read(|client| async move { store::password_hash(&*client, name).await })
                .await?
        };
        // An unknown name costs a full verification too, so timing tells no names.
        let verdict = self
            .hasher
            .verify(&Secret::from_plain(password), stored.as_deref())
            .await
            .map_err(|e| AdminError::Hashing(e.to_string()))?;
        if !verdict.matched {
            tracing::info!(admin = %name, client = %request.client, "console sign-in refused");
            return self.login_form(request, Some("Wrong name or password."), 401);
        }
        // A new token every time: a token planted before sign-in is never promoted.
        let token = random_token();
        let csrf = random_token();
        let hash = token_hash(&token);
        let absolute = self.settings.session_secs();
        let old = request.session_token.as_deref().map(token_hash);
        {
            let (name, hash, csrf) = (name.as_str(), hash.as_slice(), csrf.as_str());
            let address = address.as_str();
            self.db
                .transaction(async |tx| {
                    if let Some(old) = &old {
                        store::close_session(tx, old).await?;
                    }
                    store::open_session(tx, name, address, hash, csrf, absolute).await?;
                    store::audit(
                        tx,
                        &AuditEntry {
                            admin: name,
                            action: "sign_in",
                            scope: None,
                            user_id: None,
                            detail: json!({ "client": request.client.to_string() }),
                        },
                    )
                    .await
                })
                .await?;
        }
        tracing::info!(admin = %name, client = %request.client, "console sign-in");
        Ok(ConsoleResponse::see_other("/")
            .with_cookie(cookie(SESSION_COOKIE, &token, absolute, request.secure))
            .with_cookie(cookie(LOGIN_COOKIE, "", 0, request.secure)))
    }

    async fn logout(&self, page: &Page<'_>) -> Result<ConsoleResponse, AdminError> {
        let hash = page.session.token_hash.as_slice();
        self.db
            .write(|client| async move { store::close_session(&*client, hash).await })
            .await?;
        Ok(ConsoleResponse::see_other("/login").with_cookie(cookie(
            SESSION_COOKIE,
            "",
            0,
            page.request.secure,
        )))
    }

    /// The scope a page shows (`?scope=`, else "default") and the scopes to offer: those
    /// starting with `?find=` when the page was asked to find one.
    async fn page_scope(&self, page: &Page<'_>) -> Result<(String, Vec<String>), AdminError> {
        let prefix = page.request.query("find").unwrap_or("").trim();
        let scopes = self
            .db
            .read(|client| async move { store::scopes(&*client, prefix).await })
            .await?;
        let scope = page
            .request
            .query("scope")
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_owned();
        Ok((scope, scopes))
    }

    fn render_page(
        &self,
        page: &Page<'_>,
        (template, status): (&str, u16),
        frame: Frame<'_>,
        mut ctx: Value,
        safe_html: Option<String>,
    ) -> Result<ConsoleResponse, AdminError> {
        let Frame { nav, scope, scopes } = frame;
        let notice = page.request.query("notice").and_then(notice_text);
        if let Value::Object(fields) = &mut ctx {
            fields.insert("base".into(), BASE.into());
            fields.insert("admin".into(), page.session.admin.clone().into());
            fields.insert("csrf".into(), page.session.csrf.clone().into());
            fields.insert("nav".into(), nav.into());
            fields.insert("scope".into(), scope.into());
            fields.insert("scopes".into(), json!(scopes));
            fields.insert("notice".into(), json!(notice));
        }
        let body = self.views.render_with(template, &ctx, safe_html)?;
        Ok(ConsoleResponse::html(status, body))
    }

    async fn dashboard(&self, page: &Page<'_>) -> Result<ConsoleResponse, AdminError> {
        let (scope, scopes) = self.page_scope(page).await?;
        let (totals, days) = {
            let scope = scope.as_str();
            let totals = self
                .db
                .read(|client| async move { store::scope_totals(&*client, scope).await })
                .await?;
            let days = self
                .db
                .read(|client| async move { store::daily_figures(&*client, scope, 30).await })
                .await?;
            (totals, days)
        };
        let today = days.last().cloned();
        let chart = chart::daily_bars(&days);
        let ctx = json!({ "totals": totals, "today": today, "days": days });
        self.render_page(
            page,
            ("dashboard.html", 200),
            Frame {
                nav: "dashboard",
                scope: &scope,
                scopes: &scopes,
            },
            ctx,
            Some(chart),
        )
    }

    async fn users_list(
        &self,
        page: &Page<'_>,
        pending: bool,
    ) -> Result<ConsoleResponse, AdminError> {
        let (scope, scopes) = self.page_scope(page).await?;
        let request = page.request;
        let q = request.query("q").unwrap_or("").trim().to_lowercase();
        let state = match pending {
            true => Some(UserState::Pending),
            false => request.query("state").and_then(UserState::parse),
        };
        let search = UserSearch {
            scope: scope.clone(),
            field: Some(match q.contains('@') {
                true => SearchField::Email,
                false => SearchField::Username,
            }),
            prefix: q.clone(),
            group: request.query("group").map(str::to_owned),
            state,
            after: request.query("after").map(str::to_owned),
        };
        let mut rows = {
            let search = &search;
            self.db
                .read(|client| async move {
                    store::search_users(&*client, search, PAGE_SIZE + 1).await
                })
                .await?
        };
        let more = rows.len() as i64 > PAGE_SIZE;
        rows.truncate(PAGE_SIZE as usize);
        let next = match more {
            true => rows.last().map(|row| {
                let mut query = form_urlencoded::Serializer::new(String::new());
                query.append_pair("scope", &scope);
                if !q.is_empty() {
                    query.append_pair("q", &q);
                }
                if let Some(group) = &search.group {
                    query.append_pair("group", group);
                }
                if let (false, Some(state)) = (pending, request.query("state")) {
                    query.append_pair("state", state);
                }
                query.append_pair("after", &row.key);
                query.finish()
            }),
            false => None,
        };
        let ctx = json!({
            "rows": rows,
            "q": q,
            "pending": pending,
            "group": search.group,
            "state": request.query("state"),
            "next": next,
            "first_page": search.after.is_none(),
        });
        let nav = if pending { "pending" } else { "users" };
        self.render_page(
            page,
            ("users.html", 200),
            Frame {
                nav,
                scope: &scope,
                scopes: &scopes,
            },
            ctx,
            None,
        )
    }

    async fn user_page(
        &self,
        page: &Page<'_>,
        id: Uuid,
        error: Option<String>,
        status: u16,
    ) -> Result<ConsoleResponse, AdminError> {
        let user = match self
            .users
            .get(Within::AnyScope, Some(UserId::from(id)))
            .await
        {
            Ok(user) => user,
            Err(UserError::NotFound) => {
                return Ok(self.message(404, "Not found", "There is no such user."));
            }
            Err(e) => return Err(internal(e)),
        };
        let providers = self
            .users
            .providers(Within::AnyScope, Some(UserId::from(id)))
            .await
            .map_err(internal)?;
        let failures = self
            .db
            .read(|client| async move { store::login_failures(&*client, id).await })
            .await?;
        // A page of bounded size whatever the record holds: the first keys, each value cut.
        let mut user = user;
        let extra_keys = user.extra.len();
        let extra: Vec<(String, String)> = std::mem::take(&mut user.extra)
            .into_iter()
            .take(SHOWN_EXTRA_KEYS)
            .map(|(k, v)| (k, cut(v.to_string(), SHOWN_VALUE_CHARS)))
            .collect();
        let scopes = vec![user.scope.clone()];
        let ctx = json!({
            "user": user,
            "extra": extra,
            "extra_hidden": extra_keys.saturating_sub(SHOWN_EXTRA_KEYS),
            "providers": providers,
            "failures": failures,
            "error": error,
            "mail_from": self.settings.mail_from,
        });
        self.render_page(
            page,
            ("user.html", status),
            Frame {
                nav: "users",
                scope: &user.scope,
                scopes: &scopes,
            },
            ctx,
            None,
        )
    }

    async fn delete_form(&self, page: &Page<'_>, id: Uuid) -> Result<ConsoleResponse, AdminError> {
        let user = match self
            .users
            .get(Within::AnyScope, Some(UserId::from(id)))
            .await
        {
            Ok(user) => user,
            Err(UserError::NotFound) => {
                return Ok(self.message(404, "Not found", "There is no such user."));
            }
            Err(e) => return Err(internal(e)),
        };
        let scopes = vec![user.scope.clone()];
        self.render_page(
            page,
            ("delete.html", 200),
            Frame {
                nav: "users",
                scope: &user.scope,
                scopes: &scopes,
            },
            json!({ "user": user }),
            None,
        )
    }

    /// The changes a user's page makes. Each is written to the audit trail; a refused one
    /// shows the page again with the reason.
    async fn change_user(
        &self,
        page: &Page<'_>,
        handler: Handler,
        id: Uuid,
    ) -> Result<ConsoleResponse, AdminError> {
        let user = match self
            .users
            .get(Within::AnyScope, Some(UserId::from(id)))
            .await
        {
            Ok(user) => user,
            Err(UserError::NotFound) => {
                return Ok(self.message(404, "Not found", "There is no such user."));
            }
            Err(e) => return Err(internal(e)),
        };
        let outcome = self.apply(page, handler, &user).await;
        match outcome {
            Ok((action, detail, notice)) => {
                self.audit(page, action, &user, detail).await?;
                if handler == Handler::Delete {
                    let query = form_urlencoded::Serializer::new(String::new())
                        .append_pair("scope", &user.scope)
                        .append_pair("notice", notice)
                        .finish();
                    return Ok(ConsoleResponse::see_other(&format!("/users?{query}")));
                }
                Ok(ConsoleResponse::see_other(&format!(
                    "/users/{id}?notice={notice}"
                )))
            }
            Err(UserError::Internal(cause)) => Err(internal(UserError::Internal(cause))),
            Err(refused) => {
                self.user_page(page, id, Some(refused.to_string()), 400)
                    .await
            }
        }
    }

    async fn apply(
        &self,
        page: &Page<'_>,
        handler: Handler,
        user: &User,
    ) -> Result<(&'static str, Value, &'static str), UserError> {
        let request = page.request;
        let id = Some(UserId::from(user.user_id));
        let update = |fields: Value| UserPatch::parse(Some(&fields), PasswordForm::Canonical);
        Ok(match handler {
            Handler::EditUser => {
                let mut fields = Map::new();
                let email = request.field("email").unwrap_or("").trim();
                if !email.is_empty() && Some(email) != user.email.as_deref() {
                    fields.insert("email".into(), email.into());
                }
                let group = request.field("group").unwrap_or("").trim();
                if !group.is_empty() && group != user.group {
                    fields.insert("group".into(), group.into());
                }
                let active = request.field("active").is_some();
                if active != user.active {
                    fields.insert("active".into(), active.into());
                }
                let detail = Value::Object(fields.clone());
                self.users
                    .update(Within::AnyScope, id, update(Value::Object(fields))?)
                    .await?;
                ("user.edit", detail, "saved")
            }
            Handler::SetExtra => {
                let key = request.field("key").unwrap_or("").trim();
                if key.is_empty() {
                    return Err(UserError::bad("An extra key needs a name."));
                }
                let text = request.field("value").unwrap_or("");
                // JSON when it parses (numbers, true, tables), else the text as a string.
                let value = serde_json::from_str::<Value>(text)
                    .unwrap_or_else(|_| Value::String(text.to_owned()));
                self.users
                    .update(
                        Within::AnyScope,
                        id,
                        update(json!({ "extra": { key: value.clone() } }))?,
                    )
                    .await?;
                (
                    "user.extra.set",
                    json!({ "key": key, "value": value }),
                    "extra_saved",
                )
            }
            Handler::RemoveExtra => {
                let key = request.field("key").unwrap_or("");
                self.users
                    .update(
                        Within::AnyScope,
                        id,
                        update(json!({ "extra": { key: "_NULL" } }))?,
                    )
                    .await?;
                ("user.extra.remove", json!({ "key": key }), "extra_removed")
            }
            Handler::Disable | Handler::Enable => {
                let active = handler == Handler::Enable;
                self.users
                    .update(Within::AnyScope, id, update(json!({ "active": active }))?)
                    .await?;
                match active {
                    true => ("user.enable", json!({}), "enabled"),
                    false => ("user.disable", json!({}), "disabled"),
                }
            }
            Handler::Delete => {
                self.users.delete(Within::AnyScope, id).await?;
                (
                    "user.delete",
                    json!({ "username": user.username, "email": user.email }),
                    "deleted",
                )
            }
            Handler::Resend => {
                let scope = Scope::parse(&user.scope)?;
                self.users.resend_confirmation(&scope, id, None).await?;
                ("user.resend_confirmation", json!({}), "resent")
            }
            Handler::Reset => {
                let scope = Scope::parse(&user.scope)?;
                let email = user.email.as_deref().ok_or(UserError::InvalidEmail)?;
                let options = MailOptions::parse(
                    &json!({
                        "from_email": self.settings.mail_from,
                        "subject": "Reset your password",
                    }),
                    "options",
                )?;
                self.users
                    .send_password_reset_link(&scope, email, options)
                    .await?;
                ("user.password_reset", json!({}), "reset_sent")
            }
            Handler::Unlock => {
                let scope = Scope::parse(&user.scope)?;
                let cleared = self.users.unlock(&scope, &user.username).await?;
                ("user.unlock", json!({ "cleared": cleared }), "unlocked")
            }
            _ => return Err(UserError::bad("Unknown change.")),
        })
    }

    async fn audit(
        &self,
        page: &Page<'_>,
        action: &str,
        user: &User,
        detail: Value,
    ) -> Result<(), AdminError> {
        let entry = AuditEntry {
            admin: &page.session.admin,
            action,
            scope: Some(&user.scope),
            user_id: Some(user.user_id),
            detail,
        };
        let entry = &entry;
        self.db
            .write(|client| async move { store::audit(&*client, entry).await })
            .await
    }

    async fn analytics_page(&self, page: &Page<'_>) -> Result<ConsoleResponse, AdminError> {
        let (scope, scopes) = self.page_scope(page).await?;
        let summary = self
            .analytics
            .summary(&scope, 30)
            .await
            .map_err(|e| AdminError::Users(e.to_string()))?;
        let opens_total: i64 = summary.opens_per_day.iter().map(|(_, n)| n).sum();
        let days: Vec<store::DayFigures> = summary
            .opens_per_day
            .iter()
            .map(|(day, opens)| store::DayFigures {
                day: day.clone(),
                joins: *opens,
                logins: 0,
                opens: *opens,
            })
            .collect();
        let chart = chart::daily_opens(&days);
        self.render_page(
            page,
            ("analytics.html", 200),
            Frame {
                nav: "analytics",
                scope: &scope,
                scopes: &scopes,
            },
            json!({ "summary": summary, "opens_total": opens_total }),
            Some(chart),
        )
    }

    /// The scopes seen in data, and the chosen scope's client permissions as checkboxes (checked:
    /// allowed).
    async fn scopes_page(&self, page: &Page<'_>) -> Result<ConsoleResponse, AdminError> {
        let (scope, scopes) = self.page_scope(page).await?;
        let denied = crate::permissions::denied_in(&self.db, &scope)
            .await
            .map_err(|e| AdminError::Users(e.to_string()))?;
        let modules: Vec<Value> = crate::permissions::MODULE_ACTIONS
            .iter()
            .map(|(project, actions)| {
                let denied = denied.get(*project);
                let actions: Vec<Value> = actions
                    .iter()
                    .map(|action| {
                        let allowed = !denied.is_some_and(|d| d.iter().any(|a| a == action));
                        json!({ "name": action, "allowed": allowed })
                    })
                    .collect();
                json!({ "project": project, "actions": actions })
            })
            .collect();
        self.render_page(
            page,
            ("scopes.html", 200),
            Frame {
                nav: "scopes",
                scope: &scope,
                scopes: &scopes,
            },
            json!({ "modules": modules, "find": page.request.query("find").unwrap_or("") }),
            None,
        )
    }

    /// Saves a scope's permissions: every module action not checked is denied.
    async fn set_scope_permissions(&self, page: &Page<'_>) -> Result<ConsoleResponse, AdminError> {
        let request = page.request;
        let Some(scope) = request.field("scope").filter(|s| !s.is_empty()) else {
            return Ok(self.message(400, "No scope", "Choose a scope first."));
        };
        if let Err(e) = Scope::parse(scope) {
            return Ok(self.message(400, "Bad scope", &e.to_string()));
        }
        let allowed: HashSet<&str> = request
            .form
            .iter()
            .filter(|(k, _)| k == "allow")
            .map(|(_, v)| v.as_str())
            .collect();
        let denied: Vec<(String, String)> = crate::permissions::MODULE_ACTIONS
            .iter()
            .flat_map(|(project, actions)| {
                actions
                    .iter()
                    .map(move |action| (project.to_string(), action.to_string()))
            })
            .filter(|(project, action)| !allowed.contains(format!("{project}/{action}").as_str()))
            .collect();
        crate::permissions::set_denied(&self.db, scope, &denied)
            .await
            .map_err(|e| AdminError::Users(e.to_string()))?;
        self.permissions.invalidate();
        let entry = AuditEntry {
            admin: &page.session.admin,
            action: "scope.permissions",
            scope: Some(scope),
            user_id: None,
            detail: json!({ "denied": denied.iter().map(|(p, a)| format!("{p}/{a}")).collect::<Vec<_>>() }),
        };
        let entry = &entry;
        self.db
            .write(|client| async move { store::audit(&*client, entry).await })
            .await?;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("scope", scope)
            .append_pair("notice", "permissions_saved")
            .finish();
        Ok(ConsoleResponse::see_other(&format!("/scopes?{query}")))
    }

    async fn projects_page(&self, page: &Page<'_>) -> Result<ConsoleResponse, AdminError> {
        let dir = self.projects_dir.clone();
        let scanned = tokio::task::spawn_blocking(move || super::projects::scan(&dir))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let records = self.vitals.projects();
        let (folders, folder_error) = match scanned {
            Ok(folders) => (folders, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let mut projects: Vec<Value> = folders
            .iter()
            .map(|folder| {
                let record = records.get(&folder.name).cloned().unwrap_or_default();
                json!({
                    "name": folder.name, "files": folder.files, "more": folder.more,
                    "state": record.state(), "record": record, "on_disk": true,
                })
            })
            .collect();
        // Loaded once, gone from the folder since.
        for (name, record) in &records {
            if !folders.iter().any(|f| &f.name == name) {
                projects.push(json!({
                    "name": name, "files": [], "more": false, "state": "removed",
                    "record": record, "on_disk": false,
                }));
            }
        }
        let (scope, scopes) = self.page_scope(page).await?;
        self.render_page(
            page,
            ("projects.html", 200),
            Frame {
                nav: "projects",
                scope: &scope,
                scopes: &scopes,
            },
            json!({
                "projects_dir": self.projects_dir.display().to_string(),
                "folder_error": folder_error,
                "projects": projects,
                "errors": self.vitals.handler_errors(),
                "errors_kept": crate::vitals::HANDLER_ERRORS_KEPT,
            }),
            None,
        )
    }

    async fn server_page(&self, page: &Page<'_>) -> Result<ConsoleResponse, AdminError> {
        let figures = self.vitals.server();
        let (scope, scopes) = self.page_scope(page).await?;
        self.render_page(
            page,
            ("server.html", 200),
            Frame {
                nav: "server",
                scope: &scope,
                scopes: &scopes,
            },
            json!({
                "server": figures,
                "uptime": uptime_text(figures.uptime_secs),
            }),
            None,
        )
    }

    async fn audit_page(&self, page: &Page<'_>) -> Result<ConsoleResponse, AdminError> {
        let before = page.request.query("before").and_then(|b| b.parse().ok());
        let rows = self
            .db
            .read(|client| async move { store::audit_page(&*client, before, 100).await })
            .await?;
        let next = (rows.len() == 100)
            .then(|| rows.last().map(|r| r.id))
            .flatten();
        let (scope, scopes) = self.page_scope(page).await?;
        self.render_page(
            page,
            ("audit.html", 200),
            Frame {
                nav: "audit",
                scope: &scope,
                scopes: &scopes,
            },
            json!({ "rows": rows, "next": next }),
            None,
        )
    }
}

/// The frame around a page: the menu entry it belongs to, and the scope picker's state.
struct Frame<'a> {
    nav: &'a str,
    scope: &'a str,
    scopes: &'a [String],
}

/// What every page handler gets.
struct Page<'a> {
    request: &'a ConsoleRequest,
    session: &'a Session,
}

fn internal(e: UserError) -> AdminError {
    AdminError::Users(match e {
        UserError::Internal(cause) => cause.to_string(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_their_own_paths_only() {
        let (route, id) = find_route(Method::Get, "/users/abc").unwrap();
        assert_eq!(route.handler, Handler::User);
        assert_eq!(id.as_deref(), Some("abc"));
        let (route, _) = find_route(Method::Post, "/users/abc/extra/remove").unwrap();
        assert_eq!(route.handler, Handler::RemoveExtra);
        assert!(find_route(Method::Get, "/users/abc/extra").is_none());
        assert!(find_route(Method::Get, "/users/").is_none());
        assert!(find_route(Method::Post, "/").is_none());
        let public: Vec<_> = ROUTES.iter().filter(|r| r.public).map(|r| r.path).collect();
        assert_eq!(public, ["/login", "/login", "/assets/console.css"]);
    }

    /// Every template renders with the context its page gives it.
    #[test]
    fn the_templates_render() {
        let views = Views::new();
        let base = |mut page: Value| {
            let fields = page.as_object_mut().unwrap();
            for (k, v) in [
                ("base", json!(BASE)),
                ("admin", json!("ops")),
                ("csrf", json!("token")),
                ("nav", json!("users")),
                ("scope", json!("default")),
                ("scopes", json!(["default", "game"])),
                ("notice", json!("Saved.")),
            ] {
                fields.insert(k.into(), v);
            }
            page
        };
        let user = json!({
            "user_id": "0190a1b2-0000-7000-8000-000000000001", "username": "alice",
            "email": "a@example.com", "group": "default", "extra": {}, "scope": "default",
            "active": true, "validated": true, "created": 1, "updated": 2, "login_count": 0,
        });
        let pages = [
            ("login.html", json!({ "login_csrf": "t", "error": null })),
            ("message.html", json!({ "title": "T", "text": "x" })),
            (
                "dashboard.html",
                base(json!({
                    "totals": { "total": 1, "active": 1, "pending": 0 },
                    "today": { "day": "2026-12-03", "joins": 1, "logins": 2 },
                    "days": [{ "day": "2026-12-03", "joins": 1, "logins": 2 }],
                })),
            ),
            (
                "users.html",
                base(json!({
                    "rows": [{ "user_id": "x", "username": "alice", "email": null, "group": "g",
                               "active": true, "confirmation": null, "created": 1,
                               "last_login": null, "login_count": 0 }],
                    "q": "al", "pending": false, "group": null, "state": null,
                    "next": "scope=default&after=alice", "first_page": false,
                })),
            ),
            (
                "user.html",
                base(json!({
                    "user": user, "extra": [["level", "7"]],
                    "providers": [{ "provider": "google", "client_id": "c",
                                    "access_token_expired": false }],
                    "failures": 0, "error": "Bad.", "mail_from": "x@example.com",
                })),
            ),
            ("delete.html", base(json!({ "user": user }))),
            (
                "scopes.html",
                base(json!({ "modules": [{ "project": "api.users",
                    "actions": [{ "name": "login", "allowed": true },
                                { "name": "create", "allowed": false }] }] })),
            ),
            (
                "analytics.html",
                base(json!({
                    "opens_total": 3,
                    "summary": { "opens_per_day": [["2026-12-03", 3]],
                                 "platforms": [{ "key": "ios", "count": 3 }], "versions": [],
                                 "models": [], "events": [{ "key": "level_up", "count": 2 }] },
                })),
            ),
            (
                "audit.html",
                base(
                    json!({ "rows": [{ "id": 1, "at": 1, "admin": "ops", "action": "a",
                                        "scope": null, "user_id": null, "detail": "{}" }],
                             "next": null }),
                ),
            ),
            (
                "projects.html",
                base(json!({
                    "projects_dir": "./projects", "folder_error": null, "errors_kept": 50,
                    "projects": [{ "name": "Demo", "more": false, "state": "failed",
                                   "on_disk": true,
                                   "files": [{ "path": "main.lua", "bytes": 10, "modified": 1 }],
                                   "record": { "loaded": 1, "loads": 2, "failing": true,
                                               "error": { "at": 2, "message": "boom",
                                                          "location": "Demo/main.lua:1" } } }],
                    "errors": [{ "project": "Demo", "action": "a", "at": 3, "message": "x",
                                 "location": null }],
                })),
            ),
            (
                "server.html",
                base(json!({
                    "uptime": "5 s",
                    "server": crate::vitals::Vitals::default().server(),
                })),
            ),
            (
                "server.html",
                base(json!({
                    "uptime": "5 s",
                    "server": { "version": "0.1.0", "started": 1, "uptime_secs": 5,
                                "workers": 2,
                                "metrics": crate::vitals::MetricFigures::default() },
                })),
            ),
        ];
        for (name, ctx) in pages {
            let html = views
                .render_with(name, &ctx, Some("<svg></svg>".into()))
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(html.contains("</html>"), "{name}");
        }
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00");
        assert_eq!(format_utc(1_796_256_000 + 3_723), "2026-12-03 01:02");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00");
    }
}
