//! (feature `metrics`) Publishing a layer's counters through the `metrics` facade, and
//! telling apart two layers that would publish under the same labels.

use std::sync::{Arc, Mutex, Weak};

use crate::endpoint::Side;
use crate::state::{FailoverHandle, Shared};

/// The layers that have published, by the labels they published under. Counters are
/// published as absolute values, so two live layers under the same labels overwrite each
/// other's series at every scrape: the figures jump between the two, and nothing errors.
/// Checked only when publishing, never on a call.
static PUBLISHERS: Mutex<Vec<Publisher>> = Mutex::new(Vec::new());

struct Publisher {
    primary: String,
    client: Option<String>,
    layer: Weak<Shared>,
    // Warned once about a clash, not at every scrape.
    warned: bool,
}

impl FailoverHandle {
    /// Publishes the counters, the active side and the generation through the `metrics`
    /// facade (absolute values, so call it as often as you scrape). Names:
    /// `failover_calls_total`, `failover_resends_total`, `failover_throttle_retries_total`,
    /// `failover_switches_total`, `failover_throttled_total`, `failover_refused_by_budget_total`,
    /// `failover_possibly_applied_total`, `failover_deadline_exceeded_total` (counters),
    /// `failover_active_alternate` (gauge, 1 on the alternate) and `failover_generation`
    /// (gauge), each labelled `primary` with the primary's host.
    ///
    /// Two layers for the same primary (two clients of one organisation) must publish with
    /// [`publish_metrics_as`](FailoverHandle::publish_metrics_as) under different names:
    /// under the same labels, each would overwrite the other's series. The second layer to
    /// publish under labels a live layer already uses logs a warning saying so, once.
    ///
    /// ```
    /// use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
    /// let handle = layer.handle();
    /// handle.switch_endpoint();
    ///
    /// // In production a recorder such as metrics-exporter-prometheus is installed once, and this
    /// // runs on each scrape.
    /// let recorder = DebuggingRecorder::new();
    /// let snapshotter = recorder.snapshotter();
    /// metrics::with_local_recorder(&recorder, || handle.publish_metrics());
    ///
    /// let metrics = snapshotter.snapshot().into_vec();
    /// let value = |name: &str| {
    ///     let (key, _, _, value) = metrics.iter().find(|(key, ..)| key.key().name() == name).unwrap();
    ///     assert_eq!(key.key().labels().next().unwrap().value(), "contoso.api.crm.dynamics.com");
    ///     value
    /// };
    /// assert!(matches!(value("failover_switches_total"), DebugValue::Counter(1)));
    /// assert!(matches!(value("failover_active_alternate"), DebugValue::Gauge(on) if on.into_inner() == 1.0));
    /// ```
    pub fn publish_metrics(&self) {
        self.publish(None);
    }

    /// As [`publish_metrics`](FailoverHandle::publish_metrics), with a second label, `client`,
    /// set to `client`: for two or more layers with the same primary, each under its own name.
    /// Give a layer one fixed name: each name a layer publishes under is remembered (for the
    /// warning above) until the layer is dropped, and is one more series for the recorder.
    ///
    /// ```
    /// use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    /// use tower_failover::{Endpoints, FailoverLayer};
    ///
    /// let pair = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
    /// let orders = FailoverLayer::new(pair.clone()).handle();
    /// let billing = FailoverLayer::new(pair).handle();
    /// orders.switch_endpoint();
    ///
    /// let recorder = DebuggingRecorder::new();
    /// let snapshotter = recorder.snapshotter();
    /// metrics::with_local_recorder(&recorder, || {
    ///     orders.publish_metrics_as("orders");
    ///     billing.publish_metrics_as("billing");
    /// });
    ///
    /// let switches = |client: &str| {
    ///     snapshotter.snapshot().into_vec().into_iter().find_map(|(key, _, _, value)| {
    ///         let key = key.key();
    ///         let named = key.labels().any(|label| label.key() == "client" && label.value() == client);
    ///         (key.name() == "failover_switches_total" && named).then_some(value)
    ///     })
    /// };
    /// assert!(matches!(switches("orders"), Some(DebugValue::Counter(1))));
    /// assert!(matches!(switches("billing"), Some(DebugValue::Counter(0))));
    /// ```
    pub fn publish_metrics_as(&self, client: &str) {
        self.publish(Some(client));
    }

    fn publish(&self, client: Option<&str>) {
        let primary = self.shared.endpoints.primary().host().to_string();
        warn_on_shared_labels(&self.shared, &primary, client);
        let mut labels = vec![("primary", primary)];
        if let Some(client) = client {
            labels.push(("client", client.to_string()));
        }
        let c = self.counters();
        let counters = [
            ("failover_calls_total", c.calls),
            ("failover_resends_total", c.failover_resends),
            ("failover_throttle_retries_total", c.throttle_retries),
            ("failover_switches_total", c.switches),
            ("failover_throttled_total", c.throttled),
            ("failover_refused_by_budget_total", c.refused_by_budget),
            ("failover_possibly_applied_total", c.possibly_applied),
            ("failover_deadline_exceeded_total", c.deadline_exceeded),
        ];
        for (name, value) in counters {
            metrics::counter!(name, &labels).absolute(value);
        }
        let on_alternate = if self.active() == Side::Alternate {
            1.0
        } else {
            0.0
        };
        metrics::gauge!("failover_active_alternate", &labels).set(on_alternate);
        metrics::gauge!("failover_generation", &labels).set(self.generation() as f64);
    }
}

/// Notes that `layer` publishes under these labels, and warns (once per layer) when another
/// live layer already does.
fn warn_on_shared_labels(layer: &Arc<Shared>, primary: &str, client: Option<&str>) {
    // A panic elsewhere while holding the list leaves it usable: it is only ever appended to
    // and pruned.
    let mut publishers = PUBLISHERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    publishers.retain(|p| p.layer.strong_count() > 0);
    let same_labels = |p: &Publisher| p.primary == primary && p.client.as_deref() == client;
    let me = Arc::as_ptr(layer);
    let clash = publishers
        .iter()
        .any(|p| same_labels(p) && !std::ptr::eq(p.layer.as_ptr(), me));
    let mine = match publishers
        .iter_mut()
        .position(|p| same_labels(p) && std::ptr::eq(p.layer.as_ptr(), me))
    {
        Some(index) => &mut publishers[index],
        None => {
            publishers.push(Publisher {
                primary: primary.to_string(),
                client: client.map(str::to_string),
                layer: Arc::downgrade(layer),
                warned: false,
            });
            publishers.last_mut().expect("just pushed")
        }
    };
    let warn = clash && !mine.warned;
    mine.warned |= warn;
    // Not under the list's lock: a subscriber is user code, and may publish in turn.
    drop(publishers);
    if warn {
        tracing::warn!(
            primary,
            client,
            "failover: another layer publishes metrics under the same labels, so each overwrites the other's series; give each its own name with publish_metrics_as"
        );
    }
}
