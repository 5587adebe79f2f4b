//! The data-loss report carried by `Switched`: which writes it lists (acknowledged within the
//! replication window, unknown outcome), its bounds (window, capacity), how it names writes
//! (path without query, key from a header or a `WriteKey`), and turning it off.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Method, Request};
use http_body_util::Full;
use support::*;
use tower::ServiceBuilder;
use tower_failover::{
    DataLossReport, FailoverErrorKind, FailoverHandle, FailoverLayerBuilder, NotResent, RetryPolicy, Side,
    SwitchEvent, WriteKey, WriteOutcome, WriteRecord,
};

fn with_header(mut request: Request<Full<Bytes>>, name: &str, value: &str) -> Request<Full<Bytes>> {
    request.headers_mut().insert(
        HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    request
}

fn with_write_key(mut request: Request<Full<Bytes>>, key: &str) -> Request<Full<Bytes>> {
    request.extensions_mut().insert(WriteKey::new(key));
    request
}

/// The re-send tests write the same keyed POST to the accounts, each with its own key to
/// find it by in the reports.
fn keyed_accounts_post(key: &str) -> Request<Full<Bytes>> {
    with_header(
        request(Method::POST, "/api/data/v9.2/accounts"),
        "idempotency-key",
        key,
    )
}

/// The service [`Pair::through`] makes of the default layer.
/// The re-send tests start alike: a pair behind the default layer, the primary answering 503
/// so that a write may have been received there and is re-sent on the alternate.
async fn start_with_the_primary_answering_503() -> (Pair, FailoverHandle, Through) {
    let pair = Pair::start().await;
    let layer = layer_builder().build().unwrap();
    let handle = layer.handle();
    let service = pair.through(layer);
    pair.primary.set(Behavior::Status(503, ""));
    (pair, handle, service)
}

/// (method, path, key) of each record, in the report's order.
fn summary(records: &[WriteRecord]) -> Vec<(Method, String, Option<String>)> {
    records
        .iter()
        .map(|r| (r.method.clone(), r.path.clone(), r.key.clone()))
        .collect()
}

fn entry(method: Method, path: &str, key: Option<&str>) -> (Method, String, Option<String>) {
    (method, path.to_string(), key.map(str::to_string))
}

/// Makes the primary answer 503 and sends a GET, which switches to the alternate and is
/// answered there. Returns the switch's report.
async fn fail_over<S>(pair: &Pair, service: &S, handle: &FailoverHandle) -> Arc<DataLossReport>
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = http::Response<tower_failover::ResponseBody<hyper::body::Incoming>>,
            Error = tower_failover::FailoverError,
        > + Clone,
{
    pair.primary.set(Behavior::Status(503, ""));
    let body = send_ok(service, request(Method::GET, "/api/data/v9.2/WhoAmI")).await;
    assert!(body.contains(ALTERNATE_HOST), "answered by the alternate: {body}");
    assert_eq!(handle.active(), Side::Alternate);
    handle.last_report().expect("the switch made a report")
}

/// Starts a pair, sends `requests` (each must be acknowledged by the primary), fails over, and
/// returns the switch's report.
async fn report_after(
    builder: FailoverLayerBuilder,
    requests: Vec<Request<Full<Bytes>>>,
) -> Arc<DataLossReport> {
    let pair = Pair::start().await;
    let layer = builder.build().unwrap();
    let handle = layer.handle();
    let service = pair.through(layer);
    for request in requests {
        send_ok(&service, request).await;
    }
    fail_over(&pair, &service, &handle).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn report_lists_acknowledged_and_in_flight_writes_and_nothing_else() {
    within(15, async {
        let pair = Pair::start().await;
        let log = EventLog::new();
        let layer = layer_builder().on_switched(log.recorder()).build().unwrap();
        let handle = layer.handle();
        let mut events = handle.events();
        let service = pair.through(layer);

        // Three writes and two reads, all acknowledged by the primary.
        let key = "idempotency-key";
        send_ok(
            &service,
            with_header(request(Method::POST, "/api/data/v9.2/accounts"), key, "k-1"),
        )
        .await;
        send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts")).await;
        send_ok(
            &service,
            with_header(request(Method::PATCH, "/api/data/v9.2/accounts(1)"), key, "k-2"),
        )
        .await;
        send_ok(&service, request(Method::GET, "/api/data/v9.2/accounts(1)")).await;
        send_ok(
            &service,
            with_header(request(Method::POST, "/api/data/v9.2/contacts"), key, "k-3"),
        )
        .await;
        // A write the primary refused (400): not applied, so not at risk.
        pair.primary.set(Behavior::Status(
            400,
            r#"{"error":{"code":"0x80040203","message":"bad"}}"#,
        ));
        let refused = send(
            &service,
            with_header(request(Method::POST, "/api/data/v9.2/leads"), key, "bad-1"),
        );
        assert_eq!(refused.await.unwrap().status(), 400);
        assert_eq!(pair.primary.count(), 6);

        // Two slow writes, still in flight on the primary when it fails.
        pair.primary.set(Behavior::Delay(Duration::from_millis(1500)));
        let slow_post = tokio::spawn({
            let service = service.clone();
            async move {
                let request = with_header(request(Method::POST, "/api/data/v9.2/imports"), key, "slow-1");
                send(&service, request).await.map(|r| r.status())
            }
        });
        let slow_patch = tokio::spawn({
            let service = service.clone();
            async move {
                let request = with_header(request(Method::PATCH, "/api/data/v9.2/imports(2)"), key, "slow-2");
                send(&service, request).await.map(|r| r.status())
            }
        });
        // The server takes its behavior when a request arrives: once it has seen both slow
        // writes, they keep their delay whatever it answers next.
        wait_until(5, "the primary has received both slow writes", || {
            pair.primary.count() == 8
        })
        .await;

        let report = fail_over(&pair, &service, &handle).await;
        assert!(
            !slow_post.is_finished() && !slow_patch.is_finished(),
            "still in flight at the switch"
        );

        // The Switched event carries the report, and the handle keeps the same one.
        let reports = log.reports();
        assert_eq!(reports.len(), 1, "one switch, one Switched event");
        let from_event = reports[0].clone().expect("the report is on by default");
        assert!(Arc::ptr_eq(&from_event, &report));
        assert_eq!(*handle.last_report().unwrap(), *from_event);
        assert!(matches!(
            events.try_recv(),
            Ok(SwitchEvent::SwitchRequired { .. })
        ));
        match events.try_recv() {
            Ok(SwitchEvent::Switched { report: Some(r), .. }) => assert_eq!(*r, *report),
            other => panic!("expected Switched with a report, got {other:?}"),
        }

        assert_eq!(report.from.host(), PRIMARY_HOST);
        assert_eq!(report.to.host(), ALTERNATE_HOST);
        assert_eq!(report.dropped, 0);
        assert_eq!(
            summary(&report.acknowledged),
            vec![
                entry(Method::POST, "/api/data/v9.2/accounts", Some("k-1")),
                entry(Method::PATCH, "/api/data/v9.2/accounts(1)", Some("k-2")),
                entry(Method::POST, "/api/data/v9.2/contacts", Some("k-3")),
            ]
        );
        for record in &report.acknowledged {
            assert_eq!(record.outcome, WriteOutcome::Acknowledged);
            assert_eq!(record.side, Side::Primary);
            let acknowledged_at = record.acknowledged_at.expect("acknowledged writes have a time");
            assert!(acknowledged_at >= record.sent_at);
            // Rounded up to the ledger's step of about 8.4 ms, as `WriteRecord` says: it may
            // read a little after the report's `at`, never more than one step.
            assert!(acknowledged_at <= report.at + Duration::from_millis(9));
        }
        // The two in-flight writes, in whatever order they were sent.
        let mut unknown = summary(&report.unknown);
        unknown.sort_by(|a, b| a.2.cmp(&b.2));
        assert_eq!(
            unknown,
            vec![
                entry(Method::POST, "/api/data/v9.2/imports", Some("slow-1")),
                entry(Method::PATCH, "/api/data/v9.2/imports(2)", Some("slow-2")),
            ]
        );
        for record in &report.unknown {
            assert_eq!(record.outcome, WriteOutcome::InFlight);
            assert_eq!(record.side, Side::Primary);
            assert_eq!(record.acknowledged_at, None);
        }
        assert!(
            report.at_risk().all(|r| r.method != Method::GET),
            "reads are never listed"
        );
        assert_eq!(report.at_risk().count(), 5);

        // The slow writes end on the primary; the report already made does not change.
        assert_eq!(slow_post.await.unwrap().unwrap(), 200);
        assert_eq!(slow_patch.await.unwrap().unwrap(), 200);
        assert!(Arc::ptr_eq(&handle.last_report().unwrap(), &report));
        assert_eq!(pair.alternate.count(), 1, "only the failed GET was re-sent");
    })
    .await
}

#[tokio::test]
async fn acknowledged_writes_older_than_the_window_are_left_out() {
    within(10, async {
        let pair = Pair::start().await;
        let layer = layer_builder()
            .replication_window(Duration::from_millis(300))
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        let key = "idempotency-key";
        send_ok(
            &service,
            with_header(request(Method::POST, "/api/data/v9.2/accounts"), key, "old"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        send_ok(
            &service,
            with_header(request(Method::POST, "/api/data/v9.2/accounts"), key, "new"),
        )
        .await;

        let report = fail_over(&pair, &service, &handle).await;
        assert_eq!(report.window, Duration::from_millis(300));
        assert_eq!(
            summary(&report.acknowledged),
            vec![entry(Method::POST, "/api/data/v9.2/accounts", Some("new"))]
        );
        assert!(report.unknown.is_empty());
        assert_eq!(report.dropped, 0, "ageing out of the window is not dropping");
    })
    .await
}

#[tokio::test]
async fn the_ledger_keeps_the_newest_writes_up_to_its_capacity_and_counts_the_rest() {
    within(10, async {
        let requests = (0..12)
            .map(|i| {
                with_header(
                    request(Method::POST, "/api/data/v9.2/accounts"),
                    "idempotency-key",
                    &format!("w-{i}"),
                )
            })
            .collect();
        let report = report_after(layer_builder().ledger_capacity(5), requests).await;
        assert_eq!(report.acknowledged.len(), 5);
        assert_eq!(report.dropped, 7);
        let keys: Vec<_> = report
            .acknowledged
            .iter()
            .map(|r| r.key.clone().unwrap())
            .collect();
        assert_eq!(keys, ["w-7", "w-8", "w-9", "w-10", "w-11"], "the oldest go first");
        assert!(report.unknown.is_empty());
        assert!(report.to_string().contains("7 dropped"), "{report}");
    })
    .await
}

#[tokio::test]
async fn query_strings_are_left_out_unless_asked_for() {
    within(10, async {
        let path = "/api/data/v9.2/accounts?$select=name&token=secret";

        let report = report_after(layer_builder(), vec![request(Method::POST, path)]).await;
        assert_eq!(
            summary(&report.acknowledged),
            vec![entry(Method::POST, "/api/data/v9.2/accounts", None)]
        );
        assert!(!format!("{report:?}").contains("secret"));

        let report = report_after(
            layer_builder().record_query(true),
            vec![request(Method::POST, path)],
        )
        .await;
        assert_eq!(
            summary(&report.acknowledged),
            vec![entry(Method::POST, path, None)]
        );
    })
    .await
}

#[tokio::test]
async fn keys_come_from_the_configured_header_or_a_write_key() {
    within(10, async {
        // Default: the Idempotency-Key header; a WriteKey when the header is absent.
        let report = report_after(
            layer_builder(),
            vec![
                with_header(
                    request(Method::POST, "/api/data/v9.2/accounts"),
                    "idempotency-key",
                    "idem-1",
                ),
                with_write_key(request(Method::POST, "/api/data/v9.2/contacts"), "app-2"),
                with_write_key(
                    with_header(
                        request(Method::POST, "/api/data/v9.2/leads"),
                        "idempotency-key",
                        "idem-3",
                    ),
                    "app-3",
                ),
                request(Method::POST, "/api/data/v9.2/tasks"),
            ],
        )
        .await;
        assert_eq!(
            summary(&report.acknowledged),
            vec![
                entry(Method::POST, "/api/data/v9.2/accounts", Some("idem-1")),
                entry(Method::POST, "/api/data/v9.2/contacts", Some("app-2")),
                entry(Method::POST, "/api/data/v9.2/leads", Some("idem-3")),
                entry(Method::POST, "/api/data/v9.2/tasks", None),
            ]
        );

        // Another header; a WriteKey still fills in when it is absent.
        let header = "x-ms-client-request-id";
        let report = report_after(
            layer_builder().write_key_header(HeaderName::from_static("x-ms-client-request-id")),
            vec![
                with_header(
                    request(Method::PATCH, "/api/data/v9.2/accounts(1)"),
                    header,
                    "req-1",
                ),
                with_write_key(request(Method::DELETE, "/api/data/v9.2/accounts(2)"), "app-2"),
                with_write_key(
                    with_header(
                        request(Method::PUT, "/api/data/v9.2/accounts(3)/name"),
                        header,
                        "req-3",
                    ),
                    "app-3",
                ),
            ],
        )
        .await;
        assert_eq!(
            summary(&report.acknowledged),
            vec![
                entry(Method::PATCH, "/api/data/v9.2/accounts(1)", Some("req-1")),
                entry(Method::DELETE, "/api/data/v9.2/accounts(2)", Some("app-2")),
                entry(Method::PUT, "/api/data/v9.2/accounts(3)/name", Some("req-3")),
            ]
        );
    })
    .await
}

#[tokio::test]
async fn no_report_when_turned_off() {
    within(10, async {
        let pair = Pair::start().await;
        let log = EventLog::new();
        let layer = layer_builder()
            .data_loss_report(false)
            .on_switched(log.recorder())
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);
        send_ok(&service, request(Method::POST, "/api/data/v9.2/accounts")).await;

        pair.primary.set(Behavior::Status(503, ""));
        send_ok(&service, request(Method::GET, "/api/data/v9.2/WhoAmI")).await;
        assert_eq!(handle.active(), Side::Alternate);
        assert_eq!(log.reports(), vec![None], "one Switched event, with no report");
        assert!(handle.last_report().is_none());
        assert!(handle.state().last_report.is_none());
    })
    .await
}

#[tokio::test]
async fn a_write_that_timed_out_on_the_primary_is_reported_as_unknown() {
    within(10, async {
        let pair = Pair::start().await;
        let log = EventLog::new();
        let layer = layer_builder().on_switched(log.recorder()).build().unwrap();
        let handle = layer.handle();
        let service = ServiceBuilder::new()
            .layer(layer)
            .timeout(Duration::from_millis(200))
            .service(pair.client::<TestBody>());

        send_ok(&service, request(Method::PATCH, "/api/data/v9.2/accounts(1)")).await;

        pair.primary.set(Behavior::Delay(Duration::from_secs(2)));
        let error = match send(&service, request(Method::POST, "/api/data/v9.2/accounts")).await {
            Ok(response) => panic!("expected a timeout, got {}", response.status()),
            Err(error) => error,
        };
        assert_eq!(*error.kind(), FailoverErrorKind::Timeout);
        assert!(error.possibly_applied());
        assert_eq!(error.not_resent_because(), Some(NotResent::NotIdempotent));
        assert_eq!(pair.alternate.count(), 0, "a POST without a key is not re-sent");
        assert_eq!(handle.active(), Side::Alternate, "the timeout switched");

        let reports = log.reports();
        assert_eq!(reports.len(), 1);
        let report = reports[0].clone().unwrap();
        assert_eq!(
            summary(&report.acknowledged),
            vec![entry(Method::PATCH, "/api/data/v9.2/accounts(1)", None)]
        );
        assert_eq!(
            summary(&report.unknown),
            vec![entry(Method::POST, "/api/data/v9.2/accounts", None)]
        );
        assert_eq!(report.unknown[0].outcome, WriteOutcome::Unknown);
        assert_eq!(report.unknown[0].side, Side::Primary);
        assert!(Arc::ptr_eq(&handle.last_report().unwrap(), &report));
    })
    .await
}

#[tokio::test]
async fn a_write_that_never_reached_the_primary_is_not_at_risk() {
    within(10, async {
        let pair = Pair::start().await;
        let log = EventLog::new();
        let layer = layer_builder().on_switched(log.recorder()).build().unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);

        // Acknowledged, on a connection that is not kept for the next call.
        let acknowledged = with_header(
            request(Method::POST, "/api/data/v9.2/accounts"),
            "connection",
            "close",
        );
        send_ok(&service, with_header(acknowledged, "idempotency-key", "k-0")).await;

        // The primary is gone: the next write is refused at connect, so it cannot have been
        // applied there, and is sent to the alternate instead. (It is a POST with no
        // Idempotency-Key: only a failure before sending lets it be re-sent.)
        pair.primary.kill().await;
        let body = send_ok(
            &service,
            with_write_key(request(Method::POST, "/api/data/v9.2/accounts"), "k-1"),
        )
        .await;
        assert!(body.contains(ALTERNATE_HOST), "{body}");
        assert_eq!(handle.active(), Side::Alternate);

        let reports = log.reports();
        assert_eq!(reports.len(), 1);
        let report = reports[0].clone().unwrap();
        assert_eq!(
            summary(&report.acknowledged),
            vec![entry(Method::POST, "/api/data/v9.2/accounts", Some("k-0"))]
        );
        assert_eq!(
            summary(&report.unknown),
            vec![],
            "the write refused at connect never reached the primary"
        );
    })
    .await
}

#[tokio::test]
async fn the_policy_decides_what_counts_as_a_write() {
    within(10, async {
        let report = report_after(
            layer_builder()
                // A query sent as a POST changes nothing.
                .route(
                    Method::POST,
                    "/api/data/v9.2/$batch",
                    RetryPolicy::by_method().write(false),
                )
                // A GET that runs an action does.
                .route(
                    Method::GET,
                    "/api/data/v9.2/Run*",
                    RetryPolicy::by_method().write(true),
                ),
            vec![
                request(Method::POST, "/api/data/v9.2/$batch"),
                request(Method::GET, "/api/data/v9.2/RunWorkflow"),
                with_write_key(request(Method::GET, "/api/data/v9.2/accounts"), "a read"),
                {
                    let mut r = request(Method::DELETE, "/api/data/v9.2/accounts(1)");
                    r.extensions_mut().insert(RetryPolicy::by_method().write(false));
                    r
                },
                request(Method::DELETE, "/api/data/v9.2/accounts(2)"),
            ],
        )
        .await;
        assert_eq!(
            summary(&report.acknowledged),
            vec![
                entry(Method::GET, "/api/data/v9.2/RunWorkflow", None),
                entry(Method::DELETE, "/api/data/v9.2/accounts(2)", None),
            ]
        );
        assert!(report.unknown.is_empty());
    })
    .await
}

/// A write whose call fails after longer than the replication window (a slow 503) is listed by
/// the switch its own failure causes: its window starts when it failed, not when it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_failed_after_longer_than_the_window_is_in_its_own_switchs_report() {
    within(15, async {
        let pair = Pair::start().await;
        pair.primary.set(custom(|_| async {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            reply(503, &[], "")
        }));
        let layer = layer_builder()
            .replication_window(Duration::from_millis(300))
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);
        let error = send(&service, request(Method::POST, "/api/data/v9.2/accounts"))
            .await
            .expect_err("a POST that may have been applied is not re-sent");
        assert!(error.possibly_applied(), "{error}");
        assert_eq!(handle.active(), Side::Alternate);
        let report = handle.last_report().expect("the switch made a report");
        let unknown: Vec<_> = report
            .unknown
            .iter()
            .map(|w| (w.path.as_str(), w.outcome))
            .collect();
        assert_eq!(
            unknown,
            [("/api/data/v9.2/accounts", WriteOutcome::Unknown)],
            "{report}"
        );
    })
    .await
}

