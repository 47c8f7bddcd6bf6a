//! The template contract, run against both backends (see the `tests` modules of
//! `embedded/template.rs` and `distributed/template.rs`).

use chrono::{Duration, TimeZone, Utc};
use postwire_proto::TemplateRequest;

use crate::template::new_template;
use crate::{ids, TemplateCursor, TemplateWrite, Templates};

fn content(name: &str) -> TemplateRequest {
    TemplateRequest {
        name: name.into(),
        alias: None,
        subject: "Welcome, {{ name }}".into(),
        text: Some("Hi {{ name }}".into()),
        html: Some("<p>Hi {{ name }}</p>".into()),
    }
}

pub(crate) async fn a_template_round_trips_and_is_replaced_in_place(store: &impl Templates) {
    let created_at =
        Utc.timestamp_millis_opt(1_764_000_000_123).unwrap() + Duration::microseconds(456);
    let template = new_template(ids::new_id("tpl"), content("welcome"), created_at);
    assert_eq!(template.created_at.timestamp_subsec_micros(), 123_000, "stored at ms precision");
    assert_eq!(
        store.create_template(template.clone()).await.expect("create"),
        TemplateWrite::Written(template.clone())
    );
    assert_eq!(store.template(&template.id).await.expect("get"), Some(template.clone()));
    assert_eq!(store.template("tpl_unknown").await.expect("get unknown"), None);

    let later = created_at + Duration::seconds(90);
    let replacement = TemplateRequest {
        name: "welcome v2".into(),
        alias: None,
        subject: "Hello".into(),
        text: None,
        html: Some("<b>{{ x }}</b>".into()),
    };
    let TemplateWrite::Written(replaced) =
        store.replace_template(&template.id, replacement, later).await.expect("replace")
    else {
        panic!("a known template is replaced")
    };
    assert_eq!(replaced.id, template.id);
    assert_eq!(replaced.name, "welcome v2");
    assert_eq!(replaced.subject, "Hello");
    assert_eq!(replaced.text, None, "a replace drops what it does not give");
    assert_eq!(replaced.html.as_deref(), Some("<b>{{ x }}</b>"));
    assert_eq!(replaced.created_at, template.created_at, "created_at is kept");
    assert_eq!(replaced.updated_at.timestamp_millis(), later.timestamp_millis());
    assert_eq!(store.template(&template.id).await.expect("get"), Some(replaced));

    let missing =
        store.replace_template("tpl_unknown", content("x"), later).await.expect("replace unknown");
    assert_eq!(missing, TemplateWrite::NotFound);
    assert_eq!(store.template("tpl_unknown").await.expect("get"), None, "a replace never creates");
}

pub(crate) async fn a_deleted_template_is_gone(store: &impl Templates) {
    let keep = new_template(ids::new_id("tpl"), content("keep"), Utc::now());
    let drop = new_template(ids::new_id("tpl"), content("drop"), Utc::now());
    store.create_template(keep.clone()).await.expect("create");
    store.create_template(drop.clone()).await.expect("create");

    assert!(store.delete_template(&drop.id).await.expect("delete"));
    assert_eq!(store.template(&drop.id).await.expect("get"), None);
    assert!(
        !store.delete_template(&drop.id).await.expect("delete again"),
        "a second delete finds nothing"
    );
    assert_eq!(
        store.replace_template(&drop.id, content("back"), Utc::now()).await.expect("replace"),
        TemplateWrite::NotFound
    );
    assert_eq!(store.template(&keep.id).await.expect("get"), Some(keep.clone()));
    let listed = store.list_templates(None, 10).await.expect("list");
    assert_eq!(listed.data, vec![keep], "the deleted template is not listed");
}

