//! What a hostile client controls on the wire: the signed header values, `X-Forwarded-For` and
//! the body, through the signature check, the client address, the body parser and every users
//! input parser. Nothing may panic, and a refusal must carry a Coronium status.
#![no_main]

use libfuzzer_sys::fuzz_target;

use coronium::users::UserQuery;
use coronium::users::input::{self, Credentials, NewUser, PasswordForm, UserPatch};
use coronium::users::oauth::{self, LinkFields};
use coronium::wire;

fuzz_target!(|data: &[u8]| {
    // Up to the first NUL: header values separated by newlines; the rest: the body.
    let (head, body) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    let head = String::from_utf8_lossy(head);
    let mut fields = head.split('\n');
    let mut next = || fields.next().unwrap_or_default();
    let (project, action, time, auth, scope) = (next(), next(), next(), next(), next());
    let forwarded_for = next();
    let _ = wire::signature_matches(
        "03624656-ca90-11e7-b8d4-fb59abeb4c03",
        project,
        action,
        time,
        auth,
    );
    let _ = input::Scope::parse(scope);
    // A trusted proxy's X-Forwarded-For: whatever it says, the client is one of its addresses
    // or the proxy itself.
    let proxy = std::net::IpAddr::from([10, 0, 0, 1]);
    let trusted = ["10.0.0.0/8".parse().unwrap()];
    let client = coronium::server::forwarded::client_ip(proxy, [forwarded_for], &trusted);
    assert!(client == proxy || forwarded_for.contains(&client.to_string()) || client.is_ipv6());
    let params = match wire::parse_params(body) {
        Ok(params) => params,
        Err(refusal) => {
            assert!(
                refusal.status.code() > 0 && refusal.http >= 400,
                "{refusal:?}"
            );
            return;
        }
    };
    for form in [PasswordForm::Plain, PasswordForm::Canonical] {
        let _ = NewUser::parse(&params, form);
        let _ = Credentials::parse(&params, form);
        let _ = UserPatch::parse(params.get("update"), form);
    }
    let _ = input::user_id(&params);
    let _ = oauth::provider(&params);
    let _ = oauth::login_account(&params);
    let _ = LinkFields::parse(params.get("auth"));
    let _ = LinkFields::parse(params.get("update"));
    let _ = LinkFields::parse_flat(&params);
    let _ = LinkFields::token_expiry(&params);
    let _ = UserQuery::parse(params.get("query"));
    let _ = UserQuery::group(params.get("group"), params.get("limit"));
});
