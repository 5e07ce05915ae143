//! The engine's Prometheus families: actors, coordinator and persister (design.md §7).
//!
//! They are registered in a [`prometheus::Registry`] the engine creates; the service adds
//! its own families to the same registry and serves it at `/metrics`. Labels are bounded
//! sets (message types, outcomes, reasons), never account ids.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Buckets for in-memory steps: a few microseconds to tens of milliseconds.
const STEP_BUCKETS_SECONDS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
];

/// Buckets for database work and durability lag: a fraction of a millisecond to seconds.
const IO_BUCKETS_SECONDS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5, 5.0, 10.0,
];

const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// The store's own families: operations by name and outcome, their latency, and the
/// read pool's connections.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    pub operations: IntCounterVec,
    pub duration: HistogramVec,
    pub pool_connections: prometheus::IntGaugeVec,
}

impl StoreMetrics {
    pub fn new() -> Self {
        StoreMetrics {
            operations: IntCounterVec::new(
                Opts::new("tally_db_operations_total", "Store operations by name and outcome"),
                &["operation", "outcome"],
            )
            .unwrap(),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "tally_db_operation_duration_seconds",
                    "Latency of store operations by name",
                )
                .buckets(IO_BUCKETS_SECONDS.to_vec()),
                &["operation"],
            )
            .unwrap(),
            pool_connections: prometheus::IntGaugeVec::new(
                Opts::new("tally_db_pool_connections", "Connections of the read pool by state"),
                &["state"],
            )
            .unwrap(),
        }
    }

    pub fn record(&self, operation: &str, ok: bool, took: std::time::Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.operations.with_label_values(&[operation, outcome]).inc();
        self.duration
            .with_label_values(&[operation])
            .observe(took.as_secs_f64());
    }

    fn register(&self, registry: &Registry) {
        register(registry, self.operations.clone());
        register(registry, self.duration.clone());
        register(registry, self.pool_connections.clone());
    }
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug)]
pub struct EngineMetrics {
    pub registry: Registry,
    pub actors_active: IntGauge,
    pub actor_activations: IntCounter,
    pub actor_passivations: IntCounter,
    pub actor_mailbox_depth: IntGauge,
    pub actor_message_duration: HistogramVec,
    pub actor_overloaded: IntCounter,
    pub transfers: IntCounterVec,
    pub rollbacks: IntCounterVec,
    pub transfer_step_duration: HistogramVec,
    pub amount_moved_minor: IntCounterVec,
    pub persister_queue_depth: IntGauge,
    pub persister_queue_capacity: IntGauge,
    pub persister_batch_size: Histogram,
    pub persister_flush_duration: Histogram,
    pub persister_durable_lag: Histogram,
    pub persister_retries: IntCounter,
    pub persister_failures: IntCounter,
    pub persister_refused: IntCounterVec,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("engine metric names are unique");
    collector
}

