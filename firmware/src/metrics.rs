//! Every metric the daemon exports, in one place, with Prometheus names
//! (`spineagent_` prefix, `_total` counters, `_seconds`, `_bytes`).
//! Labels come from bounded sets (reasons, queue names), never UIDs.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub associations_active: IntGauge,
    pub associations_total: IntCounter,
    pub associations_refused_total: IntCounterVec,
    pub associations_aborted_total: IntCounterVec,
    pub echo_total: IntCounter,
    pub instances_received_total: IntCounter,
    pub instances_duplicate_total: IntCounter,
    pub received_bytes_total: IntCounter,
    pub store_failures_total: IntCounterVec,
    pub instance_store_seconds: Histogram,
    pub instance_receive_seconds: Histogram,
    pub spool_filesystem_used_ratio: Gauge,
    pub spool_filesystem_available_bytes: IntGauge,
    pub spool_instances_bytes: IntGauge,
    pub series_completed_total: IntCounter,
    pub series_skipped_total: IntCounterVec,
    pub studies_completed_total: IntCounter,
    pub queue_depth: IntGaugeVec,
    pub models_loaded: IntGauge,
    pub reports_total: IntCounterVec,
    pub report_failures_total: IntCounter,
    pub report_seconds: Histogram,
    pub studies_not_reported_total: IntCounterVec,
    pub outbox_pending: IntGaugeVec,
    pub delivery_attempts_total: IntCounterVec,
    pub delivery_seconds: Histogram,
    pub stream_slices_encoded_total: IntCounter,
    pub stream_cache_full_total: IntCounter,
    pub stream_cache_slices: IntGauge,
    pub model_ready_seconds: prometheus::GaugeVec,
    pub queue_capacity: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let instance_store_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "spineagent_instance_store_seconds",
                "Time from the last data PDV of an instance to its durable commit (parse, validate, fsync, rename)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(instance_store_seconds.clone()))
            .expect("unique metric");
        let instance_receive_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "spineagent_instance_receive_seconds",
                "Time from a C-STORE command to the last PDV of its data set (network and spool writes)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(instance_receive_seconds.clone()))
            .expect("unique metric");
        let spool_filesystem_used_ratio = Gauge::new(
            "spineagent_spool_filesystem_used_ratio",
            "Used fraction of the spool's filesystem",
        )
        .expect("valid metric");
        r.register(Box::new(spool_filesystem_used_ratio.clone()))
            .expect("unique metric");
        Metrics {
            associations_active: int_gauge(&r, "spineagent_associations_active", "Associations currently open"),
            associations_total: counter(&r, "spineagent_associations_total", "Associations accepted"),
            associations_refused_total: counter_vec(
                &r,
                "spineagent_associations_refused_total",
                "Association requests refused, by reason",
                &["reason"],
            ),
            associations_aborted_total: counter_vec(
                &r,
                "spineagent_associations_aborted_total",
                "Associations that ended in an A-ABORT or a broken connection, by reason",
                &["reason"],
            ),
            echo_total: counter(&r, "spineagent_echo_requests_total", "C-ECHO requests answered"),
            instances_received_total: counter(
                &r,
                "spineagent_instances_received_total",
                "Instances durably stored and acknowledged with Success",
            ),
            instances_duplicate_total: counter(
                &r,
                "spineagent_instances_duplicate_total",
                "C-STOREs of an already stored SOP Instance UID (acknowledged, earlier file kept)",
            ),
            received_bytes_total: counter(
                &r,
                "spineagent_received_bytes_total",
                "Data set bytes of stored instances",
            ),
            store_failures_total: counter_vec(
                &r,
                "spineagent_store_failures_total",
                "C-STOREs answered with a failure status, by reason",
                &["reason"],
            ),
            instance_store_seconds,
            instance_receive_seconds,
            spool_filesystem_used_ratio,
            spool_filesystem_available_bytes: int_gauge(
                &r,
                "spineagent_spool_filesystem_available_bytes",
                "Bytes still available on the spool's filesystem",
            ),
            spool_instances_bytes: int_gauge(
                &r,
                "spineagent_spool_instances_bytes",
                "Bytes of instances held in the spool by studies not yet complete",
            ),
            series_completed_total: counter(&r, "spineagent_series_completed_total", "Series assembled as complete"),
            series_skipped_total: counter_vec(
                &r,
                "spineagent_series_skipped_total",
                "Complete series the models cannot use, by reason",
                &["reason"],
            ),
            studies_completed_total: counter(
                &r,
                "spineagent_studies_completed_total",
                "Studies assembled as complete",
            ),
            queue_depth: gauge_vec(
                &r,
                "spineagent_queue_depth",
                "Messages waiting in an internal queue",
                &["queue"],
            ),
            queue_capacity: gauge_vec(
                &r,
                "spineagent_queue_capacity",
                "Capacity of an internal queue",
                &["queue"],
            ),
            reports_total: counter_vec(
                &r,
                "spineagent_reports_total",
                "Study reports written, by triage category (critical, urgent, routine)",
                &["category"],
            ),
            report_failures_total: counter(
                &r,
                "spineagent_report_failures_total",
                "Completed studies whose analysis failed (see the log)",
            ),
            studies_not_reported_total: counter_vec(
                &r,
                "spineagent_studies_not_reported_total",
                "Completed studies deliberately not reported, by reason (no_usable_series)",
                &["reason"],
            ),
            stream_slices_encoded_total: counter(
                &r,
                "spineagent_stream_slices_encoded_total",
                "Slices encoded as their instances arrived (before their study completed)",
            ),
            stream_cache_full_total: counter(
                &r,
                "spineagent_stream_cache_full_total",
                "Slice encodings not kept because the cache was full (encoded again at analysis)",
            ),
            stream_cache_slices: int_gauge(
                &r,
                "spineagent_stream_cache_slices",
                "Slice encodings waiting for their study to complete",
            ),
            outbox_pending: gauge_vec(
                &r,
                "spineagent_outbox_pending",
                "Reports waiting for (or retrying) delivery, by destination",
                &["destination"],
            ),
            delivery_attempts_total: counter_vec(
                &r,
                "spineagent_delivery_attempts_total",
                "Report delivery attempts by destination and result (delivered, retry, dead_letter)",
                &["destination", "result"],
            ),
            delivery_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "spineagent_delivery_seconds",
                        "Time from a report being queued to its acknowledgement by the destination",
                    )
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0, 3600.0]),
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            report_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "spineagent_report_seconds",
                        "Time from a study's completion event to its report on disk (decode, models, SR)",
                    )
                    .buckets(vec![0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0]),
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            models_loaded: int_gauge(
                &r,
                "spineagent_models_loaded",
                "Models of the configured bundle loaded and warmed up",
            ),
            model_ready_seconds: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "spineagent_model_ready_seconds",
                        "Seconds to load, check and warm up each model at start",
                    ),
                    &["model"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            registry: r,
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    /// Records a bounded queue's depth.
    pub fn observe_queue<T>(&self, name: &str, sender: &tokio::sync::mpsc::Sender<T>) {
        let cap = sender.max_capacity();
        self.queue_capacity.with_label_values(&[name]).set(cap as i64);
        self.queue_depth
            .with_label_values(&[name])
            .set((cap - sender.capacity()) as i64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions() {
        let m = Metrics::new();
        m.store_failures_total.with_label_values(&["too_large"]).inc();
        m.series_skipped_total.with_label_values(&["localizer"]).inc();
        m.queue_depth.with_label_values(&["assembler"]).set(0);
        let text = m.render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("spineagent_"), "{name}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
        assert!(text.contains("spineagent_store_failures_total{reason=\"too_large\"} 1"));
        assert!(text.contains("spineagent_instance_store_seconds_bucket"));
    }
}
