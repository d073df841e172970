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
            printed.starts_with("ID ") && printed.contains("cli-a") && printed.contains("cli-b"),
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
    assert!(render(&OrdersAction::Show { id: a.clone() }, &v).contains("\"state\": \"buying\""));
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
    svc.running.stop().await;
}