/// A write that failed on the primary after it may have been received, then was re-sent and
/// acknowledged on the alternate, may be on both: the switch off the primary lists it as
/// unknown, and a later switch off the alternate lists it as acknowledged there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_re_sent_after_it_may_have_been_received_is_listed_off_both_sides() {
    within(15, async {
        let (pair, handle, service) = start_with_the_primary_answering_503().await;
        let resent = keyed_accounts_post("resent-1");
        send_ok(&service, resent).await;
        assert_eq!(handle.active(), Side::Alternate);
        let off_primary = handle.last_report().unwrap();
        let listed: Vec<_> = off_primary
            .unknown
            .iter()
            .map(|w| (w.key.as_deref(), w.side, w.outcome))
            .collect();
        assert_eq!(listed, [(Some("resent-1"), Side::Primary, WriteOutcome::Unknown)]);

        let direct = with_header(
            request(Method::POST, "/api/data/v9.2/contacts"),
            "idempotency-key",
            "direct-1",
        );
        send_ok(&service, direct).await;
        pair.primary.set(Behavior::Ok);
        assert_eq!(handle.fail_back(), Side::Primary);
        let off_alternate = handle.last_report().unwrap();
        assert_eq!(off_alternate.from.host(), ALTERNATE_HOST);
        let listed: Vec<_> = off_alternate
            .acknowledged
            .iter()
            .map(|w| (w.key.as_deref(), w.side, w.outcome))
            .collect();
        assert_eq!(
            listed,
            [
                (Some("resent-1"), Side::Alternate, WriteOutcome::ResentOnAlternate),
                (Some("direct-1"), Side::Alternate, WriteOutcome::Acknowledged),
            ]
        );
        assert!(off_alternate.unknown.is_empty(), "{off_alternate}");
    })
    .await
}

