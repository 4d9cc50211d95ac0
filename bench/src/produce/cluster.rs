//! The cluster a run produces to (external, or librdkafka's in-process mock) and one run of one
//! implementation against it.

use std::time::Duration;

use super::mqnet_run::run_mqnet;
use super::settings::{ProduceResult, Settings};
use super::tally::summarize;
use super::ProduceImpl;
use super::{MOCK_BROKERS, MOCK_REPLICATION};
use crate::error::{BenchError, Context};
use crate::rd_peer as rd;

// ----- orchestration -----------------------------------------------------------------------------

/// The cluster a run produces to.
pub(super) enum Cluster {
    External(String),
    Mock(rd::Mock),
}

impl Cluster {
    pub(super) fn open(bootstrap: Option<&str>, rtt_ms: u64) -> Result<Self, BenchError> {
        match bootstrap {
            Some(b) => Ok(Cluster::External(b.to_string())),
            None => {
                let m = rd::mock(MOCK_BROKERS)?;
                if rtt_ms > 0 {
                    for b in 1..=MOCK_BROKERS {
                        m.broker_round_trip_time(b, Duration::from_millis(rtt_ms))
                            .with_context(|| format!("mock broker {b} RTT"))?;
                    }
                }
                Ok(Cluster::Mock(m))
            }
        }
    }

    pub(super) fn bootstrap(&self) -> String {
        match self {
            Cluster::External(b) => b.clone(),
            Cluster::Mock(m) => m.bootstrap_servers(),
        }
    }

    pub(super) fn is_mock(&self) -> bool {
        !matches!(self, Cluster::External(_))
    }

    pub(super) fn name(&self) -> String {
        match self {
            Cluster::External(b) => b.clone(),
            Cluster::Mock(_) => "mock".into(),
        }
    }

    pub(super) fn describe(&self, s: &Settings) -> String {
        match self {
            Cluster::External(b) => format!("cluster at {b}, one topic for all implementations"),
            Cluster::Mock(_) => format!(
                "in-process librdkafka mock cluster, {MOCK_BROKERS} brokers, response delay {} ms; \
                 a fresh topic per implementation, {} partitions, replication factor \
                 {MOCK_REPLICATION}",
                s.broker_rtt_ms, s.partitions
            ),
        }
    }

    /// The topic `imp` produces to (created fresh in the mock).
    pub(super) fn topic_for(
        &self,
        base: &str,
        imp: ProduceImpl,
        s: &Settings,
    ) -> Result<String, BenchError> {
        match self {
            Cluster::External(_) => Ok(base.to_string()),
            Cluster::Mock(m) => {
                let topic = format!("{base}-{}", imp.name());
                m.create_topic(&topic, s.partitions, MOCK_REPLICATION)
                    .with_context(|| format!("mock topic {topic}"))?;
                Ok(topic)
            }
        }
    }
}

pub(super) fn run_impl(
    imp: ProduceImpl,
    s: &Settings,
    cluster: &Cluster,
    base_topic: &str,
) -> Result<ProduceResult, BenchError> {
    let topic = cluster.topic_for(base_topic, imp, s)?;
    let bootstrap = cluster.bootstrap();
    let m = match imp {
        ProduceImpl::Mqnet => run_mqnet(s, &bootstrap, &topic)?,
        ProduceImpl::Rdkafka => rd::run(s, &bootstrap, &topic)?,
    };
    if m.rejected > 0 {
        log::warn!("{}: {} records rejected at send", imp.name(), m.rejected);
    }
    Ok(summarize(imp, s, m, &topic, &cluster.name()))
}
