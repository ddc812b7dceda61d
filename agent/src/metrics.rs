//! The agent's metrics, counted where the events happen: the step cache (`engine/`), peer and
//! origin fetches (`peer`, `engine/pull`, `worker/context`), pushes (`worker/publish`), GC
//! (`gc`) and slices (`worker`). The gauges of one agent's state (slots, running slices, store
//! size) are set by the worker when a scrape arrives. All in the process's registry
//! ([`kiln_shared::metrics::global`]), served by `kiln agent --metrics-listen`.

use kiln_shared::metrics::{self, Counter, Gauge};
use std::sync::OnceLock;

pub struct AgentMetrics {
    /// `source`: local, peer, registry (`--cache-from type=registry`), cache_dir (a local one).
    pub step_cache_hits: Counter,
    pub step_cache_misses: Counter,
    pub corrupt_blobs: Counter,
    /// `from`: peer (other agents) or origin (registries, the coordinator holding the context).
    pub fetched_bytes: Counter,
    /// `result`: sent, or skipped because the destination had the blob.
    pub upload_bytes: Counter,
    pub gc_reclaimed_bytes: Counter,
    /// `state` (succeeded, failed), `platform`.
    pub slices: Counter,
    pub slots: Gauge,
    pub running: Gauge,
    pub store_bytes: Gauge,
    pub registered: Gauge,
    /// `kind`: full (the whole inventory: first contact, a new leader) or changes.
    pub advertise_bytes: Counter,
    pub advertise_listings: Counter,
}

pub fn get() -> &'static AgentMetrics {
    static M: OnceLock<AgentMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let r = metrics::global();
        let m = AgentMetrics {
            step_cache_hits: r.counter(
                "kiln_step_cache_hits_total",
                "Build steps taken from a step cache, by source: local (this agent), peer (another agent), registry or cache_dir (--cache-from).",
                &["source"],
            ),
            step_cache_misses: r.counter("kiln_step_cache_misses_total", "Build steps no cache had (they were executed).", &[]),
            corrupt_blobs: r.counter(
                "kiln_store_corrupt_blobs_total",
                "Blobs of the content store found corrupt when read (removed; the slice ran again).",
                &[],
            ),
            fetched_bytes: r.counter(
                "kiln_fetched_bytes_total",
                "Blob bytes this agent fetched, by source: peer (other agents) or origin (registries, the coordinator holding the context).",
                &["from"],
            ),
            upload_bytes: r.counter(
                "kiln_upload_bytes_total",
                "Blob bytes this agent had to deliver (pushes to registries, images returned to the coordinator): sent, or skipped because the destination had them.",
                &["result"],
            ),
            gc_reclaimed_bytes: r.counter("kiln_gc_reclaimed_bytes_total", "Bytes of cache removed by GC and prune.", &[]),
            slices: r.counter("kiln_agent_slices_total", "Slices this agent ran, by outcome and platform.", &["state", "platform"]),
            slots: r.gauge("kiln_agent_slots", "Slices this agent runs at once.", &["agent"]),
            running: r.gauge("kiln_agent_running_slices", "Slices running on this agent now (its load).", &["agent"]),
            store_bytes: r.gauge("kiln_agent_store_bytes", "Bytes of this agent's content store and snapshots (measured periodically).", &["agent"]),
            registered: r.gauge("kiln_agent_registered", "1 once this agent is registered with the farm.", &["agent"]),
            advertise_bytes: r.counter(
                "kiln_advertise_bytes_total",
                "Bytes of the advertisement frames this agent sent the tracker, by kind: full (its whole inventory) or changes.",
                &["kind"],
            ),
            advertise_listings: r.counter(
                "kiln_advertise_listings_total",
                "Times this agent listed its store and step cache to advertise them (skipped while neither directory changed).",
                &[],
            ),
        };
        for source in ["local", "peer", "registry", "cache_dir"] {
            m.step_cache_hits.touch(&[source]);
        }
        for from in ["peer", "origin"] {
            m.fetched_bytes.touch(&[from]);
        }
        for result in ["sent", "skipped"] {
            m.upload_bytes.touch(&[result]);
        }
        for kind in ["full", "changes"] {
            m.advertise_bytes.touch(&[kind]);
        }
        m.advertise_listings.touch(&[]);
        m
    })
}