/// Writes racing a switch: every write the primary received is in the switch's report (or
/// went to the alternate). A write that read the active side just before the switch stored
/// the new one, but was recorded just after the switch made its report, used to be in none.
/// Many routes (none matching) widen that gap, as a large route table would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_a_switch_are_all_in_its_report() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use tower::{Service, ServiceExt};
    use tower_failover::ReplayBody;

    within(60, async {
        for trial in 0..8 {
            let mut layer = layer_builder();
            for i in 0..3000 {
                layer = layer.route_any_method(&format!("/elsewhere/{i}/*"), RetryPolicy::by_method());
            }
            let layer = layer.build().unwrap();
            let handle = layer.handle();
            let received: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
            let log = received.clone();
            // In process: the race is between the layer's routing and its switch, not the network.
            let inner = tower::service_fn(move |request: Request<ReplayBody<Full<Bytes>>>| {
                let host = request.uri().host().unwrap_or_default().to_string();
                let key = request.headers()["idempotency-key"].to_str().unwrap().to_string();
                log.lock().unwrap().push((host, key));
                async {
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder().status(201).body(Full::new(Bytes::new())).unwrap(),
                    )
                }
            });
            let service = ServiceBuilder::new().layer(layer).service(inner);
            let stop = Arc::new(AtomicBool::new(false));
            let mut writers = Vec::new();
            for writer in 0..4 {
                let (mut service, stop) = (service.clone(), stop.clone());
                writers.push(tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let request = with_header(
                            request(Method::POST, "/api/data/v9.2/accounts"),
                            "idempotency-key",
                            &format!("w{writer}-{n}"),
                        );
                        service.ready().await.unwrap().call(request).await.unwrap();
                        n += 1;
                        tokio::task::yield_now().await;
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            handle.switch_endpoint();
            tokio::time::sleep(Duration::from_millis(10)).await;
            stop.store(true, Ordering::Relaxed);
            for writer in writers {
                writer.await.unwrap();
            }
            let report = handle.last_report().unwrap();
            assert_eq!(report.dropped, 0);
            let reported: HashSet<String> = report.at_risk().filter_map(|w| w.key.clone()).collect();
            let missing: Vec<String> = received
                .lock()
                .unwrap()
                .iter()
                .filter(|(host, key)| host == PRIMARY_HOST && !reported.contains(key))
                .map(|(_, key)| key.clone())
                .collect();
            assert!(
                missing.is_empty(),
                "trial {trial}: the primary received writes the switch's report does not list: {missing:?} ({} listed)",
                reported.len()
            );
        }
    })
    .await
}

