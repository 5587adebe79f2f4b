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

/// A callback of one layer switches another layer (two organisations that fail over together)
/// at once, and that layer's callback may switch the first one back in turn: each layer defers
/// only switches asked for inside its own callbacks.
#[test]
fn a_callback_of_one_layer_switches_another_layer_at_once() {
    let fabrikam = FailoverLayer::new(Endpoints::dynamics("https://fabrikam.api.crm.dynamics.com").unwrap());
    let fabrikam_handle = fabrikam.handle();
    let contoso_cell: Arc<OnceLock<FailoverHandle>> = Arc::new(OnceLock::new());
    let cell = contoso_cell.clone();
    let in_callback = fabrikam_handle.clone();
    let contoso = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
        .on_switched(move |_| {
            in_callback.switch_to(Side::Alternate);
        })
        .build()
        .unwrap();
    let contoso_handle = contoso.handle();
    contoso_cell.set(contoso_handle.clone()).unwrap();
    // Fabrikam's own callbacks are not involved; its state must follow at once.
    contoso_handle.switch_endpoint();
    assert_eq!(contoso_handle.active(), Side::Alternate);
    assert_eq!(
        (fabrikam_handle.active(), fabrikam_handle.generation()),
        (Side::Alternate, 1),
        "asked from the other layer's callback"
    );
    let _ = cell;
}

/// Each layer's callback switches the other back to its primary: the chain ends (no deadlock,
/// no switch lost), because each layer defers only what its own callbacks ask of it.
#[test]
fn two_layers_switching_each_other_from_their_callbacks_neither_deadlock_nor_lose_a_switch() {
    let first_cell: Arc<OnceLock<FailoverHandle>> = Arc::new(OnceLock::new());
    let second_cell: Arc<OnceLock<FailoverHandle>> = Arc::new(OnceLock::new());
    let (to_second, to_first) = (second_cell.clone(), first_cell.clone());
    let first = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
        .on_switched(move |event: &SwitchEvent| {
            // Moved to the alternate: move the other layer too.
            if event.cause().to_string() == "manual" {
                if let Some(second) = to_second.get() {
                    second.switch_to(Side::Alternate);
                }
            }
        })
        .build()
        .unwrap();
    let second =
        FailoverLayer::builder(Endpoints::dynamics("https://fabrikam.api.crm.dynamics.com").unwrap())
            .on_switched(move |_: &SwitchEvent| {
                // Asks the first layer, still inside its own callback, to switch again: deferred
                // there, made once the first layer's callbacks return.
                if let Some(first) = to_first.get() {
                    first.switch_to(Side::Primary);
                }
            })
            .build()
            .unwrap();
    first_cell.set(first.handle()).unwrap();
    second_cell.set(second.handle()).unwrap();
    first.handle().switch_to(Side::Alternate);
    assert_eq!(
        (second.handle().active(), second.handle().generation()),
        (Side::Alternate, 1)
    );
    assert_eq!(
        (first.handle().active(), first.handle().generation()),
        (Side::Primary, 2),
        "the first layer's deferred switch back was made"
    );
}

