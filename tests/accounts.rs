//! Accounts and sessions: sign-up, sign-in, sign-out and revocation that
//! ends streams on every node, tokens whose session is gone or cannot be
//! checked, credential-attempt limits, and the first admin.

mod common;

use std::time::{Duration, Instant};

use common::{fresh_database, wait_for_subscribers, GqlClient, TestServer, CHANGES, WAIT};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tidewire::config::Config;

const SECRET: &str = "accounts-secret-accounts-secret-0001";

async fn start_on(url: String) -> TestServer {
    let server = TestServer::start_on(url, |config| {
        config.jwt_secret = Some(SECRET.into());
        config.mutations_per_second = 1000;
    })
    .await;
    server
}

async fn server() -> TestServer {
    let server = start_on(fresh_database().await).await;
    server
        .sql("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY); SELECT tidewire.track('items', public => true);")
        .await;
    server
}

async fn mutate(server: &TestServer, token: Option<&str>, query: &str, variables: Value) -> Value {
    server.graphql(token, query, variables).await
}

const SIGN_UP: &str = "mutation($e: String!, $p: String!) { signUp(email: $e, password: $p) { token user { id email role } } }";
const SIGN_IN: &str = "mutation($e: String!, $p: String!) { signIn(email: $e, password: $p) { token user { id role } } }";

async fn sign_in(server: &TestServer, email: &str, password: &str) -> (String, String) {
    let response = mutate(server, None, SIGN_IN, json!({"e": email, "p": password})).await;
    let data = &response["data"]["signIn"];
    assert!(data["token"].is_string(), "{response}");
    (
        data["token"].as_str().unwrap().to_owned(),
        data["user"]["id"].as_str().unwrap().to_owned(),
    )
}

async fn subscribed(server: &TestServer, token: &str) -> GqlClient {
    let mut client = GqlClient::init_with(
        server.addr,
        json!({"authorization": format!("Bearer {token}")}),
    )
    .await;
    assert_eq!(client.next_message().await["type"], "connection_ack");
    client
        .subscribe("e", CHANGES, json!({"table": "items"}))
        .await;
    client
}

#[tokio::test]
async fn sign_up_and_sign_in_issue_working_tokens() {
    let server = server().await;
    let response = mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "Ann@Example.com", "p": "correct horse"}),
    )
    .await;
    let data = &response["data"]["signUp"];
    assert_eq!(data["user"]["email"], "ann@example.com", "{response}");
    assert_eq!(data["user"]["role"], "USER");
    let token = data["token"].as_str().unwrap();
    let (status, me) = server.post_as(token, "{ me { id role } }").await;
    assert_eq!(status, 200);
    assert_eq!(me["data"]["me"]["id"], data["user"]["id"]);

    let again = mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "ann@example.com", "p": "another one"}),
    )
    .await;
    assert_eq!(again["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let short = mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "bo@example.com", "p": "short"}),
    )
    .await;
    assert_eq!(short["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    let wrong = mutate(
        &server,
        None,
        SIGN_IN,
        json!({"e": "ann@example.com", "p": "wrong horse"}),
    )
    .await;
    assert_eq!(wrong["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert_eq!(wrong["errors"][0]["message"], "wrong email or password");
    let (token, _) = sign_in(&server, "ann@example.com", "correct horse").await;
    let (status, _) = server.post_as(&token, "{ me { id } }").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sign_out_ends_that_sessions_streams_and_no_other() {
    let server = server().await;
    mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "cy@example.com", "p": "password1"}),
    )
    .await;
    let (first, _) = sign_in(&server, "cy@example.com", "password1").await;
    let (second, _) = sign_in(&server, "cy@example.com", "password1").await;
    let mut a = subscribed(&server, &first).await;
    let mut b = subscribed(&server, &second).await;
    // Two sessions of one user share one execution; signing one out must
    // still end only that session's streams.
    common::wait_for_shared_subscribers(&server, 2, 1).await;

    let started = Instant::now();
    let out = mutate(&server, Some(&first), "mutation { signOut }", json!({})).await;
    assert_eq!(out["data"]["signOut"], true, "{out}");
    let payload = a.next_payload("e").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{payload}"
    );
    assert_eq!(
        a.closed().await,
        (4403, "Forbidden: the session was revoked".to_owned())
    );
    eprintln!("sign-out reached the stream in {:?}", started.elapsed());

    // The other session goes on; the signed-out token is refused.
    server.sql("INSERT INTO items VALUES (1)").await;
    assert_eq!(b.next_item("e", "changes").await["row"]["id"], 1);
    let (status, body) = server.post_as(&first, "{ me { id } }").await;
    assert_eq!(
        (status, body["errors"][0]["message"].as_str()),
        (401, Some("the session was revoked"))
    );
    let mut again = GqlClient::init_with(
        server.addr,
        json!({"authorization": format!("Bearer {first}")}),
    )
    .await;
    assert_eq!(again.closed().await.0, 4403);
}