/// A keyed POST fails on the primary after it may have been received (503) and is re-sent on
/// the alternate, which is slow. While the re-send is still in flight there, longer than the
/// window after the primary's failure, the alternate goes down: the switch off the alternate
/// lists the write, in flight however old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_send_still_in_flight_on_the_alternate_is_in_the_report_off_the_alternate() {
    within(15, async {
        let pair = Pair::start().await;
        let layer = layer_builder()
            .replication_window(Duration::from_millis(200))
            .build()
            .unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);
        pair.primary.set(custom(|received| async move {
            if received.head.method == Method::POST {
                reply(503, &[], "")
            } else {
                reply(200, &[], "{}")
            }
        }));
        pair.alternate.set(custom(|received| async move {
            if received.head.method == Method::POST {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                reply(201, &[], "{}")
            } else {
                reply(503, &[], "")
            }
        }));
        let post = tokio::spawn({
            let service = service.clone();
            async move {
                let request = keyed_accounts_post("slow-resend");
                send(&service, request).await.map(|r| r.status())
            }
        });
        wait_until(5, "the re-send reached the alternate", || {
            pair.alternate.count() == 1
        })
        .await;
        assert_eq!(handle.active(), Side::Alternate);
        // Well past the window (and its slack) after the primary's failure.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The alternate answers this GET 503: calls move back to the primary.
        send_ok(&service, request(Method::GET, "/api/data/v9.2/WhoAmI")).await;
        assert_eq!(handle.active(), Side::Primary);
        let off_alternate = handle.last_report().unwrap();
        assert_eq!(off_alternate.from.host(), ALTERNATE_HOST);
        let keys: Vec<_> = off_alternate.at_risk().map(|w| w.key.clone()).collect();
        assert_eq!(
            keys,
            [Some("slow-resend".to_string())],
            "the write is in flight on the alternate right now: {off_alternate}"
        );
        assert_eq!(post.await.unwrap().unwrap(), 201);
    })
    .await
}

