//! `GET /v1/messages`: search by tag, recipient, status and time, newest first, walked page by
//! page with the cursor. SMTP sink on 127.0.0.155.

use chrono::{DateTime, TimeDelta, Utc};
use postwire_e2e::app::{TestApp, World};
use postwire_e2e::smtp::Script;
use serde_json::{json, Value};

use crate::{ip, mx_hosts, SOON};

async fn search(app: &TestApp, query: &str) -> (u16, Value) {
    let r = app
        .client
        .get(app.url(&format!("/v1/messages?{query}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .expect("GET /v1/messages");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Every page of `query` (without `cursor`), with `limit`: the ids in order, and the page sizes.
async fn walk(app: &TestApp, query: &str, limit: usize) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut sizes) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut q = format!("{query}&limit={limit}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = search(app, &q).await;
        assert_eq!(status, 200, "{q}: {page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit, "{page}");
        sizes.push(data.len());
        ids.extend(data.iter().map(|m| m["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                return (ids, sizes);
            }
        }
    }
    panic!("{query}: the cursor never ended");
}

/// One sent message as the test knows it.
struct Sent {
    id: String,
    created_at: DateTime<Utc>,
    to: &'static str,
    tags: Vec<&'static str>,
}

/// Ids newest first (created_at, then id, both descending), of the messages that pass `keep`.
fn expected(sent: &[Sent], keep: impl Fn(&Sent) -> bool) -> Vec<String> {
    let mut kept: Vec<&Sent> = sent.iter().filter(|s| keep(s)).collect();
    kept.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    kept.into_iter().map(|s| s.id.clone()).collect()
}

#[tokio::test]
async fn search_walks_pages_newest_first_through_every_filter() {
    let world = World::new().await;
    // gone@ is refused for good: its messages bounce.
    let script = Script::default().rcpt_reply(|addr, _| {
        if addr.starts_with("gone@") {
            (550, "5.1.1 no such user".into())
        } else {
            (250, "2.1.5 ok".into())
        }
    });
    let _hosts = mx_hosts(&world, "search.test", &[(10, ip(155), script)]).await;
    let app = TestApp::start(world.settings()).await.unwrap();

    // Seven delivered messages, one bounced, one scheduled for tomorrow.
    let mut sent = Vec::new();
    let mut send = async |to: &'static str,
                          tags: Vec<&'static str>,
                          send_at: Option<DateTime<Utc>>| {
        let mut body = json!({"from": "App <app@sender.test>", "to": [to], "subject": format!("to {to}"), "text": "hi", "tags": tags});
        if let Some(at) = send_at {
            body["send_at"] = Value::String(at.to_rfc3339());
        }
        let id = app.send_ok(&body).await.unwrap();
        let created_at =
            app.message(&id).await.unwrap()["created_at"].as_str().unwrap().parse().unwrap();
        sent.push(Sent { id, created_at, to, tags });
    };
    for i in 0..7 {
        let to = if i % 3 == 0 { "pat@search.test" } else { "quinn@search.test" };
        send(to, if i % 2 == 0 { vec!["even", "all"] } else { vec!["all"] }, None).await;
    }
    send("gone@search.test", vec!["all"], None).await;
    send("pat@search.test", vec!["later"], Some(Utc::now() + TimeDelta::days(1))).await;
    for s in &sent[..8] {
        app.wait_final(&s.id, SOON).await.unwrap();
    }
    let all = expected(&sent, |_| true);
    assert_eq!(all.len(), 9);

    // Everything, three at a time: newest first, each exactly once, full pages.
    let (ids, sizes) = walk(&app, "", 3).await;
    assert_eq!(ids, all);
    assert_eq!(sizes, [3, 3, 3], "no empty trailing page");

    // A summary's shape.
    let (_, page) = search(&app, "limit=1").await;
    let first = &page["data"][0];
    let newest = sent.iter().find(|s| s.id == all[0]).unwrap();
    assert_eq!(first["id"], newest.id.as_str());
    assert_eq!(first["status"], "scheduled");
    assert_eq!(first["from"], "App <app@sender.test>");
    assert_eq!(first["subject"], "to pat@search.test");
    assert_eq!(first["tags"], json!(["later"]));
    assert_eq!(first["recipients"], json!([{"email": "pat@search.test", "status": "scheduled"}]));
    let created: DateTime<Utc> = first["created_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(created, newest.created_at);
    assert!(first.get("events").is_none(), "summaries carry no events");
    assert!(page["next_cursor"].is_string());

    // Each filter, and two combined.
    assert_eq!(walk(&app, "tag=even", 3).await.0, expected(&sent, |s| s.tags.contains(&"even")));
    assert_eq!(walk(&app, "tag=all", 2).await.0, expected(&sent, |s| s.tags.contains(&"all")));
    let pat = expected(&sent, |s| s.to == "pat@search.test");
    assert_eq!(pat.len(), 4);
    assert_eq!(
        walk(&app, "recipient=pat@SEARCH.Test", 3).await.0,
        pat,
        "the domain is compared in any case"
    );
    assert_eq!(
        walk(&app, "tag=even&recipient=pat@search.test", 3).await.0,
        expected(&sent, |s| s.to == "pat@search.test" && s.tags.contains(&"even"))
    );
    let delivered = expected(&sent, |s| s.to != "gone@search.test" && !s.tags.contains(&"later"));
    assert_eq!(walk(&app, "status=delivered", 3).await.0, delivered);
    assert_eq!(
        walk(&app, "status=bounced", 3).await.0,
        expected(&sent, |s| s.to == "gone@search.test")
    );
    assert_eq!(
        walk(&app, "status=scheduled", 3).await.0,
        expected(&sent, |s| s.tags.contains(&"later"))
    );
    assert!(walk(&app, "status=queued", 3).await.0.is_empty());
    assert!(walk(&app, "tag=nope", 3).await.0.is_empty());

    // since (inclusive) .. until (exclusive), on created_at.
    let by_age: Vec<&Sent> =
        all.iter().rev().map(|id| sent.iter().find(|s| &s.id == id).unwrap()).collect();
    let (since, until) = (by_age[2].created_at, by_age[5].created_at);
    let window = format!(
        "since={}&until={}",
        urlencode(&since.to_rfc3339()),
        urlencode(&until.to_rfc3339())
    );
    let in_window = expected(&sent, |s| s.created_at >= since && s.created_at < until);
    assert!(in_window.len() >= 3, "{in_window:?}");
    assert_eq!(walk(&app, &window, 2).await.0, in_window);
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn the_cursor_is_stable_while_messages_arrive_and_bad_values_are_named() {
    let world = World::new().await;
    let _hosts = mx_hosts(&world, "stable.test", &[(10, ip(156), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let body = json!({"from": "app@sender.test", "to": ["sam@stable.test"], "text": "hi", "tags": ["stable"]});
    let mut first_ids = Vec::new();
    for _ in 0..5 {
        first_ids.push(app.send_ok(&body).await.unwrap());
    }

    let (status, page) = search(&app, "tag=stable&limit=2").await;
    assert_eq!(status, 200, "{page}");
    let mut seen: Vec<String> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    // New messages arrive between pages: they are newer, so they never enter the rest of the walk.
    let newer = app.send_ok(&body).await.unwrap();
    let mut cursor = page["next_cursor"].as_str().map(String::from);
    while let Some(c) = cursor {
        app.send_ok(&body).await.unwrap();
        let (status, page) = search(&app, &format!("tag=stable&limit=2&cursor={c}")).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()),
        );
        cursor = page["next_cursor"].as_str().map(String::from);
    }
    assert!(!seen.contains(&newer));
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    sorted_seen.dedup();
    assert_eq!(sorted_seen.len(), 5, "no repeats: {seen:?}");
    let mut expected_ids = first_ids.clone();
    expected_ids.sort();
    assert_eq!(sorted_seen, expected_ids, "every message once");

    // Every bad parameter is listed by name.
    let (status, problem) = search(&app, "status=lost&since=yesterday&until=2025-02-30T00:00:00Z&limit=101&cursor=bogus!&recipient=nobody").await;
    assert_eq!(status, 422, "{problem}");
    let mut fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(fields, ["cursor", "limit", "recipient", "since", "status", "until"]);
    let (status, _) = search(&app, "limit=0").await;
    assert_eq!(status, 422);
    let (status, problem) = search(&app, "colour=blue").await;
    assert_eq!(status, 422, "unknown parameters are refused: {problem}");
}