#[tokio::test]
async fn an_admin_revokes_a_users_sessions_on_every_node() {
    let one = server().await;
    let two = start_on(one.database_url.clone()).await;
    mutate(
        &one,
        None,
        SIGN_UP,
        json!({"e": "dee@example.com", "p": "password1"}),
    )
    .await;
    let (token, user_id) = sign_in(&one, "dee@example.com", "password1").await;
    // Connected to the other node.
    let mut client = subscribed(&two, &token).await;
    wait_for_subscribers(&two, 1).await;

    let revoke = "mutation($u: ID!) { revokeSessions(userId: $u) }";
    let denied = mutate(&one, Some(&token), revoke, json!({"u": user_id})).await;
    assert_eq!(denied["errors"][0]["extensions"]["code"], "FORBIDDEN");

    let admin = encode(
        &Header::default(),
        &json!({"sub": "root", "role": "admin", "exp": tidewire::auth::now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let done = mutate(&one, Some(&admin), revoke, json!({"u": user_id})).await;
    // signUp and signIn each opened a session.
    assert_eq!(done["data"]["revokeSessions"], 2, "{done}");
    let payload = client.next_payload("e").await;
    assert_eq!(
        payload["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{payload}"
    );
    assert_eq!(client.closed().await.0, 4403);
}

#[tokio::test]
async fn revoking_the_sessions_of_no_user_is_an_error() {
    let server = server().await;
    let admin = encode(
        &Header::default(),
        &json!({"sub": "root", "role": "admin", "exp": tidewire::auth::now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let revoke = "mutation($u: ID!) { revokeSessions(userId: $u) }";
    let code = |body: &Value| body["errors"][0]["extensions"]["code"].clone();
    let unknown = json!({"u": "0b6f2a2e-9a41-4a7e-8f5e-1d2c3b4a5f60"});
    let unknown = mutate(&server, Some(&admin), revoke, unknown).await;
    assert_eq!(code(&unknown), "NOT_FOUND", "{unknown}");
    let malformed = mutate(&server, Some(&admin), revoke, json!({"u": "dee"})).await;
    assert_eq!(code(&malformed), "BAD_USER_INPUT", "{malformed}");

    // An account without open sessions: none ended, no error.
    let user_id: String = server
        .db()
        .await
        .query_one(
            "INSERT INTO tidewire.users (email, password_hash) VALUES ('eve@example.com', 'unused')
             RETURNING id::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let none = mutate(&server, Some(&admin), revoke, json!({"u": user_id})).await;
    assert_eq!(none["data"]["revokeSessions"], 0, "{none}");
}

#[tokio::test]
async fn mutations_are_rate_limited() {
    let server = TestServer::start_with(|config| {
        config.jwt_secret = Some(SECRET.into());
        config.mutations_per_second = 5;
    })
    .await;
    let mut limited = 0;
    // A cheap mutation, so the limiter refills little during the loop.
    for _ in 0..12 {
        let response = mutate(&server, None, "mutation { signOut }", json!({})).await;
        if response["errors"][0]["extensions"]["code"] == "RATE_LIMITED" {
            limited += 1;
        }
    }
    assert!(limited >= 5, "only {limited} of 12 were limited");
}

/// A server with `SECRET`, no mutation limit to speak of, and `adjust`.
async fn server_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|config| {
        config.jwt_secret = Some(SECRET.into());
        config.mutations_per_second = 1000;
        adjust(config);
    })
    .await
}

fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("none")
}

#[tokio::test]
async fn concurrent_sign_ins_do_not_exhaust_a_small_pool() {
    // Each sign-in once held one pooled connection while asking for a
    // second: a dozen at once on a pool of 2 waited for each other until
    // the pool's 10 s wait timeout.
    let server = server_with(|config| {
        config.pool_size = 2;
        config.credential_attempts_per_account = 1000;
        config.credential_attempts_per_address = 1000;
    })
    .await;
    let up = mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "many@example.com", "p": "password1"}),
    )
    .await;
    assert!(up["data"]["signUp"]["token"].is_string(), "{up}");
    let started = Instant::now();
    let attempts = (0..12).map(|_| {
        mutate(
            &server,
            None,
            SIGN_IN,
            json!({"e": "many@example.com", "p": "password1"}),
        )
    });
    let responses = tokio::time::timeout(
        Duration::from_secs(8),
        futures_util::future::join_all(attempts),
    )
    .await
    .expect("concurrent sign-ins stalled");
    for response in responses {
        assert!(
            response["data"]["signIn"]["token"].is_string(),
            "{response}"
        );
    }
    eprintln!(
        "12 concurrent sign-ins on a pool of 2: {:?}",
        started.elapsed()
    );
    let (status, _) = server.post_as(&sign_up_token(&up), "{ me { id } }").await;
    assert_eq!(status, 200, "the pool still serves requests");
}

fn sign_up_token(response: &Value) -> String {
    response["data"]["signUp"]["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn sign_in_attempts_on_one_account_are_limited_whatever_token_comes_along() {
    let server = server_with(|config| {
        config.credential_attempts_per_account = 4;
        config.credential_attempts_per_address = 1000;
    })
    .await;
    let up = mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "eve@example.com", "p": "password1"}),
    )
    .await;
    assert!(up["data"]["signUp"]["token"].is_string(), "{up}");
    // Every guess comes with another caller's token: a session, a user of
    // its own to be limited under. signUp was the account's first attempt.
    let mut codes = Vec::new();
    for i in 0..6 {
        let caller = common::token(SECRET, &format!("caller-{i}"), "user", 600);
        let guess = mutate(
            &server,
            Some(&caller),
            SIGN_IN,
            json!({"e": "Eve@Example.com", "p": format!("guess-{i}-x")}),
        )
        .await;
        codes.push(code(&guess).to_owned());
    }
    assert_eq!(
        codes,
        [
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
            "RATE_LIMITED",
            "RATE_LIMITED",
            "RATE_LIMITED"
        ]
    );
    // The right password waits too; other accounts do not.
    let right = mutate(
        &server,
        None,
        SIGN_IN,
        json!({"e": "eve@example.com", "p": "password1"}),
    )
    .await;
    assert_eq!(code(&right), "RATE_LIMITED", "{right}");
    let other = mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "fay@example.com", "p": "password1"}),
    )
    .await;
    assert!(other["data"]["signUp"]["token"].is_string(), "{other}");
}