/// A PUT throttled by an *error* on the primary (so it may have been received) is moved to the
/// alternate during the wait, and refused at connect there and again on the primary (both
/// servers are killed). The call is possibly applied, and the write is kept: the primary may
/// have applied it.
#[tokio::test]
async fn a_write_throttled_by_an_error_then_refused_at_connect_is_not_forgotten() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.kill().await;
        pair.alternate.kill().await;
        let (handle, result, calls) = put_through_error_throttling(&pair, |n, _, handle| {
            if n == 0 {
                // The primary takes the PUT and answers with a throttling error; meanwhile
                // calls move to the alternate (another call found the primary down, say).
                handle.switch_to(Side::Alternate);
                Some(std::io::Error::other("throttled"))
            } else {
                None
            }
        })
        .await;
        let error = result.unwrap_err();
        assert_eq!(calls, 3, "{error}");
        // Calls are on the primary now; the primary may hold the PUT.
        handle.switch_to(Side::Alternate);
        let report = handle.last_report().unwrap();
        let at_risk: Vec<_> = report.at_risk().map(|w| w.path.clone()).collect();
        assert!(
            error.possibly_applied() && at_risk == ["/api/data/v9.2/accounts(1)"],
            "possibly_applied {} and at risk {at_risk:?}; error: {error}",
            error.possibly_applied()
        );
    })
    .await
}