pub(crate) async fn templates_page_newest_first(store: &impl Templates) {
    // Two share a millisecond: the id breaks the tie, so paging neither skips nor repeats.
    let base = 1_764_000_000_000;
    let times = [base, base + 5, base + 5, base + 9, base + 20];
    let mut made = Vec::new();
    for (i, ms) in times.iter().enumerate() {
        let t = new_template(
            ids::new_id("tpl"),
            content(&format!("t{i}")),
            Utc.timestamp_millis_opt(*ms).unwrap(),
        );
        store.create_template(t.clone()).await.expect("create");
        made.push(t);
    }
    let mut expected = made.clone();
    expected.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));

    let mut seen = Vec::new();
    let mut cursor: Option<TemplateCursor> = None;
    for _ in 0..10 {
        let page = store.list_templates(cursor.as_ref(), 2).await.expect("list");
        assert!(page.data.len() <= 2);
        seen.extend(page.data);
        match page.next {
            Some(next) => {
                cursor = Some(TemplateCursor::decode(&next.encode()).expect("cursor round trip"))
            }
            None => break,
        }
    }
    assert_eq!(seen, expected);

    let all = store.list_templates(None, 100).await.expect("list all");
    assert_eq!(all.data, expected);
    assert_eq!(all.next, None, "one page holds everything");
}

fn aliased(name: &str, alias: &str) -> TemplateRequest {
    TemplateRequest { alias: Some(alias.into()), ..content(name) }
}

/// An alias names one template wherever its id does; a second template cannot take it (by
/// create or by replace) until the first lets it go (replaced without it, or deleted).
pub(crate) async fn an_alias_names_one_template_until_it_is_let_go(store: &impl Templates) {
    let reset = new_template(ids::new_id("tpl"), aliased("reset", "password-reset"), Utc::now());
    let other = new_template(ids::new_id("tpl"), content("other"), Utc::now());
    store.create_template(reset.clone()).await.expect("create");
    store.create_template(other.clone()).await.expect("create");
    assert_eq!(store.template("password-reset").await.expect("get"), Some(reset.clone()));
    assert_eq!(store.template("no-such-alias").await.expect("get"), None);

    let twin = new_template(ids::new_id("tpl"), aliased("twin", "password-reset"), Utc::now());
    assert_eq!(
        store.create_template(twin.clone()).await.expect("create"),
        TemplateWrite::AliasTaken
    );
    assert_eq!(store.template(&twin.id).await.expect("get"), None, "nothing was stored");
    assert_eq!(
        store
            .replace_template(&other.id, aliased("other", "password-reset"), Utc::now())
            .await
            .expect("replace"),
        TemplateWrite::AliasTaken
    );
    assert_eq!(store.template(&other.id).await.expect("get"), Some(other.clone()), "unchanged");

    // Replaced through its alias, keeping it: still found by it.
    let TemplateWrite::Written(kept) = store
        .replace_template("password-reset", aliased("reset v2", "password-reset"), Utc::now())
        .await
        .expect("replace")
    else {
        panic!("replace by alias")
    };
    assert_eq!((kept.id.as_str(), kept.name.as_str()), (reset.id.as_str(), "reset v2"));
    assert_eq!(store.template("password-reset").await.expect("get"), Some(kept.clone()));

    // Renamed: the old alias is free and names nothing.
    let TemplateWrite::Written(renamed) = store
        .replace_template(&reset.id, aliased("reset v3", "reset"), Utc::now())
        .await
        .expect("replace")
    else {
        panic!("rename the alias")
    };
    assert_eq!(store.template("password-reset").await.expect("get"), None);
    assert_eq!(store.template("reset").await.expect("get"), Some(renamed));
    let TemplateWrite::Written(taken) = store
        .replace_template(&other.id, aliased("other", "password-reset"), Utc::now())
        .await
        .expect("replace")
    else {
        panic!("a freed alias can be taken")
    };
    assert_eq!(taken.alias.as_deref(), Some("password-reset"));

    // Deleted by alias: the alias is free again.
    assert!(store.delete_template("reset").await.expect("delete"));
    assert_eq!(store.template(&reset.id).await.expect("get"), None);
    assert_eq!(store.template("reset").await.expect("get"), None);
    let again = new_template(ids::new_id("tpl"), aliased("again", "reset"), Utc::now());
    assert_eq!(
        store.create_template(again.clone()).await.expect("create"),
        TemplateWrite::Written(again)
    );
}
