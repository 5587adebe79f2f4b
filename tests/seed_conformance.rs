//! Behaviours of the seed (the Dynamics 365 SDK's disaster-recovery failover) checked end to
//! end against real hyper servers on loopback.

mod support;

use std::time::Duration;

use http::StatusCode;
use tower_failover::{DownKind, Endpoints, FailoverErrorKind, FailoverLayer, Side, SwitchCause, SwitchEvent};

use support::*;

/// The Organization service (SOAP) answers a failing-over organization with HTTP 500 and an
/// `OrganizationServiceFault` whose `ErrorCode` is -2147176347: the seed's
/// `FaultException<OrganizationServiceFault>`.
const SOAP_FAILOVER_FAULT: &str = concat!(
    r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>"#,
    r#"<faultcode>s:Client</faultcode><faultstring xml:lang="en-US">The organization is failing over</faultstring>"#,
    r#"<detail><OrganizationServiceFault xmlns="http://schemas.microsoft.com/xrm/2011/Contracts" "#,
    r#"xmlns:i="http://www.w3.org/2001/XMLSchema-instance">"#,
    r#"<ActivityId>5f1a7a4e-0000-0000-0000-000000000000</ActivityId>"#,
    r#"<ErrorCode>-2147176347</ErrorCode><ErrorDetails xmlns:a="http://schemas.datacontract.org/2004/07/System.Collections.Generic"/>"#,
    r#"<HelpLink i:nil="true"/><InnerFault i:nil="true"/><Message>The organization is failing over</Message>"#,
    r#"</OrganizationServiceFault></detail></s:Fault></s:Body></s:Envelope>"#
);

#[tokio::test]
async fn a_soap_organization_service_fault_with_the_failover_code_fails_over() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Status(500, SOAP_FAILOVER_FAULT));
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let mut events = handle.events();
        let service = pair.through(layer);

        let body = send_ok(
            &service,
            request(http::Method::GET, "/XRMServices/2011/Organization.svc/web"),
        )
        .await;
        assert!(body.contains(ALTERNATE_HOST), "answered by the alternate: {body}");
        assert_eq!(handle.active(), Side::Alternate);
        assert_eq!(pair.alternate.count(), 1);
        match events.try_recv() {
            Ok(SwitchEvent::SwitchRequired {
                cause: SwitchCause::EndpointDown(DownKind::ServiceFault { code }),
                ..
            }) => assert_eq!(code, -2147176347),
            other => panic!("expected SwitchRequired for the fault code, got {other:?}"),
        }
    })
    .await
}

#[tokio::test]
async fn a_soap_fault_with_another_code_is_handed_back_without_a_switch() {
    within(10, async {
        let other = SOAP_FAILOVER_FAULT.replace("-2147176347", "-2147220969");
        let other: &'static str = Box::leak(other.into_boxed_str());
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Status(500, other));
        let layer = FailoverLayer::new(Endpoints::dynamics(PRIMARY_URL).unwrap());
        let handle = layer.handle();
        let service = pair.through(layer);

        let response = send(
            &service,
            request(http::Method::GET, "/XRMServices/2011/Organization.svc/web"),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(text(response).await, other);
        assert_eq!(handle.active(), Side::Primary);
        assert_eq!(pair.alternate.count(), 0);
    })
    .await
}

/// Seed, step 4: "If the target organization of the call is not enabled for failover, go to
/// step 9": the exception, with no `EndpointSwitchRequired` (there is nothing to switch to).
#[tokio::test]
async fn with_no_alternate_an_outage_raises_no_event_and_fails_with_its_error() {
    within(10, async {
        let pair = Pair::start().await;
        pair.primary.set(Behavior::Status(503, ""));
        let log = EventLog::new();
        let layer = FailoverLayer::builder(Endpoints::primary_only(PRIMARY_URL).unwrap())
            .on_switch_required(log.recorder())
            .on_switched(log.recorder())
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut events = handle.events();
        assert!(!handle.auto_switch_enabled());
        let service = pair.through(layer);

        let error = send(&service, request(http::Method::GET, "/api/data/v9.2/WhoAmI"))
            .await
            .unwrap_err();
        assert!(
            matches!(error.kind(), FailoverErrorKind::Unavailable { status } if *status == 503),
            "{error}"
        );
        // By hand too: nowhere to go, nothing to announce.
        assert_eq!(handle.switch_endpoint(), Side::Primary);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(log.all().is_empty(), "events raised: {:?}", log.all());
        assert!(events.try_recv().is_err());
        assert!(handle.state().last_event.is_none());
        assert_eq!(handle.generation(), 0);
    })
    .await
}