/// A PUT answered with a throttling *error* by the primary (so it may have been received) is
/// retried there after the wait; the retry is refused at connect, calls move to the alternate,
/// and the PUT is re-sent and acknowledged there. The switch off the primary lists the PUT.
#[tokio::test]
async fn a_write_throttled_by_an_error_then_refused_at_connect_is_in_the_switch_report() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.kill().await;
        pair.alternate.set(Behavior::Status(201, ""));
        let (handle, result, calls) = put_through_error_throttling(&pair, |n, host, _| match n {
            // The primary takes the PUT, then answers with a throttling error.
            0 => Some(std::io::Error::other("throttled")),
            // The retry finds the primary gone.
            1 => None,
            _ => {
                assert_eq!(host, ALTERNATE_HOST);
                None
            }
        })
        .await;
        assert_eq!(result.unwrap().status(), 201);
        assert_eq!(calls, 3);
        assert_eq!(handle.active(), Side::Alternate);
        let off_primary = handle.last_report().unwrap();
        assert_eq!(off_primary.from.host(), PRIMARY_HOST);
        let at_risk: Vec<_> = off_primary.at_risk().map(|w| w.path.clone()).collect();
        assert_eq!(
            at_risk,
            ["/api/data/v9.2/accounts(1)"],
            "the primary may hold the PUT (its first attempt got a throttling error): {off_primary}"
        );
    })
    .await
}

/// As the test above, but the retry on the primary is turned away with a 429 and calls move to
/// the alternate during the wait. The first attempt, a throttling error, may have been applied
/// on the primary: acknowledged by the alternate, the write is still at risk off the primary,
/// and off the alternate it is listed as re-sent there.
#[tokio::test]
async fn a_write_throttled_by_an_error_then_a_429_and_moved_stays_at_risk_on_the_primary() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary
            .set(custom(|_| async { reply(429, &[("retry-after", "0")], "") }));
        pair.alternate.set(Behavior::Status(201, ""));
        let (handle, result, calls) = put_through_error_throttling(&pair, |n, host, handle| match n {
            0 => Some(std::io::Error::other("throttled")),
            1 => {
                // Calls move to the alternate (another call found the primary down) while the
                // primary turns the retry away with a 429.
                handle.switch_to(Side::Alternate);
                None
            }
            _ => {
                assert_eq!(host, ALTERNATE_HOST);
                None
            }
        })
        .await;
        assert_eq!(result.unwrap().status(), 201);
        assert_eq!(calls, 3);
        // Back to the primary, then off it again: the primary may hold the PUT.
        handle.switch_to(Side::Primary);
        let off_alternate = handle.last_report().unwrap();
        let outcomes: Vec<_> = off_alternate.at_risk().map(|w| w.outcome).collect();
        handle.switch_to(Side::Alternate);
        let off_primary = handle.last_report().unwrap();
        let at_risk: Vec<_> = off_primary.at_risk().map(|w| w.path.clone()).collect();
        assert!(
            outcomes == [WriteOutcome::ResentOnAlternate] && at_risk == ["/api/data/v9.2/accounts(1)"],
            "off the alternate {outcomes:?}; off the primary {at_risk:?}"
        );
    })
    .await
}

