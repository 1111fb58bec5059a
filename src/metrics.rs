//! Prometheus metrics, kept per application instance (no global recorder), rendered at
//! `GET /metrics`.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Latency buckets in seconds, from a cache hit to a database time-out.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What became of a submitted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Accepted,
    Replayed,
    Conflicting,
    RejectedClosed,
}

const _: () = {
    let mut i = 0;
    while i < EventOutcome::ALL.len() {
        assert!(EventOutcome::ALL[i].index() == i);
        i += 1;
    }
};

impl EventOutcome {
    const ALL: [Self; 4] = [
        Self::Accepted,
        Self::Replayed,
        Self::Conflicting,
        Self::RejectedClosed,
    ];

    /// `ALL` lists every outcome in declaration order, so `outcome as usize` indexes it.
    const fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Replayed => "replayed",
            Self::Conflicting => "conflicting",
            Self::RejectedClosed => "rejected_closed",
        }
    }
}

/// The service's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The request series' handles by route template, so that a request finds its counter
    /// without building label sets: routes are few, and so are their methods and statuses.
    requests: RwLock<HashMap<Box<str>, Vec<RequestSeries>>>,
    /// `events_total` by outcome, in `EventOutcome::ALL` order.
    events: [Counter; EventOutcome::ALL.len()],
    /// The store operations' latency series by (operation, succeeded).
    store_operations: RwLock<HashMap<(&'static str, bool), Histogram>>,
}

/// The series of one (route, method, status).
struct RequestSeries {
    method: Box<str>,
    status: u16,
    count: Counter,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let events = EventOutcome::ALL.map(|outcome| {
            recorder.register_counter(
                &static_key("events_total", &[("outcome", outcome.label())]),
                &METADATA,
            )
        });
        Self {
            recorder,
            handle,
            requests: RwLock::default(),
            events,
            store_operations: RwLock::default(),
        }
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

/// A key whose labels are all known at compile time: nothing to copy.
fn static_key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::from_static_parts(k, v))
        .collect();
    Key::from_parts(name, labels)
}

impl Metrics {
    /// One served HTTP request, by route template (never the raw path).
    pub fn request(&self, method: &str, route: &str, status: u16, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let find = |series: &[RequestSeries]| {
            series
                .iter()
                .find(|s| s.status == status && &*s.method == method)
                .map(|s| (s.count.clone(), s.latency.clone()))
        };
        let known = self
            .requests
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(route)
            .and_then(|series| find(series));
        let (count, latency) = known.unwrap_or_else(|| {
            let mut requests = self
                .requests
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let series = requests.entry(route.into()).or_default();
            find(series).unwrap_or_else(|| {
                let status_label = status.to_string();
                let made = RequestSeries {
                    method: method.into(),
                    status,
                    count: self.recorder.register_counter(
                        &key(
                            "http_requests_total",
                            &[
                                ("method", method),
                                ("route", route),
                                ("status", &status_label),
                            ],
                        ),
                        &METADATA,
                    ),
                    latency: self.recorder.register_histogram(
                        &key(
                            "http_request_duration_seconds",
                            &[("method", method), ("route", route)],
                        ),
                        &METADATA,
                    ),
                };
                let handles = (made.count.clone(), made.latency.clone());
                series.push(made);
                handles
            })
        });
        count.increment(1);
        latency.record(seconds);
    }

    pub fn events(&self, outcome: EventOutcome, count: u64) {
        match self.events.get(outcome.index()) {
            Some(counter) => counter.increment(count),
            // An outcome missing from `ALL`: counted all the same, only slower.
            None => self
                .recorder
                .register_counter(
                    &static_key("events_total", &[("outcome", outcome.label())]),
                    &METADATA,
                )
                .increment(count),
        }
    }

    /// One store operation and whether it succeeded.
    pub fn store_operation(&self, operation: &'static str, ok: bool, latency: Duration) {
        let known = self
            .store_operations
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&(operation, ok))
            .cloned();
        let histogram = known.unwrap_or_else(|| {
            let result = if ok { "ok" } else { "error" };
            self.store_operations
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry((operation, ok))
                .or_insert_with(|| {
                    self.recorder.register_histogram(
                        &static_key(
                            "store_operation_duration_seconds",
                            &[("operation", operation), ("result", result)],
                        ),
                        &METADATA,
                    )
                })
                .clone()
        });
        histogram.record(latency.as_secs_f64());
    }

    /// One command sent to the database: a round trip.
    pub fn store_command(&self, command: &str) {
        self.recorder
            .register_counter(
                &key("store_commands_total", &[("command", command)]),
                &METADATA,
            )
            .increment(1);
    }

    /// The Prometheus text exposition, with gauges read at scrape time.
    pub fn render(&self, open_streams: usize, change_streams: bool) -> String {
        self.recorder
            .register_gauge(&key("live_streams_open", &[]), &METADATA)
            .set(open_streams as f64);
        self.recorder
            .register_gauge(&key("live_change_streams_active", &[]), &METADATA)
            .set(if change_streams { 1.0 } else { 0.0 });
        self.handle.run_upkeep();
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.request(
            "POST",
            "/sessions/{session_id}/events",
            201,
            Duration::from_millis(3),
        );
        metrics.events(EventOutcome::Replayed, 2);
        metrics.store_operation("insert", true, Duration::from_micros(700));
        let text = metrics.render(4, true);
        assert!(text.contains(
            r#"http_requests_total{method="POST",route="/sessions/{session_id}/events",status="201"} 1"#
        ), "{text}");
        assert!(
            text.contains("http_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains(r#"events_total{outcome="replayed"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"store_operation_duration_seconds_count{operation="insert",result="ok"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("live_streams_open 4"), "{text}");
        assert!(text.contains("live_change_streams_active 1"), "{text}");
    }

    #[test]
    fn each_event_outcome_counts_under_its_own_label() {
        let metrics = Metrics::default();
        for (n, outcome) in (1..).zip(EventOutcome::ALL) {
            metrics.events(outcome, n);
        }
        let text = metrics.render(0, false);
        for (n, outcome) in (1..).zip(EventOutcome::ALL) {
            let line = format!(r#"events_total{{outcome="{}"}} {n}"#, outcome.label());
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn store_operations_keep_their_results_apart() {
        let metrics = Metrics::default();
        metrics.store_operation("insert", true, Duration::from_micros(700));
        metrics.store_operation("insert", false, Duration::from_micros(700));
        metrics.store_operation("insert", false, Duration::from_micros(700));
        let text = metrics.render(0, false);
        let series = |result: &str| {
            format!(
                r#"store_operation_duration_seconds_count{{operation="insert",result="{result}"}}"#
            )
        };
        assert!(text.contains(&format!("{} 1", series("ok"))), "{text}");
        assert!(text.contains(&format!("{} 2", series("error"))), "{text}");
    }
}