#[tokio::test]
async fn credential_attempts_from_one_address_are_limited_across_accounts() {
    let server = server_with(|config| {
        config.credential_attempts_per_account = 1000;
        config.credential_attempts_per_address = 3;
    })
    .await;
    let mut codes = Vec::new();
    for i in 0..5 {
        let caller = common::token(SECRET, &format!("caller-{i}"), "user", 600);
        let guess = mutate(
            &server,
            Some(&caller),
            SIGN_IN,
            json!({"e": format!("user{i}@example.com"), "p": "password1"}),
        )
        .await;
        codes.push(code(&guess).to_owned());
    }
    assert_eq!(
        codes,
        [
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
            "RATE_LIMITED",
            "RATE_LIMITED"
        ]
    );
}

#[tokio::test]
async fn an_unknown_email_and_a_wrong_password_look_the_same() {
    let server = server_with(|config| {
        config.credential_attempts_per_account = 1000;
        config.credential_attempts_per_address = 1000;
    })
    .await;
    mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "gus@example.com", "p": "password1"}),
    )
    .await;
    let attempt = |email: &'static str| {
        let server = &server;
        async move {
            let started = Instant::now();
            let response = mutate(
                server,
                None,
                SIGN_IN,
                json!({"e": email, "p": "not-the-password"}),
            )
            .await;
            (response["errors"].clone(), started.elapsed())
        }
    };
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let (errors, took) = attempt("nobody@example.com").await;
        unknown.push(took);
        let (same, took) = attempt("gus@example.com").await;
        wrong.push(took);
        assert_eq!(errors, same);
        assert_eq!(errors[0]["message"], "wrong email or password");
        assert_eq!(errors[0]["extensions"]["code"], "UNAUTHENTICATED");
    }
    // An unknown email costs a password check too (against a dummy hash),
    // so it cannot be told apart by being quick.
    unknown.sort();
    wrong.sort();
    let (unknown, wrong) = (unknown[3], wrong[3]);
    eprintln!("median sign-in: unknown email {unknown:?}, wrong password {wrong:?}");
    assert!(
        unknown * 2 >= wrong,
        "unknown email {unknown:?} vs wrong password {wrong:?}"
    );
}