/// A callback that panics does not leave the switch half made: the call that found the
/// primary down is still re-sent and answered, `Switched` still reaches the event stream, and
/// later switches still run every callback.
#[tokio::test]
async fn a_panicking_callback_neither_fails_the_call_nor_stops_the_switch() {
    within(10, async {
        let pair = Pair::start().await;
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let layer = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .on_switch_required(|_: &SwitchEvent| panic!("a callback with a bug"))
            .on_switched(move |event: &SwitchEvent| log.lock().unwrap().push(event.cause().to_string()))
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut events = handle.events();
        let mut service = pair.through(layer);
        pair.primary.kill().await;

        let request = http::Request::get(format!("{PRIMARY_URL}/x"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(handle.active(), Side::Alternate);
        let names: Vec<&str> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|event| event.name())
            .collect();
        assert_eq!(names, ["SwitchRequired", "Switched"]);
        handle.switch_endpoint();
        assert_eq!(*seen.lock().unwrap(), ["endpoint not found", "manual"]);
    })
    .await
}

/// Two layers fail at once, on two threads, and each one's `on_switch_required` moves the
/// other: each thread holds its own layer's lock while it asks for the other's. Neither waits
/// for the other (a deadlock, found by review): a switch that finds the other layer busy is
/// queued for the thread making that layer's switch, and both end on their alternates.
#[test]
fn two_layers_failing_at_once_whose_callbacks_switch_each_other_do_not_deadlock() {
    use std::sync::Barrier;
    for _ in 0..20 {
        let first_cell: Arc<OnceLock<FailoverHandle>> = Arc::new(OnceLock::new());
        let second_cell: Arc<OnceLock<FailoverHandle>> = Arc::new(OnceLock::new());
        let barrier = Arc::new(Barrier::new(2));
        let (to_second, b1) = (second_cell.clone(), barrier.clone());
        let first = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
            .on_switch_required(move |_: &SwitchEvent| {
                b1.wait();
                to_second.get().unwrap().switch_to(Side::Alternate);
            })
            .build()
            .unwrap();
        let (to_first, b2) = (first_cell.clone(), barrier.clone());
        let second =
            FailoverLayer::builder(Endpoints::dynamics("https://fabrikam.api.crm.dynamics.com").unwrap())
                .on_switch_required(move |_: &SwitchEvent| {
                    b2.wait();
                    to_first.get().unwrap().switch_to(Side::Alternate);
                })
                .build()
                .unwrap();
        first_cell.set(first.handle()).unwrap();
        second_cell.set(second.handle()).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        for handle in [first.handle(), second.handle()] {
            let done = done.clone();
            std::thread::spawn(move || {
                handle.switch_to(Side::Alternate);
                let _ = done.send(());
            });
        }
        for _ in 0..2 {
            finished
                .recv_timeout(std::time::Duration::from_secs(5))
                .expect("deadlock: the two switches never finished");
        }
        assert_eq!(first.handle().active(), Side::Alternate);
        assert_eq!(second.handle().active(), Side::Alternate);
        assert_eq!(
            (first.handle().generation(), second.handle().generation()),
            (1, 1)
        );
    }
}

/// With `auto_switch(false)` a failed call only raises `SwitchRequired`. A call through layer A
/// made inside layer B's callback fails while another thread holds A's switch lock: its
/// automatic switch request is queued for the holder, and stays automatic there, so A does
/// not move.
#[test]
fn an_automatic_switch_queued_for_a_busy_lock_does_not_override_auto_switch_off() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let (holding_tx, holding_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let done_rx = Mutex::new(done_rx);
    let first = AtomicBool::new(true);
    let a_events = EventLog::new();
    let record = a_events.recorder();
    let layer_a = FailoverLayer::builder(Endpoints::dynamics(PRIMARY_URL).unwrap())
        .auto_switch(false)
        .on_switch_required(move |event: &SwitchEvent| {
            record(event);
            if first.swap(false, Ordering::SeqCst) {
                // Holding A's switch lock: let the other thread fail its call now.
                holding_tx.send(()).unwrap();
                let _ = done_rx.lock().unwrap().recv_timeout(Duration::from_secs(5));
            }
        })
        .on_switched(a_events.recorder())
        .build()
        .unwrap();
    let handle_a = layer_a.handle();
    // Both endpoints of A answer 503.
    let inner = tower::service_fn(|_request: http::Request<TestBody>| async {
        Ok::<_, std::convert::Infallible>(
            http::Response::builder()
                .status(503)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    });
    let service_a = tower::ServiceBuilder::new().layer(layer_a).service(inner);
    let call_a = {
        let service_a = service_a.clone();
        move || {
            let mut service = service_a.clone();
            runtime().block_on(async move {
                service
                    .ready()
                    .await
                    .unwrap()
                    .call(request(http::Method::GET, "/api/data/v9.2/WhoAmI"))
                    .await
                    .map(|response| response.status())
            })
        }
    };
    let call_in_b = Mutex::new(Some(call_a.clone()));
    let layer_b =
        FailoverLayer::builder(Endpoints::dynamics("https://fabrikam.api.crm.dynamics.com").unwrap())
            .on_switch_required(move |_: &SwitchEvent| {
                // B's callback makes a (blocking) call through A.
                if let Some(call) = call_in_b.lock().unwrap().take() {
                    let result = call();
                    assert!(result.is_err(), "A's primary answers 503: {result:?}");
                }
            })
            .build()
            .unwrap();
    let handle_b = layer_b.handle();

    let holder = std::thread::spawn(call_a);
    holding_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let other = std::thread::spawn(move || {
        handle_b.switch_endpoint();
    });
    other.join().unwrap();
    done_tx.send(()).unwrap();
    let _ = holder.join().unwrap();
    let names: Vec<_> = a_events
        .all()
        .iter()
        .map(|e| format!("{} {}", e.name(), e.cause()))
        .collect();
    assert_eq!(
        handle_a.active(),
        Side::Primary,
        "auto_switch(false), nobody switched A, yet it moved; A's events: {names:?}"
    );
}