/// Sends one PUT through a layer whose classifier takes an inner error reading "throttled" for
/// throttling (see `throttled_by_an_error`). Attempt number `n`, to `host`, first calls
/// `answer(n, host, handle)`: `Some(error)` fails the attempt with that error in process;
/// `None` sends it on to the pair's real servers (a killed one refuses the connect). In
/// process only for the throttling error: it is the classifier's reading of an inner error
/// that says "throttled", which no response a server sends can be, and a server cannot make
/// the client fail with an error of its choosing. Returns the layer's handle, the call's
/// result and how many attempts went to the inner service.
async fn put_through_error_throttling(
    pair: &Pair,
    answer: impl Fn(usize, &str, &FailoverHandle) -> Option<std::io::Error> + Send + Sync + 'static,
) -> (FailoverHandle, FailoverResult, usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;
    use tower_failover::ReplayBody;

    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let layer = layer_builder()
        .classifier(throttled_by_an_error(Duration::from_millis(20)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let (seen, inner_handle, answer) = (calls.clone(), handle.clone(), Arc::new(answer));
    let client = pair.client::<ReplayBody<Full<Bytes>>>();
    let inner = tower::service_fn(move |request: Request<ReplayBody<Full<Bytes>>>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let in_process = answer(n, request.uri().host().unwrap_or_default(), &inner_handle);
        let sent = match in_process {
            Some(error) => Err(error),
            None => Ok(client.request(request)),
        };
        async move {
            match sent {
                Err(error) => Err(BoxError::from(error)),
                Ok(sent) => sent.await.map_err(BoxError::from),
            }
        }
    });
    let service = ServiceBuilder::new().layer(layer).service(inner);
    let result = service
        .oneshot(request(Method::PUT, "/api/data/v9.2/accounts(1)"))
        .await;
    (handle, result, calls.load(Ordering::SeqCst))
}

/// The default classifier, except that an inner error reading "throttled" is throttling,
/// retried after `wait`: a throttling answer that, unlike a 429, may have been received.
fn throttled_by_an_error(
    wait: Duration,
) -> impl Fn(tower_failover::Outcome<'_>) -> tower_failover::Verdict + Clone + Send + Sync + 'static {
    use tower_failover::{Classifier, DefaultClassifier, Outcome, Verdict};
    move |outcome: Outcome<'_>| match outcome {
        Outcome::Error(error) if error.to_string() == "throttled" => Verdict::Throttled {
            retry_after: Some(wait),
        },
        other => DefaultClassifier::new().classify(other),
    }
}

/// A write turned away with a 429, whose caller gave up during the throttling wait, never went
/// out again: it was not applied anywhere, so no report lists it, as when the call's own
/// deadline ends the wait. A write throttled by an error (it may have been received) and
/// dropped the same way stays at risk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_gives_up_during_the_wait_after_a_429_is_not_at_risk() {
    within(15, async {
        let pair = Pair::start().await;
        let layer = layer_builder().build().unwrap();
        let handle = layer.handle();
        let service = pair.through(layer);
        pair.primary
            .set(custom(|_| async { reply(429, &[("retry-after", "5")], "") }));
        let write = keyed_accounts_post("turned-away-1");
        let gave_up = tokio::time::timeout(Duration::from_millis(400), send(&service, write)).await;
        assert!(gave_up.is_err(), "the call was still waiting to retry");
        assert_eq!(pair.primary.count(), 1, "one attempt, answered 429");
        assert_eq!(pair.alternate.count(), 0);
        assert_eq!(handle.switch_endpoint(), Side::Alternate);
        let report = handle.last_report().unwrap();
        assert!(report.is_empty(), "{report}: {:?}", report.unknown);
    })
    .await;

    // The same wait after a throttling *error*: the attempt may have been received.
    let layer = layer_builder()
        .classifier(throttled_by_an_error(Duration::from_secs(5)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let inner = tower::service_fn(
        |_request: Request<tower_failover::ReplayBody<Full<Bytes>>>| async {
            Err::<http::Response<Full<Bytes>>, _>(std::io::Error::other("throttled"))
        },
    );
    let service = ServiceBuilder::new().layer(layer).service(inner);
    let call = tower::ServiceExt::oneshot(service, request(Method::PUT, "/api/data/v9.2/accounts(1)"));
    assert!(tokio::time::timeout(Duration::from_millis(200), call)
        .await
        .is_err());
    handle.switch_endpoint();
    let report = handle.last_report().unwrap();
    let listed: Vec<_> = report.unknown.iter().map(|w| (w.side, w.outcome)).collect();
    assert_eq!(listed, [(Side::Primary, WriteOutcome::Unknown)]);
}

/// A write that failed on the primary after it may have been received, and is re-sent on the
/// alternate, while calls move off the alternate again between the switch and the re-send (an
/// `on_switched` callback switching back stands in for another call failing there at that
/// moment): the re-send reaches the alternate, so the switch off the alternate must list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_send_to_a_side_calls_just_left_is_in_that_switchs_report() {
    use std::sync::atomic::{AtomicBool, Ordering};
    within(15, async {
        let pair = Pair::start().await;
        let switched_back = Arc::new(AtomicBool::new(false));
        let handle_slot: Arc<std::sync::OnceLock<FailoverHandle>> = Arc::default();
        let (flag, slot) = (switched_back.clone(), handle_slot.clone());
        let layer = layer_builder()
            .on_switched(move |event| {
                if let SwitchEvent::Switched { new, .. } = event {
                    if new.host() == ALTERNATE_HOST && !flag.swap(true, Ordering::SeqCst) {
                        // Queued, and made as soon as the switch to the alternate is complete.
                        slot.get().unwrap().switch_endpoint();
                    }
                }
            })
            .build()
            .unwrap();
        let handle = layer.handle();
        handle_slot.set(handle.clone()).ok().unwrap();
        let service = pair.through(layer);
        pair.primary.set(Behavior::Status(503, ""));
        let write = keyed_accounts_post("raced-1");
        let result = send(&service, write).await;
        assert!(switched_back.load(Ordering::SeqCst));
        assert_eq!(handle.active(), Side::Primary, "calls moved back");
        let reached_alternate = pair.alternate.count() == 1;
        let report = handle.last_report().unwrap();
        assert_eq!(report.from.host(), ALTERNATE_HOST);
        let listed: Vec<_> = report.at_risk().map(|w| (w.key.as_deref(), w.side)).collect();
        if reached_alternate {
            assert_eq!(
                listed,
                [(Some("raced-1"), Side::Alternate)],
                "{report}; the call: {:?}",
                result.map(|r| r.status())
            );
        } else {
            let error = result.expect_err("not re-sent, so the call fails");
            assert_eq!(
                error.not_resent_because(),
                Some(NotResent::SwitchedAgain),
                "{error}"
            );
            assert!(error.possibly_applied());
            assert!(listed.is_empty(), "{report}");
        }
    })
    .await
}

/// The tests of a re-send the alternate never got end alike, with calls on the alternate: a
/// switch off the alternate lists nothing, and a switch back off the primary still lists the
/// write keyed `key` at risk there. `context` heads the failure messages.
fn assert_at_risk_off_the_primary_only(handle: &FailoverHandle, key: &str, context: &str) {
    assert_eq!(handle.switch_endpoint(), Side::Primary);
    let off_alternate = handle.last_report().unwrap();
    assert_eq!(off_alternate.from.host(), ALTERNATE_HOST);
    assert!(
        off_alternate.is_empty(),
        "{context}{off_alternate}: {:?}",
        off_alternate.unknown
    );
    assert_eq!(handle.switch_endpoint(), Side::Alternate);
    let off_primary = handle.last_report().unwrap();
    let listed: Vec<_> = off_primary.at_risk().map(|w| w.key.clone()).collect();
    assert_eq!(listed, [Some(key.to_string())], "{context}{off_primary}");
}

/// A write that may have been received by the primary (a 503) is re-sent on the alternate,
/// which refuses the connection: the alternate provably never got it. The call fails possibly
/// applied, and the write stays at risk off the primary; a switch off the alternate does not
/// list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_send_refused_at_connect_is_not_listed_off_the_side_that_refused_it() {
    within(15, async {
        let (pair, handle, service) = start_with_the_primary_answering_503().await;
        pair.alternate.kill().await;
        let write = keyed_accounts_post("refused-on-alternate");
        let error = send(&service, write).await.unwrap_err();
        assert!(error.possibly_applied(), "{error}");
        assert_eq!(handle.active(), Side::Alternate);
        let off_primary = handle.last_report().unwrap();
        let listed: Vec<_> = off_primary
            .at_risk()
            .map(|w| (w.key.as_deref(), w.side))
            .collect();
        assert_eq!(listed, [(Some("refused-on-alternate"), Side::Primary)]);

        assert_at_risk_off_the_primary_only(&handle, "refused-on-alternate", "");
    })
    .await;

    // The same with the alternate refusing the write with a 400.
    within(15, async {
        let (pair, handle, service) = start_with_the_primary_answering_503().await;
        pair.alternate.set(Behavior::Status(400, r#"{"error":{}}"#));
        let write = keyed_accounts_post("refused-by-alternate");
        let response = send(&service, write).await.unwrap();
        assert_eq!(response.status(), 400);
        assert_at_risk_off_the_primary_only(&handle, "refused-by-alternate", "");
    })
    .await
}

/// An inner service that answers the first attempt with a 503, then fails `poll_ready` (or,
/// `stuck`, is never ready again). A stand-in: no real client fails its readiness on demand.
#[derive(Clone)]
struct UnavailableThenNotReady {
    calls: Arc<std::sync::atomic::AtomicUsize>,
    stuck: bool,
}

impl tower::Service<Request<tower_failover::ReplayBody<Full<Bytes>>>> for UnavailableThenNotReady {
    type Response = http::Response<Full<Bytes>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        if self.calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            std::task::Poll::Ready(Ok(()))
        } else if self.stuck {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Err(std::io::Error::other("service closed")))
        }
    }

    fn call(&mut self, _: Request<tower_failover::ReplayBody<Full<Bytes>>>) -> Self::Future {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok(reply(503, &[], "")))
    }
}

