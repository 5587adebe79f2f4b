//! Callbacks may call the handle: a switch asked for inside `on_switch_required` or
//! `on_switched` is made right after the event's callbacks return, never a deadlock.

mod support;

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use support::*;
use tower::{Service, ServiceExt};
use tower_failover::{Endpoints, FailoverHandle, FailoverLayer, Side, SwitchEvent};

#[tokio::test]
async fn the_application_switches_from_inside_on_switch_required() {
    within(10, async {
        let pair = Pair::start().await;
        let handle_cell: Arc<OnceLock<FailoverHandle>> = Arc::new(OnceLock::new());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (cell, log) = (handle_cell.clone(), seen.clone());
        let log2 = seen.clone();
        // Automatic switching off: the application decides, here by switching at once.
        let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .auto_switch(false)
            .on_switch_required(move |event: &SwitchEvent| {
                log.lock()
                    .unwrap()
                    .push(format!("{} {}", event.name(), event.cause()));
                if let Some(handle) = cell.get() {
                    handle.switch_endpoint();
                }
            })
            .on_switched(move |event: &SwitchEvent| {
                log2.lock()
                    .unwrap()
                    .push(format!("{} {}", event.name(), event.cause()))
            })
            .build()
            .unwrap();
        let handle = layer.handle();
        handle_cell.set(handle.clone()).unwrap();
        let mut service = pair.through(layer);
        pair.primary.kill().await;

        let request = http::Request::get(format!("{PRIMARY_URL}/x"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let error = service.ready().await.unwrap().call(request).await.unwrap_err();
        assert_eq!(
            error.not_resent_because(),
            Some(tower_failover::NotResent::AutoSwitchOff)
        );
        // The switch asked for in the callback was made once the callback returned.
        assert_eq!(handle.active(), Side::Alternate);
        let log = seen.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![
                "SwitchRequired endpoint not found".to_string(),
                "SwitchRequired manual".to_string(),
                "Switched manual".to_string(),
            ]
        );
        let request = http::Request::get(format!("{PRIMARY_URL}/x"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            service
                .ready()
                .await
                .unwrap()
                .call(request)
                .await
                .unwrap()
                .status(),
            200
        );
    })
    .await
}