#[tokio::test]
async fn look_alike_emails_reach_one_account_and_invisible_ones_are_refused() {
    let server = server().await;
    let up = mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "hal@example.com", "p": "password1"}),
    )
    .await;
    assert!(up["data"]["signUp"]["token"].is_string(), "{up}");
    // Full-width letters fold to the same account…
    let (_, _) = sign_in(&server, "ＨＡＬ@example.com", "password1").await;
    let again = mutate(
        &server,
        None,
        SIGN_UP,
        json!({"e": "ＨＡＬ@ＥＸＡＭＰＬＥ.com", "p": "password1"}),
    )
    .await;
    assert_eq!(code(&again), "BAD_USER_INPUT", "{again}");
    // …and a zero-width twin is no email at all.
    for twin in [
        "ha\u{200B}l@example.com",
        "hal\u{2060}@example.com",
        "\u{FEFF}hal@example.com",
    ] {
        for query in [SIGN_UP, SIGN_IN] {
            let response = mutate(&server, None, query, json!({"e": twin, "p": "password1"})).await;
            assert_eq!(code(&response), "BAD_USER_INPUT", "{twin:?}: {response}");
        }
    }
}

/// Signs up `email` and returns its token and user id.
async fn signed_up(server: &TestServer, email: &str) -> (String, String) {
    let up = mutate(server, None, SIGN_UP, json!({"e": email, "p": "password1"})).await;
    let data = &up["data"]["signUp"];
    assert!(data["token"].is_string(), "{up}");
    (
        data["token"].as_str().unwrap().to_owned(),
        data["user"]["id"].as_str().unwrap().to_owned(),
    )
}

/// Asserts `token` is refused over HTTP (401) and in `connection_init`.
async fn assert_refused(server: &TestServer, token: &str) {
    let (status, body) = server.post_as(token, "{ me { id } }").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
    let mut client = GqlClient::init_with(
        server.addr,
        json!({"authorization": format!("Bearer {token}")}),
    )
    .await;
    assert_eq!(client.closed().await.0, 4403);
}

#[tokio::test]
async fn a_token_naming_a_session_that_does_not_exist_is_refused() {
    let server = server().await;
    let (_, user_id) = signed_up(&server, "ida@example.com").await;
    // Signed with the server's own secret, for a real user, but no such
    // session was ever opened.
    for sid in ["0b6f2a2e-9a41-4a7e-8f5e-1d2c3b4a5f60", "made-up"] {
        let token = common::session_token(SECRET, &user_id, "user", sid, 600);
        assert_refused(&server, &token).await;
    }
}

#[tokio::test]
async fn deleting_a_user_ends_their_tokens() {
    let server = server().await;
    let (token, user_id) = signed_up(&server, "jo@example.com").await;
    let (status, _) = server.post_as(&token, "{ me { id } }").await;
    assert_eq!(status, 200);
    server
        .db()
        .await
        .execute(
            "DELETE FROM tidewire.users WHERE id = $1::text::uuid",
            &[&user_id],
        )
        .await
        .unwrap();
    assert_refused(&server, &token).await;
}

#[tokio::test]
async fn a_session_check_that_fails_refuses_the_token() {
    let server = server().await;
    let (token, _) = signed_up(&server, "kim@example.com").await;
    let mut streaming = subscribed(&server, &token).await;
    wait_for_subscribers(&server, 1).await;

    // The check cannot run while the table is away.
    let db = server.db().await;
    db.batch_execute("ALTER TABLE tidewire.sessions RENAME TO sessions_away")
        .await
        .unwrap();
    let (status, body) = server.post_as(&token, "{ me { id } }").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(code(&body), "UNAVAILABLE", "{body}");
    let mut client = GqlClient::init_with(
        server.addr,
        json!({"authorization": format!("Bearer {token}")}),
    )
    .await;
    assert_eq!(client.closed().await.0, 4403);

    // A listener reconnect makes open connections re-check their session:
    // a re-check that fails ends the streams.
    let killed: bool = db
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = 'tidewire-listener' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let payload = streaming.next_payload("e").await;
    assert_eq!(code(&payload), "UNAUTHENTICATED", "{payload}");
    assert_eq!(streaming.closed().await.0, 4403);

    db.batch_execute("ALTER TABLE tidewire.sessions_away RENAME TO sessions")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = server.post_as(&token, "{ me { id } }").await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn create_admin_makes_the_first_admin() {
    let server = server().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args([
            "create-admin",
            "--email",
            "root@example.com",
            "--password",
            "admin-password",
        ])
        .env("DATABASE_URL", &server.database_url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("admin root@example.com"));
    let (token, _) = sign_in(&server, "root@example.com", "admin-password").await;
    let (_, me) = server.post_as(&token, "{ me { role } }").await;
    assert_eq!(me["data"]["me"]["role"], "ADMIN");
}