/// A write that may have been received by the primary (a 503), whose re-send on the alternate
/// never went out (the inner service could not get ready; or the caller gave up while it
/// waited for it): the alternate never got it, so a switch off the alternate does not list it;
/// the primary still may hold it.
#[tokio::test]
async fn a_re_send_that_never_went_out_is_not_listed_off_the_side_it_was_for() {
    for stuck in [false, true] {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let layer = layer_builder().build().unwrap();
        let handle = layer.handle();
        let service = ServiceBuilder::new()
            .layer(layer)
            .service(UnavailableThenNotReady {
                calls: calls.clone(),
                stuck,
            });
        let write = keyed_accounts_post("never-went-out");
        let call = tower::ServiceExt::oneshot(service, write);
        match tokio::time::timeout(Duration::from_millis(200), call).await {
            Ok(result) => {
                assert!(!stuck);
                let error = result.unwrap_err();
                assert_eq!(
                    error.not_resent_because(),
                    Some(NotResent::ServiceNotReady),
                    "{error}"
                );
                assert!(error.possibly_applied());
            }
            Err(_) => assert!(stuck, "the caller gave up while the re-send waited"),
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(handle.active(), Side::Alternate);
        assert_at_risk_off_the_primary_only(&handle, "never-went-out", &format!("stuck {stuck}: "));
    }
}

/// A PUT answered with a throttling *error* by the primary (so the primary may hold it) follows
/// calls to the alternate during the wait; the alternate refuses the retry at connect, and the
/// PUT is re-sent and acknowledged back on the primary. The alternate never got it: the switch
/// off the alternate does not list it; the primary still does.
#[tokio::test]
async fn a_write_that_followed_calls_and_was_refused_at_connect_there_is_not_listed_off_that_side() {
    within(10, async {
        let pair = Pair::start().await;
        pair.alternate.kill().await;
        pair.primary.set(Behavior::Status(201, ""));
        let (handle, result, calls) = put_through_error_throttling(&pair, |n, host, handle| match n {
            0 => {
                // Calls move to the alternate (another call found the primary down, say).
                handle.switch_to(Side::Alternate);
                Some(std::io::Error::other("throttled"))
            }
            1 => {
                // The killed alternate refuses the connect.
                assert_eq!(host, ALTERNATE_HOST);
                None
            }
            _ => {
                assert_eq!(host, PRIMARY_HOST);
                None
            }
        })
        .await;
        assert_eq!(result.unwrap().status(), 201);
        assert_eq!(calls, 3);
        assert_eq!(handle.active(), Side::Primary);
        let off_alternate = handle.last_report().unwrap();
        assert_eq!(off_alternate.from.host(), ALTERNATE_HOST);
        assert!(
            off_alternate.is_empty(),
            "{off_alternate}: {:?}",
            off_alternate.unknown
        );
        handle.switch_to(Side::Alternate);
        let off_primary = handle.last_report().unwrap();
        let at_risk: Vec<_> = off_primary.at_risk().map(|w| w.path.clone()).collect();
        assert_eq!(at_risk, ["/api/data/v9.2/accounts(1)"], "{off_primary}");
    })
    .await
}