impl EngineMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let metrics = EngineMetrics {
            actors_active: register(
                r,
                IntGauge::new("tally_actors_active", "Account actors alive now").unwrap(),
            ),
            actor_activations: register(
                r,
                IntCounter::new(
                    "tally_actor_activations_total",
                    "Account actors activated (loaded from the store)",
                )
                .unwrap(),
            ),
            actor_passivations: register(
                r,
                IntCounter::new("tally_actor_passivations_total", "Idle account actors passivated").unwrap(),
            ),
            actor_mailbox_depth: register(
                r,
                IntGauge::new(
                    "tally_actor_mailbox_depth",
                    "Messages waiting in all account actor mailboxes",
                )
                .unwrap(),
            ),
            actor_message_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tally_actor_message_duration_seconds",
                        "Time an account actor spends handling one message, by message type",
                    )
                    .buckets(STEP_BUCKETS_SECONDS.to_vec()),
                    &["message"],
                )
                .unwrap(),
            ),
            actor_overloaded: register(
                r,
                IntCounter::new(
                    "tally_actor_overloaded_total",
                    "Messages refused because an account actor's mailbox was full",
                )
                .unwrap(),
            ),
            transfers: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tally_transfers_total",
                        "Movements by kind (credit, debit, transfer, reversal, hold, batch) and outcome",
                    ),
                    &["kind", "outcome"],
                )
                .unwrap(),
            ),
            rollbacks: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tally_transfer_rollbacks_total",
                        "Transfers refunded after a refused credit, by reason",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            transfer_step_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tally_transfer_step_duration_seconds",
                        "Latency of each coordinator step (debit, credit, refund, durable)",
                    )
                    .buckets(IO_BUCKETS_SECONDS.to_vec()),
                    &["step"],
                )
                .unwrap(),
            ),
            amount_moved_minor: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tally_amount_moved_minor_total",
                        "Money moved by completed transactions, in minor units",
                    ),
                    &["kind"],
                )
                .unwrap(),
            ),
            persister_queue_depth: register(
                r,
                IntGauge::new("tally_persister_queue_depth", "Writes accepted and not yet durable").unwrap(),
            ),
            persister_queue_capacity: register(
                r,
                IntGauge::new(
                    "tally_persister_queue_capacity",
                    "Writes the persister accepts before refusing new ones",
                )
                .unwrap(),
            ),
            persister_batch_size: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("tally_persister_batch_size", "Writes per group commit")
                        .buckets(BATCH_SIZE_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            persister_flush_duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tally_persister_flush_duration_seconds",
                        "Time to write and commit one batch (successful attempts)",
                    )
                    .buckets(IO_BUCKETS_SECONDS.to_vec()),
                )
                .unwrap(),
            ),
            persister_durable_lag: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "tally_persister_durable_lag_seconds",
                        "Time from a write's in-memory apply to its commit",
                    )
                    .buckets(IO_BUCKETS_SECONDS.to_vec()),
                )
                .unwrap(),
            ),
            persister_retries: register(
                r,
                IntCounter::new(
                    "tally_persister_retries_total",
                    "Batch write attempts that failed and were retried",
                )
                .unwrap(),
            ),
            persister_failures: register(
                r,
                IntCounter::new(
                    "tally_persister_failures_total",
                    "Outages: times the persister went from writing to failing",
                )
                .unwrap(),
            ),
            persister_refused: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tally_persister_refused_total",
                        "New writes refused by the persister, by reason",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            registry,
        };
        metrics.initialize_series();
        metrics
    }
}

impl EngineMetrics {
    /// Create every series of a bounded label set, so that dashboards and alerts see
    /// zeros (and `rate()` works) before the first event rather than no series at all.
    fn initialize_series(&self) {
        for kind in ["credit", "debit", "transfer", "reversal"] {
            self.amount_moved_minor.with_label_values(&[kind]);
            for outcome in ["completed", "failed", "rolled_back"] {
                self.transfers.with_label_values(&[kind, outcome]);
            }
        }
        for outcome in ["pending", "failed", "voided", "expired"] {
            self.transfers.with_label_values(&["hold", outcome]);
        }
        for outcome in ["completed", "failed"] {
            self.transfers.with_label_values(&["batch", outcome]);
        }
        for reason in crate::Refusal::ALL {
            self.rollbacks.with_label_values(&[reason.code()]);
        }
        for step in ["debit", "credit", "refund", "durable"] {
            self.transfer_step_duration.with_label_values(&[step]);
        }
        for message in ["debit", "credit", "refund", "set_status", "snapshot"] {
            self.actor_message_duration.with_label_values(&[message]);
        }
        for reason in ["outage", "queue_full"] {
            self.persister_refused.with_label_values(&[reason]);
        }
    }

    /// Add the store's families to this registry.
    pub fn include_store(&self, store: &StoreMetrics) {
        store.register(&self.registry);
    }
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_label_sets_are_exported_before_the_first_event() {
        let metrics = EngineMetrics::new();
        let names: Vec<String> = metrics
            .registry
            .gather()
            .iter()
            .map(|family| family.name().to_string())
            .collect();
        for expected in [
            "tally_transfer_rollbacks_total",
            "tally_persister_refused_total",
            "tally_transfers_total",
        ] {
            assert!(
                names.iter().any(|name| name == expected),
                "{expected} missing from {names:?}"
            );
        }
    }
}
