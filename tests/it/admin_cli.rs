//! The operator CLI's two backends against one running service: the admin API (`--api`) and
//! the same SQLite database opened directly. Same actions, same JSON, refusals as errors.

use std::time::Duration;

use provisioner::cli::operator::{Backend, render};
use provisioner::cli::{OrdersAction, ResolveAction};
use provisioner::config::Settings;
use provisioner::crypto::Cipher;
use provisioner::simulator::{BuyEffect, BuyStep, Scenario, Simulator};
use secrecy::SecretString;

use crate::helpers::{ADMIN_TOKEN, fast_clock, scenario_package, start_service};

fn list(state: Option<&str>) -> OrdersAction {
    OrdersAction::List {
        state: state.map(str::to_string),
        package: None,
        from: None,
        to: None,
        limit: 50,
        offset: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_commands_work_through_the_api_and_on_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db");
    let sim = Simulator::new(fast_clock(1000.0), 13);
    let failing = scenario_package(&sim, 91, "103.82.72");
    let no = BuyStep::new(Duration::from_secs(1), BuyEffect::ErrorReply);
    sim.script_buy(failing, [no, no, no, no, no, no]).unwrap();
    let late = scenario_package(&sim, 92, "45.12.33");
    // Another unowned server of ours in the package, so the scan lists two and an admin decides.
    crate::helpers::buy_outside(&sim, "45.12.33", 2).await;
    Scenario::LostReply.install(&sim, late).unwrap();
    let svc = start_service(&db, &sim, sim.clock().clone(), &Cipher::generate_key()).await;
    let body = |r: &str, p: u32| serde_json::json!({ "order_ref": r, "package": p, "ram_gb": 2, "customer": { "email": "d@example.com", "name": "D" } });
    let (_, a) = svc.intake(&body("cli-a", 91)).await;
    let (_, b) = svc.intake(&body("cli-b", 92)).await;
    let a = a["id"].as_str().unwrap().to_string();
    let b = b["id"].as_str().unwrap().to_string();
    svc.until(&a, Duration::from_secs(30), |v| v["state"] == "failed")
        .await;
    svc.until(&b, Duration::from_secs(30), |v| {
        v["state"] == "needs_attention"
    })
    .await;

    let api = Backend::api(&svc.api, SecretString::from(ADMIN_TOKEN)).unwrap();
    let mut settings = Settings::from_sources(None, &|_| None).unwrap();
    settings.database.url = format!("sqlite://{}", db.display());
    let database = Backend::Database(provisioner::app::offline_admin(&settings).await.unwrap());

    // list and show: the same orders either way.
    for backend in [&api, &database] {
        let v = backend.execute(&list(Some("failed"))).await.unwrap();
        let ids: Vec<&str> = v["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [a.as_str()]);
        let printed = render(&list(None), &backend.execute(&list(None)).await.unwrap());
        assert!(
            printed.starts_with("SHORT ID ")
                && printed.contains("cli-a")
                && printed.contains("cli-b"),
            "{printed}"
        );
        assert!(
            printed.contains("failed 1") && printed.contains("needs_attention 1"),
            "{printed}"
        );
        let shown = backend
            .execute(&OrdersAction::Show { id: b.clone() })
            .await
            .unwrap();
        assert_eq!(shown["purchases"].as_array().unwrap().len(), 1);
        let bad = backend
            .execute(&list(Some("done")))
            .await
            .unwrap_err()
            .to_string();
        assert!(bad.contains("state"), "{bad}");
    }

    // Orders are named by id, order_ref or the dashboard's short id, on both backends; search
    // finds by order_ref or email, any case.
    for backend in [&api, &database] {
        for name in ["cli-a", &a[a.len() - 12..], a.as_str()] {
            let v = backend
                .execute(&OrdersAction::Show { id: name.into() })
                .await
                .unwrap();
            assert_eq!(v["id"], a.as_str(), "{name}");
            assert!(v["notifications"].is_array(), "{v}");
            let text = render(&OrdersAction::Show { id: name.into() }, &v);
            for section in [
                "Order cli-a",
                "\nTimeline\n",
                "\nPurchases\n",
                "\nNotifications\n",
            ] {
                assert!(text.contains(section), "{section:?} in {text}");
            }
            assert!(
                !text.contains("T0") && text.contains(" UTC"),
                "human times: {text}"
            );
        }
        let err = backend
            .execute(&OrdersAction::Show {
                id: "no-such-ref".into(),
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no order"), "{err}");
        let search = |text: &str| OrdersAction::Search {
            text: text.into(),
            limit: 50,
        };
        let v = backend.execute(&search("CLI-B")).await.unwrap();
        let refs: Vec<&str> = v["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_ref"].as_str().unwrap())
            .collect();
        assert_eq!(refs, ["cli-b"]);
        let v = backend.execute(&search("D@EXAMPLE")).await.unwrap();
        assert_eq!(v["orders"].as_array().unwrap().len(), 2);
        let v = backend.execute(&search("nobody@nowhere")).await.unwrap();
        assert!(render(&search("x"), &v).contains("(no orders match)"));
    }

    // Refusals come back as errors that say why.
    let err = api
        .execute(&OrdersAction::Retry {
            id: b.clone(),
            reason: "x".into(),
            actor: None,
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("409") && err.contains("only a failed order"),
        "{err}"
    );
    let err = database
        .execute(&OrdersAction::Retry {
            id: b.clone(),
            reason: "x".into(),
            actor: None,
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("only a failed order"), "{err}");
    let err = api
        .execute(&OrdersAction::Cancel {
            id: a.clone(),
            reason: "x".into(),
            actor: Some("bob".into()),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--actor"), "{err}");
    let wrong = Backend::api(&svc.api, SecretString::from("wrong-token-0123456789")).unwrap();
    let err = wrong.execute(&list(None)).await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    assert!(
        !err.contains("wrong-token"),
        "the token is never printed: {err}"
    );

    // Actions: retry through the API (recorded as alice), resolve on the database (as the
    // given actor).
    let v = api
        .execute(&OrdersAction::Retry {
            id: a.clone(),
            reason: "upstream fixed".into(),
            actor: None,
        })
        .await
        .unwrap();
    assert_eq!(v["state"], "buying");
    let shown = render(&OrdersAction::Show { id: a.clone() }, &v);
    assert!(shown.contains("  State       buying"), "{shown}");
    let v = database
        .execute(&OrdersAction::Resolve {
            id: b.clone(),
            action: ResolveAction::Fail,
            ip: None,
            override_package_check: false,
            reason: "customer refunded".into(),
            actor: Some("ops-bob".into()),
        })
        .await
        .unwrap();
    assert_eq!(v["state"], "failed");
    let timeline = svc.get(&b).await["timeline"].to_string();
    assert!(
        timeline.contains("Resolved by ops-bob: customer refunded"),
        "{timeline}"
    );
    let timeline = svc.get(&a).await["timeline"].to_string();
    assert!(
        timeline.contains("Retry by alice: upstream fixed"),
        "{timeline}"
    );
    // The failed queue: b is failed now, its lost purchase unsettled, so retrying it is refused
    // and said so; nothing else is touched.
    for backend in [&api, &database] {
        let v = backend
            .execute(&OrdersAction::RetryFailed {
                phase: Some(provisioner::cli::PhaseArg::Buy),
                reason: "SmartVPS is back".into(),
                actor: None,
            })
            .await
            .unwrap();
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "{v}");
        assert_eq!(results[0]["id"], b.as_str());
        assert_eq!(results[0]["outcome"], "refused", "{v}");
        assert!(
            results[0]["error"]
                .as_str()
                .unwrap()
                .contains("unknown outcome"),
            "{v}"
        );
        assert_eq!(
            (v["done"].as_u64(), v["refused"].as_u64()),
            (Some(0), Some(1))
        );
    }
    svc.running.stop().await;
}
